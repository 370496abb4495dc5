# The tessera graph tool: Rust tests (protobuf round trip, external data,
# bad files, site matchers, rewrite) and end-to-end tests of the binary on the
# bundled models (inspect counts, rewrite + onnx.checker + verify in ONNX
# Runtime with the plugin at S = 128, 512, 2048, batch 2, right-padded).
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
log "build tessera + plugin (release)"
cargo build --release -p tessera-cli -p tessera-ort
log "cargo test -p tessera-cli"
cargo test -p tessera-cli
log "pytest cli/tests"
TESSERA_PYTHON="$VENV/bin/python" "$VENV/bin/python" -m pytest -q cli/tests
