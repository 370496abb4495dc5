#!/usr/bin/env bash
# Runs every Tessera test. Installs what it needs (rustup targets and
# components, Debian packages, Python wheels into ./.venv) on first use.
#   scripts/test.sh            every part
#   scripts/test.sh core ort   only the parts whose names contain a word
source "$(dirname "$0")/lib.sh"
cd "$TESSERA_ROOT"

parts=(scripts/test.d/*.sh)
failed=()
passed=0
start=$(date +%s)
for part in "${parts[@]}"; do
    name=$(basename "$part" .sh)
    if [ $# -gt 0 ]; then
        keep=0
        for w in "$@"; do [[ $name == *"$w"* ]] && keep=1; done
        [ $keep = 1 ] || continue
    fi
    t0=$(date +%s)
    log "part $name"
    if bash "$part"; then
        passed=$((passed + 1))
        echo "part $name: ok ($(($(date +%s) - t0)) s)"
    else
        failed+=("$name")
        echo "part $name: FAILED ($(($(date +%s) - t0)) s)"
    fi
done
echo
echo "test parts: $passed passed, ${#failed[@]} failed in $(($(date +%s) - start)) s ${failed[*]:+(${failed[*]})}"
[ ${#failed[@]} -eq 0 ]
