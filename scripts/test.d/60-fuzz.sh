# Fuzzing (cargo fuzz, libFuzzer, nightly): every target first replays its
# regression inputs (fuzz/regressions/TARGET: each crash the fuzzers found,
# kept after the fix), then fuzzes for FUZZ_SECONDS (default 15) from the
# committed seed corpus (fuzz/corpus/TARGET/seed-*). New corpus entries go
# to a temporary folder, not into the repository. The long campaigns and
# their counts are in RELIABILITY.md. Budget: under 5 minutes once nightly
# and cargo-fuzz are installed and fuzz/target is warm.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_component nightly-x86_64-unknown-linux-gnu
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd fuzz
seconds=${FUZZ_SECONDS:-15}
targets=(onnx_reader mask_eval plan attention fp8 topk)
# mask_eval still finds a new crash of one known class (the interpreter's ops
# trust input counts and shape products) in most 15 s runs: its replayed
# regressions must pass, but a new find in its exploration is reported with
# the input to keep, not failed, until that class is closed (RELIABILITY.md,
# "open"). Every other target fails the part on any find.
report_only=(mask_eval)
# -a: debug assertions and overflow checks on; AddressSanitizer (the default).
cargo +nightly fuzz build -a
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in "${targets[@]}"; do
    if compgen -G "regressions/$t/*" >/dev/null; then
        log "$t: replay regressions/$t"
        cargo +nightly fuzz run -a "$t" regressions/"$t"/* -- -rss_limit_mb=2048 || { failed=1; continue; }
    fi
    log "$t: fuzz ${seconds}s from corpus/$t"
    mkdir -p "$scratch/$t"
    out=$(cargo +nightly fuzz run -a "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 2>&1) || {
        echo "$out" | tail -n 40
        if [[ " ${report_only[*]} " == *" $t "* ]]; then
            echo "$t: OPEN FINDING (reported, not failed; see RELIABILITY.md): $(echo "$out" | grep -o 'artifacts/[^ ]*' | head -n1)"
        else
            failed=1
        fi
        continue
    }
    echo "$t: $(echo "$out" | grep -o 'number_of_executed_units: [0-9]*' | cut -d' ' -f2) executions in ${seconds}s"
done
exit $failed
