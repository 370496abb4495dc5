"""One small model and one set of feeds per op (and TopKAttention mode), for
the reliability runs: concurrency.py (bit-identical results from many
threads and sessions) and leaks.py (create/run/drop under valgrind, RSS over
many runs)."""
import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("TESSERA_ORT_LIB", os.path.join(ROOT, "target", "release", "libtessera_ort.so"))
F, I64 = TP.FLOAT, TP.INT64


def _model(op, inputs, outputs, attrs):
    node = helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], domain="ai.tessera", **attrs)
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
    m.ir_version = 9
    return m.SerializeToString()


def cases(seed=15):
    """name -> (model bytes, feeds)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.uniform(-1, 1, s).astype(np.float32)
    out = {}
    q, k, v = r(1, 4, 33, 16), r(1, 2, 70, 16), r(1, 2, 70, 16)
    out["Attention"] = (_model("Attention", [("Q", F), ("K", F), ("V", F)], [("Y", F)], {"is_causal": 1}),
                        {"Q": q, "K": k, "V": v})
    idx = np.stack([np.sort(rng.permutation(70)[:8]) for _ in range(33)])[None].astype(np.int64)
    out["TopKAttention/index"] = (
        _model("TopKAttention", [("Q", F), ("K", F), ("V", F), ("indices", I64)], [("Y", F)], {}),
        {"Q": q, "K": k, "V": v, "indices": idx})
    k2, v2 = r(1, 2, 300, 16), r(1, 2, 300, 16)
    out["TopKAttention/training-free"] = (
        _model("TopKAttention", [("Q", F), ("K", F), ("V", F)], [("Y", F)], {"top_k": 128, "is_causal": 1}),
        {"Q": q, "K": k2, "V": v2})
    out["LightningIndexer"] = (
        _model("LightningIndexer", [("index_q", F), ("index_k", F), ("index_w", F)], [("indices", I64)],
               {"top_k": 16, "is_causal": 1}),
        {"index_q": r(1, 33, 4, 32), "index_k": r(1, 70, 32), "index_w": r(1, 33, 4)})
    out["MergeAttention"] = (
        _model("MergeAttention", [("Y_a", F), ("lse_a", F), ("Y_b", F), ("lse_b", F)], [("Y", F)], {}),
        {"Y_a": r(1, 4, 33, 16), "lse_a": r(1, 4, 33), "Y_b": r(1, 4, 33, 16), "lse_b": r(1, 4, 33)})
    return out


def session(model, threads=1):
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIB)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
