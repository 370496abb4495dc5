"""Writes examples/triton/tessera_attention/1/model.onnx: the one-node model
that config.pbtxt serves (Q (B,4,S,16), K/V (B,2,S,16) → Y, causal), and
checks it in onnxruntime with the library against numpy before Triton sees it:

  make_model.py PATH/TO/libtessera_ort.so [OUT.onnx]

(scripts/test.d/61-loading.sh writes it elsewhere and compares the bytes
with the checked-in file.)
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, save

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "tessera_attention", "1", "model.onnx")
node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], domain="ai.tessera", is_causal=1)
f = TensorProto.FLOAT
graph = helper.make_graph(
    [node], "tessera_attention",
    [helper.make_tensor_value_info("Q", f, ["B", 4, "S", 16]),
     helper.make_tensor_value_info("K", f, ["B", 2, "S", 16]),
     helper.make_tensor_value_info("V", f, ["B", 2, "S", 16])],
    [helper.make_tensor_value_info("Y", f, ["B", 4, "S", 16])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
model.ir_version = 9
save(model, out)

so = ort.SessionOptions()
so.register_custom_ops_library(os.path.abspath(sys.argv[1]))
rng = np.random.default_rng(0)
q, k, v = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((1, 4, 9, 16), (1, 2, 9, 16), (1, 2, 9, 16)))
(y,) = ort.InferenceSession(out, so).run(None, {"Q": q, "K": k, "V": v})
kk, vv = np.repeat(k, 2, 1).astype(np.float64), np.repeat(v, 2, 1).astype(np.float64)
s = np.where(np.tril(np.ones((9, 9), bool)), q @ kk.transpose(0, 1, 3, 2) / 4.0, -np.inf)
p = np.exp(s - s.max(-1, keepdims=True))
assert np.abs(y - (p / p.sum(-1, keepdims=True)) @ vv).max() < 1e-5
print(f"wrote {out}; it runs in onnxruntime {ort.__version__} with the library")
