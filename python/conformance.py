"""ONNX Attention conformance for ai.tessera.Attention.

Runs every node case that the `onnx` wheel generates for `Attention`
(`onnx.backend.test.case.node.collect_testcases("Attention")`, the
non-`_expanded` ones) through ONNX Runtime with libtessera_ort.so:

- the node's domain becomes `ai.tessera` (opset import added); nothing
  else changes: our outputs 0-3 are ONNX's, in ONNX's order, and
  `softmax_lse` (our output 4) is not asked for;
- each output is compared with the case's expected data at rtol 1e-3,
  atol 1e-5 (NaN must match NaN).

Prints one line per failure and `N passed, M failed`; exits 1 on failure.
With `--builtin` it runs the unmodified models on ORT's own CPU kernel for
comparison.

    python python/conformance.py [--lib target/release/libtessera_ort.so] [--builtin] [-k substring]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from onnx.backend.test.case.node import collect_testcases  # noqa: E402

RTOL, ATOL = 1e-3, 1e-5
# The onnx wheel's Attention node cases (18 of them ask for qk_matmul_output).
EXPECTED_CASES = 93

# Cases whose expected data we do not reproduce, with the reason. Each is
# still checked: against the f64 ONNX reference evaluated on the same
# (bfloat16-valued) inputs, to half a bfloat16 ulp plus 2e-6, i.e. our output
# must be the correctly rounded exact result. The wheel's bfloat16 data is
# computed with bfloat16 rounding after every step (scale, QK, exp, sum,
# divide, PV), which puts it up to ~1.1 ulp (4e-3) from the exact value;
# rtol 1e-3 is four times finer than one bfloat16 ulp (2^-8), so only an
# emulation of those roundings could match it. ORT's own kernel fails the
# same cases.
BF16_ROUNDING = "expected data carries bfloat16 rounding at every intermediate step (up to 1.1 ulp off the exact value); ours is the correctly rounded result"
KNOWN = {
    "test_attention_4d_causal_bf16": BF16_ROUNDING,
    "test_attention_4d_padded_kv_bf16": BF16_ROUNDING,
    "test_attention_4d_causal_padded_kv_bf16": BF16_ROUNDING,
    "test_attention_4d_attn_mask_causal_bf16": BF16_ROUNDING,
    "test_attention_3d_causal_bf16": BF16_ROUNDING,
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LIB = os.path.join(ROOT, "target", "release", "libtessera_ort.so")


def to_tessera(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its Attention node in domain ai.tessera: the
    domain (and the opset import) is the only change."""
    m = copy.deepcopy(model)
    (node,) = [n for n in m.graph.node if n.op_type == "Attention"]
    node.domain = "ai.tessera"
    if not any(o.domain == "ai.tessera" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("ai.tessera", 1))
    return m


def as_numpy(x):
    """Expected/input data as numpy (bf16 via ml_dtypes when the wheel gives raw)."""
    return np.asarray(x)


def ort_value(x: np.ndarray):
    """An OrtValue sharing `x`'s memory; bfloat16 goes in as raw 16-bit words,
    since onnxruntime's numpy bridge has no bfloat16."""
    x = np.ascontiguousarray(x)
    if x.dtype.name == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(x.view(np.uint16), onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(x)


def run_bound(sess, model, inputs, outputs):
    """Run with inputs and outputs bound to numpy buffers (output shapes and
    dtypes from the expected data), so bfloat16 works end to end."""
    binding = sess.io_binding()
    for i, x in zip(model.graph.input, inputs):
        binding.bind_ortvalue_input(i.name, ort_value(as_numpy(x)))
    got = []
    for o, w in zip(model.graph.output, outputs):
        buf = np.full(np.shape(w), np.nan, dtype=np.asarray(w).dtype)  # poisoned: unwritten shows as NaN
        binding.bind_ortvalue_output(o.name, ort_value(buf))
        got.append(buf)
    sess.run_with_iobinding(binding)
    return got


def compare(name: str, got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {got.shape} != expected {want.shape}"
    g = np.asarray(got).astype(np.float64)
    w = np.asarray(want).astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if (nan_g != nan_w).any():
        return f"{name}: NaN pattern differs ({int(nan_g.sum())} NaN vs {int(nan_w.sum())} expected)"
    ok = np.isclose(g, w, rtol=RTOL, atol=ATOL) | (nan_g & nan_w)
    if not ok.all():
        err = np.abs(g - w)[~ok]
        i = int(np.argmax(np.abs(g - w) * ~ok))
        return f"{name}: {int((~ok).sum())}/{ok.size} elements off, max abs err {err.max():.3g} (got {g.flat[i]:.6g}, want {w.flat[i]:.6g})"
    return None


def run_case(case, lib: str | None) -> str | None:
    model = case.model if lib is None else to_tessera(case.model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if lib is not None:
        so.register_custom_ops_library(lib)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        return f"session: {str(e).splitlines()[0][:300]}"
    (inputs, outputs) = case.data_sets[0]
    names = [o.name for o in model.graph.output]
    try:
        got = run_bound(sess, model, inputs, outputs)
    except Exception as e:  # noqa: BLE001
        return f"run: {str(e).splitlines()[0][:300]}"
    for name, g, w in zip(names, got, outputs):
        msg = compare(name, g, as_numpy(w))
        if msg:
            return msg
    return None


def exact_check(case, lib: str) -> str | None:
    """Compare our outputs with the f64 ONNX reference on the same inputs,
    to within half an ulp of the output format (plus 2e-6)."""
    from onnx.reference import ReferenceEvaluator

    model = to_tessera(case.model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs, outputs = case.data_sets[0]
    got = run_bound(sess, model, inputs, outputs)
    m64 = copy.deepcopy(case.model)
    for vi in list(m64.graph.input) + list(m64.graph.output):
        if vi.type.tensor_type.elem_type in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT):
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    widen = [np.asarray(x).astype(np.float64) if np.asarray(x).dtype.kind == "f" or np.asarray(x).dtype.name == "bfloat16" else np.asarray(x) for x in inputs]
    truth = ReferenceEvaluator(m64).run(None, {i.name: x for i, x in zip(m64.graph.input, widen)})
    for name, g, t in zip([o.name for o in model.graph.output], got, truth):
        g64 = np.asarray(g).astype(np.float64)
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(t), 1e-30))) - (7 if np.asarray(g).dtype.name == "bfloat16" else 23))
        err = np.abs(g64 - t)
        if not (err <= ulp / 2 + 2e-6).all():
            return f"{name}: {(err > ulp / 2 + 2e-6).sum()} elements further than half an ulp from the exact result (max err {err.max():.3g})"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.environ.get("TESSERA_ORT_LIB", DEFAULT_LIB))
    ap.add_argument("--builtin", action="store_true", help="run ORT's own Attention kernel instead")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    cases = [c for c in collect_testcases("Attention") if not c.name.endswith("_expanded") and args.k in c.name]
    if not args.k and len(cases) != EXPECTED_CASES:
        print(f"expected {EXPECTED_CASES} Attention cases from the onnx wheel, found {len(cases)}: update EXPECTED_CASES", file=sys.stderr)
        return 2
    lib = None if args.builtin else args.lib
    if lib is not None and not os.path.exists(lib):
        print(f"missing {lib}: build it with cargo build --release -p tessera-ort", file=sys.stderr)
        return 2
    failures, unexpected = [], 0
    for case in cases:
        msg = run_case(case, lib)
        if not msg:
            continue
        failures.append(case.name)
        known = lib is not None and case.name in KNOWN
        exact = exact_check(case, lib) if known else None
        if known and exact is None:
            print(f"expected {case.name} (known, not a failure): {msg}\n     why: {KNOWN[case.name]}; checked instead: within half an ulp of the f64 reference")
        else:
            unexpected += 1
            print(f"FAIL {case.name}: {msg}" + (f"\n     and the exactness check failed: {exact}" if exact else ""))
    who = "ORT built-in Attention" if lib is None else "ai.tessera.Attention"
    qk = [c.name for c in cases if len(c.model.graph.node[0].output) > 3]
    qk_passed = sum(1 for n in qk if n not in failures)
    print(f"{who}: {len(cases) - len(failures)} passed, {len(failures)} failed (rtol {RTOL}, atol {ATOL}); {unexpected} unexpected; "
          f"{qk_passed} of the {len(qk)} cases asking for qk_matmul_output passed")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
