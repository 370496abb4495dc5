# onnxruntime-genai loads libtessera_ort.so through genai_config.json's
# `custom_ops_library` (examples/genai/): a tiny one-layer decoder whose
# attention is ai.tessera.Attention with a KV cache generates greedily, and
# every step's logits and token must equal a float64 numpy decoder. Needs
# onnxruntime-genai from PyPI (pinned, in its own venv). ~30 s after the first install.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
cargo build --release -p tessera-ort
genai=$TESSERA_ROOT/target/venv-genai
need_pinned_venv "$genai" onnxruntime-genai==0.18.0 "$(grep -E '^onnxruntime==' python/requirements.txt)" \
    "$(grep -E '^numpy==' python/requirements.txt)"
work=$(mktemp -d /tmp/tessera-genai.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" examples/genai/make_tiny_decoder.py "$work/model" target/release/libtessera_ort.so
cd "$work"
"$genai/bin/python" "$TESSERA_ROOT/examples/genai/run_tiny_decoder.py" "$work/model"
