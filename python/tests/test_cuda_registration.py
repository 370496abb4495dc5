"""A plugin built with `--features cuda` on the CPU-only onnxruntime wheel:
it loads, its CUDA-EP kernels (same names, "CUDAExecutionProvider") register
silently -- Attention, LightningIndexer, TopKAttention and MergeAttention,
as a recording wrapper around ORT's own C API shows --, the ai.tessera ops
still run on the CPU EP with correct results (float and float16, the type the
CUDA kernels also claim), and nothing opens a CUDA library at load or run time.

The library is $TESSERA_ORT_CUDA_LIB (scripts/test.d/40-cuda.sh builds it);
without that variable every test here is skipped, so the plain plugin's
test run (20-ort) is unaffected."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP

from conftest import LIB, attention_model, reference, session
from test_dsa_ops import (check_top_k, index_scores, lists_to_mask, rand, random_lists, run,
                          sparse_reference, visible)

CUDA_LIB = os.environ.get("TESSERA_ORT_CUDA_LIB")
pytestmark = pytest.mark.skipif(not CUDA_LIB, reason="TESSERA_ORT_CUDA_LIB not set (scripts/test.sh cuda builds it)")

# Libraries a CUDA code path would map: the driver, the runtime, nvrtc.
CUDA_LIBS = ("libcuda.so", "libcudart", "libnvrtc", "libcublas")


@pytest.fixture(scope="module")
def cuda_lib():
    if not os.path.exists(CUDA_LIB):
        pytest.fail(f"{CUDA_LIB} missing: cargo build -p tessera-ort --features cuda")
    return CUDA_LIB


def test_the_runtime_is_cpu_only_and_the_library_holds_the_cuda_kernels(cuda_lib):
    # Otherwise the test below would not show what it claims.
    providers = ort.get_available_providers()
    assert "CUDAExecutionProvider" not in providers and "CPUExecutionProvider" in providers, providers
    blob = open(cuda_lib, "rb").read()
    assert b"CUDAExecutionProvider" in blob, "built without --features cuda?"
    assert b"tessera_flash_bf16_d128" in blob, "no embedded flash kernels"
    # No link-time dependency on any CUDA library (readelf -d lists DT_NEEDED).
    needed = subprocess.run(["readelf", "-d", cuda_lib], capture_output=True, text=True, check=True).stdout
    needed = [line for line in needed.splitlines() if "(NEEDED)" in line]
    assert needed, "readelf printed no NEEDED entries"
    assert not [n for n in needed if any(c in n for c in CUDA_LIBS)], needed


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_runs_on_the_cpu_ep_with_correct_results(cuda_lib, dtype, causal):
    rng = np.random.default_rng(1000 + causal)
    b, hq, hkv, sq, skv, d = 2, 4, 2, 37, 53, 64
    q = rng.standard_normal((b, hq, sq, d)).astype(dtype)
    k = rng.standard_normal((b, hkv, skv, d)).astype(dtype)
    v = rng.standard_normal((b, hkv, skv, d)).astype(dtype)
    t = TP.FLOAT if dtype == np.float32 else TP.FLOAT16
    model = attention_model([("Q", t), ("K", t), ("V", t)], {"is_causal": causal})
    sess = session(cuda_lib, model, threads=2)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    (y,) = sess.run(None, {"Q": q, "K": k, "V": v})
    assert y.dtype == dtype and y.shape == (b, hq, sq, d)
    # The ONNX rule for Sq != Skv without a cache is top-left causal.
    want = reference(q, k, v, causal=bool(causal))
    tol = 2e-5 if dtype == np.float32 else 2e-3
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)


def test_the_cuda_build_gives_the_same_bits_as_the_cpu_build(cuda_lib):
    if not os.path.exists(LIB):
        pytest.skip(f"{LIB} (the plain plugin) not built")
    lib = LIB
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 2, 29, 64)).astype(np.float16) for _ in range(3))
    model = attention_model([("Q", TP.FLOAT16), ("K", TP.FLOAT16), ("V", TP.FLOAT16)], {"is_causal": 1})
    feeds = {"Q": q, "K": k, "V": v}
    (a,) = session(cuda_lib, model).run(None, feeds)
    (c,) = session(lib, model).run(None, feeds)
    np.testing.assert_array_equal(a, c)


def test_merge_runs_on_the_cpu_ep_in_float16(cuda_lib):
    rng = np.random.default_rng(11)
    ya, yb = (rng.standard_normal((2, 3, 5, 8)).astype(np.float16) for _ in range(2))
    la, lb = (rng.standard_normal((2, 3, 5)).astype(np.float32) for _ in range(2))
    y, lse = run(cuda_lib, "MergeAttention", {"Y_a": ya, "lse_a": la, "Y_b": yb, "lse_b": lb},
                 [("Y", TP.FLOAT16), ("lse", TP.FLOAT)])
    wa, wb = np.exp(la.astype(np.float64)), np.exp(lb.astype(np.float64))
    want = (wa[..., None] * ya + wb[..., None] * yb) / (wa + wb)[..., None]
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(lse, np.log(wa + wb), rtol=1e-5, atol=1e-6)


def test_registration_is_silent_and_opens_no_cuda_library(cuda_lib):
    """A fresh process registers the library with ORT's verbose log on, runs
    Attention in float16, and then reads its own memory map: ORT logged no
    warning or error, the plugin is mapped, no CUDA library is."""
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import onnxruntime as ort
        sys.path.insert(0, sys.argv[2])
        from conftest import attention_model
        from onnx import TensorProto as TP
        so = ort.SessionOptions()
        so.register_custom_ops_library(sys.argv[1])
        so.log_severity_level = 0  # verbose: every warning of ORT's shows
        m = attention_model([("Q", TP.FLOAT16), ("K", TP.FLOAT16), ("V", TP.FLOAT16)])
        x = np.ones((1, 1, 4, 64), np.float16)
        # Kept alive: the library stays mapped while the session is.
        sess = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"Q": x, "K": x, "V": x})
        maps = [l.split()[-1] for l in open("/proc/self/maps") if "/" in l]
        print(json.dumps({"y": float(y.astype(np.float32).sum()), "maps": sorted(set(maps))}))
        """
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", script, cuda_lib, here], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    log = out.stderr.splitlines()
    assert any("[I:onnxruntime" in line for line in log), "ORT's verbose log did not show"
    assert not [line for line in log if "[W:" in line or "[E:" in line], log
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["y"] == 4 * 64, got["y"]  # V is all ones
    maps = got["maps"]
    assert any(os.path.samefile(p, cuda_lib) for p in maps if p.endswith(".so") and os.path.exists(p)), maps
    assert not [p for p in maps if any(c in os.path.basename(p) for c in CUDA_LIBS)], maps


# Recording what RegisterCustomOps registers, in a fresh process: ORT's real
# C API (libonnxruntime from the wheel) with CustomOpDomain_Add (entry 27 of
# the append-only OrtApi table) wrapped to note each op's name and execution
# provider (OrtCustomOp: u32 version, then CreateKernel, GetName,
# GetExecutionProviderType, ...) before passing it on to ORT.
RECORD_REGISTRATION = textwrap.dedent(
    """
    import ctypes, glob, importlib.util, json, os, sys
    from ctypes import CFUNCTYPE, POINTER, byref, c_char_p, c_uint32, c_void_p
    pkg = importlib.util.find_spec("onnxruntime").submodule_search_locations[0]
    ort = ctypes.CDLL(sorted(glob.glob(os.path.join(pkg, "capi", "libonnxruntime.so*")))[0])
    class ApiBase(ctypes.Structure):
        _fields_ = [("GetApi", CFUNCTYPE(c_void_p, c_uint32)), ("GetVersionString", CFUNCTYPE(c_char_p))]
    ort.OrtGetApiBase.restype = POINTER(ApiBase)
    base = ort.OrtGetApiBase().contents
    N, CREATE_SESSION_OPTIONS, CUSTOM_OP_DOMAIN_ADD = 512, 10, 27
    table = (c_void_p * N)()
    ctypes.memmove(table, base.GetApi(17), 8 * N)
    Add = CFUNCTYPE(c_void_p, c_void_p, c_void_p)
    real_add = Add(table[CUSTOM_OP_DOMAIN_ADD])
    Str = CFUNCTYPE(c_char_p, c_void_p)
    seen = []
    @Add
    def add(domain, op):
        f = ctypes.cast(op, POINTER(c_void_p))
        ep = Str(f[3])(op)
        seen.append([Str(f[2])(op).decode(), ep.decode() if ep else None])
        return real_add(domain, op)
    table[CUSTOM_OP_DOMAIN_ADD] = ctypes.cast(add, c_void_p).value
    @CFUNCTYPE(c_void_p, c_uint32)
    def get_api(version):
        return ctypes.addressof(table) if base.GetApi(version) else None
    fake = ApiBase(get_api, base.GetVersionString)
    opts = c_void_p()
    assert not CFUNCTYPE(c_void_p, POINTER(c_void_p))(table[CREATE_SESSION_OPTIONS])(byref(opts))
    plugin = ctypes.CDLL(sys.argv[1])
    plugin.RegisterCustomOps.restype = c_void_p
    plugin.RegisterCustomOps.argtypes = [c_void_p, POINTER(ApiBase)]
    assert not plugin.RegisterCustomOps(opts, byref(fake)), "RegisterCustomOps returned an error status"
    print(json.dumps(seen))
    """
)


def test_the_dsa_ops_are_registered_for_the_cuda_ep_after_their_cpu_kernels(cuda_lib):
    out = subprocess.run([sys.executable, "-c", RECORD_REGISTRATION, cuda_lib], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = [tuple(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]
    cuda = [name for name, ep in seen if ep == "CUDAExecutionProvider"]
    cpu = [name for name, ep in seen if ep is None]
    # One CUDA kernel per element type: Attention f16/bf16, LightningIndexer
    # (its inputs any of float/float16/bfloat16), TopKAttention f16/bf16,
    # MergeAttention f32/f16/bf16.
    assert sorted(cuda) == sorted(["Attention"] * 2 + ["LightningIndexer"] + ["TopKAttention"] * 2
                                  + ["MergeAttention"] * 3), seen
    for name in ("Attention", "LightningIndexer", "TopKAttention", "MergeAttention"):
        assert name in cpu, (name, seen)
    # The CPU kernels come first, so a CPU-only session never sees a CUDA one first.
    first_cuda = next(i for i, (_, ep) in enumerate(seen) if ep)
    assert all(ep is None for _, ep in seen[:first_cuda]) and all(ep for _, ep in seen[first_cuda:]), seen


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_lightning_indexer_runs_on_the_cpu_ep_with_correct_results(cuda_lib, fmt):
    rng = np.random.default_rng(21 if fmt == "e4m3" else 22)
    b, sq, skv, hi, di, top_k = 2, 17, 70, 4, 64, 9
    q, k = rand(rng, b, sq, hi, di), rand(rng, b, skv, di)
    w = rng.uniform(0.1, 1, (b, sq, hi)).astype(np.float32)
    (idx,) = run(cuda_lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w},
                 [("indices", TP.INT64)], {"top_k": top_k, "is_causal": 1, "format": fmt})
    scores = index_scores(q, k, w, True, fmt)
    check_top_k(idx, scores, top_k, tol=1e-4 * np.abs(scores[np.isfinite(scores)]).max())


def test_topk_attention_runs_on_the_cpu_ep_in_float16_with_its_rules(cuda_lib):
    """float16 is a type the CUDA kernel claims; the CPU session must still
    run the CPU kernel: bottom-right causal, window and sinks kept."""
    rng = np.random.default_rng(23)
    b, hq, hkv, sq, skv, d, kk, window, sinks = 1, 4, 2, 11, 60, 64, 7, 4, 2
    q, k, v = (rand(rng, b, h, s, d, dt=np.float16) for h, s in ((hq, sq), (hkv, skv), (hkv, skv)))
    idx = random_lists(rng, b, sq, skv, kk)
    y, sel, lse = run(cuda_lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": idx},
                      [("Y", TP.FLOAT16), ("selected_indices", TP.INT64), ("softmax_lse", TP.FLOAT)],
                      {"is_causal": 1, "left_window_size": window, "num_global_tokens": sinks})
    pos = np.arange(sq)[:, None] + skv - sq
    j = np.arange(skv)[None, :]
    kept = ((j >= pos - window) & (j <= pos)) | (j < sinks)
    allowed = (lists_to_mask(idx, skv, hkv, hq) | kept[None, None]) & visible(sq, skv, True)[None, None]
    np.testing.assert_allclose(y.astype(np.float64), sparse_reference(q, k, v, allowed), rtol=3e-3, atol=3e-3)
    assert sel.shape == (b, hkv, sq, kk + window + 1 + sinks)
    assert np.isfinite(lse).all()
