"""Inputs for the installed-wheel test (scripts/test.d/60-wheel.sh), written
into a directory outside the source tree: a one-node causal GQA
ai.tessera.Attention model with its feeds and a float64 numpy reference
output, and a copy of a bundled model with its PyTorch output."""

import os
import shutil
import sys

import numpy as np
from onnx import TensorProto, helper

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
out = sys.argv[1]

rng = np.random.default_rng(12)
q = rng.uniform(-1, 1, (2, 4, 77, 16)).astype(np.float32)
k = rng.uniform(-1, 1, (2, 2, 77, 16)).astype(np.float32)
v = rng.uniform(-1, 1, (2, 2, 77, 16)).astype(np.float32)

# numpy reference in float64: causal softmax(Q Kᵀ / √D) V, K/V heads shared 2:1.
kk, vv = (np.repeat(t.astype(np.float64), 2, axis=1) for t in (k, v))
s = q.astype(np.float64) @ kk.transpose(0, 1, 3, 2) / np.sqrt(16)
s = np.where(np.tril(np.ones((77, 77), bool)), s, -np.inf)
p = np.exp(s - s.max(-1, keepdims=True))
y = (p / p.sum(-1, keepdims=True)) @ vv

node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], domain="ai.tessera", is_causal=1)
graph = helper.make_graph(
    [node], "attention",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Q", "K", "V")],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
model.ir_version = 9
with open(os.path.join(out, "attention.onnx"), "wb") as f:
    f.write(model.SerializeToString())
np.savez(os.path.join(out, "attention.npz"), Q=q, K=k, V=v, Y=y)

for suffix in (".onnx", ".ref.npz"):
    shutil.copy(os.path.join(root, "models", "modernbert_eager_opset17" + suffix), os.path.join(out, "modernbert" + suffix))
