#!/usr/bin/env bash
# The long campaign behind RELIABILITY.md's fuzzing rows: each target in
# turn, up to RUNS executions (default 1M) or SECONDS seconds (per target,
# default 600), from the committed seeds, at the lowest priority. Prints one
# line per target with the executions libFuzzer reports.
set -uo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-1000000}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(plan fp8 topk mask_eval attention onnx_reader)
work=${WORK:-$(mktemp -d)}
for t in "${targets[@]}"; do
    secs=${SECONDS_PER_TARGET:-600}
    mkdir -p "$work/$t"
    out=$(nice -n 19 cargo +nightly fuzz run -a "$t" "$work/$t" "corpus/$t" -- \
        -runs="$runs" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 2>&1)
    rc=$?
    n=$(grep -o 'number_of_executed_units: [0-9]*' <<<"$out" | cut -d' ' -f2)
    echo "$t: ${n:-?} executions, exit $rc, $(ls "$work/$t" | wc -l) corpus entries"
    [ $rc = 0 ] || grep -E "panicked|SUMMARY|Test unit written" -A2 <<<"$out" | head -12
done
