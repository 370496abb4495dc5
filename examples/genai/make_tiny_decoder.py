"""Writes a tiny one-layer decoder whose attention is ai.tessera.Attention
with a KV cache, plus the genai_config.json that loads it in
onnxruntime-genai through `custom_ops_library`:

  make_tiny_decoder.py OUT_DIR PATH/TO/libtessera_ort.so

OUT_DIR gets model.onnx, genai_config.json, a copy of the library and
weights.npz (the same weights, for run_tiny_decoder.py's numpy reference).
onnxruntime-genai (0.18) loads a custom_ops_library only from inside the
model's folder (or the working directory), after resolving symlinks, so the
library is copied there and named by a relative path. Random weights, fixed
seed: it tests the loading and the cache, not language.

Graph (B batch, S new tokens, P cached ones):
  x = E[input_ids]                          (B, S, 32)
  Q, K, V = x Wq, x Wk, x Wv                 (B, S, 4·8), (B, S, 2·8) ×2
  Y, present.0.key, present.0.value = ai.tessera.Attention(Q, K, V, -, past_key_values.0.key,
                                      past_key_values.0.value; q_num_heads 4, kv_num_heads 2, is_causal 1)
  logits = Y Wo                              (B, S, 64)
Causal with a cache is bottom-right: new token i sits at position P + i.
"""

import json
import os
import shutil
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

VOCAB, HIDDEN, HQ, HKV, D, CONTEXT = 64, 32, 4, 2, 8, 128


def weights():
    rng = np.random.default_rng(2026)
    return {
        "E": rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32),
        "Wq": rng.normal(0, 0.5, (HIDDEN, HQ * D)).astype(np.float32),
        "Wk": rng.normal(0, 0.5, (HIDDEN, HKV * D)).astype(np.float32),
        "Wv": rng.normal(0, 0.5, (HIDDEN, HKV * D)).astype(np.float32),
        "Wo": rng.normal(0, 1, (HQ * D, VOCAB)).astype(np.float32),
    }


def model(w):
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["x"]),
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]),
        helper.make_node("MatMul", ["x", "Wv"], ["v"]),
        helper.make_node(
            "Attention",
            ["q", "k", "v", "", "past_key_values.0.key", "past_key_values.0.value"],
            ["y", "present.0.key", "present.0.value"],
            domain="ai.tessera", q_num_heads=HQ, kv_num_heads=HKV, is_causal=1,
        ),
        helper.make_node("MatMul", ["y", "Wo"], ["logits"]),
    ]
    cache = ["batch", HKV, "past", D]
    graph = helper.make_graph(
        nodes, "tiny_decoder",
        [
            helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
            # genai feeds it; the model has no padding, so it is not read.
            helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
            helper.make_tensor_value_info("past_key_values.0.key", f, cache),
            helper.make_tensor_value_info("past_key_values.0.value", f, cache),
        ],
        [
            helper.make_tensor_value_info("logits", f, ["batch", "seq", VOCAB]),
            helper.make_tensor_value_info("present.0.key", f, ["batch", HKV, "total", D]),
            helper.make_tensor_value_info("present.0.value", f, ["batch", HKV, "total", D]),
        ],
        [numpy_helper.from_array(a, n) for n, a in w.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
    m.ir_version = 9
    return m


def genai_config():
    return {
        "model": {
            "type": "llama",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "vocab_size": VOCAB,
            "context_length": CONTEXT,
            "decoder": {
                "filename": "model.onnx",
                "session_options": {
                    "log_id": "tessera-genai",
                    # The one line that loads Tessera's ops: a path inside
                    # the model's folder, relative to it (see the docstring).
                    "custom_ops_library": "libtessera_ort.so",
                    "intra_op_num_threads": 2,
                    "provider_options": [],
                },
                "head_size": D,
                "hidden_size": HIDDEN,
                "num_attention_heads": HQ,
                "num_key_value_heads": HKV,
                "num_hidden_layers": 1,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": 24,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # The cache grows by concatenation (present = past ++ new), as
            # ai.tessera.Attention returns it; no shared fixed-size buffer.
            "past_present_share_buffer": False,
        },
    }


if __name__ == "__main__":
    out, library = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    shutil.copy(library, os.path.join(out, "libtessera_ort.so"))
    w = weights()
    save(model(w), os.path.join(out, "model.onnx"))
    np.savez(os.path.join(out, "weights.npz"), **w)
    with open(os.path.join(out, "genai_config.json"), "w") as f:
        json.dump(genai_config(), f, indent=2)
    print(f"wrote {out}/model.onnx, genai_config.json and a copy of {library}")
