"""Real PyTorch exports of the three model families bundled in models/.

Not run in CI (torch is a multi-GB install); the files it writes are checked in,
and models/README.md records their provenance. Pinned versions:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.15.0 transformers==5.23.0 onnx==1.23.2 onnxscript==0.7.2 numpy==2.2.6
    /tmp/torchenv/bin/python models/export.py [OUTDIR]      # default: models/

For each family (random weights, fixed seed) it writes four export forms:

    {family}_eager_opset17.onnx       legacy TorchScript exporter, eager attention
    {family}_eager_opset20.onnx       dynamo exporter, eager attention
    {family}_sdpa_opset20.onnx        dynamo exporter, sdpa (decomposed at opset 20)
    {family}_attention_opset24.onnx   dynamo exporter, sdpa -> ONNX Attention (opset 24)

and next to each a `.ref.npz` with PyTorch's own output for a padded batch
(`input_ids`, `attention_mask`, `last_hidden_state`).
"""
import os
import sys
import time

import numpy as np
import torch
from transformers import (BertConfig, BertModel, LlamaConfig, LlamaModel, ModernBertConfig,
                          ModernBertModel)

SMALL = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=512)
FORMS = (  # (file suffix, attn_implementation, opset, dynamo)
    ("eager_opset17", "eager", 17, False),
    ("eager_opset20", "eager", 20, True),
    ("sdpa_opset20", "sdpa", 20, True),
    ("attention_opset24", "sdpa", 24, True),
)


def families():
    yield "bert", lambda impl: BertModel(BertConfig(
        num_hidden_layers=2, max_position_embeddings=2048, attn_implementation=impl, **SMALL))
    # ModernBERT: local window 128 (|q - k| <= 64), global attention on every third layer.
    yield "modernbert", lambda impl: ModernBertModel(ModernBertConfig(
        num_hidden_layers=6, local_attention=128, global_attn_every_n_layers=3, max_position_embeddings=8192,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
        attn_implementation=impl, **SMALL))
    # Llama: GQA with 4 query heads over 2 KV heads.
    yield "llama", lambda impl: LlamaModel(LlamaConfig(
        num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=8192, attn_implementation=impl, **SMALL))


class LastHiddenState(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state, with the KV cache off, so
    every exporter sees the same two-input signature."""

    def __init__(self, inner, use_cache):
        super().__init__()
        self.inner = inner
        self.kw = {"use_cache": False} if use_cache else {}

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **self.kw).last_hidden_state


def export(model, ids, mask, path, opset, dynamo):
    names = ["input_ids", "attention_mask"]
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2, max=8192)
        torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=["last_hidden_state"],
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), opset_version=opset,
                          dynamo=True, external_data=False)
    else:
        torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=opset,
                          dynamo=False)


def main(out):
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SMALL["vocab_size"], (2, 64), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0  # right padding on the second row
    for family, make in families():
        for suffix, impl, opset, dynamo in FORMS:
            torch.manual_seed(0)  # the same weights for every form of a family
            model = LastHiddenState(make(impl), use_cache=family == "llama").eval()
            path = os.path.join(out, f"{family}_{suffix}.onnx")
            with torch.no_grad():
                ref = model(ids, mask)
            t0 = time.time()
            export(model, ids, mask, path, opset, dynamo)
            np.savez(path.replace(".onnx", ".ref.npz"), input_ids=ids.numpy(), attention_mask=mask.numpy(),
                     last_hidden_state=ref.numpy())
            print(f"{path}: {os.path.getsize(path) // 1024} KB in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
