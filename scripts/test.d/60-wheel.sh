# The tessera-ort wheel as a user gets it: build it (scripts/build-wheel.sh,
# linked against glibc 2.17 by cargo-zigbuild: ~2-3 min the first time on 2
# cores, cached in target/zig), check its tag (py3-none-manylinux_2_17) with auditwheel, pip-install it with
# onnxruntime from PyPI into a fresh venv outside the source tree, and from
# there run the installed `tessera rewrite` and `verify` (which must find the
# package's library and Python by themselves) and models through the installed
# package alone (python/wheel/check_installed.py). ~40 s after the first build.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
wheel=$(scripts/build-wheel.sh --check 2> >(tee "$TESSERA_ROOT/target/wheel-build.log" >&2) | tail -n1)
name=$(basename "$wheel")
# The wheel users get: every Python 3, glibc 2.17 and newer.
[[ $name == tessera_ort-*-py3-none-manylinux_2_17_x86_64.whl ]] || { echo "FAIL wheel tag: $name" >&2; exit 1; }
grep -q "is consistent" "$TESSERA_ROOT/target/wheel-build.log" || { echo "FAIL auditwheel show: $name" >&2; exit 1; }
files=$("$VENV/bin/python" -m zipfile -l "$wheel")
grep -q "^tessera_ort/libtessera_ort.so " <<<"$files" && grep -q "^tessera_ort/bin/tessera " <<<"$files" ||
    { echo "FAIL $name lacks libtessera_ort.so or the tessera command" >&2; exit 1; }
echo "ok   $name"

work=$(mktemp -d /tmp/tessera-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" python/wheel/make_inputs.py "$work"
cp python/wheel/check_installed.py "$work/"
ort_pin=$(grep -E '^onnxruntime==' python/requirements.txt)
log "fresh venv $work/venv: $name + $ort_pin (PyPI)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$wheel" "$ort_pin"
cd "$work"
# Nothing from the source tree or the test venv: no PYTHONPATH, no
# ORT_DYLIB_PATH, PATH = the fresh venv's scripts and the system's.
env -i HOME="$HOME" PATH="$work/venv/bin:/usr/bin:/bin" bash -euo pipefail -c '
    command -v tessera | grep -qx "$PWD/venv/bin/tessera"
    tessera rewrite modernbert.onnx -o modernbert.tessera.onnx
    tessera verify modernbert.onnx modernbert.tessera.onnx --seq 64,200 --batch 2
    python -I check_installed.py "$1"
' _ "$TESSERA_ROOT"
