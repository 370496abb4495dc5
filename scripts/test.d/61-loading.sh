# Loading libtessera_ort.so from other languages (docs/loading.md). Here: a C
# host built with gcc against the onnxruntime wheel's libonnxruntime
# (examples/c/run_attention.c, RegisterCustomOpsLibrary_V2) runs a causal GQA
# ai.tessera.Attention node against a float64 numpy reference, and a bad
# library path must fail with ORT's message. Python is tested by 20-ort and
# 60-wheel, Rust `ort` (with_operator_library) by tests/tests/ort_attention.rs.
# C#, Java and Triton are not run here: see docs/loading.md. ~20 s.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
command -v gcc >/dev/null || need_apt gcc libc6-dev
cargo build --release -p tessera-ort
lib=$TESSERA_ROOT/target/release/libtessera_ort.so
work=$(mktemp -d /tmp/tessera-c-host.XXXXXX)
trap 'rm -rf "$work"' EXIT

log "C host: OrtApi positions from the ort-sys crate's bindings (the wheel ships no onnxruntime_c_api.h)"
ort_sys=$(cargo metadata --format-version 1 --locked | "$VENV/bin/python" -c '
import json, os, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "ort-sys"]
print(os.path.join(os.path.dirname(pkgs[0]["manifest_path"]), "src", "lib.rs"))')
"$VENV/bin/python" examples/c/gen_ort_api_slots.py "$ort_sys" >"$work/ort_api_slots.h"
# The wheel's library file is libonnxruntime.so.1.<minor>.<patch>; its soname is libonnxruntime.so.1.
ln -s "$ORT_DYLIB_PATH" "$work/libonnxruntime.so.1"
ln -s libonnxruntime.so.1 "$work/libonnxruntime.so"
gcc -std=c11 -O1 -Wall -Wextra -Werror -I"$work" -o "$work/run_attention" examples/c/run_attention.c \
    -L"$work" -lonnxruntime -Wl,-rpath,"$work"

"$VENV/bin/python" python/wheel/make_inputs.py "$work"
cd "$work"
"$VENV/bin/python" -c '
import numpy as np
d = np.load("attention.npz")
for n in "QKV": d[n].tofile(n + ".f32")'
./run_attention attention.onnx "$lib" y.f32 Q=2,4,77,16:Q.f32 K=2,2,77,16:K.f32 V=2,2,77,16:V.f32
"$VENV/bin/python" -c '
import numpy as np
d = np.load("attention.npz")
y = np.fromfile("y.f32", np.float32).reshape(d["Y"].shape)
err = float(np.abs(y - d["Y"]).max())
assert err < 2e-5, f"C host: max abs error {err:.2e} against the numpy reference"
print(f"ok   C host (RegisterCustomOpsLibrary_V2) vs numpy float64: max abs {err:.1e}")'
set +e
./run_attention attention.onnx "$work/missing.so" y.f32 Q=2,4,77,16:Q.f32 2>err.txt
status=$?
set -e
grep -q "RegisterCustomOpsLibrary_V2: Failed to load library $work/missing.so" err.txt && [ $status = 1 ] ||
    { echo "FAIL a missing library: status $status, $(cat err.txt)"; exit 1; }
echo "ok   C host with a missing library: $(cat err.txt)"

# Triton's model repository (examples/triton, not run: no Triton here): its
# checked-in model is what make_model.py writes, and it runs with the library.
cd "$TESSERA_ROOT"
"$VENV/bin/python" examples/triton/make_model.py "$lib" "$work/triton.onnx"
cmp "$work/triton.onnx" examples/triton/tessera_attention/1/model.onnx
grep -q 'op_library_filename: "/' examples/triton/tessera_attention/config.pbtxt
echo "ok   examples/triton: model.onnx current and runs; config.pbtxt names an absolute op_library_filename"
