#!/usr/bin/env bash
# Builds the tessera-ort wheel (packaging/) into target/wheels/ and prints its
# path on the last line. One wheel per platform (py3-none-manylinux_*): it holds
# libtessera_ort.so and the `tessera` binary, both built here in release mode.
#   scripts/build-wheel.sh            build it
#   scripts/build-wheel.sh --check    also print `auditwheel show` for it
# maturin and auditwheel (pinned) go into target/wheel-tools, not into your venv.
source "$(dirname "$0")/lib.sh"
cd "$TESSERA_ROOT"
tools=$TESSERA_ROOT/target/wheel-tools
if [ ! -x "$tools/bin/maturin" ] || [ ! -x "$tools/bin/auditwheel" ]; then
    log "installing maturin and auditwheel into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet "maturin==1.16.0" "auditwheel==6.8.2"
fi
log "cargo build --release -p tessera-ort"
cargo build --release -p tessera-ort
# The release profile keeps debug info (for profiling); the wheel does not need it.
strip --strip-debug -o packaging/python/tessera_ort/libtessera_ort.so target/release/libtessera_ort.so
rm -f target/wheels/tessera_ort-*.whl
log "maturin build (bin: tessera, plus libtessera_ort.so)"
# maturin reads the platform tag off the binaries' glibc symbols (auto policy).
(cd packaging && "$tools/bin/maturin" build --release --out "$TESSERA_ROOT/target/wheels") >&2
wheel=$(ls target/wheels/tessera_ort-*.whl)
if [ "${1:-}" = --check ]; then
    "$tools/bin/auditwheel" show "$wheel" >&2
fi
echo "$TESSERA_ROOT/$wheel"
