# tessera-cuda: every kernel compiles with nvcc (CUDA 13 pip wheels, sm_80 +
# sm_90 + PTX) on every run, the ptxas report (registers, shared memory,
# spills) is kept in target/ptxas-report.txt, and the crate's tests run with
# and without the `cuda` feature (none needs a GPU). The same kernel sources
# also run on the CPU emulator (feature `emulate`) against the f64 reference.
# The device check itself (cuda/device-check.sh) needs a GPU machine; here
# only its scripts are checked.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
nvcc_wheels=(nvidia-cuda-nvcc==13.0.* nvidia-cuda-crt==13.0.* nvidia-cuda-runtime==13.0.* nvidia-nvvm==13.0.*)
NVCC=$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true)
if [ -z "$NVCC" ]; then
    log "installing the nvcc wheels into $VENV"
    "$VENV/bin/pip" install --quiet "${nvcc_wheels[@]}"
    NVCC=$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -n1)
fi
export NVCC
"$NVCC" --version | tail -n1

mkdir -p target
export TESSERA_PTXAS_REPORT="$TESSERA_ROOT/target/ptxas-report.txt"
log "cargo test -p tessera-cuda --features cuda (compiles every kernel)"
cargo test -p tessera-cuda --features cuda
grep -c "Compiling entry function" "$TESSERA_PTXAS_REPORT" | xargs -I{} echo "ptxas report: {} kernel entries in $TESSERA_PTXAS_REPORT"
cargo clippy -p tessera-cuda --no-deps --features cuda --all-targets -- -D warnings
log "cargo test -p tessera-cuda --features emulate (kernels on the CPU emulator vs the f64 reference)"
command -v c++ >/dev/null && command -v ar >/dev/null || need_apt g++ binutils
cargo test -p tessera-cuda --features emulate --test emulated
cargo clippy -p tessera-cuda --no-deps --features emulate --all-targets -- -D warnings
log "cargo test -p tessera-cuda (no feature: no nvcc, no kernels)"
NVCC=/nonexistent PATH="/usr/bin:/bin:$(dirname "$(command -v cargo)")" cargo test -p tessera-cuda
bash -n cuda/device-check.sh
"$VENV/bin/python" -m py_compile cuda/device/tessera.py cuda/device/check.py
# The harness builds its parameter blocks from params.h: same sizes as the Rust mirrors.
"$VENV/bin/python" - <<'PY'
import ctypes, sys, types
sys.modules.setdefault("torch", types.ModuleType("torch"))  # the parser needs no torch
sys.path.insert(0, "cuda/device")
import tessera
sizes = {k: ctypes.sizeof(v) for k, v in tessera.PARAMS.items()}
want = {"TesseraFlashParams": 264, "TesseraIndexerParams": 104, "TesseraQuantizeParams": 48,
        "TesseraTopkParams": 40, "TesseraSparseParams": 240, "TesseraIndexCheckParams": 80,
        "TesseraMergeParams": 64}
assert sizes == want, sizes
# A ctypes Structure takes any attribute silently: every `P.<field>` the
# harness sets must be a field of the block that `P` holds in that function.
import re
src = open("cuda/device/tessera.py").read()
checked = 0
for fn in re.split(r"\n    def ", src):
    m = re.search(r'P = PARAMS\["(\w+)"\]\(\)', fn)
    if not m:
        continue
    fields = {f for f, _ in tessera.PARAMS[m.group(1)]._fields_}
    used = set(re.findall(r"\bP\.(\w+)", fn)) | set(re.findall(r'setattr\(P, pre \+ "(\w+)"', fn))
    used = {u for u in used if not u.startswith("_")}
    for u in used:
        if u in ("batch", "head", "seq") or u.startswith(("_batch", "_head", "_seq")):
            continue
        assert u in fields, f"tessera.py sets {m.group(1)}.{u}, which params.h does not have"
        checked += 1
print(f"device harness: parameter blocks match the Rust mirrors; {checked} field writes name real fields")
PY

# The ORT plugin with its CUDA-EP kernels (ort-plugin/src/cuda): clippy, the
# table tests, and the acceptance test that can run here -- the cuda-featured
# library loads into the CPU-only onnxruntime wheel (1.32 and, when 20-ort
# made it, 1.17.3), runs Attention/MergeAttention on the CPU EP with correct
# results and maps no CUDA library.
log "tessera-ort --features cuda (CUDA-EP registration on CPU-only ORT)"
cargo clippy -p tessera-ort --no-deps --features cuda --all-targets -- -D warnings
cargo test -p tessera-ort --features cuda --lib cuda
cargo build -p tessera-ort --features cuda
mkdir -p target/cuda-plugin
cp target/debug/libtessera_ort.so target/cuda-plugin/libtessera_ort.so
command -v readelf >/dev/null || need_apt binutils
TESSERA_ORT_CUDA_LIB="$TESSERA_ROOT/target/cuda-plugin/libtessera_ort.so" \
    "$VENV/bin/python" -m pytest -q python/tests/test_cuda_registration.py
if [ -x "$VENV/ort-1.17.3/bin/python" ] && [ -e "$VENV/smoke_old_ort.onnx" ]; then
    "$VENV/ort-1.17.3/bin/python" python/smoke_old_ort.py --run "$VENV/smoke_old_ort.onnx" target/cuda-plugin/libtessera_ort.so
fi
