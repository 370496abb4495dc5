"""A plugin built with `--features cuda` on the CPU-only onnxruntime wheel:
it loads, its CUDA-EP kernels (same names, "CUDAExecutionProvider") register
silently, ai.tessera.Attention and MergeAttention still run on the CPU EP
with correct results (float and float16, the type the CUDA kernels also
claim), and nothing opens a CUDA library at load or run time.

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
from test_dsa_ops import run

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
