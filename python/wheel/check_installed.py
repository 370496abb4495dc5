"""Runs in a fresh venv holding only the tessera-ort wheel and onnxruntime,
from a directory outside the source tree (scripts/test.d/60-wheel.sh):
  check_installed.py SOURCE_ROOT
Checks that tessera_ort comes from the venv, runs the one-node model against
its numpy reference and the rewritten bundled model against PyTorch's output,
and that bad input to the helpers raises clear Python exceptions."""

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

import tessera_ort

root = os.path.realpath(sys.argv[1])
here = os.path.realpath(os.getcwd())
lib = tessera_ort.get_library_path()
for path in (tessera_ort.__file__, lib):
    assert os.path.realpath(path).startswith(os.path.realpath(sys.prefix)), f"{path} is not in the venv {sys.prefix}"
    assert not os.path.realpath(path).startswith(root + os.sep), f"{path} is in the source tree"
assert not here.startswith(root + os.sep), f"running inside the source tree: {here}"
printed = subprocess.run([sys.executable, "-m", "tessera_ort"], check=True, capture_output=True, text=True).stdout
assert printed.strip() == lib, (printed, lib)
print(f"ok   tessera_ort {tessera_ort.__version__} from {os.path.dirname(tessera_ort.__file__)} (onnxruntime {ort.__version__})")


def session(path, register=True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if register:
        assert tessera_ort.register(so) is so
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# 1. One ai.tessera.Attention node (causal, GQA 4:2) against float64 numpy.
data = np.load("attention.npz")
(y,) = session("attention.onnx").run(None, {n: data[n] for n in ("Q", "K", "V")})
err = float(np.abs(y - data["Y"]).max())
assert err < 2e-5, f"attention: max abs error {err:.2e} against the numpy reference"
print(f"ok   ai.tessera.Attention vs numpy float64: max abs {err:.1e}")

# 2. The bundled model rewritten by the wheel's `tessera`, against PyTorch's output.
with open("modernbert.tessera.onnx", "rb") as f:
    assert b"ai.tessera" in f.read(), "the rewrite did not use ai.tessera ops"
ref = np.load("modernbert.ref.npz")
(h,) = session("modernbert.tessera.onnx").run(None, {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]})
keep = ref["attention_mask"].astype(bool)
err = float(np.abs(h[keep] - ref["last_hidden_state"][keep]).max())
assert err < 1e-4, f"modernbert: max abs error {err:.2e} against PyTorch"
print(f"ok   rewritten ModernBERT vs PyTorch: max abs {err:.1e} on {int(keep.sum())} unpadded tokens")

# 3. Without registration ORT must refuse the rewritten model (docs/missing-registration.md).
try:
    session("modernbert.tessera.onnx", register=False)
    raise AssertionError("a session without the library loaded the rewritten model")
except AssertionError:
    raise
except Exception as e:  # onnxruntime's pybind11 Fail
    assert "ai.tessera" in str(e), e
    print(f"ok   unregistered session fails: {str(e).splitlines()[0][:110]}")


# 4. Bad input: the exception type and what its message names.
def raises(kind, words, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except kind as e:
        for w in words:
            assert w in str(e), f"{kind.__name__} message {str(e)!r} does not name {w!r}"
        print(f"ok   {kind.__name__}: {e}")
        return
    raise AssertionError(f"{fn.__name__}{args} did not raise {kind.__name__}")


with open("not-a-library.so", "w") as f:
    f.write("text")
providers_shared = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_shared.so")
raises(TypeError, ["SessionOptions", "int"], tessera_ort.register, 42)
raises(TypeError, ["SessionOptions", "str"], tessera_ort.register, "model.onnx")
raises(TypeError, ["library_path", "int"], tessera_ort.register, ort.SessionOptions(), library_path=7)
raises(tessera_ort.TesseraLoadError, ["/nonexistent/libx.so"], tessera_ort.register, ort.SessionOptions(), "/nonexistent/libx.so")
raises(tessera_ort.TesseraLoadError, ["not-a-library.so", "cannot load"], tessera_ort.register, ort.SessionOptions(), "not-a-library.so")
raises(tessera_ort.TesseraLoadError, ["RegisterCustomOps"], tessera_ort.register, ort.SessionOptions(), providers_shared)
assert issubclass(tessera_ort.TesseraLoadError, RuntimeError)
print("installed wheel: all checks passed")
