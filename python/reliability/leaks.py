"""Leak checks for every op.

    python leaks.py churn --sessions 1000   create, run and drop N sessions per op
                                            (run it under valgrind: see RELIABILITY.md)
    python leaks.py rss --runs 10000        RSS of one session per op over N runs:
                                            prints the slope (bytes per run) after
                                            a warm-up of 10% of the runs
"""
import argparse
import gc
import sys

from ops import cases, session


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def churn(n):
    for name, (model, feeds) in cases().items():
        before = None
        for i in range(n):
            s = session(model)
            s.run(None, feeds)
            del s
            if i == n // 10:
                gc.collect()
                before = rss_bytes()
        gc.collect()
        after = rss_bytes()
        print(f"{name:28s} {n} sessions created, run and dropped; RSS after 10%: "
              f"{before / 2**20:.1f} MiB, at the end: {after / 2**20:.1f} MiB", flush=True)


def rss(n, max_slope):
    worst = 0.0
    for name, (model, feeds) in cases().items():
        s = session(model)
        warm = max(1, n // 10)
        for _ in range(warm):
            s.run(None, feeds)
        xs, ys = [], []
        for i in range(n - warm):
            s.run(None, feeds)
            if i % 100 == 0:
                xs.append(i)
                ys.append(rss_bytes())
        # Least-squares slope, bytes per run.
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs))
        worst = max(worst, slope)
        print(f"{name:28s} {n} runs: RSS {ys[0] / 2**20:.1f} -> {ys[-1] / 2**20:.1f} MiB, "
              f"slope {slope:.3f} B/run", flush=True)
    # Flat: under max_slope bytes per run (a 64-byte leak per run would show
    # as 64; allocator steps show as a few bytes over short runs).
    sys.exit(0 if worst < max_slope else 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["churn", "rss"])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--max-slope", type=float, default=16.0, help="bytes per run that fail the check")
    a = ap.parse_args()
    churn(a.sessions) if a.what == "churn" else rss(a.runs, a.max_slope)


if __name__ == "__main__":
    main()
