"""Load libtessera_ort.so into another onnxruntime (default CI: 1.17.3, the
oldest C API 17 runtime) and run one Attention node that leaves optional
inputs out in the middle (nonpad_kv_seqlen), checking Y against numpy.

    python smoke_old_ort.py --write model.onnx      # needs the onnx package
    python smoke_old_ort.py --run model.onnx LIB    # needs only onnxruntime + numpy
"""

import sys

import numpy as np

SHAPES = {"Q": (2, 4, 5, 8), "K": (2, 4, 9, 8), "V": (2, 4, 9, 8)}
NONPAD = [9, 6]
LEFT = 3


def write(path):
    from onnx import TensorProto as TP
    from onnx import helper

    node = helper.make_node("Attention", ["Q", "K", "V", "", "", "", "nonpad"], ["Y", "", "", "lse"],
                            domain="ai.tessera", is_causal=1, left_window_size=LEFT)
    ins = [helper.make_tensor_value_info(n, TP.FLOAT, None) for n in "QKV"]
    ins.append(helper.make_tensor_value_info("nonpad", TP.INT64, None))
    outs = [helper.make_tensor_value_info("Y", TP.FLOAT, None), helper.make_tensor_value_info("lse", TP.FLOAT, None)]
    m = helper.make_model(helper.make_graph([node], "smoke", ins, outs),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.tessera", 1)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def run(path, lib):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(SHAPES[n]).astype(np.float32) for n in "QKV")
    y, _ = sess.run(None, {"Q": q, "K": k, "V": v, "nonpad": np.array(NONPAD, np.int64)})
    want = np.zeros_like(y)
    sq = q.shape[2]
    for b, n in enumerate(NONPAD):
        for i in range(sq):
            p = i + n - sq  # external-cache causal offset
            js = [j for j in range(n) if p - LEFT <= j <= p]
            sc = np.einsum("hd,hjd->hj", q[b, :, i], k[b][:, js]) / np.sqrt(q.shape[3])
            w = np.exp(sc - sc.max(1, keepdims=True))
            want[b, :, i] = np.einsum("hj,hjd->hd", w / w.sum(1, keepdims=True), v[b][:, js])
    err = float(np.abs(want - y).max())
    print(f"onnxruntime {ort.__version__}: libtessera_ort loads and runs, max err {err:.2e}")
    return 0 if err < 1e-5 else 1


if __name__ == "__main__":
    if sys.argv[1] == "--write":
        write(sys.argv[2])
        sys.exit(0)
    sys.exit(run(sys.argv[2], sys.argv[3]))
