#!/usr/bin/env bash
# Builds the tessera-ort wheel (packaging/) into target/wheels/ and prints its
# path on the last line. One wheel per platform (py3-none-manylinux_*): it holds
# libtessera_ort.so and the `tessera` binary, both built here in release mode.
#   scripts/build-wheel.sh            manylinux_2_17 (glibc 2.17+: RHEL 7/8, Ubuntu 18.04+):
#                                     cargo-zigbuild links against glibc 2.17 (target/zig)
#   scripts/build-wheel.sh --native   this machine's glibc (manylinux_2_34 on Debian 12):
#                                     plain cargo, reuses target/release
#   --check                           also print `auditwheel show` for the wheel
# The build tools (setuptools, wheel, auditwheel, ziglang, cargo-zigbuild; pinned)
# go into target/wheel-tools, not into your venv.
source "$(dirname "$0")/lib.sh"
cd "$TESSERA_ROOT"
check=0
native=0
for arg in "$@"; do
    case $arg in
    --check) check=1 ;;
    --native) native=1 ;;
    *)
        echo "usage: scripts/build-wheel.sh [--native] [--check]" >&2
        exit 2
        ;;
    esac
done
tools=$TESSERA_ROOT/target/wheel-tools
need_pinned_venv "$tools" setuptools==80.9.0 wheel==0.45.1 auditwheel==6.8.2 ziglang==0.15.1 cargo-zigbuild==0.20.1
command -v strip >/dev/null || need_apt binutils
if [ $native = 1 ]; then
    log "cargo build --release -p tessera-ort -p tessera-cli"
    cargo build --release -p tessera-ort -p tessera-cli
    built=target/release
else
    log "cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.17 (glibc 2.17 symbols; target/zig)"
    PATH="$tools/bin:$PATH" cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.17 \
        -p tessera-ort -p tessera-cli --target-dir target/zig
    built=target/zig/x86_64-unknown-linux-gnu/release
fi
# The release profile keeps debug info (for profiling); the wheel does not need it.
pkg=packaging/python/tessera_ort
mkdir -p "$pkg/bin"
strip --strip-debug -o "$pkg/libtessera_ort.so" "$built/libtessera_ort.so"
strip -o "$pkg/bin/tessera" "$built/tessera"
out=$TESSERA_ROOT/target/wheels
raw=$TESSERA_ROOT/target/wheels-raw
rm -rf "$out" "$raw" packaging/build
log "setuptools: py3-none-linux_x86_64 wheel"
"$tools/bin/pip" wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$raw" ./packaging >&2
rm -rf packaging/build packaging/python/*.egg-info
# auditwheel reads the policy off the binaries' glibc symbols; the wheel then
# gets that tag. Nothing needs grafting (libc, libm, libgcc_s only), so no repair.
raw_wheel=$(ls "$raw"/tessera_ort-*.whl)
plat=$("$tools/bin/auditwheel" show "$raw_wheel" | tr '\n' ' ' | grep -o 'consistent with the following platform tag: *"[^"]*"' | cut -d'"' -f2)
[[ $plat == manylinux_* ]] || { echo "auditwheel found no manylinux tag for $raw_wheel" >&2; "$tools/bin/auditwheel" show "$raw_wheel" >&2; exit 1; }
log "wheel tags: linux_x86_64 -> $plat"
mkdir -p "$out"
cp "$raw_wheel" "$out/"
"$tools/bin/python" -m wheel tags --remove --platform-tag "$plat" "$out/$(basename "$raw_wheel")" >/dev/null
wheel=$(ls "$out"/tessera_ort-*.whl)
if [ $check = 1 ]; then
    "$tools/bin/auditwheel" show "$wheel" >&2
fi
echo "$wheel"
