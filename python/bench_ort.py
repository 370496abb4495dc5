"""Side-by-side attention benchmark inside ONNX Runtime (CPU EP).

The same inputs (B=1, H=12, D=64, float32) go through:
  tessera  ai.tessera.Attention (libtessera_ort.so)
  onnx     ONNX Attention (opset 23) on ORT's CPU kernel
  mha      com.microsoft.MultiHeadAttention (ORT's CPU flash path)
  decomp   MatMul(Q, K^T) -> Mul(scale) -> [Add(mask)] -> Softmax -> MatMul(V)

Modes: dense (non-causal), causal, window (causal, left window 128),
swindow (non-causal, 128 on each side) and decode (one query over S keys:
split-KV in tessera). TESSERA_KERNEL in the environment reaches the child
processes, so `TESSERA_KERNEL=avx2` benchmarks that kernel.
Built-ins get causality from their own attribute where they have one (onnx:
is_causal, mha: unidirectional) and from a dense S x S mask otherwise; the
window is always a dense mask for them (bool for onnx, additive float for
mha and decomp). Each (impl, S, mode) runs in its own process with
`intra_op_num_threads` threads; it reports the median of `reps` timed runs
after one warm-up, and the process's peak RSS (getrusage ru_maxrss).

    python python/bench_ort.py --sizes 512,2048,4096 --threads 2 [--impls tessera,mha] [--modes dense,causal]

Prints a markdown table: median seconds, ratio to the fastest built-in of
that row, and peak RSS in GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.environ.get("TESSERA_ORT_LIB", os.path.join(ROOT, "target", "release", "libtessera_ort.so"))
B, H, D = 1, 12, 64
WINDOW = 128
IMPLS = ["tessera", "onnx", "mha", "decomp"]
MODES = ["dense", "causal", "window", "swindow", "decode"]
#: Modes whose mask is a window (a dense mask for the built-ins).
WINDOWS = ("window", "swindow")


def window_allowed(s: int, mode: str) -> np.ndarray:
    i = np.arange(s)[:, None]
    j = np.arange(s)[None, :]
    if mode == "swindow":
        return np.abs(i - j) <= WINDOW
    ok = j <= i
    if mode == "window":
        ok &= j >= i - WINDOW
    return ok


def make_feeds(impl: str, s: int, mode: str) -> dict:
    """The inputs of one configuration (numpy only, so the timed process
    does not carry the onnx package)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, 1 if mode == "decode" else s, D), dtype=np.float32)
    k = rng.standard_normal((B, H, s, D), dtype=np.float32)
    v = rng.standard_normal((B, H, s, D), dtype=np.float32)
    feeds = {"Q": q, "K": k, "V": v}
    if impl == "mha":
        feeds = {n: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(B, x.shape[2], H * D)) for n, x in feeds.items()}
        if mode in WINDOWS:
            feeds["bias"] = np.where(window_allowed(s, mode), 0.0, -np.inf).astype(np.float32).reshape(1, 1, s, s)
    elif impl == "onnx" and mode in WINDOWS:
        feeds["M"] = window_allowed(s, mode)
    elif impl == "decomp" and mode in ("causal", *WINDOWS):
        feeds["M"] = np.where(window_allowed(s, mode), 0.0, -np.inf).astype(np.float32)
    return feeds


def build(impl: str, s: int, mode: str) -> bytes:
    """The model of one configuration."""
    from onnx import TensorProto as TP
    from onnx import helper

    f = TP.FLOAT
    vi = helper.make_tensor_value_info
    opsets = [helper.make_opsetid("", 23)]
    ins = [vi("Q", f, None), vi("K", f, None), vi("V", f, None)]
    nodes = []
    if impl == "tessera":
        attrs = {"is_causal": int(mode in ("causal", "window"))}
        if mode in WINDOWS:
            attrs["left_window_size"] = WINDOW
            attrs["right_window_size"] = WINDOW if mode == "swindow" else 0
        nodes.append(helper.make_node("Attention", ["Q", "K", "V"], ["Y"], domain="ai.tessera", **attrs))
        opsets.append(helper.make_opsetid("ai.tessera", 1))
    elif impl == "onnx":
        node_in = ["Q", "K", "V"]
        attrs = {"is_causal": int(mode == "causal")}
        if mode in WINDOWS:
            ins.append(vi("M", TP.BOOL, None))
            node_in.append("M")
        nodes.append(helper.make_node("Attention", node_in, ["Y"], **attrs))
    elif impl == "mha":
        node_in = ["Q", "K", "V"]
        attrs = {"num_heads": H}
        if mode == "causal":
            attrs["unidirectional"] = 1
        if mode in WINDOWS:
            ins.append(vi("bias", f, None))
            node_in += ["", "", "bias"]
        nodes.append(helper.make_node("MultiHeadAttention", node_in, ["Y"], domain="com.microsoft", **attrs))
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    elif impl == "decomp":
        scale = helper.make_tensor("scale", f, [], [1.0 / np.sqrt(D)])
        nodes += [
            helper.make_node("Transpose", ["K"], ["Kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["Q", "Kt"], ["S0"]),
            helper.make_node("Mul", ["S0", "scale"], ["S1"]),
        ]
        last = "S1"
        if mode in ("causal", *WINDOWS):
            ins.append(vi("M", f, None))
            nodes.append(helper.make_node("Add", ["S1", "M"], ["S2"]))
            last = "S2"
        nodes += [helper.make_node("Softmax", [last], ["P"], axis=-1), helper.make_node("MatMul", ["P", "V"], ["Y"])]
        graph = helper.make_graph(nodes, "bench", ins, [vi("Y", f, None)], initializer=[scale])
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 9
        return m.SerializeToString()
    graph = helper.make_graph(nodes, "bench", ins, [vi("Y", f, None)])
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 9
    return m.SerializeToString()


def child(impl: str, s: int, mode: str, threads: int, reps: int, model_path: str) -> None:
    # Cap the address space so a built-in that materialises S x S fails
    # alone instead of pushing a shared machine into the OOM killer.
    cap = int(float(os.environ.get("TESSERA_BENCH_MEM_GB", "14")) * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import onnxruntime as ort

    with open(model_path, "rb") as fh:
        model = fh.read()
    feeds = make_feeds(impl, s, mode)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if impl == "tessera":
        so.register_custom_ops_library(LIB)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    # Inputs and the output are bound to numpy buffers, so no implementation
    # pays for a copy of Y into a fresh array after each run.
    q = feeds["Q"]
    y = np.empty(q.shape[:-1] + (q.shape[-1],), np.float32)
    binding = sess.io_binding()
    for name, x in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(y))
    sess.run_with_iobinding(binding)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    checksum = float(np.abs(np.asarray(y, dtype=np.float64)).sum())
    print(json.dumps({"median": statistics.median(times), "rss_gb": rss_gb, "checksum": checksum}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,2048,4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--reps", type=int, default=0, help="timed runs (default: 5 up to 4K, 3 up to 8K, else 1)")
    ap.add_argument("--builtin-max", type=int, default=8192, help="largest S for onnx/decomp (they materialise S x S)")
    ap.add_argument("--mask-max", type=int, default=8192, help="largest S for built-ins' dense window masks")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "S", "MODE", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, s, mode, path = args.child
        child(impl, int(s), mode, args.threads, args.reps or 1, path)
        return 0
    import tempfile

    tmp = tempfile.mkdtemp(prefix="tessera-bench-")
    sizes = [int(x) for x in args.sizes.split(",")]
    impls = args.impls.split(",")
    rows = []
    print(f"| S | mode | {' | '.join(impls)} | tessera / best built-in | peak RSS GB ({', '.join(impls)}) | Q+K+V+Y GB |")
    print(f"| --- | --- | {' | '.join('---' for _ in impls)} | --- | --- | --- |")
    for s in sizes:
        reps = args.reps or (5 if s <= 4096 else 3 if s <= 8192 else 1)
        for mode in args.modes.split(","):
            res = {}
            for impl in impls:
                if s > args.builtin_max and impl in ("onnx", "decomp"):
                    res[impl] = {"error": "skipped (S x S scores; 13 GB at 16K)"}
                    continue
                if s > args.mask_max and mode in WINDOWS and impl != "tessera":
                    res[impl] = {"error": "skipped (S x S window mask)"}
                    continue
                path = os.path.join(tmp, f"{impl}-{s}-{mode}.onnx")
                with open(path, "wb") as fh:
                    fh.write(build(impl, s, mode))
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--reps", str(reps), "--child", impl, str(s), mode, path]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    if out.returncode != 0:
                        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                        oom = out.returncode < 0 or "bad_alloc" in out.stderr or "Failed to allocate" in out.stderr
                        res[impl] = {"error": ("out of memory (address space capped at TESSERA_BENCH_MEM_GB)" if oom else tail[:80])}
                    else:
                        res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                except subprocess.TimeoutExpired:
                    res[impl] = {"error": f"> {args.timeout:.0f} s"}
            builtins = [res[i]["median"] for i in impls if i != "tessera" and "median" in res[i]]
            best = min(builtins) if builtins else None
            cell = lambda r: f"{r['median']:.4g} s" if "median" in r else r["error"]  # noqa: E731
            ratio = f"{res['tessera']['median'] / best:.3f}" if best and "median" in res.get("tessera", {}) else "n/a"
            rss = ", ".join(f"{res[i]['rss_gb']:.2f}" if "rss_gb" in res[i] else "-" for i in impls)
            io_gb = (2 if mode == "decode" else 4) * B * H * s * D * 4 / 1e9
            ref = res.get("tessera", {}).get("checksum")
            for i in impls:
                c = res[i].get("checksum")
                if ref and c and abs(c - ref) > 1e-3 * abs(ref):
                    res[i] = {"error": f"MISMATCH (sum|Y| {c:.6g} vs tessera {ref:.6g})"}
            line = f"| {s} | {mode} | {' | '.join(cell(res[i]) for i in impls)} | {ratio} | {rss} | {io_gb:.2f} |"
            print(line, flush=True)
            rows.append(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
