"""Export a real GGUF decoder (SmolLM2-135M-Instruct, Gemma 3 270M) with a KV cache, as
models/export.py --decoders does for the small ones, and save its tokenizer.json.

    python export_real.py GGUF_DIR GGUF_FILE OUT_DIR

Needs torch, transformers (>= 5.25), gguf, accelerate (see run.sh). Writes
OUT_DIR/model_kv_eager_opset17.onnx (+ .data), OUT_DIR/tokenizer.json and OUT_DIR/config.txt."""
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from export import WithPast, export_decoder  # noqa: E402


def main(gguf_dir, gguf_file, out):
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    tok.backend_tokenizer.save(os.path.join(out, "tokenizer.json"))
    cfg = model.config
    with open(os.path.join(out, "config.txt"), "w") as f:
        f.write(cfg.to_json_string())
    print(f"loaded {gguf_file} in {time.time() - t0:.0f} s: {cfg.num_hidden_layers} layers, "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads x {cfg.head_dim}, vocab {cfg.vocab_size}, "
          f"layer types {sorted(set(getattr(cfg, 'layer_types', None) or ['full']))}, "
          f"sliding window {getattr(cfg, 'sliding_window', None)}", flush=True)
    path = os.path.join(out, "model_kv_eager_opset17.onnx")
    t0 = time.time()
    with torch.no_grad():
        export_decoder(WithPast(model).eval(), cfg, path, 17, False)
    print(f"{path}: exported in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
