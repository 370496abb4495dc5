#!/usr/bin/env bash
# Tessera's CUDA device check, for a machine with an NVIDIA GPU, python3 with
# torch (CUDA) and nvcc; no Rust toolchain needed. Under 8 minutes on one H200.
#
#   cuda/device-check.sh [OUTDIR]        (or TESSERA_DEVICE_OUT=OUTDIR)
#   TESSERA_CHECK_QUICK=1                smaller benchmark sizes
#
# 1. Compiles every cuda/kernels/*.cu into a fatbin with the same nvcc options
#    as cuda/build.rs (cuda/kernels/nvcc.flags); the ptxas report goes to
#    OUTDIR/ptxas-report.txt.
# 2. Runs cuda/device/check.py: every kernel on fresh random inputs against
#    float64 references (outputs poisoned with NaN first), then timings with
#    CUDA events against torch SDPA (flash backend) and torch.topk, and TFLOP/s
#    against a bf16 matmul peak measured in the same run.
#    The DSA ops are also checked as the CUDA-EP kernels run them (quantise,
#    indexer and top-k; list check and gather with causal/window/sink rules),
#    through the harness; and through ONNX Runtime's CUDA EP when
#    onnxruntime-gpu and onnx are importable and the plugin built with
#    `--features cuda` is at TESSERA_ORT_CUDA_LIB (default
#    target/cuda-plugin/libtessera_ort.so, which scripts/test.sh cuda builds).
# 3. Prints the table last; OUTDIR holds device-check.log, table.md and
#    results.json. Exits non-zero when any correctness check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${TESSERA_DEVICE_OUT:-$here/device-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python3}

find_nvcc() {
    if [ -n "${NVCC:-}" ] && [ -x "$NVCC" ]; then echo "$NVCC"; return; fi
    if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
    for c in /usr/local/cuda/bin/nvcc "$here"/../.venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        if [ -x "$c" ]; then echo "$c"; return; fi
    done
    "$python" - <<'PY'
import glob, site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]:
    for p in glob.glob(d + "/nvidia/cu*/bin/nvcc"):
        print(p); sys.exit(0)
sys.exit(1)
PY
}

nvcc=$(find_nvcc) || { echo "device-check: nvcc not found (set NVCC)" >&2; exit 2; }
echo "device-check: nvcc $nvcc ($("$nvcc" --version | tail -n1)); output in $out"
fatbins="$out/fatbins"
mkdir -p "$fatbins"
mapfile -t flags < <(grep -v '^\s*#' "$here/kernels/nvcc.flags" | sed '/^\s*$/d')

t0=$(date +%s)
pids=()
for src in "$here"/kernels/*.cu; do
    stem=$(basename "$src" .cu)
    "$nvcc" "${flags[@]}" -fatbin -o "$fatbins/$stem.fatbin" "$src" >"$fatbins/$stem.log" 2>&1 &
    pids+=("$!:$stem")
done
failed=0
for entry in "${pids[@]}"; do
    if ! wait "${entry%%:*}"; then
        echo "device-check: nvcc failed on ${entry#*:}.cu:" >&2
        cat "$fatbins/${entry#*:}.log" >&2
        failed=1
    fi
done
[ $failed = 0 ] || exit 1
for src in "$here"/kernels/*.cu; do
    stem=$(basename "$src" .cu)
    echo "== $stem.cu"
    grep -v 'Compile time' "$fatbins/$stem.log" | grep -E '^ptxas|^ +[0-9]' || true
done >"$out/ptxas-report.txt"
echo "device-check: kernels compiled in $(($(date +%s) - t0)) s; spills:" \
    "$(grep -c 'bytes spill stores' "$out/ptxas-report.txt") entries reported," \
    "$(grep 'bytes spill stores' "$out/ptxas-report.txt" | grep -vc ' 0 bytes spill stores') with spills"

quick=()
[ -n "${TESSERA_CHECK_QUICK:-}" ] && quick=(--quick)
exec timeout 420 "$python" "$here/device/check.py" --fatbins "$fatbins" --out "$out" "${quick[@]}"
