"""Real PyTorch exports of the three model families (NOT run in CI, and not yet run at all:
torch could not be installed where this was written; see models/README.md).

    pip install torch==2.9.1 transformers==4.57.1 onnx==1.23.2 onnxscript
    python models/export.py OUTDIR
"""
import os
import sys

import numpy as np
import torch
from transformers import (BertConfig, BertModel, LlamaConfig, LlamaModel, ModernBertConfig,
                          ModernBertModel)

SMALL = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=512)


def families():
    yield "bert", lambda impl: BertModel(BertConfig(num_hidden_layers=2, max_position_embeddings=2048, attn_implementation=impl, **SMALL))
    yield "modernbert", lambda impl: ModernBertModel(ModernBertConfig(
        num_hidden_layers=6, local_attention=128, global_attn_every_n_layers=3, max_position_embeddings=8192,
        attn_implementation=impl, **SMALL))
    yield "llama", lambda impl: LlamaModel(LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=8192,
                                                       attn_implementation=impl, **SMALL))


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 64))
    mask = torch.ones_like(ids)
    mask[1, 48:] = 0
    names = ["input_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    for family, make in families():
        for impl, opset, dynamo in (("eager", 17, False), ("sdpa", 20, True), ("sdpa", 24, True)):
            model = make(impl).eval()
            path = os.path.join(out, f"{family}_{impl}_opset{opset}{'' if dynamo else '_legacy'}.onnx")
            with torch.no_grad():
                ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
                if dynamo:
                    seq = torch.export.Dim("sequence", min=2, max=8192)
                    torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=["last_hidden_state"],
                                      dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq}, {0: torch.export.Dim("batch"), 1: seq}),
                                      opset_version=opset, dynamo=True, external_data=False)
                else:
                    torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=["last_hidden_state"],
                                      dynamic_axes=axes, opset_version=opset, dynamo=False)
            np.savez(path.replace(".onnx", ".ref.npz"), input_ids=ids.numpy(), attention_mask=mask.numpy(),
                     last_hidden_state=ref.numpy())
            print(path, os.path.getsize(path) // 1024, "KB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
