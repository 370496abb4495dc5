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
"$VENV/bin/python" -m pytest -q python/tests
"$VENV/bin/python" python/conformance.py
