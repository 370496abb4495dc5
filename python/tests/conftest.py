"""Shared fixtures: the plugin path and a one-node model builder."""

import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("TESSERA_ORT_LIB", os.path.join(ROOT, "target", "release", "libtessera_ort.so"))


@pytest.fixture(scope="session")
def lib():
    if not os.path.exists(LIB):
        pytest.fail(f"{LIB} missing: cargo build --release -p tessera-ort")
    return LIB


def attention_model(inputs, attrs=None, outputs=(("Y", None),), y_type=None):
    """One ai.tessera.Attention node. `inputs`: list of (slot name, elem type)
    in node order with None for a left-out slot."""
    slots = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    names = dict(inputs)
    node_in = [s if s in names else "" for s in slots]
    while node_in and node_in[-1] == "":
        node_in.pop()
    node = helper.make_node("Attention", node_in, [o for o, _ in outputs], domain="ai.tessera", **(attrs or {}))
    y_type = y_type or names["Q"]
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(o, t or y_type, None) for o, t in outputs if o],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
    m.ir_version = 9
    return m.SerializeToString()


def session(lib, model, threads=1):
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    so.intra_op_num_threads = threads
    so.log_severity_level = 4
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def reference(q, k, v, causal=False, scale=None, left=-1, right=-1, globals_=0, bool_mask=None):
    """f64 attention for 4-D BHSD inputs, ONNX rules (no past, no padding)."""
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    s = (scale if scale is not None else 1 / np.sqrt(d))
    kk = np.repeat(k.astype(np.float64), hq // hkv, axis=1)
    vv = np.repeat(v.astype(np.float64), hq // hkv, axis=1)
    sc = s * q.astype(np.float64) @ kk.transpose(0, 1, 3, 2)
    i = np.arange(sq)[:, None]
    j = np.arange(skv)[None, :]
    ok = np.ones((sq, skv), bool)
    if causal:
        ok &= j <= i
    win = np.ones((sq, skv), bool)
    if left >= 0:
        win &= j >= i - left
    if right >= 0:
        win &= j <= i + right
    glob = (j < globals_) | (i < globals_)
    ok &= win | glob
    ok = np.broadcast_to(ok, sc.shape)
    if bool_mask is not None:
        ok = ok & np.broadcast_to(bool_mask, sc.shape)
    sc = np.where(ok, sc, -np.inf)
    m = sc.max(-1, keepdims=True)
    p = np.where(ok, np.exp(sc - np.where(np.isinf(m), 0, m)), 0)
    den = p.sum(-1, keepdims=True)
    return np.where(den > 0, (p / np.where(den > 0, den, 1)) @ vv, 0)
