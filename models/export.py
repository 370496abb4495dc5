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

`--decoders` writes the causal LMs with a KV cache instead (see DECODERS):

    {family}_kv_eager_opset17.onnx    legacy exporter
    {family}_kv_eager_opset20.onnx    dynamo exporter
    {family}_kv_sdpa_opset20.onnx     dynamo exporter, sdpa (decomposed at opset 20)
    {family}_kv_attention_opset24.onnx  dynamo exporter, sdpa -> ONNX Attention, Concat(past, new) outside it

with inputs `input_ids`, `attention_mask` (past + new), `position_ids`,
`past_key_values.N.key/value` and outputs `logits`, `present.N.key/value`,
and next to each a `.ref.npz` with PyTorch's own greedy generation through
its cache (`prompt_ids`, `prompt_mask`, `tokens`, `step_logits`).
"""
import os
import sys
import time

import numpy as np
import torch
from transformers import (BertConfig, BertModel, DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig,
                          LlamaConfig, LlamaForCausalLM, LlamaModel, ModernBertConfig, ModernBertModel)

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


# Decoders with a KV cache, scaled down from the real models of issue 13; a larger
# initializer_range than the default so random weights give varied greedy tokens.
DECODER_FORMS = (  # (file suffix, attn_implementation, opset, dynamo)
    ("kv_eager_opset17", "eager", 17, False),
    ("kv_eager_opset20", "eager", 20, True),
    ("kv_sdpa_opset20", "sdpa", 20, True),
    ("kv_attention_opset24", "sdpa", 24, True),
)
VOCAB = 512


def decoders():
    # SmolLM2-135M (llama): GQA 9 query heads over 3 KV heads, tied embeddings (real: head dim 64, 30 layers).
    yield "smollm2", lambda impl: LlamaForCausalLM(LlamaConfig(
        hidden_size=144, num_attention_heads=9, num_key_value_heads=3, head_dim=16, intermediate_size=256,
        vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=8192, tie_word_embeddings=True,
        rope_theta=100000.0, initializer_range=0.1, attn_implementation=impl))
    # Gemma 3 270M: 4 query heads over 1 KV head; sliding layers then a full one (real: 5:1, window 512,
    # head dim 256, query_pre_attn_scalar 256); here window 64 so the tests' prompts cross it.
    yield "gemma3", lambda impl: Gemma3ForCausalLM(Gemma3TextConfig(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=32, intermediate_size=256,
        vocab_size=VOCAB, num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=64, query_pre_attn_scalar=32, max_position_embeddings=32768, initializer_range=0.1,
        attn_implementation=impl))


class WithPast(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, *past) -> (logits, *present): the flat signature
    optimum and torch's exporters give a decoder with a cache. The cache is a plain DynamicCache (every
    layer keeps all positions; sliding layers are windowed by their mask)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.layers = inner.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        flat = [out.logits]
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return tuple(flat)


def empty_past(cfg, batch, length=0, generator=None):
    shape = (batch, cfg.num_key_value_heads, length, cfg.head_dim)
    return [torch.randn(shape, generator=generator) for _ in range(2 * cfg.num_hidden_layers)]


def left_padded(prompt, batch):
    """Row b drops the first b*S/(2*batch) tokens and is left-padded (as `tessera generate` does)."""
    s = prompt.shape[0]
    ids = prompt.repeat(batch, 1)
    mask = torch.ones(batch, s, dtype=torch.long)
    for b in range(batch):
        cut = (b * s) // (2 * batch)
        ids[b, :cut] = prompt[0]
        mask[b, :cut] = 0
    return ids, mask


def greedy(model, cfg, ids, mask, steps):
    """PyTorch's greedy decoding through the cache: the tokens and each step's last-position logits."""
    past, tokens, logits, done = empty_past(cfg, ids.shape[0]), [], [], 0
    for _ in range(steps):
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, done:]
        out = model(ids, mask, pos, *past)
        last = out[0][:, -1]
        logits.append(last)
        nxt = last.argmax(-1)
        tokens.append(nxt)
        done, past, ids = mask.shape[1], list(out[1:]), nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def export_decoder(model, cfg, path, opset, dynamo):
    layers = cfg.num_hidden_layers
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    g = torch.Generator().manual_seed(2)
    b, p, s = 2, 5, 3  # example inputs: 5 cached positions and 3 new ones
    args = (torch.randint(3, VOCAB, (b, s), generator=g), torch.ones(b, p + s, dtype=torch.long),
            torch.arange(p, p + s).repeat(b, 1), *empty_past(cfg, b, p, g))
    if dynamo:
        d = torch.export.Dim.DYNAMIC
        shapes = ({0: d, 1: d}, {0: d, 1: d}, {0: d, 1: d}, tuple({0: d, 2: d} for _ in range(2 * layers)))
        torch.onnx.export(model, args, path, input_names=names, output_names=outs, dynamic_shapes=shapes,
                          opset_version=opset, dynamo=True, external_data=False)
    else:
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in names[3:]})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in outs[1:]})
        torch.onnx.export(model, args, path, input_names=names, output_names=outs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)


def main_decoders(out):
    os.makedirs(out, exist_ok=True)
    prompt = torch.randint(3, VOCAB, (96,), generator=torch.Generator().manual_seed(1))
    ids, mask = left_padded(prompt, 2)
    for family, make in decoders():
        for suffix, impl, opset, dynamo in DECODER_FORMS:
            torch.manual_seed(0)  # the same weights for every form of a family
            inner = make(impl).eval()
            model = WithPast(inner).eval()
            with torch.no_grad():
                tokens, logits = greedy(model, inner.config, ids, mask, 12)
            path = os.path.join(out, f"{family}_{suffix}.onnx")
            t0 = time.time()
            with torch.no_grad():
                export_decoder(model, inner.config, path, opset, dynamo)
            np.savez(path.replace(".onnx", ".ref.npz"), prompt_ids=ids.numpy(), prompt_mask=mask.numpy(),
                     tokens=tokens.numpy(), step_logits=logits.numpy())
            print(f"{path}: {os.path.getsize(path) // 1024} KB in {time.time() - t0:.1f} s", flush=True)


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
    args = [a for a in sys.argv[1:] if a != "--decoders"]
    target = args[0] if args else os.path.dirname(os.path.abspath(__file__))
    (main_decoders if "--decoders" in sys.argv[1:] else main)(target)
