# Reliability, scaled down for CI (full counts: RELIABILITY.md): every op
# (Attention, TopKAttention in both modes, LightningIndexer, MergeAttention)
# from 16 threads on one session and on 16 sessions, results bit-identical
# to a single-threaded run; and RSS flat over runs of one session per op.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_venv
cargo build --release -p tessera-ort
"$VENV/bin/python" python/reliability/concurrency.py --threads 16 --runs "${RELIABILITY_RUNS:-100}"
"$VENV/bin/python" python/reliability/leaks.py rss --runs "${RELIABILITY_RSS_RUNS:-3000}"
