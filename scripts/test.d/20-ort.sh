# ai.tessera.Attention in ONNX Runtime: the plugin's unit tests, the Rust
# tests through the `ort` crate, the Python tests, and ONNX's own Attention
# conformance cases. Rust and Python load the same target/release/libtessera_ort.so.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
export TESSERA_REQUIRE_ORT=1
cargo build --release -p tessera-ort
cargo test -p tessera-ort
cargo test -p tessera-tests --test ort_attention
cargo test -p tessera-tests --test dsa_ops
cargo test -p tessera-tests --test entry_points
"$VENV/bin/python" -m pytest -q python/tests
"$VENV/bin/python" python/conformance.py
# The same binary in the oldest runtime it supports (C API 17 = ORT 1.17).
old="$VENV/ort-1.17.3"
if [ ! -x "$old/bin/python" ]; then
    python3 -m venv "$old"
    "$old/bin/pip" install --quiet "onnxruntime==1.17.3" "numpy<2"
fi
"$VENV/bin/python" python/smoke_old_ort.py --write "$VENV/smoke_old_ort.onnx"
"$old/bin/python" python/smoke_old_ort.py --run "$VENV/smoke_old_ort.onnx" target/release/libtessera_ort.so
