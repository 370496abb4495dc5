"""Greedy generation with a KV-cache decoder in ONNX Runtime, original
against rewritten (the Tessera plugin registered for both).

Driven by `tessera generate` (and `tessera verify` on a model with a KV
cache), which writes a JSON spec: the graph inputs and their roles, which
present output feeds which past input, and the prompt. Each model runs in a
child process of its own, so its peak RSS is its own:

    prefill: the whole prompt, with empty pasts  -> logits, presents
    step:    the token just chosen, with the presents as pasts  (N - 1 times)

Row b of a batch is the prompt without its first b·S/(2B) tokens, left-padded
(the attention mask holds the padding and positions count real tokens only).
Tokens are chosen by argmax at the last position, independently in each
model; the parent compares the token streams and the last-position logits of
every step, and the prefill logits at every unpadded position.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from verify import DTYPES, rss_mb  # written next to this script by `tessera`


def log(spec, msg):
    if not spec.get("json"):
        print(msg, file=sys.stderr, flush=True)


def batch_rows(prompt, batch):
    """(ids, mask) for `batch` left-padded rows of the prompt."""
    s = len(prompt)
    ids = np.zeros((batch, s), dtype=np.int64)
    mask = np.zeros((batch, s), dtype=np.int64)
    for b in range(batch):
        cut = (b * s) // (2 * batch)
        ids[b, cut:] = prompt[cut:]
        ids[b, :cut] = prompt[0]
        mask[b, cut:] = 1
    return ids, mask


def feeds_for(spec, ids, mask, pasts, past_len):
    feeds = {}
    b, s = ids.shape
    for inp in spec["inputs"]:
        name, role, dt = inp["name"], inp["role"], DTYPES[inp["elem_type"]]
        if role == "token_ids":
            feeds[name] = ids.astype(dt)
        elif role == "attention_mask":
            feeds[name] = mask.astype(dt)
        elif role == "position_ids":
            pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, past_len:]
            feeds[name] = np.ascontiguousarray(pos.astype(dt))
        elif role == "past":
            feeds[name] = pasts[name]
        else:
            raise SystemExit(f"generate: input '{name}': no rule to feed it (role {role}); "
                             "expected token ids, attention_mask, position_ids or past_key_values.*")
    return feeds


def run_one(spec, model, out_npz):
    """Prefill and greedy steps for one model in this process."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(spec["plugin"])
    if spec.get("threads"):
        so.intra_op_num_threads = spec["threads"]
        so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    logits_name, present_of = spec["logits"], spec["present_of"]
    ids, mask = batch_rows(spec["prompt"], spec["batch"])
    batch = ids.shape[0]
    pasts = {}
    for inp in spec["inputs"]:
        if inp["role"] == "past":
            h, d = inp["heads"], inp["head_dim"]
            pasts[inp["name"]] = np.zeros((batch, h, 0, d), dtype=DTYPES[inp["elem_type"]])
    tokens, step_logits, times = [], [], []
    past_len = 0
    for step in range(spec["steps"]):
        feeds = feeds_for(spec, ids, mask, pasts, past_len)
        s0 = time.perf_counter()
        outs = dict(zip(names, sess.run(names, feeds)))
        times.append(time.perf_counter() - s0)
        logits = outs[logits_name]
        if step == 0:
            prefill_logits = logits
        last = logits[:, -1, :]
        step_logits.append(last.astype(np.float32))
        nxt = last.argmax(axis=-1).astype(np.int64)
        tokens.append(nxt)
        past_len = mask.shape[1]
        pasts = {p: outs[o] for p, o in present_of.items()}
        ids = nxt[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
    np.savez(out_npz, tokens=np.stack(tokens, axis=1), step_logits=np.stack(step_logits, axis=1),
             prefill_logits=prefill_logits, prefill_mask=batch_rows(spec["prompt"], spec["batch"])[1])
    json.dump({"load_s": load_s, "prefill_s": times[0], "step_s": times[1:], "peak_rss_mb": rss_mb(),
               "prefill_logits_shape": list(prefill_logits.shape)}, sys.stdout)


def child(spec_path, model, out_npz):
    r = subprocess.run([sys.executable, __file__, "--run", spec_path, model, out_npz],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"generate: {model} failed in ONNX Runtime (see above)")
    return json.loads(r.stdout)


def diff(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def tokenizer(spec):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise SystemExit("generate: --prompt FILE needs the Python package `tokenizers` "
                         f"in {sys.executable}'s environment (pip install tokenizers)")
    return Tokenizer.from_file(spec["tokenizer"])


def read_prompt(spec):
    """The prompt's token ids: given, or the text file through the model's tokenizer."""
    if spec.get("prompt") is not None:
        return spec["prompt"]
    text = open(spec["prompt_file"], encoding="utf-8").read()
    ids = tokenizer(spec).encode(text).ids
    if spec.get("max_prompt"):
        ids = ids[:spec["max_prompt"]]
    vocab = next((i.get("vocab") for i in spec["inputs"] if i["role"] == "token_ids"), None)
    bad = [t for t in ids if vocab and t >= vocab]
    if bad:
        raise SystemExit(f"generate: {spec['tokenizer']} gives token id {bad[0]}, but the model's input_ids "
                         f"embedding has {vocab} rows; use the model's own tokenizer")
    if not ids:
        raise SystemExit(f"generate: {spec['prompt_file']} gives no tokens")
    return ids


def main(spec_path):
    spec = json.load(open(spec_path))
    spec["prompt"] = read_prompt(spec)
    spec_path = spec_path + ".ids.json"
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    s = len(spec["prompt"])
    log(spec, f"generate: prompt {s} tokens, batch {spec['batch']}, {spec['steps']} greedy tokens per row")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for label in ("original", "rewritten"):
            out = os.path.join(tmp, f"{label}.npz")
            log(spec, f"  running {label} ...")
            res[label] = (child(spec_path, spec[label], out), dict(np.load(out)))
    (mo, ao), (mr, ar) = res["original"], res["rewritten"]
    same = ao["tokens"] == ar["tokens"]
    first_diff = [int(np.argmin(row)) if not row.all() else None for row in same]
    # Logits are comparable up to (and including) the first step where the tokens differ.
    upto = min([d + 1 for d in first_diff if d is not None], default=spec["steps"])
    step_abs = diff(ao["step_logits"][:, :upto], ar["step_logits"][:, :upto])
    keep = ao["prefill_mask"].astype(bool)
    po, pr = ao["prefill_logits"], ar["prefill_logits"]
    if po.shape[1] == keep.shape[1] and pr.shape == po.shape:
        prefill_abs, prefill_where = diff(po[keep], pr[keep]), "unpadded positions"
    else:
        prefill_abs, prefill_where = diff(po[:, -1], pr[:, -1]), "last position"
    ok = bool(same.all()) and step_abs <= spec["tol"] and prefill_abs <= spec["tol"]

    def ms_per_token(m):
        return 1000.0 * float(np.median(m["step_s"])) if m["step_s"] else None

    report = {
        "pass": ok, "prompt_tokens": s, "batch": spec["batch"], "steps": spec["steps"],
        "tokens_identical": bool(same.all()), "first_difference": first_diff,
        "tokens": {"original": ao["tokens"].tolist(), "rewritten": ar["tokens"].tolist()},
        "logits_max_abs": {"steps": step_abs, "prefill": prefill_abs, "prefill_compared": prefill_where},
        "tol": spec["tol"],
        "original": {"prefill_s": mo["prefill_s"], "ms_per_token": ms_per_token(mo), "peak_rss_mb": mo["peak_rss_mb"],
                     "load_s": mo["load_s"]},
        "rewritten": {"prefill_s": mr["prefill_s"], "ms_per_token": ms_per_token(mr), "peak_rss_mb": mr["peak_rss_mb"],
                      "load_s": mr["load_s"]},
    }
    if spec.get("tokenizer"):
        report["text"] = tokenizer(spec).decode(ao["tokens"][0].tolist())
    if spec.get("json"):
        print(json.dumps(report, indent=2))
    else:
        print(f"prompt {s} tokens, batch {spec['batch']}, {spec['steps']} greedy tokens")
        for b in range(len(first_diff)):
            d = first_diff[b]
            print(f"  row {b}: tokens {'identical' if d is None else f'differ from step {d}'}: "
                  f"{ao['tokens'][b][:16].tolist()}{' ...' if spec['steps'] > 16 else ''}")
        print(f"  logits max abs: {step_abs:.3g} over the steps' last positions, {prefill_abs:.3g} at the prefill's "
              f"{prefill_where} (tol {spec['tol']:g})")
        for label, m in (("original", mo), ("rewritten", mr)):
            t = ms_per_token(m)
            print(f"  {label:9s}: prefill {m['prefill_s'] * 1000:9.1f} ms, "
                  f"{'-' if t is None else f'{t:.2f}'} ms/token, peak RSS {m['peak_rss_mb']:.0f} MB")
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        run_one(json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4])
    else:
        sys.exit(main(sys.argv[1]))
