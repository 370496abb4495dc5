#!/usr/bin/env bash
# measure.sh TARGET [PROFILE]: run the `measure` image under QEMU with the
# instruction-count plugin (-icount shift=0) and print a Markdown table:
# exact instructions per attention call, per multiply-accumulate and per
# query, scratch bytes against the README formula, and the stack high-water
# mark. Also prints the code size of the `attention-only` image.
# Needs the images built (cargo build --release --target TARGET in
# core/firmware, CARGO_TARGET_DIR=target/firmware) and the plugin
# (scripts/build-plugin.sh). Exit status: 0 only if every call succeeded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
target=$1
profile=${2:-release}
dir=${CARGO_TARGET_DIR:-$root/target/firmware}/$target/$profile
plugin=${TESSERA_INSN_PLUGIN:-$root/target/firmware/libinsn_count.so}
case "$target" in
thumb*) nm=arm-none-eabi-nm size=arm-none-eabi-size ;;
*) nm=$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-nm
   # rustup's llvm-tools if installed, else the system LLVM.
   [ -x "$nm" ] || nm=$(command -v llvm-nm)
   size=${nm%-nm}-size ;;
esac
addr() { "$nm" "$dir/measure" | awk -v s="$1" '$3==s{print $1}'; }
begin=$(addr tessera_count_begin)
end=$(addr tessera_count_end)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
TESSERA_QEMU_TIMEOUT=${TESSERA_QEMU_TIMEOUT:-300} "$here/qemu-run.sh" "$dir/measure" -icount shift=0 \
    -plugin "$plugin,begin=0x$begin,end=0x$end,out=$out/counts" >"$out/lines"
grep '^measure' "$out/lines" | grep -v empty-region >"$out/cases"
grep '^insns' "$out/counts" >"$out/insns"
empty=$(head -n1 "$out/insns" | awk '{print $2}')
tail -n +2 "$out/insns" >"$out/calls"
if [ "$(wc -l <"$out/cases")" != "$(wc -l <"$out/calls")" ]; then
    echo "measure.sh: $(wc -l <"$out/cases") cases but $(wc -l <"$out/calls") counted regions" >&2
    cat "$out/lines" >&2
    exit 1
fi
echo "Target \`$target\`, profile \`$profile\`; marker overhead $empty instructions (subtracted)."
echo
echo "| case | kernel | BQ×BK | S | D | visible pairs | MACs | instructions | instr/MAC | instr/query | scratch B (formula) | stack B |"
echo "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
paste -d' ' "$out/cases" "$out/calls" | awk -v empty="$empty" '{
    for (i = 1; i <= NF; i++) { n = split($i, kv, "="); if (n == 2) v[kv[1]] = kv[2] }
    ins = $(NF) - empty
    printf "| %s | %s | %s×%s | %s | %s | %d | %d | %d | %.3f | %.0f | %s (%s) | %s |\n",
        $2, v["kernel"], v["BQ"], v["BK"], v["S"], v["D"], v["pairs"], v["macs"], ins, ins / v["macs"], ins / v["S"],
        v["scratch_bytes"], v["formula_bytes"], v["stack_bytes"]
}'
echo
echo "Code size of \`attention-only\` (f32 attention with every mask kind, no formatting):"
echo
echo '```'
"$size" "$dir/attention-only"
echo '```'
! grep -q FAILED "$out/lines"
