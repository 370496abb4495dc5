"""Runs an original and a rewritten ONNX model in ONNX Runtime (with the
Tessera plugin registered for both) on the same inputs and compares outputs.

Driven by `tessera verify`, which writes a JSON spec (the graph inputs it
found, with their roles) and calls this script with the venv's Python. Each
model runs in a child process of its own so that its peak RSS is its own.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}
START = time.perf_counter()
# `tessera` decides (stderr a terminal, or TESSERA_PROGRESS=1) and passes it on.
PROGRESS = os.environ.get("TESSERA_PROGRESS") == "1"


def progress(what):
    """One line per step on stderr with the seconds since the driver started."""
    if PROGRESS:
        print(f"[{time.perf_counter() - START:7.1f}s] {what}", file=sys.stderr, flush=True)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(model, inputs_npz, out_npz, plugin, threads, budget_s=0.0):
    """One model in this process: load, run once (the result kept), then, for
    a benchmark (`budget_s` > 0), run again until `budget_s` seconds or 5 timed
    runs have passed and report the median of those, so a first-run cost
    (allocator growth, thread pool start) is not counted."""
    import onnxruntime as ort

    base = rss_mb()
    so = ort.SessionOptions()
    so.register_custom_ops_library(plugin)
    if threads:
        so.intra_op_num_threads = threads
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    feeds = dict(np.load(inputs_npz))
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    t2 = time.perf_counter()
    times = []
    while budget_s > 0 and len(times) < 5 and sum(times) + (t2 - t1) < budget_s:
        s0 = time.perf_counter()
        sess.run(names, feeds)
        times.append(time.perf_counter() - s0)
    run_s = float(np.median(times)) if times else t2 - t1
    np.savez(out_npz, **{f"o{i}": o for i, o in enumerate(outs)})
    json.dump({"load_s": t1 - t0, "first_run_s": t2 - t1, "run_s": run_s, "timed_runs": max(len(times), 1),
               "peak_rss_mb": rss_mb(), "base_rss_mb": base, "outputs": names}, sys.stdout)


def make_inputs(spec, batch, seq, rng):
    feeds, lengths = {}, None
    lengths = np.array([max(1, seq - (b * seq) // (2 * max(batch, 1))) for b in range(batch)], dtype=np.int64)
    for inp in spec["inputs"]:
        shape = []
        for i, d in enumerate(inp["dims"]):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                shape.append(batch if i == 0 else seq)
        dt = DTYPES.get(inp["elem_type"])
        if dt is None:
            raise SystemExit(f"verify: input '{inp['name']}': element type {inp['elem_type']} is not supported; pass --input {inp['name']}=file.npy")
        role = inp["role"]
        if role == "token_ids":
            x = rng.integers(0, inp.get("vocab") or 100, size=shape)
        elif role == "attention_mask":
            x = (np.arange(shape[-1])[None, :] < lengths[:, None]).astype(np.int64)
        elif role == "position_ids":
            x = np.broadcast_to(np.arange(shape[-1]), shape)
        elif role == "token_type_ids":
            x = np.zeros(shape)
        else:
            x = rng.standard_normal(shape)
        feeds[inp["name"]] = np.ascontiguousarray(x.astype(dt))
    has_mask = any(i["role"] == "attention_mask" for i in spec["inputs"])
    return feeds, (lengths if has_mask else None)


def compare(a, b, lengths, batch, seq):
    where = "all positions"
    if lengths is not None and a.ndim >= 2 and a.shape[0] == batch and a.shape[1] == seq:
        keep = np.arange(seq)[None, :] < lengths[:, None]
        a, b = a[keep], b[keep]
        where = "unpadded positions"
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    diff = np.abs(a64 - b64)
    nan_mismatch = int(np.sum(np.isnan(a64) != np.isnan(b64)))
    finite = ~(np.isnan(a64) | np.isnan(b64))
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    scale = float(np.abs(a64[finite]).max()) if finite.any() else 0.0
    na, nb = np.linalg.norm(a64[finite]), np.linalg.norm(b64[finite])
    cos = float(a64[finite] @ b64[finite] / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else 0.0, "cosine": cos, "nan_mismatch": nan_mismatch, "compared": where}


def main(spec_path):
    spec = json.load(open(spec_path))
    sys.stdout.reconfigure(encoding="utf-8")  # the ✓ marks, whatever the locale
    rng = np.random.default_rng(spec.get("seed", 0))
    report, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for seq in spec["seqs"][:1] if spec.get("given") else spec["seqs"]:
            batch = spec["batch"]
            if spec.get("given"):
                feeds = {k: np.load(v) for k, v in spec["given"].items()}
                lengths = None
                two_d = [a for a in feeds.values() if a.ndim == 2]
                if two_d:
                    batch, seq = two_d[0].shape
                for i in spec["inputs"]:
                    m = feeds.get(i["name"])
                    if i["role"] == "attention_mask" and m is not None and m.ndim == 2:
                        # Right-padded: the unpadded positions are the first sum(row) ones.
                        lengths = m.astype(bool).sum(axis=1).astype(np.int64)
                        batch, seq = m.shape
                missing = [i["name"] for i in spec["inputs"] if i["name"] not in feeds]
                if missing:
                    extra, made = make_inputs({"inputs": [i for i in spec["inputs"] if i["name"] in missing]}, batch, seq, rng)
                    feeds.update(extra)
                    lengths = made if lengths is None else lengths
            else:
                feeds, lengths = make_inputs(spec, batch, seq, rng)
            inp = os.path.join(tmp, f"in{seq}.npz")
            np.savez(inp, **feeds)
            runs = {}
            for tag in ("original", "rewritten"):
                out = os.path.join(tmp, f"{tag}{seq}.npz")
                progress(f"verify: S={seq} B={batch}: running the {tag} model")
                r = subprocess.run([sys.executable, __file__, "--run", spec[tag], inp, out, spec["plugin"], str(spec.get("threads", 0))],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    sys.stderr.write(r.stderr)
                    raise SystemExit(f"verify: {spec[tag]} failed in ONNX Runtime at S={seq} (see above)")
                runs[tag] = json.loads(r.stdout)
                runs[tag]["values"] = np.load(out)
            outs = []
            for i, name in enumerate(runs["original"]["outputs"]):
                a = runs["original"]["values"][f"o{i}"]
                j = runs["rewritten"]["outputs"].index(name) if name in runs["rewritten"]["outputs"] else None
                if j is None:
                    outs.append({"output": name, "error": "missing in the rewritten model"})
                    ok = False
                    continue
                b = runs["rewritten"]["values"][f"o{j}"]
                if a.shape != b.shape:
                    outs.append({"output": name, "error": f"shape {a.shape} vs {b.shape}"})
                    ok = False
                    continue
                c = compare(a, b, lengths, batch, seq)
                c["output"] = name
                c["pass"] = c["max_abs"] <= spec["tol"] and c["nan_mismatch"] == 0
                ok &= c["pass"]
                outs.append(c)
            timing = {t: {k: runs[t][k] for k in ("load_s", "run_s", "peak_rss_mb", "base_rss_mb")} for t in runs}
            report.append({"seq": seq, "batch": batch, "outputs": outs, "timing": timing,
                           "lengths": None if lengths is None else lengths.tolist()})
            if not spec["json"]:
                print(f"S={seq} B={batch} key lengths={None if lengths is None else lengths.tolist()}")
                for c in outs:
                    if "error" in c:
                        print(f"  {c['output']:<24} ERROR {c['error']}")
                    else:
                        print(f"  {c['output']:<24} max_abs={c['max_abs']:.3e} max_rel={c['max_rel']:.3e} cosine={c['cosine']:.8f} "
                              f"({c['compared']}) {'ok' if c['pass'] else 'OVER TOLERANCE ' + str(spec['tol'])}")
                for t, m in timing.items():
                    print(f"  {t:<10} run {m['run_s']*1e3:9.1f} ms  load {m['load_s']*1e3:7.1f} ms  peak RSS {m['peak_rss_mb']:8.1f} MB")
                sys.stdout.flush()
    if spec["json"]:
        json.dump({"pass": bool(ok), "tol": spec["tol"], "runs": report}, sys.stdout, indent=1)
        print()
    else:
        print()
        for line in output_lines(report, spec["tol"]):
            print(line)
        print("verify:", "PASS" if ok else "FAIL", f"(tolerance {spec['tol']} max abs)")
    return 0 if ok else 1


def output_lines(report, tol):
    """One line per output over every run: `[✓] name: max abs 3.1e-06 (tol 1e-04)`,
    or `[x] …` with the worst error, the sequence length it came from, or the problem."""
    worst = {}
    for run in report:
        for c in run["outputs"]:
            w = worst.setdefault(c["output"], {"max_abs": 0.0, "seq": run["seq"], "errors": [], "pass": True, "nan": 0})
            if "error" in c:
                w["errors"].append(f"S={run['seq']}: {c['error']}")
                w["pass"] = False
                continue
            w["pass"] &= c["pass"]
            w["nan"] += c["nan_mismatch"]
            if c["max_abs"] >= w["max_abs"]:
                w["max_abs"], w["seq"] = c["max_abs"], run["seq"]
    lines = []
    for name, w in worst.items():
        mark = "[\u2713]" if w["pass"] else "[x]"
        if w["errors"]:
            lines.append(f"{mark} {name}: {'; '.join(w['errors'])}")
            continue
        nan = f", {w['nan']} NaN mismatch(es)" if w["nan"] else ""
        at = "" if w["pass"] or len(report) == 1 else f" at S={w['seq']}"
        lines.append(f"{mark} {name}: max abs {w['max_abs']:.1e} (tol {tol:.0e}){at}{nan}")
    return lines


def bench(spec):
    """Time and peak RSS of the original and each rewrite, side by side, one child process per run."""
    rng = np.random.default_rng(spec.get("seed", 0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seq in spec["seqs"]:
            feeds, lengths = make_inputs(spec, spec["batch"], seq, rng)
            inp = os.path.join(tmp, f"in{seq}.npz")
            np.savez(inp, **feeds)
            ref = None
            for label, path in spec["models"]:
                out = os.path.join(tmp, "out.npz")
                progress(f"bench: S={seq} {label}: load, one untimed run, then up to 5 timed runs")
                r = subprocess.run([sys.executable, __file__, "--run", path, inp, out, spec["plugin"], str(spec.get("threads", 0)),
                                    str(spec.get("budget_s", 10.0))],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    rows.append({"seq": seq, "model": label, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]})
                    continue
                m = json.loads(r.stdout)
                y = np.load(out)["o0"]
                if ref is None:
                    ref = y
                err = compare(ref, y, lengths, spec["batch"], seq)["max_abs"] if ref.shape == y.shape else float("nan")
                rows.append({"seq": seq, "model": label, "run_s": m["run_s"], "timed_runs": m["timed_runs"],
                             "peak_rss_mb": m["peak_rss_mb"], "max_abs_vs_original": err})
    plotted = bool(spec.get("plot")) and plot(rows, spec["plot"], spec.get("title", "tessera bench"),
                                              spec["batch"], spec.get("threads", 0))
    if spec["json"]:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'S':>6}  {'model':<40} {'run (ms)':>10} {'x orig':>7} {'peak RSS (MB)':>14} {'x orig':>7} {'max abs vs orig':>16}")
    base = {}
    for r in rows:
        if "error" in r:
            print(f"{r['seq']:>6}  {r['model']:<40} failed: {r['error']}")
            continue
        b = base.setdefault(r["seq"], r)
        print(f"{r['seq']:>6}  {r['model']:<40} {r['run_s']*1e3:>10.1f} {r['run_s']/b['run_s']:>7.2f} {r['peak_rss_mb']:>14.1f} "
              f"{r['peak_rss_mb']/b['peak_rss_mb']:>7.2f} {r['max_abs_vs_original']:>16.2e}")
    print("run = median of the timed runs after one untimed run; peak RSS of the whole process (VmHWM)")
    if plotted:
        print(f"plot: {spec['plot']}")
    return 0


def seq_label(n):
    """512, 2K, 8K, 1M: powers of two as people say them."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def plot(rows, path, title, batch, threads):
    """Time and peak RSS against S, one line per model, log-log, side by side,
    with one legend under both panels. Returns whether a file was written."""
    try:
        import matplotlib
    except ImportError:
        print(f"bench: no plot ({path}): matplotlib is not installed in {sys.executable}'s environment; "
              "`source scripts/lib.sh; need_venv` installs it", file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.8))
    labels = list(dict.fromkeys(r["model"] for r in rows))
    for label in labels:
        ok = [r for r in rows if r["model"] == label and "error" not in r]
        if not ok:
            continue
        seqs = [r["seq"] for r in ok]
        ax_t.plot(seqs, [r["run_s"] for r in ok], marker="o", label=label)
        ax_m.plot(seqs, [r["peak_rss_mb"] / 1024 for r in ok], marker="o", label=label)
        for r in rows:
            if r["model"] == label and "error" in r:
                ax_t.axvline(r["seq"], color="red", alpha=0.3)
    ticks = sorted({r["seq"] for r in rows})
    for ax, what in ((ax_t, "run time (s)"), (ax_m, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: seq_label(int(round(x)))))
        ax.set_xlabel("sequence length S")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = ax_t.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4) or 1, fontsize=8, frameon=False)
    threads_text = f"{threads} threads" if threads else f"ORT default threads ({os.cpu_count()} cores)"
    fig.suptitle(f"{title}\nbatch {batch}, {threads_text}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    if sys.argv[1] == "--run":
        run_one(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), float(sys.argv[7]) if len(sys.argv) > 7 else 0.0)
    else:
        spec = json.load(open(sys.argv[1]))
        sys.exit(bench(spec) if spec.get("bench") else main(sys.argv[1]))
