"""Tessera device check: correctness of every CUDA kernel on fresh random
inputs against float64 references on the GPU, then timings against torch
(SDPA flash backend, torch.topk) with CUDA events, and TFLOP/s against a bf16
matmul peak measured in the same run. Prints the table last.

    python3 cuda/device/check.py --fatbins DIR --out OUTDIR [--quick]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

HERE_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE_DIR)
import tessera  # noqa: E402

LOG = []
START = time.time()
DEADLINE_S = float(os.environ.get("TESSERA_CHECK_BUDGET_S", "380"))  # the table must print before the 420 s kill


def out_of_time():
    return time.time() - START > DEADLINE_S


LOG_FILE = None  # OUTDIR/device-check.log, written as we go (a hang still leaves a log)


def log(*a):
    line = " ".join(str(x) for x in a)
    print(line, flush=True)
    LOG.append(line)
    if LOG_FILE:
        LOG_FILE.write(line + "\n")
        LOG_FILE.flush()


# ---- references (float64, straight from the rules in core/src/mask.rs) -------

def visible(B, Sq, Skv, causal=False, q_offset=0, kv_lens=None, align=False, left=-1, right=-1, globals_=0, chunk=0,
            device="cuda"):
    """Bool (B, 1, Sq, Skv): key j visible to query i of batch b."""
    i = torch.arange(Sq, device=device).view(Sq, 1)
    j = torch.arange(Skv, device=device).view(1, Skv)
    out = []
    for b in range(B):
        n = int(kv_lens[b]) if kv_lens is not None else Skv
        off = q_offset + ((n - Sq) if (align and kv_lens is not None) else 0)
        p = i + off
        vis = j < n
        if causal:
            vis = vis & (j <= p)
        glob = (j < globals_) | ((p >= 0) & (p < globals_))
        loc = torch.ones_like(vis)
        if left >= 0:
            loc = loc & (j >= p - left)
        if right >= 0:
            loc = loc & (j <= p + right)
        if chunk > 0:
            loc = loc & (torch.div(j, chunk, rounding_mode="floor") == torch.div(p, chunk, rounding_mode="floor"))
        out.append(vis & (glob | loc))
    return torch.stack(out).unsqueeze(1)


def attention_ref(q, k, v, vis, bias=None, scale=None, softcap=0.0):
    """float64 Y (B,Hq,Sq,Dv) and lse (B,Hq,Sq); fully masked rows: 0, -inf."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, Sq, D = q.shape
    g = Hq // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * (scale if scale is not None else D ** -0.5)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    s = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    p = p.masked_fill(~vis, 0.0)
    y = torch.matmul(p, v)
    return y, lse


def close(name, got, ref, tol):
    """Normalised max error of got vs ref; NaN never passes; -inf must match."""
    got, ref = got.double(), ref.double()
    if torch.isnan(got).any():
        return False, f"{name}: {int(torch.isnan(got).sum())} NaN"
    inf_ref, inf_got = torch.isinf(ref), torch.isinf(got)
    if not torch.equal(inf_ref, inf_got) or not torch.equal(ref[inf_ref], got[inf_got]):
        return False, f"{name}: infinities differ ({int(inf_ref.sum())} vs {int(inf_got.sum())})"
    fin = ~inf_ref
    if fin.sum() == 0:
        return True, f"{name}: all -inf ok"
    err = (got[fin] - ref[fin]).abs().max().item()
    scale = max(ref[fin].abs().max().item(), 1e-30)
    return err <= tol * scale, f"{name}: max err {err:.2e} ({err / scale:.1e} of max |ref|)"


RESULTS = []  # correctness rows: (kernel, case, ok, detail)


def record(kernel, case, ok, detail):
    RESULTS.append((kernel, case, ok, detail))
    log(f"[{'PASS' if ok else 'FAIL'}] {kernel} {case}: {detail}")


def guarded(kernel, case, fn):
    try:
        ok, detail = fn()
    except Exception as e:  # a failing launch must not stop the other checks
        ok, detail = False, f"{type(e).__name__}: {e}"
        log(traceback.format_exc())
    try:
        torch.cuda.synchronize()
    except Exception as e:
        ok, detail = False, f"{detail}; sync: {e}"
    record(kernel, case, ok, detail)


# ---- correctness ---------------------------------------------------------------

FLASH_CASES = [
    # name, B, Hq, Hkv, Sq, Skv, D, dtype, mask kwargs, extra
    ("plain f16 D64", 1, 4, 4, 200, 333, 64, torch.float16, {}, {}),
    ("causal GQA 4:1 bf16 D128", 2, 8, 2, 257, 257, 128, torch.bfloat16, {"causal": True}, {}),
    ("causal bottom-right bf16", 1, 4, 1, 130, 400, 128, torch.bfloat16, {"causal": True, "q_offset": 270}, {}),
    ("window 32 + 4 sinks f16 D64", 1, 2, 2, 300, 300, 64, torch.float16,
     {"causal": True, "left": 32, "right": 0, "globals_": 4}, {}),
    ("window 16/16 softcap bf16", 1, 2, 2, 200, 500, 128, torch.bfloat16, {"left": 16, "right": 16}, {"softcap": 20.0}),
    ("kv_lens aligned causal bf16", 2, 4, 2, 100, 300, 64, torch.bfloat16, {"causal": True, "kv_lens": [300, 150],
                                                                          "align": True}, {}),
    ("chunk 64 causal f16", 1, 2, 2, 128, 256, 128, torch.float16, {"causal": True, "chunk": 64}, {}),
    ("additive mask bf16", 1, 4, 4, 64, 192, 64, torch.bfloat16, {}, {"mask": "additive"}),
    ("bool mask + masked row f16", 1, 4, 4, 64, 192, 128, torch.float16, {}, {"mask": "bool"}),
    ("negative offset (masked rows) bf16", 1, 2, 2, 50, 70, 64, torch.bfloat16, {"causal": True, "q_offset": -20}, {}),
    ("BSHD layout bf16", 2, 4, 4, 100, 100, 128, torch.bfloat16, {}, {"bshd": True}),
    ("no keys f16", 1, 2, 2, 10, 0, 64, torch.float16, {}, {}),
    ("scale 0.3 softcap f16 D128", 1, 2, 1, 333, 129, 128, torch.float16, {"causal": True, "q_offset": 10},
     {"scale": 0.3, "softcap": 5.0}),
]


def check_flash(mod, case):
    name, B, Hq, Hkv, Sq, Skv, D, dt, mk, ex = case
    dev = "cuda"
    if ex.get("bshd"):
        q = torch.randn(B, Sq, Hq, D, device=dev, dtype=dt).transpose(1, 2)
        k = torch.randn(B, Skv, Hkv, D, device=dev, dtype=dt).transpose(1, 2)
        v = torch.randn(B, Skv, Hkv, D, device=dev, dtype=dt).transpose(1, 2)
        y = torch.full((B, Sq, Hq, D), float("nan"), device=dev, dtype=dt).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, Sq, D, device=dev, dtype=dt)
        k = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
        v = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
        y = torch.full((B, Hq, Sq, D), float("nan"), device=dev, dtype=dt)
    lse = torch.full((B, Hq, Sq), float("nan"), device=dev, dtype=torch.float32)
    mk = dict(mk)
    kv_lens = mk.pop("kv_lens", None)
    kv_t = torch.tensor(kv_lens, device=dev, dtype=torch.int64) if kv_lens is not None else None
    vis = visible(B, Sq, Skv, kv_lens=kv_lens, **mk).expand(B, Hq, Sq, Skv)
    mask_t, bias = None, None
    if ex.get("mask") == "additive":
        bias = torch.randn(1, 1, Sq, Skv, device=dev) * 2
        bias[..., 5:9] = float("-inf")
        mask_t = bias
        vis = vis & ~torch.isinf(bias)
        bias = bias.masked_fill(torch.isinf(bias), 0.0)
    elif ex.get("mask") == "bool":
        m = torch.rand(1, Hq, Sq, Skv, device=dev) > 0.3
        m[0, 1, 7, :] = False  # a fully masked row
        mask_t = m
        vis = vis & m
    mod.attention(q, k, v, y, lse, kv_lens=kv_t, mask=mask_t, scale=ex.get("scale"), softcap=ex.get("softcap", 0.0),
                  **mk)
    torch.cuda.synchronize()
    y_ref, lse_ref = attention_ref(q, k, v, vis, bias=bias, scale=ex.get("scale"), softcap=ex.get("softcap", 0.0))
    ok1, d1 = close("Y", y, y_ref, 1e-2)
    ok2, d2 = close("lse", lse, lse_ref, 1e-2)
    return ok1 and ok2, f"{d1}; {d2}"


def check_indexer(mod, B, Sq, Skv, H, Di, causal, q_offset, kv_lens=None, align=False, fp8=torch.float8_e4m3fn,
                  scaled=False):
    dev = "cuda"
    q8 = (torch.randn(B, Sq, H, Di, device=dev) * 2).to(fp8)
    k8 = (torch.randn(B, Skv, Di, device=dev) * 2).to(fp8)
    w = torch.randn(B, Sq, H, device=dev, dtype=torch.float32)
    qs = torch.rand(B, Sq, H, device=dev) * 3 + 0.01 if scaled else None
    ks = torch.rand(B, Skv, device=dev) * 3 + 0.01 if scaled else None
    bad = torch.full((1,), tessera.FLAG_CLEAR, dtype=torch.int64, device=dev)
    scores = torch.full((B, Sq, Skv), float("nan"), device=dev)
    kv_t = torch.tensor(kv_lens, device=dev, dtype=torch.int64) if kv_lens is not None else None
    mod.indexer(q8, k8, w, scores, causal=causal, q_offset=q_offset, kv_lens=kv_t, align=align, q_scale=qs,
                k_scale=ks, bad=bad)
    torch.cuda.synchronize()
    qd, kd = q8.double(), k8.double()
    if scaled:
        qd, kd = qd * qs.double().unsqueeze(-1), kd * ks.double().unsqueeze(-1)
    logits = torch.einsum("bthd,bsd->bths", qd, kd)
    ref = (torch.relu(logits) * w.double().unsqueeze(-1)).sum(2)
    vis = visible(B, Sq, Skv, causal=causal, q_offset=q_offset, kv_lens=kv_lens, align=align)[:, 0]
    ref = ref.masked_fill(~vis, float("-inf"))
    ok, detail = close("scores", scores, ref, 1e-2)
    if int(bad.item()) != tessera.FLAG_CLEAR:
        return False, f"{detail}; finite scores flagged"
    return ok, detail


def topk_ref(scores, k):
    """Ascending indices of the k largest finite entries, ties to the lower index, -1 padded."""
    out = []
    for row in scores.double().cpu().tolist():
        cand = [(-x, i) for i, x in enumerate(row) if x == x and x != float("-inf")]
        cand.sort()
        sel = sorted(i for _, i in cand[:k])
        out.append(sel + [-1] * (k - len(sel)))
    return torch.tensor(out, dtype=torch.int64)


def check_topk(mod, rows, n, k, ties=False, masked_frac=0.0):
    s = torch.randn(rows, n, device="cuda")
    if ties:
        s = torch.round(s * 4) / 4  # many equal values
    if masked_frac > 0:
        s[torch.rand(rows, n, device="cuda") < masked_frac] = float("-inf")
    s[0, : n // 2] = float("-inf")  # a row with few visible entries
    if n > 3:
        s[1, 3] = float("nan")
        s[1, 2] = -0.0
    idx = torch.full((rows, k), -7, device="cuda", dtype=torch.int64)
    mod.top_k(s, idx)
    torch.cuda.synchronize()
    ref = topk_ref(s, k)
    bad = (idx.cpu() != ref).any(dim=1).nonzero().flatten().tolist()
    return not bad, "exact" if not bad else f"{len(bad)} rows differ, first row {bad[0]}"


def check_sparse(mod, B, Hq, Hkv, Sq, Skv, D, K, dt, shared, softcap=0.0):
    dev = "cuda"
    q = torch.randn(B, Hq, Sq, D, device=dev, dtype=dt)
    k = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
    v = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
    y = torch.full_like(q, float("nan"))
    lse = torch.full((B, Hq, Sq), float("nan"), device=dev)
    shape = (B, Sq) if shared else (B, Hkv, Sq)
    lists = torch.stack([torch.randperm(Skv, device=dev)[:K] for _ in range(math.prod(shape))]).view(*shape, K)
    lists[..., -3:] = -1  # padding
    if Sq > 1:
        lists[..., 1, :] = -1  # a query with no keys
    mod.sparse(q, k, v, y, lists, lse, shared=shared, softcap=softcap)
    torch.cuda.synchronize()
    # Reference: dense attention restricted to the listed keys.
    li = lists if not shared else lists.unsqueeze(1).expand(B, Hkv, Sq, K)
    hits = torch.zeros(B, Hkv, Sq, Skv, dtype=torch.int32, device=dev)
    hits.scatter_add_(3, li.clamp(min=0), (li >= 0).int())
    vis = (hits > 0).repeat_interleave(Hq // Hkv, dim=1)
    y_ref, lse_ref = attention_ref(q, k, v, vis, softcap=softcap)
    ok1, d1 = close("Y", y, y_ref, 1e-2)
    ok2, d2 = close("lse", lse, lse_ref, 1e-2)
    return ok1 and ok2, f"{d1}; {d2}"


def check_merge(mod, rows, dv, dt, in_place):
    dev = "cuda"
    y_a = torch.randn(rows, dv, device=dev, dtype=dt)
    y_b = torch.randn(rows, dv, device=dev, dtype=dt)
    lse_a = torch.randn(rows, device=dev) * 3
    lse_b = torch.randn(rows, device=dev) * 3
    lse_a[::7] = float("-inf")
    lse_b[::5] = float("-inf")
    la, lb = lse_a.double(), lse_b.double()
    m = torch.maximum(la, lb)
    m0 = m.masked_fill(torch.isinf(m), 0)
    ea, eb = torch.exp(la - m0), torch.exp(lb - m0)
    tot = ea + eb
    y_ref = ((ea.unsqueeze(1) * y_a.double() + eb.unsqueeze(1) * y_b.double()) / tot.clamp(min=1e-300).unsqueeze(1))
    y_ref = y_ref.masked_fill((tot == 0).unsqueeze(1), 0.0)
    lse_ref = m0 + torch.log(tot)
    if in_place:
        y, lse = y_a, lse_a
    else:
        y = torch.full_like(y_a, float("nan"))
        lse = torch.full_like(lse_a, float("nan"))
    mod.merge(y_a, lse_a, y_b, lse_b, y, lse)
    torch.cuda.synchronize()
    ok1, d1 = close("Y", y, y_ref, 1e-2 if dt != torch.float32 else 1e-5)
    ok2, d2 = close("lse", lse, lse_ref, 1e-5)
    return ok1 and ok2, f"{d1}; {d2}"


FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def quantise_ref(x, fp8):
    """tessera_core::fp8::quantize in torch: per row groups of 128, scale = amax / MAX (1 for an
    all-zero group), code = fp8(x * (1 / scale)), all in f32. Returns (codes, scales, values f64)."""
    rows, n = x.shape
    x = x.float()
    g = (n + 127) // 128
    pad = torch.zeros(rows, g * 128, device=x.device)
    pad[:, :n] = x
    grp = pad.view(rows, g, 128)
    amax = grp.abs().amax(-1)
    scale = torch.where(amax > 0, amax / FP8_MAX[fp8], torch.ones_like(amax))
    inv = 1.0 / scale
    codes = (grp * inv.unsqueeze(-1)).to(fp8).view(rows, g * 128)[:, :n]
    values = (codes.double().view(rows, n) * scale.double().repeat_interleave(128, dim=1)[:, :n])
    return codes, scale, values


def check_quantize(mod, rows, row_len, src_dt, fp8):
    dev = "cuda"
    mags = torch.tensor([1.0, 1e-3, 1e4, 0.0], device=dev)
    col_mag = mags[(torch.arange(row_len, device=dev) // 128) % 4]
    x = (torch.randn(rows, row_len, device=dev) * col_mag).to(src_dt)
    codes = torch.empty(rows, row_len, dtype=fp8, device=dev)
    scales = torch.full((rows, (row_len + 127) // 128), float("nan"), device=dev)
    bad = torch.full((1,), tessera.FLAG_CLEAR, dtype=torch.int64, device=dev)
    mod.quantize(x, codes, scales, bad)
    torch.cuda.synchronize()
    want_codes, want_scales, _ = quantise_ref(x, fp8)
    same_codes = torch.equal(codes.view(torch.uint8), want_codes.contiguous().view(torch.uint8))
    same_scales = torch.equal(scales.view(torch.int32), want_scales.view(torch.int32))
    x.view(-1)[rows * row_len // 2] = float("nan")
    mod.quantize(x, codes, scales, bad)
    torch.cuda.synchronize()
    flagged = int(bad.item()) == rows * row_len // 2
    diff = (codes.view(torch.uint8) != want_codes.contiguous().view(torch.uint8)).sum().item() if not same_codes else 0
    return same_codes and same_scales and flagged, (f"codes {'equal' if same_codes else f'{diff} differ'}, scales "
                                                    f"{'equal' if same_scales else 'differ'}, NaN flagged {flagged}")


def top_k_valid(idx, ref, top_k, tol):
    """idx (B,Sq,top_k) is a top-k of ref (B,Sq,Skv; -inf = hidden): ascending, -1 padded, as many
    as visible keys allow, every chosen key within tol of the k-th best. Returns (ok, detail)."""
    idx, ref = idx.cpu(), ref.cpu()
    for b, t in ((b, t) for b in range(ref.shape[0]) for t in range(ref.shape[1])):
        row, sc = idx[b, t], ref[b, t]
        fin = torch.isfinite(sc)
        n = min(top_k, int(fin.sum()))
        chosen = row[:n]
        if (row[n:] != -1).any() or (chosen < 0).any() or (n > 1 and (chosen[1:] <= chosen[:-1]).any()):
            return False, f"row ({b},{t}) malformed: {row[:8].tolist()}..."
        if n and (~fin[chosen]).any():
            return False, f"row ({b},{t}) chose a hidden key"
        if n:
            kth = torch.sort(sc[fin], descending=True).values[n - 1]
            if (sc[chosen] < kth - tol).any():
                return False, f"row ({b},{t}) chose a key below the k-th best by more than {tol:.1e}"
    return True, "valid top-k of the f64 scores"


def check_indexer_op(mod, B, Sq, Skv, H, Di, top_k, causal, src_dt, fp8, chunk=None):
    """The CUDA-EP LightningIndexer's launches (quantise, widen, indexer, top-k) via the harness."""
    dev = "cuda"
    q = torch.randn(B, Sq, H, Di, device=dev).to(src_dt)
    k = (torch.randn(B, Skv, Di, device=dev) * torch.rand(B, Skv, 1, device=dev) * 4).to(src_dt)
    w = torch.rand(B, Sq, H, device=dev).to(src_dt)
    idx, flags = mod.lightning_indexer(q, k, w, top_k, causal=causal, fp8=fp8, chunk=chunk)
    torch.cuda.synchronize()
    if (flags != tessera.FLAG_CLEAR).any():
        return False, f"finite inputs raised a flag: {flags.tolist()}"
    _, _, qv = quantise_ref(q.reshape(-1, Di), fp8)
    _, _, kv = quantise_ref(k.reshape(-1, Di), fp8)
    dots = torch.einsum("bthd,bsd->bths", qv.view(B, Sq, H, Di), kv.view(B, Skv, Di))
    ref = (torch.relu(dots) * w.double().unsqueeze(-1)).sum(2)
    vis = visible(B, Sq, Skv, causal=causal, q_offset=Skv - Sq)[:, 0]
    ref = ref.masked_fill(~vis, float("-inf"))
    fin = ref[torch.isfinite(ref)]
    tol = 1e-5 * (fin.abs().max().item() if fin.numel() else 1.0)
    return top_k_valid(idx, ref, top_k, tol)


def check_topk_attention(mod, B, Hq, Hkv, Sq, Skv, D, K, dt, shared, causal, left, globals_):
    """TopKAttention's index mode (the CUDA-EP op's launches): list check with selected_indices,
    then the gather with the causal rule, window and sinks; then a repeated key is refused."""
    dev = "cuda"
    q = torch.randn(B, Hq, Sq, D, device=dev, dtype=dt)
    k = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
    v = torch.randn(B, Hkv, Skv, D, device=dev, dtype=dt)
    y = torch.full_like(q, float("nan"))
    lse = torch.full((B, Hq, Sq), float("nan"), device=dev)
    LH = 1 if shared else Hkv
    lists = torch.stack([torch.randperm(Skv, device=dev)[:K] for _ in range(B * LH * Sq)]).view(B, LH, Sq, K)
    lists[torch.rand(B, LH, Sq, K, device=dev) < 0.2] = -1  # padding anywhere
    off = Skv - Sq
    kept_w = (left + 1 + globals_) if (left >= 0 or globals_) else 0
    width = K + min(kept_w, Skv) if (left >= 0 or globals_) else K
    sel = torch.full((B * LH * Sq, width), -7, dtype=torch.int64, device=dev)
    bad = torch.full((1,), tessera.FLAG_CLEAR, dtype=torch.int64, device=dev)
    rules = dict(causal=causal, q_offset=off, left=left, globals_=globals_)
    mod.index_check(lists.view(-1, K), bad, Sq, Skv, sel, **rules)
    mod.sparse(q, k, v, y, lists.view(B, Sq, K) if shared else lists, lse, shared=shared, **rules)
    torch.cuda.synchronize()
    if int(bad.item()) != tessera.FLAG_CLEAR:
        return False, f"valid lists flagged at row {int(bad.item())}"
    hits = torch.zeros(B, LH, Sq, Skv, dtype=torch.int32, device=dev)
    hits.scatter_add_(3, lists.clamp(min=0), (lists >= 0).int())
    listed = hits > 0
    p = torch.arange(Sq, device=dev).view(Sq, 1) + off
    j = torch.arange(Skv, device=dev).view(1, Skv)
    kept = (j < globals_) | ((left >= 0) & (p >= 0) & (j >= p - left) & (j <= p))
    seen = (j <= p) if causal else torch.ones_like(kept)
    allowed = (listed | kept) & seen
    y_ref, lse_ref = attention_ref(q, k, v, allowed.repeat_interleave(Hq // LH, dim=1))
    ok1, d1 = close("Y", y, y_ref, 1e-2)
    ok2, d2 = close("lse", lse, lse_ref, 1e-2)
    want = torch.full((B * LH * Sq, width), -1, dtype=torch.int64)
    for r, row in enumerate(allowed.view(-1, Skv).cpu()):
        keys = row.nonzero().flatten()
        want[r, :len(keys)] = keys
    ok3 = torch.equal(sel.cpu(), want)
    # A repeated key in one row is refused, naming that row.
    r = (B * LH * Sq) // 2
    lists.view(-1, K)[r, :2] = torch.tensor([3, 3], device=dev) % Skv
    bad.fill_(tessera.FLAG_CLEAR)
    mod.index_check(lists.view(-1, K), bad, Sq, Skv, None, **rules)
    torch.cuda.synchronize()
    ok4 = int(bad.item()) == r
    return ok1 and ok2 and ok3 and ok4, f"{d1}; {d2}; selected {'exact' if ok3 else 'DIFFERS'}; duplicate " \
                                        f"{'refused' if ok4 else 'NOT refused'}"


# ---- the CUDA-EP ops through ONNX Runtime (when onnxruntime-gpu and the plugin are here) ----

def ort_cuda_session():
    """(onnxruntime, onnx, plugin path) when the CUDA EP and the plugin are available, else a reason."""
    lib = os.environ.get("TESSERA_ORT_CUDA_LIB") or os.path.join(HERE_DIR, "..", "..", "target", "cuda-plugin",
                                                                 "libtessera_ort.so")
    try:
        import onnxruntime as ort
        import onnx  # noqa: F401
    except ImportError as e:
        return None, f"onnxruntime/onnx not importable ({e})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"
    if not os.path.exists(lib):
        return None, f"no plugin library at {lib} (set TESSERA_ORT_CUDA_LIB)"
    return (ort, lib), ""


def ort_run(ort, lib, op, feeds, outputs, attrs):
    from onnx import TensorProto as TP, helper
    types = {torch.float32: TP.FLOAT, torch.float16: TP.FLOAT16, torch.bfloat16: TP.BFLOAT16, torch.int64: TP.INT64}
    node = helper.make_node(op, list(feeds), [n for n, _ in outputs], domain="ai.tessera", **attrs)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info(n, types[t.dtype], None) for n, t in feeds.items()],
                          [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.tessera", 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CUDAExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    outs = sess.run(None, {n: t.cpu().numpy() for n, t in feeds.items()})
    return [torch.from_numpy(o).to("cuda") for o in outs]


def check_ort_indexer(ort, lib, fp8_name):
    from onnx import TensorProto as TP
    B, Sq, Skv, H, Di, top_k = 2, 40, 700, 8, 128, 64
    q = torch.randn(B, Sq, H, Di, device="cuda")
    k = torch.randn(B, Skv, Di, device="cuda")
    w = torch.rand(B, Sq, H, device="cuda")
    (idx,) = ort_run(ort, lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w},
                     [("indices", TP.INT64)], {"top_k": top_k, "is_causal": 1, "format": fp8_name})
    fp8 = torch.float8_e4m3fn if fp8_name == "e4m3" else torch.float8_e5m2
    _, _, qv = quantise_ref(q.reshape(-1, Di), fp8)
    _, _, kv = quantise_ref(k.reshape(-1, Di), fp8)
    ref = (torch.relu(torch.einsum("bthd,bsd->bths", qv.view(B, Sq, H, Di), kv.view(B, Skv, Di)))
           * w.double().unsqueeze(-1)).sum(2)
    ref = ref.masked_fill(~visible(B, Sq, Skv, causal=True, q_offset=Skv - Sq)[:, 0], float("-inf"))
    return top_k_valid(idx, ref, top_k, 1e-5 * ref[torch.isfinite(ref)].abs().max().item())


def check_ort_topk(ort, lib):
    from onnx import TensorProto as TP
    B, Hq, Hkv, Sq, Skv, D, K, left, sinks = 1, 8, 2, 33, 500, 128, 48, 16, 4
    q = torch.randn(B, Hq, Sq, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, Hkv, Skv, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    lists = torch.stack([torch.randperm(Skv, device="cuda")[:K] for _ in range(B * Sq)]).view(B, Sq, K)
    lists[..., -5:] = -1
    y, sel, lse = ort_run(ort, lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": lists},
                          [("Y", TP.FLOAT16), ("selected_indices", TP.INT64), ("softmax_lse", TP.FLOAT)],
                          {"is_causal": 1, "left_window_size": left, "num_global_tokens": sinks})
    listed = torch.zeros(B, 1, Sq, Skv, dtype=torch.bool, device="cuda")
    for t in range(Sq):
        keys = lists[0, t]
        listed[0, 0, t, keys[keys >= 0]] = True
    p = torch.arange(Sq, device="cuda").view(Sq, 1) + Skv - Sq
    j = torch.arange(Skv, device="cuda").view(1, Skv)
    allowed = (listed | (j < sinks) | ((j >= p - left) & (j <= p))) & (j <= p)
    y_ref, lse_ref = attention_ref(q, k, v, allowed.expand(B, Hq, Sq, Skv))
    ok1, d1 = close("Y", y, y_ref, 1e-2)
    ok2, d2 = close("lse", lse, lse_ref, 1e-2)
    ok3 = sel.shape == (B, Hkv, Sq, K + left + 1 + sinks)
    return ok1 and ok2 and ok3, f"{d1}; {d2}; selected shape {tuple(sel.shape)}"


def dsa_checks(mod, quick):
    f8, f5 = torch.float8_e4m3fn, torch.float8_e5m2
    guarded("indexer", "e5m2 scaled causal H64 D128", lambda: check_indexer(mod, 1, 37, 1000, 64, 128, True, 963,
                                                                            fp8=f5, scaled=True))
    guarded("indexer", "e4m3 scaled H20 D64 kv_lens", lambda: check_indexer(mod, 2, 20, 300, 20, 64, False, 0,
                                                                            [300, 123], fp8=f8, scaled=True))
    for src in (torch.float32, torch.float16, torch.bfloat16):
        for fp8 in (f8, f5):
            guarded("quantize", f"{str(src)[6:]} -> {str(fp8)[11:]} 300x300",
                    lambda s=src, f=fp8: check_quantize(mod, 300, 300, s, f))
    guarded("indexer op", "e4m3 f32 causal Sq=64 Skv=3000 H16 D128 k256 (chunks of 24)",
            lambda: check_indexer_op(mod, 2, 64, 3000, 16, 128, 256, True, torch.float32, f8, chunk=24))
    guarded("indexer op", "e5m2 bf16 Sq=50 Skv=800 H8 D64 k1000",
            lambda: check_indexer_op(mod, 1, 50, 800, 8, 64, 1000, False, torch.bfloat16, f5))
    guarded("topk attention", "shared causal window 16 sinks 4 GQA 4:1 f16",
            lambda: check_topk_attention(mod, 2, 8, 2, 40, 600, 128, 64, torch.float16, True, True, 16, 4))
    guarded("topk attention", "per-head lists causal Sq>Skv bf16 D64",
            lambda: check_topk_attention(mod, 1, 4, 4, 50, 30, 64, 12, torch.bfloat16, False, True, 3, 0))
    guarded("topk attention", "not causal sinks 50 f16",
            lambda: check_topk_attention(mod, 1, 2, 1, 20, 300, 128, 40, torch.float16, True, False, -1, 50))
    got, why = ort_cuda_session()
    if got is None:
        log(f"ORT CUDA-EP checks skipped: {why}; the direct launcher checks above cover the same launches")
        return
    ort, lib = got
    for fmt in ("e4m3", "e5m2"):
        guarded("ORT CUDA EP", f"LightningIndexer {fmt}", lambda f=fmt: check_ort_indexer(ort, lib, f))
    guarded("ORT CUDA EP", "TopKAttention f16 window+sinks", lambda: check_ort_topk(ort, lib))


def correctness(mod, quick):
    for case in FLASH_CASES:
        guarded("flash", case[0], lambda c=case: check_flash(mod, c))
    guarded("indexer", "causal H64 D128 Skv1000", lambda: check_indexer(mod, 1, 37, 1000, 64, 128, True, 963))
    guarded("indexer", "H8 D64 kv_lens", lambda: check_indexer(mod, 2, 20, 300, 8, 64, False, 0, [300, 123]))
    guarded("indexer", "causal aligned H32 D128", lambda: check_indexer(mod, 2, 16, 4096, 32, 128, True, 0, [4096, 2000], True))
    guarded("topk", "64x5000 k100", lambda: check_topk(mod, 64, 5000, 100))
    guarded("topk", "ties + masked 32x3000 k500", lambda: check_topk(mod, 32, 3000, 500, ties=True, masked_frac=0.3))
    guarded("topk", "k > row 8x50 k64", lambda: check_topk(mod, 8, 50, 64))
    if not quick:
        guarded("topk", "4x131072 k2048 ties", lambda: check_topk(mod, 4, 131072, 2048, ties=True))
    guarded("sparse", "GQA 4:1 shared D128 f16", lambda: check_sparse(mod, 2, 8, 2, 33, 700, 128, 64, torch.float16, True))
    guarded("sparse", "per-head lists softcap bf16 D64", lambda: check_sparse(mod, 1, 4, 4, 20, 300, 64, 40,
                                                                                 torch.bfloat16, False, 15.0))
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        guarded("merge", f"{str(dt)[6:]} 1000x128", lambda d=dt: check_merge(mod, 1000, 128, d, False))
    guarded("merge", "in place f32 77x64", lambda: check_merge(mod, 77, 64, torch.float32, True))
    dsa_checks(mod, quick)


# ---- timing ---------------------------------------------------------------------

def time_ms(fn, warmup=3, reps=10, budget_s=2.0):
    """Median over `reps` CUDA-event timings after `warmup` calls. Each timing
    covers enough back-to-back calls (>= ~2 ms of GPU work) that the launch
    overhead of the Python caller is hidden; the result is per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    inner = max(1, min(50, int(2.0 / max(a.elapsed_time(b), 1e-3))))
    times = []
    t_end = time.time() + budget_s
    for _ in range(reps):
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
        if time.time() > t_end and len(times) >= 3:
            break
    return statistics.median(times)


def matmul_peak():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: torch.matmul(a, b), warmup=5, reps=20)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def visited_tiles(S, BQ, BK, causal, left=-1):
    """Key tiles the flash kernel visits for one head (its tile-range rule)."""
    total = 0
    for qt in range((S + BQ - 1) // BQ):
        r0, r1 = qt * BQ, min(S, qt * BQ + BQ) - 1
        hi = r1 if causal else S - 1
        lo = max(0, r0 - left) if left >= 0 else 0
        total += hi // BK - lo // BK + 1
    return total


BENCH = []  # (what, shape, ours ms, ref ms, ours TFLOP/s, ratio, note)


def bench_row(what, shape, ours, ref, flops, note=""):
    tf = flops / (ours * 1e-3) / 1e12 if ours else float("nan")
    ratio = ref / ours if (ours and ref) else float("nan")
    BENCH.append((what, shape, ours, ref, tf, ratio, note))
    log(f"bench {what} {shape}: ours {ours:.3f} ms, ref {ref if ref else float('nan'):.3f} ms, {tf:.1f} TFLOP/s, "
        f"speed vs ref {ratio:.2f}x {note}")


def benchmarks(mod, peak, quick):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    H, B = 16, 1
    seqs = [1024, 4096, 16384, 32768] if not quick else [1024, 4096]
    for D in (64, 128):
        for S in seqs:
            for causal in (False, True):
                if out_of_time():
                    log(f"bench: out of time budget, skipping D={D} S={S} causal={causal}")
                    continue
                q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
                k, v = torch.randn_like(q), torch.randn_like(q)
                y = torch.empty_like(q)
                flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
                ours = time_ms(mod.attention(q, k, v, y, causal=causal, run=False))
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
                    ref_y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                mod.attention(q, k, v, y, causal=causal)
                torch.cuda.synchronize()
                diff = (y.float() - ref_y.float()).abs().max().item()
                bench_row("dense bf16", f"S={S} D={D} H={H} {'causal' if causal else 'full'}", ours, ref, flops,
                          f"max|ours-sdpa| {diff:.1e}; {100 * flops / (ours * 1e-3) / 1e12 / peak:.0f}% of mm peak")
                del q, k, v, y, ref_y
    if out_of_time():
        log("bench: out of time budget, skipping window/indexer/top-k")
        return
    # Window 128 at 32K vs dense causal: cost should follow the visited tiles.
    S, D, W = (32768 if not quick else 4096), 128, 128
    q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    y = torch.empty_like(q)
    t_win = time_ms(mod.attention(q, k, v, y, causal=True, left=W, right=0, run=False))
    t_causal = time_ms(mod.attention(q, k, v, y, causal=True, run=False))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        t_sdpa = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    _, g = mod.kernel("flash", f"tessera_flash_bf16_d{D}_sc0_dm0", f"tessera_flash_bf16_d{D}_geom")
    BQ, BK = g[1], g[2]  # the kernel's own tile sizes
    tiles_win, tiles_causal = visited_tiles(S, BQ, BK, True, W), visited_tiles(S, BQ, BK, True)
    flops_win = 4 * B * H * S * (W + 1) * D
    bench_row("window 128 bf16", f"S={S} D={D} H={H}", t_win, t_sdpa, flops_win,
              f"time win/causal {t_win / t_causal:.4f} vs tiles {tiles_win / tiles_causal:.4f} (ref = SDPA dense causal)")
    del q, k, v, y
    # Indexer and top-k at 32K and 128K keys: the last 1024 queries of the context.
    Sq, Hi, Di, K = 1024, 64, 128, 2048
    for Skv in ([32768, 131072] if not quick else [32768]):
        if out_of_time():
            log(f"bench: out of time budget, skipping Skv={Skv}")
            continue
        q8 = torch.randn(1, Sq, Hi, Di, device="cuda").to(torch.float8_e4m3fn)
        k8 = torch.randn(1, Skv, Di, device="cuda").to(torch.float8_e4m3fn)
        w = torch.randn(1, Sq, Hi, device="cuda")
        scores = torch.empty(1, Sq, Skv, device="cuda")
        t_ix = time_ms(mod.indexer(q8, k8, w, scores, causal=True, q_offset=Skv - Sq, run=False))
        # Reference: the same math in bf16 torch, 128 queries at a time (fits in memory).
        qb, kb = q8.to(torch.bfloat16), k8.to(torch.bfloat16)[0]

        def torch_indexer():
            for t0 in range(0, Sq, 128):
                lg = torch.matmul(qb[0, t0:t0 + 128].reshape(-1, Di), kb.t()).view(128, Hi, Skv)
                (torch.relu(lg) * w[0, t0:t0 + 128].unsqueeze(-1).to(torch.bfloat16)).sum(1)
        t_ref = time_ms(torch_indexer, warmup=1, reps=3)
        bench_row("indexer e4m3", f"Sq={Sq} Skv={Skv} Hi={Hi} Di={Di}", t_ix, t_ref, 2 * Sq * Skv * Hi * Di,
                  "ref = torch bf16 matmul+relu+sum; TFLOP/s counts all pairs (causal ~ all here)")
        idx = torch.empty(Sq, K, device="cuda", dtype=torch.int64)
        s2 = scores.view(Sq, Skv)
        t_tk = time_ms(mod.top_k(s2, idx, run=False))
        t_tk_ref = time_ms(lambda: torch.topk(s2, K, dim=1, sorted=False))
        bench_row("top-k radix", f"rows={Sq} n={Skv} k={K}", t_tk, t_tk_ref, 0, "ref = torch.topk(sorted=False)")
        if Skv == 32768 and not out_of_time():
            # The CUDA-EP LightningIndexer as a whole: quantise q and k (per-128 scales), score, top-k.
            qb16 = torch.randn(1, Sq, Hi, Di, device="cuda", dtype=torch.bfloat16)
            kb16 = torch.randn(1, Skv, Di, device="cuda", dtype=torch.bfloat16)
            wb16 = torch.randn(1, Sq, Hi, device="cuda", dtype=torch.bfloat16)
            t_op = time_ms(lambda: mod.lightning_indexer(qb16, kb16, wb16, K, causal=True), warmup=1, reps=5)
            bench_row("LightningIndexer op (CUDA EP launches)", f"Sq={Sq} Skv={Skv} Hi={Hi} Di={Di} k={K} bf16 in",
                      t_op, t_ix + t_tk, 2 * Sq * Skv * Hi * Di,
                      "ref = indexer + top-k kernels alone (no quantisation)")
            del qb16, kb16, wb16
        # Sparse attention over the selected keys (MQA, 16 query heads, D=128).
        qs = torch.randn(1, 16, Sq, 128, device="cuda", dtype=torch.bfloat16)
        ks = torch.randn(1, 1, Skv, 128, device="cuda", dtype=torch.bfloat16)
        vs = torch.randn_like(ks)
        ys = torch.empty_like(qs)
        lists = idx.view(1, Sq, K)
        t_sp = time_ms(mod.sparse(qs, ks, vs, ys, lists, run=False))
        bench_row("sparse gather bf16", f"Sq={Sq} Skv={Skv} k={K} H=16 D=128", t_sp, 0, 4 * 16 * Sq * K * 128,
                  "cost ~ k, independent of Skv")
        del q8, k8, w, scores, idx, qs, ks, vs, ys


def table(peak):
    lines = ["| kernel | case | result |", "| --- | --- | --- |"]
    for kernel, case, ok, detail in RESULTS:
        lines.append(f"| {kernel} | {case} | {'PASS' if ok else 'FAIL'}: {detail} |")
    lines += ["", f"bf16 matmul peak (8192^3, same run): {peak:.0f} TFLOP/s", "",
              "| benchmark | shape | ours ms | ref ms | ours TFLOP/s | ref/ours | note |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for what, shape, ours, ref, tf, ratio, note in BENCH:
        lines.append(f"| {what} | {shape} | {ours:.3f} | {ref:.3f} | {tf:.1f} | {ratio:.2f} | {note} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fatbins", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="smaller benchmark sizes")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    global LOG_FILE
    os.makedirs(a.out, exist_ok=True)
    LOG_FILE = open(os.path.join(a.out, "device-check.log"), "w")
    seed = a.seed if a.seed is not None else int(time.time()) % 1_000_000
    torch.manual_seed(seed)
    log(f"seed {seed}; torch {torch.__version__}; {torch.cuda.get_device_name()} "
        f"sm_{''.join(map(str, torch.cuda.get_device_capability()))}")
    mod = tessera.Module(a.fatbins)
    t0 = time.time()
    correctness(mod, a.quick)
    log(f"correctness: {sum(r[2] for r in RESULTS)} passed, {sum(not r[2] for r in RESULTS)} failed "
        f"in {time.time() - t0:.0f} s")
    peak = float("nan")
    try:
        peak = matmul_peak()
        log(f"bf16 matmul peak {peak:.0f} TFLOP/s")
        benchmarks(mod, peak, a.quick)
    except Exception:
        log(traceback.format_exc())
        RESULTS.append(("bench", "benchmarks", False, "benchmarks raised; see log"))
    out = table(peak)
    LOG_FILE.write("\n" + out + "\n")
    LOG_FILE.close()
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(out + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"seed": seed, "peak_tflops": peak, "correctness": RESULTS, "bench": BENCH}, f, indent=1)
    failed = sum(not r[2] for r in RESULTS)
    print()
    print(out)
    print(f"\ndevice check: {sum(r[2] for r in RESULTS)} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
