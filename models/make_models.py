"""Builds the bundled test models with onnx.helper, node for node in the
forms PyTorch's exporters emit (see models/README.md for what is and is not
like a real export). Random weights, fixed seed; each file is a few hundred KB.

    .venv/bin/python models/make_models.py [OUTDIR]     # default: models/

Forms (the attention part of each layer):
- eager:     MatMul(Q, Kᵀ) → Mul(1/√D) → Add(float mask) → Softmax → MatMul(V)
             (dynamo exporter with attn_implementation="eager"; legacy exporter likewise,
             with Kᵀ as one Transpose(perm=[0,2,3,1]) of the head split)
- sdpa:      Mul(Q, √s), Mul(Kᵀ, √s) → MatMul → Add(Where(bool, 0, -3.4e38)) → Softmax
             → IsNaN/Where(0) → MatMul(V)  (dynamo exporter with sdpa at opsets 18/20)
- attention: ONNX Attention(Q, K, V, bool [B,1,S,S] mask, scale)  (dynamo, opset ≥ 23)

Masks are built in the graph from `attention_mask` (padding: Cast to bool,
Unsqueeze to [B,1,1,S]) and, for ModernBERT-style local layers, from
positions: |q_pos − k_pos| ≤ 64 (window 128, inclusive: 129 keys).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, VOCAB, FFN = 128, 4, 512, 256
HEAD = HIDDEN // HEADS
NEG = float(np.finfo(np.float32).min)


class Builder:
    def __init__(self, seed):
        self.nodes, self.inits, self.rng, self.n = [], [], np.random.default_rng(seed), 0

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, value, name=None, dtype=np.float32):
        name = name or self.name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        return self.const(self.rng.standard_normal(shape) * scale, self.name("w"))

    def op(self, op_type, inputs, outputs=1, name=None, **attrs):
        name = name or self.name(op_type)
        outs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs


def linear(b, x, din, dout):
    return b.op("Add", [b.op("MatMul", [x, b.weight(din, dout)]), b.const(b.rng.standard_normal(dout) * 0.02)])


def layer_norm(b, x):
    return b.op("LayerNormalization", [x, b.const(np.ones(HIDDEN)), b.const(np.zeros(HIDDEN))], axis=-1, epsilon=1e-5)


def heads(b, x, perm, n=HEADS):
    r = b.op("Reshape", [x, b.const([0, 0, n, HEAD], dtype=np.int64)])
    return b.op("Transpose", [r], perm=perm)


def repeat_kv(b, x, kv):
    """Llama's repeat_kv: x[:, :, None].expand(B, kv, n_rep, S, D).reshape(B, kv*n_rep, S, D)."""
    n_rep = HEADS // kv
    u = b.op("Unsqueeze", [x, b.const([2], dtype=np.int64)])
    shape = b.op("Shape", [u])
    target = b.op("Concat", [b.op("Slice", [shape, b.const([0], dtype=np.int64), b.const([2], dtype=np.int64)]),
                             b.const([n_rep], dtype=np.int64),
                             b.op("Slice", [shape, b.const([3], dtype=np.int64), b.const([5], dtype=np.int64)])], axis=0)
    e = b.op("Expand", [u, target])
    return b.op("Reshape", [e, b.const([0, HEADS, -1, HEAD], dtype=np.int64)])


def attention(b, x, form, mask, layer, kv=HEADS):
    """One attention block; `mask` is (bool [B,1,S,S]|[B,1,1,S]) for sdpa/attention, float bias for eager.
    With kv < HEADS (GQA) K and V are repeated to HEADS heads first, as Llama's eager/sdpa code does."""
    p = f"layer{layer}.attn"
    q = heads(b, linear(b, x, HIDDEN, HIDDEN), [0, 2, 1, 3])
    kx = linear(b, x, HIDDEN, HEAD * kv)
    v = heads(b, linear(b, x, HIDDEN, HEAD * kv), [0, 2, 1, 3], kv)
    if kv < HEADS:
        v = repeat_kv(b, v, kv)
    scale = 1.0 / np.sqrt(HEAD)
    if kv < HEADS:
        k = repeat_kv(b, heads(b, kx, [0, 2, 1, 3], kv), kv)
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        if form == "eager":
            form = "eager_kt"
    if form == "attention":
        k = heads(b, kx, [0, 2, 1, 3]) if kv == HEADS else k
        y = b.op("Attention", [q, k, v, mask], name=f"{p}.Attention", scale=float(scale))
    elif form in ("eager", "eager_kt"):
        if form == "eager":
            kt = heads(b, kx, [0, 2, 3, 1])
        s = b.op("MatMul", [q, kt], name=f"{p}.MatMul_qk")
        s = b.op("Mul", [s, b.const(scale)], name=f"{p}.Mul_scale")
        s = b.op("Add", [s, mask], name=f"{p}.Add_mask")
        pr = b.op("Softmax", [s], name=f"{p}.Softmax", axis=-1)
        y = b.op("MatMul", [pr, v], name=f"{p}.MatMul_pv")
    elif form == "sdpa":
        if kv == HEADS:
            k = heads(b, kx, [0, 2, 1, 3])
            kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        rs = b.const(np.sqrt(scale))
        qs = b.op("Mul", [q, rs])
        ks = b.op("Mul", [kt, rs])
        s = b.op("MatMul", [qs, ks], name=f"{p}.MatMul_qk")
        bias = b.op("Where", [mask, b.const(0.0), b.const(NEG)])
        s = b.op("Add", [s, bias], name=f"{p}.Add_bias")
        pr = b.op("Softmax", [s], name=f"{p}.Softmax", axis=-1)
        nan = b.op("IsNaN", [pr])
        pr = b.op("Where", [nan, b.const(0.0), pr])
        y = b.op("MatMul", [pr, v], name=f"{p}.MatMul_pv")
    else:
        raise ValueError(form)
    y = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.const([0, 0, HIDDEN], dtype=np.int64)])
    return linear(b, y, HIDDEN, HIDDEN)


def encoder(form, opset, layers, window=None, global_every=0, seed=0, name="encoder", causal=False, kv=HEADS):
    """BERT-style (window=None), ModernBERT-style (window=w: |i−j| ≤ w on local layers),
    or Llama-style (causal=True: k_pos ≤ q_pos on every layer, kv < HEADS KV heads)."""
    b = Builder(seed)
    ids, am = "input_ids", "attention_mask"
    x = b.op("Gather", [b.weight(VOCAB, HIDDEN, scale=1.0), ids], name="embeddings.Gather")
    x = layer_norm(b, x)
    # Padding: [B,1,1,S] bool.
    pad = b.op("Unsqueeze", [b.op("Cast", [am], to=TensorProto.BOOL), b.const([1, 2], dtype=np.int64)], name="mask.padding")
    local = None
    if causal:
        seq = b.op("Gather", [b.op("Shape", [ids]), b.const(1, dtype=np.int64)], axis=0)
        pos = b.op("Range", [b.const(0, dtype=np.int64), seq, b.const(1, dtype=np.int64)])
        kp = b.op("Unsqueeze", [pos, b.const([0], dtype=np.int64)])
        qp = b.op("Unsqueeze", [pos, b.const([1], dtype=np.int64)])
        pad = b.op("And", [pad, b.op("LessOrEqual", [kp, qp], name="mask.causal")], name="mask.causal_padding")
    if window is not None:
        seq = b.op("Gather", [b.op("Shape", [ids]), b.const(1, dtype=np.int64)], axis=0)
        pos = b.op("Range", [b.const(0, dtype=np.int64), seq, b.const(1, dtype=np.int64)])
        qp = b.op("Unsqueeze", [pos, b.const([1], dtype=np.int64)])
        kp = b.op("Unsqueeze", [pos, b.const([0], dtype=np.int64)])
        dist = b.op("Abs", [b.op("Sub", [qp, kp])])
        win = b.op("LessOrEqual", [dist, b.const(window, dtype=np.int64)], name="mask.window")
        local = b.op("And", [pad, win], name="mask.local")
    full_shape = b.op("Concat", [b.op("Slice", [b.op("Shape", [ids]), b.const([0], dtype=np.int64), b.const([1], dtype=np.int64)]),
                                 b.const([1], dtype=np.int64), b.op("Slice", [b.op("Shape", [ids]), b.const([1], dtype=np.int64), b.const([2], dtype=np.int64)]),
                                 b.op("Slice", [b.op("Shape", [ids]), b.const([1], dtype=np.int64), b.const([2], dtype=np.int64)])], axis=0)
    masks = {}
    for kind, m in (("global", pad), ("local", local)):
        if m is None:
            continue
        if form == "attention":
            masks[kind] = b.op("Expand", [m, full_shape], name=f"mask.{kind}.expand")  # bool [B,1,S,S]
        elif form == "eager":
            masks[kind] = b.op("Where", [m, b.const(0.0), b.const(NEG)], name=f"mask.{kind}.bias")
        else:
            masks[kind] = m
    if window is None and form == "eager" and not causal:
        # BERT's extended mask: (1 - mask) * finfo.min, [B,1,1,S].
        ext = b.op("Cast", [b.op("Unsqueeze", [am, b.const([1, 2], dtype=np.int64)])], to=TensorProto.FLOAT)
        masks["global"] = b.op("Mul", [b.op("Sub", [b.const(1.0), ext]), b.const(NEG)], name="mask.extended")
    for i in range(layers):
        is_global = window is None or (global_every and i % global_every == 0)
        a = attention(b, x, form, masks["global" if is_global else "local"], i, kv)
        x = layer_norm(b, b.op("Add", [x, a]))
        f = linear(b, b.op("Relu", [linear(b, x, HIDDEN, FFN)]), FFN, HIDDEN)
        x = layer_norm(b, b.op("Add", [x, f]))
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(
        b.nodes, name, [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(am, TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tessera models/make_models.py")
    model.ir_version = 10 if opset >= 23 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


MODELS = {
    # BERT-style encoder: padding mask only.
    "bert_eager_opset17": lambda: encoder("eager", 17, 2, seed=1, name="bert"),
    "bert_sdpa_opset20": lambda: encoder("sdpa", 20, 2, seed=1, name="bert"),
    "bert_attention_opset24": lambda: encoder("attention", 24, 2, seed=1, name="bert"),
    # ModernBERT-style: window 128 (|i-j| <= 64) on local layers, global every 3rd (layers 0, 3).
    "modernbert_eager_opset17": lambda: encoder("eager", 17, 6, window=64, global_every=3, seed=2, name="modernbert"),
    "modernbert_sdpa_opset20": lambda: encoder("sdpa", 20, 6, window=64, global_every=3, seed=2, name="modernbert"),
    "modernbert_attention_opset24": lambda: encoder("attention", 24, 6, window=64, global_every=3, seed=2, name="modernbert"),
    # Llama-style decoder: causal, GQA 4:2 with repeat_kv before attention.
    "llama_eager_opset17": lambda: encoder("eager", 17, 2, seed=3, name="llama", causal=True, kv=2),
    "llama_sdpa_opset20": lambda: encoder("sdpa", 20, 2, seed=3, name="llama", causal=True, kv=2),
    "llama_attention_opset24": lambda: encoder("attention", 24, 2, seed=3, name="llama", causal=True, kv=2),
}


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    for name, make in MODELS.items():
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(make(), path)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KB")
