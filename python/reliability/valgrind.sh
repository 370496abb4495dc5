#!/usr/bin/env bash
# Create, run and drop N sessions per op under valgrind memcheck, then count
# the definite leaks and invalid accesses whose stack passes through the
# plugin (libtessera_ort.so); ORT's, numpy's and ld.so's own are reported
# apart. Usage: python/reliability/valgrind.sh [N] (default 1000).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
log=${VG_LOG:-target/valgrind-churn.log}
PY=${TESSERA_VENV:-.venv}/bin/python
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --suppressions=python/reliability/valgrind.supp --num-callers=40 --log-file="$log" \
    "$PY" python/reliability/leaks.py churn --sessions "$n"
ours() { # records of kind $1 whose stack names the plugin
    awk -v kind="$1" '/^==[0-9]+== [^ ]/ { if (rec ~ kind && rec ~ /tessera/) c++; rec = "" } { rec = rec $0 "\n" } END { if (rec ~ kind && rec ~ /tessera/) c++; print c + 0 }' "$log"
}
echo "valgrind, $n sessions per op: $(grep 'definitely lost:' "$log" | sed 's/.*definitely/definitely/') in total"
echo "  definite-leak records through libtessera_ort: $(ours 'definitely lost in')"
echo "  invalid reads/writes through libtessera_ort:   $(ours 'Invalid (read|write)')"
echo "  invalid reads/writes anywhere (ld.so, ORT):   $(grep -c 'Invalid \(read\|write\)' "$log" || true)"
[ "$(ours 'definitely lost in')" = 0 ] && [ "$(ours 'Invalid (read|write)')" = 0 ]
