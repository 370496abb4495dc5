"""Every op from T threads on one session, and from T threads each on its
own session, N runs per thread: every result must be bit-identical to a
single-threaded run.

    python python/reliability/concurrency.py [--threads 16] [--runs 1000]
"""
import argparse
import sys
import threading
import time

import numpy as np

from ops import cases, session


def hammer(sessions, feeds, want, runs):
    bad = []

    def work(t):
        s = sessions[t]
        for i in range(runs):
            got = s.run(None, feeds)
            if any(g.tobytes() != w.tobytes() for g, w in zip(got, want)):
                bad.append((t, i))
                return

    ts = [threading.Thread(target=work, args=(t,)) for t in range(len(sessions))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1000)
    a = ap.parse_args()
    failed = 0
    for name, (model, feeds) in cases().items():
        want = session(model).run(None, feeds)
        for mode in ("one session", "own sessions"):
            t0 = time.time()
            if mode == "one session":
                # intra-op threads too: the op's own pool under concurrent Run.
                s = session(model, threads=2)
                sessions = [s] * a.threads
            else:
                sessions = [session(model) for _ in range(a.threads)]
            bad = hammer(sessions, feeds, want, a.runs)
            failed += bool(bad)
            print(f"{name:28s} {mode:12s} {a.threads} threads x {a.runs} runs: "
                  f"{'DIFFERENT at ' + str(bad[:3]) if bad else 'bit-identical'} ({time.time() - t0:.1f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
