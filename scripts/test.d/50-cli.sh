# The tessera graph tool: Rust tests (protobuf round trip, external data,
# bad files, site matchers, rewrite) and end-to-end tests of the binary on the
# bundled models (inspect counts, rewrite + onnx.checker + verify in ONNX
# Runtime with the plugin at S = 128, 512, 2048, batch 2, right-padded; bench;
# the rewritten opset-17/20 models in ONNX Runtime 1.17 from a second venv).
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
log "build tessera + plugin (release)"
cargo build --release -p tessera-cli -p tessera-ort
log "cargo test --release -p tessera-cli (reuses the release build)"
cargo test --release -p tessera-cli
old="$TESSERA_ROOT/target/venv-ort117"
if [ ! -x "$old/bin/python" ] || ! "$old/bin/python" -c 'import onnxruntime' 2>/dev/null; then
    log "venv with onnxruntime 1.17 ($old)"
    python3 -m venv "$old"
    "$old/bin/pip" install --quiet "onnxruntime==1.17.3" "numpy==1.26.4"
fi
log "pytest cli/tests"
TESSERA_PYTHON="$VENV/bin/python" TESSERA_ORT117_PYTHON="$old/bin/python" "$VENV/bin/python" -m pytest -q cli/tests
