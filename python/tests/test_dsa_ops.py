"""ai.tessera.LightningIndexer, TopKAttention and MergeAttention from Python:
numbers against f64 numpy references (the FP8 indexer against the same
quantisation done with ml_dtypes), dense equivalence with ai.tessera.Attention,
and a table of bad inputs with the message each must give."""

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from conftest import session

F, I64 = TP.FLOAT, TP.INT64
TYPES = {np.dtype(np.float32): F, np.dtype(np.float16): TP.FLOAT16, np.dtype(np.float64): TP.DOUBLE,
         np.dtype(ml_dtypes.bfloat16): TP.BFLOAT16,
         np.dtype(np.int32): TP.INT32, np.dtype(np.int64): I64, np.dtype(bool): TP.BOOL}
TOPK_IN = ["Q", "K", "V", "indices"]


def model(op, inputs, outputs, attrs=None):
    """One ai.tessera node. `inputs`: (name, elem type) with "" for a left-out
    slot; `outputs`: (name, elem type) with "" for a left-out output."""
    node = helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], domain="ai.tessera", **(attrs or {}))
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs if n],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs if n],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.tessera", 1)])
    m.ir_version = 9
    return m.SerializeToString()


def run(lib, op, feeds, outputs, attrs=None, threads=2, slots=None):
    """Build, load and run one node on `feeds` (a dict, in slot order)."""
    names = slots or list(feeds)
    inputs = [(n, TYPES[feeds[n].dtype]) if n in feeds else ("", None) for n in names]
    while inputs and inputs[-1][0] == "":
        inputs.pop()
    sess = session(lib, model(op, inputs, outputs, attrs), threads=threads)
    return sess.run(None, feeds)


def rand(rng, *shape, dt=np.float32):
    return rng.uniform(-1, 1, shape).astype(dt)


# ---------------------------------------------------------------- references

def visible(sq, skv, causal):
    """(Sq, Skv) bool: bottom-right causal rule (query i is position i + Skv - Sq)."""
    i = np.arange(sq)[:, None] + (skv - sq)
    j = np.arange(skv)[None, :]
    return (j <= i) if causal else np.ones((sq, skv), bool)


def quantise(x, fmt):
    """What the op computes with: per-row groups of 128, scale = amax / max,
    code = fp8(x * (1 / scale)) in f32 arithmetic, value = code * scale."""
    if fmt == "f32":
        return x.astype(np.float64)
    dt, mx = {"e4m3": (ml_dtypes.float8_e4m3fn, 448.0), "e5m2": (ml_dtypes.float8_e5m2, 57344.0)}[fmt]
    d = x.shape[-1]
    out = np.empty(x.shape, np.float64)
    for g0 in range(0, d, 128):
        part = x[..., g0:g0 + 128].astype(np.float32)
        amax = np.abs(part).max(-1, keepdims=True)
        scale = np.where(amax > 0, amax / np.float32(mx), np.float32(1)).astype(np.float32)
        inv = (np.float32(1) / scale).astype(np.float32)
        codes = (part * inv).astype(np.float32).astype(dt)
        out[..., g0:g0 + 128] = codes.astype(np.float32).astype(np.float64) * scale.astype(np.float64)
    return out


def index_scores(q, k, w, causal, fmt):
    """I[b,t,s] = sum_j w[b,t,j] * relu(q[b,t,j] . k[b,s]) in f64, -inf where masked."""
    qd, kd = quantise(q, fmt), quantise(k, fmt)
    dots = np.einsum("btjd,bsd->btjs", qd, kd)
    sc = np.einsum("btj,btjs->bts", w.astype(np.float64), np.maximum(dots, 0))
    return np.where(visible(q.shape[1], k.shape[1], causal)[None], sc, -np.inf)


def check_top_k(idx, scores, top_k, tol):
    """`idx` is a valid top-k of `scores`: ascending, -1 padded, as many as
    visible keys allow, and every chosen key scores at least the k-th best
    (within `tol`, for near-ties that f32 accumulation may order otherwise)."""
    b, sq, skv = scores.shape
    assert idx.shape == (b, sq, top_k) and idx.dtype == np.int64
    for bi in range(b):
        for t in range(sq):
            row, sc = idx[bi, t], scores[bi, t]
            n_vis = int(np.isfinite(sc).sum())
            n = min(top_k, n_vis)
            assert (row[n:] == -1).all(), (bi, t, row)
            chosen = row[:n]
            assert (np.diff(chosen) > 0).all() and (chosen >= 0).all(), (bi, t, row)
            if n:
                kth = np.sort(sc[np.isfinite(sc)])[::-1][n - 1]
                assert (sc[chosen] >= kth - tol).all(), (bi, t, chosen, sc[chosen], kth)


def sparse_reference(q, k, v, allowed, scale=None):
    """f64 attention of 4-D BHSD q/k/v where allowed[b,h,i,j] (broadcastable),
    0 for a row with no key."""
    b, hq, sq, d = q.shape
    hkv = k.shape[1]
    s = scale if scale is not None else 1 / np.sqrt(d)
    kk = np.repeat(k.astype(np.float64), hq // hkv, axis=1)
    vv = np.repeat(v.astype(np.float64), hq // hkv, axis=1)
    sc = s * q.astype(np.float64) @ kk.transpose(0, 1, 3, 2)
    ok = np.broadcast_to(allowed, sc.shape)
    sc = np.where(ok, sc, -np.inf)
    m = sc.max(-1, keepdims=True)
    p = np.where(ok, np.exp(sc - np.where(np.isinf(m), 0, m)), 0)
    den = p.sum(-1, keepdims=True)
    return np.where(den > 0, (p / np.where(den > 0, den, 1)) @ vv, 0)


def lists_to_mask(idx, skv, hkv, hq):
    """(B,Sq,k) or (B,Hkv,Sq,k) index lists -> allowed (B,Hq,Sq,Skv)."""
    if idx.ndim == 3:
        idx = idx[:, None]
    b, h, sq, _ = idx.shape
    m = np.zeros((b, h, sq, skv), bool)
    for bi, hi, t in np.ndindex(b, h, sq):
        row = idx[bi, hi, t]
        m[bi, hi, t, row[row >= 0]] = True
    return np.repeat(m, hq // h, axis=1) if h > 1 else np.broadcast_to(m, (b, hq, sq, skv))


def random_lists(rng, b, sq, skv, k, heads=None):
    """Unsorted, -1-padded, duplicate-free random key lists."""
    shape = (b, sq) if heads is None else (b, heads, sq)
    out = np.full(shape + (k,), -1, np.int64)
    for ix in np.ndindex(*shape):
        n = rng.integers(0, min(k, skv) + 1)
        out[ix][:n] = rng.permutation(skv)[:n]
        rng.shuffle(out[ix])
    return out


# ---------------------------------------------------------------- LightningIndexer

IDX_OUT = [("indices", I64)]


@pytest.mark.parametrize("fmt", ["f32", "e4m3", "e5m2"])
@pytest.mark.parametrize("causal,sq,skv", [(1, 37, 37), (1, 19, 150), (0, 21, 90)])
def test_indexer_matches_reference(lib, fmt, causal, sq, skv):
    rng = np.random.default_rng(sq * 7 + skv + causal)
    b, hi, di, top_k = 2, 4, 160, 12  # Di = 160: two scale groups, the last short
    q, k = rand(rng, b, sq, hi, di), rand(rng, b, skv, di)
    w = rng.uniform(0.1, 1, (b, sq, hi)).astype(np.float32)
    (idx,) = run(lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w}, IDX_OUT,
                 {"top_k": top_k, "is_causal": causal, "format": fmt})
    scores = index_scores(q, k, w, causal, fmt)
    check_top_k(idx, scores, top_k, tol=1e-4 * np.abs(scores[np.isfinite(scores)]).max())


def test_indexer_pads_with_minus_one_and_masks_leading_rows(lib):
    # Sq > Skv, causal: query i sees keys j <= i + Skv - Sq, so the first rows see none.
    rng = np.random.default_rng(3)
    q, k, w = rand(rng, 1, 10, 2, 16), rand(rng, 1, 6, 16), np.ones((1, 10, 2), np.float32)
    (idx,) = run(lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w}, IDX_OUT,
                 {"top_k": 5, "is_causal": 1, "format": "f32"})
    for t in range(10):
        n_vis = max(0, min(5, t - 4 + 1))
        assert (idx[0, t, n_vis:] == -1).all() and (idx[0, t, :n_vis] >= 0).all(), (t, idx[0, t])
    assert (idx[0, 9] == [1, 2, 3, 4, 5]).all() or len(set(idx[0, 9])) == 5


@pytest.mark.parametrize("dt", [np.float16])  # bfloat16: tests/tests/dsa_ops.rs (onnxruntime's Python API takes no bfloat16 arrays)
def test_indexer_reads_half_inputs_as_their_exact_values(lib, dt):
    rng = np.random.default_rng(4)
    q, k, w = rand(rng, 2, 30, 3, 40).astype(dt), rand(rng, 2, 50, 40).astype(dt), rand(rng, 2, 30, 3).astype(dt)
    attrs = {"top_k": 7, "is_causal": 1, "format": "e4m3"}
    (half,) = run(lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w}, IDX_OUT, attrs)
    wide = {"index_q": q.astype(np.float32), "index_k": k.astype(np.float32), "index_w": w.astype(np.float32)}
    (full,) = run(lib, "LightningIndexer", wide, IDX_OUT, attrs)
    assert (half == full).all()


def test_indexer_ties_go_to_the_lower_key(lib):
    q = np.ones((1, 3, 1, 4), np.float32)
    k = np.ones((1, 9, 4), np.float32)  # every key scores the same
    w = np.ones((1, 3, 1), np.float32)
    for fmt in ["f32", "e4m3"]:
        (idx,) = run(lib, "LightningIndexer", {"index_q": q, "index_k": k, "index_w": w}, IDX_OUT,
                     {"top_k": 4, "format": fmt})
        assert (idx == np.arange(4)).all(), idx


def test_indexer_fp8_recall_against_f32(lib):
    rng = np.random.default_rng(5)
    b, sq, skv, hi, di, top_k = 1, 64, 512, 4, 64, 64
    q, k = rand(rng, b, sq, hi, di), rand(rng, b, skv, di)
    w = rng.uniform(0.1, 1, (b, sq, hi)).astype(np.float32)
    feeds = {"index_q": q, "index_k": k, "index_w": w}
    (exact,) = run(lib, "LightningIndexer", feeds, IDX_OUT, {"top_k": top_k, "format": "f32"})
    (fp8,) = run(lib, "LightningIndexer", feeds, IDX_OUT, {"top_k": top_k, "format": "e4m3"})
    recall = np.mean([len(set(a) & set(e)) / top_k for a, e in zip(fp8[0], exact[0])])
    assert recall >= 0.9, recall


def test_indexer_threads_agree(lib):
    rng = np.random.default_rng(6)
    feeds = {"index_q": rand(rng, 2, 70, 3, 32), "index_k": rand(rng, 2, 200, 32),
             "index_w": rand(rng, 2, 70, 3)}
    one = run(lib, "LightningIndexer", feeds, IDX_OUT, {"top_k": 17, "is_causal": 1}, threads=1)[0]
    four = run(lib, "LightningIndexer", feeds, IDX_OUT, {"top_k": 17, "is_causal": 1}, threads=4)[0]
    assert (one == four).all()


# ---------------------------------------------------------------- TopKAttention, index mode

TOPK_OUT = [("Y", F), ("selected", I64), ("lse", F)]


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("causal", [0, 1])
def test_topk_index_mode_matches_masked_reference(lib, per_head, causal):
    rng = np.random.default_rng(10 + per_head * 2 + causal)
    b, hq, hkv, sq, skv, d, dv, kk = 2, 6, 2, 13, 150, 16, 24, 40
    q, k, v = rand(rng, b, hq, sq, d), rand(rng, b, hkv, skv, d), rand(rng, b, hkv, skv, dv)
    idx = random_lists(rng, b, sq, skv, kk, heads=hkv if per_head else None)
    y, sel, lse = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": idx}, TOPK_OUT,
                      {"is_causal": causal, "top_k": kk})
    allowed = lists_to_mask(idx, skv, hkv, hq) & visible(sq, skv, causal)[None, None]
    np.testing.assert_allclose(y, sparse_reference(q, k, v, allowed), rtol=1e-4, atol=2e-5)
    # selected: the listed keys the query may see, ascending, per KV head.
    assert sel.shape == (b, hkv, sq, kk)
    want = lists_to_mask(idx, skv, hkv, hkv) & visible(sq, skv, causal)[None, None]
    for ix in np.ndindex(b, hkv, sq):
        row = sel[ix]
        n = int(want[ix].sum())
        assert (row[:n] == np.flatnonzero(want[ix])).all() and (row[n:] == -1).all(), (ix, row)
    empty = ~allowed.any(-1)
    assert np.isneginf(lse[empty]).all() and np.isfinite(lse[~empty]).all()


@pytest.mark.parametrize("causal", [0, 1])
def test_topk_index_mode_keeps_window_and_sinks(lib, causal):
    rng = np.random.default_rng(13 + causal)
    b, hq, hkv, sq, skv, d, kk, window, sinks = 1, 2, 1, 20, 90, 8, 6, 5, 3
    q, k, v = rand(rng, b, hq, sq, d), rand(rng, b, hkv, skv, d), rand(rng, b, hkv, skv, d)
    idx = random_lists(rng, b, sq, skv, kk)
    y, sel, _ = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": idx}, TOPK_OUT,
                    {"is_causal": causal, "left_window_size": window, "num_global_tokens": sinks})
    assert sel.shape == (b, hkv, sq, kk + window + 1 + sinks)
    pos = np.arange(sq)[:, None] + skv - sq
    j = np.arange(skv)[None, :]
    kept = ((j >= pos - window) & (j <= pos)) | (j < sinks)
    allowed = (lists_to_mask(idx, skv, hkv, hq) | kept[None, None]) & visible(sq, skv, causal)[None, None]
    np.testing.assert_allclose(y, sparse_reference(q, k, v, allowed), rtol=1e-4, atol=2e-5)
    for t in range(sq):
        row = sel[0, 0, t]
        assert (row[:(row >= 0).sum()] == np.flatnonzero(allowed[0, 0, t])).all() and (np.sort(row[row >= 0]) == row[row >= 0]).all()


def test_topk_index_mode_3d_layout_and_scale(lib):
    rng = np.random.default_rng(12)
    b, hq, hkv, sq, skv, d = 1, 4, 2, 9, 70, 8
    q4, k4, v4 = rand(rng, b, hq, sq, d), rand(rng, b, hkv, skv, d), rand(rng, b, hkv, skv, d)
    q3 = q4.transpose(0, 2, 1, 3).reshape(b, sq, hq * d)
    k3 = k4.transpose(0, 2, 1, 3).reshape(b, skv, hkv * d)
    v3 = v4.transpose(0, 2, 1, 3).reshape(b, skv, hkv * d)
    idx = random_lists(rng, b, sq, skv, 20)
    (y,) = run(lib, "TopKAttention", {"Q": q3, "K": k3, "V": v3, "indices": idx}, [("Y", F)],
               {"q_num_heads": hq, "kv_num_heads": hkv, "scale": 0.4, "is_causal": 1})
    want = sparse_reference(q4, k4, v4, lists_to_mask(idx, skv, hkv, hq) & visible(sq, skv, True), scale=0.4)
    np.testing.assert_allclose(y, want.transpose(0, 2, 1, 3).reshape(b, sq, hq * d), rtol=1e-4, atol=2e-5)


def attention_op(lib, q, k, v, causal):
    """ai.tessera.Attention with the same bottom-right causal rule
    (nonpad_kv_seqlen = Skv) and its lse."""
    feeds = {"Q": q, "K": k, "V": v, "nonpad_kv_seqlen": np.full(q.shape[0], k.shape[2], np.int64)}
    slots = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    return run(lib, "Attention", feeds, [("Y", TYPES[q.dtype]), ("", None), ("", None), ("", None), ("lse", F)],
               {"is_causal": causal}, slots=slots)


@pytest.mark.parametrize("causal", [0, 1])
def test_topk_with_every_key_equals_dense_attention(lib, causal):
    rng = np.random.default_rng(20 + causal)
    b, hq, hkv, sq, skv, d = 1, 4, 2, 50, 130, 32
    q, k, v = rand(rng, b, hq, sq, d), rand(rng, b, hkv, skv, d), rand(rng, b, hkv, skv, d)
    dense_y, dense_lse = attention_op(lib, q, k, v, causal)
    want = sparse_reference(q, k, v, visible(sq, skv, causal)[None, None])
    np.testing.assert_allclose(dense_y, want, rtol=1e-4, atol=2e-5)
    # Index mode with every key listed (in a shuffled order).
    idx = np.stack([rng.permutation(skv) for _ in range(sq)])[None].astype(np.int64)
    y, lse = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": idx}, [("Y", F), ("", None), ("lse", F)],
                 {"is_causal": causal}, slots=TOPK_IN)
    np.testing.assert_allclose(y, dense_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, dense_lse, rtol=1e-5, atol=1e-6)
    # Training-free mode with top_k >= Skv: the same tiles as dense.
    y, sel, lse = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v}, TOPK_OUT,
                      {"is_causal": causal, "top_k": skv}, slots=TOPK_IN)
    np.testing.assert_allclose(y, dense_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lse, dense_lse, rtol=1e-6, atol=1e-7)
    vis = visible(sq, skv, causal)
    for ix in np.ndindex(b, hkv, sq):
        n = int(vis[ix[2]].sum())
        assert (sel[ix][:n] == np.flatnonzero(vis[ix[2]])).all() and (sel[ix][n:] == -1).all()


# ---------------------------------------------------------------- TopKAttention, training-free

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_training_free_selects_blocks_and_attends_exactly_to_them(lib, dtype):
    rng = np.random.default_rng(30)
    b, hq, hkv, sq, skv, d, top_k, window, sinks = 1, 4, 2, 100, 700, 16, 128, 40, 3
    q, k, v = (rand(rng, b, h, s, d, dt=dtype) for h, s in [(hq, sq), (hkv, skv), (hkv, skv)])
    # A few strong keys the bound should find.
    k[:, :, 300] *= 6
    outs = [("Y", TYPES[np.dtype(dtype)]), ("selected", I64), ("lse", F)]
    y, sel, lse = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v}, outs,
                      {"is_causal": 1, "top_k": top_k, "left_window_size": window, "num_global_tokens": sinks},
                      slots=TOPK_IN)
    vis = visible(sq, skv, True)
    allowed = np.zeros((b, hkv, sq, skv), bool)
    for ix in np.ndindex(b, hkv, sq):
        row = sel[ix]
        keys = row[row >= 0]
        assert (np.diff(keys) > 0).all() and (row[len(keys):] == -1).all()
        assert vis[ix[2]][keys].all(), "only visible keys"
        p = ix[2] + skv - sq
        assert set(range(max(0, p - window), p + 1)) <= set(keys), "local window kept"
        assert set(range(sinks)) <= set(keys), "sinks kept"
        # Whole blocks of 64 (cut by the causal limit): the keys of a block are contiguous up to p.
        for blk in set(keys // 64):
            lo, hi = blk * 64, min(blk * 64 + 64, p + 1, skv)
            assert set(range(lo, hi)) <= set(keys), (ix, blk)
        allowed[ix][keys] = True
    # Selection is per (query tile, KV head): at most ceil(top_k/64) + forced blocks.
    assert sel.shape[-1] >= 128
    want = sparse_reference(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                            np.repeat(allowed, hq // hkv, axis=1))
    tol = (1e-4, 2e-5) if dtype == np.float32 else (5e-3, 2e-3)
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=tol[0], atol=tol[1])
    assert np.isfinite(lse).all()
    # The selected lists round-trip through index mode (per KV head).
    (y2,) = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v, "indices": sel}, [("Y", TYPES[np.dtype(dtype)])],
                {"is_causal": 1})
    np.testing.assert_allclose(y2.astype(np.float32), y.astype(np.float32), rtol=tol[0], atol=tol[1])


def test_training_free_output_error_falls_as_top_k_grows(lib):
    rng = np.random.default_rng(31)
    b, h, sq, skv, d = 1, 2, 256, 1024, 32
    q, k, v = rand(rng, b, h, sq, d), rand(rng, b, h, skv, d), rand(rng, b, h, skv, d)
    k[:, :, ::97] *= 5  # structured: a few strong keys among noise
    dense, _ = attention_op(lib, q, k, v, 1)
    errs = []
    for top_k in [128, 512, 1024]:
        (y,) = run(lib, "TopKAttention", {"Q": q, "K": k, "V": v}, [("Y", F)], {"is_causal": 1, "top_k": top_k},
                   slots=TOPK_IN)
        errs.append(np.abs(y - dense).max())
    assert errs[0] >= errs[1] >= errs[2] and errs[2] < 1e-5, errs


def test_topk_threads_agree(lib):
    rng = np.random.default_rng(32)
    q, k, v = rand(rng, 2, 4, 70, 16), rand(rng, 2, 2, 300, 16), rand(rng, 2, 2, 300, 16)
    idx = random_lists(rng, 2, 70, 300, 33)
    for feeds, attrs in [({"Q": q, "K": k, "V": v}, {"top_k": 100, "is_causal": 1}),
                         ({"Q": q, "K": k, "V": v, "indices": idx}, {"is_causal": 1})]:
        one = run(lib, "TopKAttention", feeds, TOPK_OUT, attrs, threads=1, slots=TOPK_IN)
        four = run(lib, "TopKAttention", feeds, TOPK_OUT, attrs, threads=4, slots=TOPK_IN)
        for a, c in zip(one, four):
            assert np.array_equal(a, c)


# ---------------------------------------------------------------- MergeAttention

MERGE_OUT = [("Y", F), ("lse", F)]


@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_merge_of_two_key_halves_equals_full_attention(lib, layout):
    rng = np.random.default_rng(40)
    b, h, sq, skv, d = 2, 3, 11, 60, 8
    q, k, v = rand(rng, b, h, sq, d), rand(rng, b, h, skv, d), rand(rng, b, h, skv, d)
    cut = 25
    parts = [attention_op(lib, q, k[:, :, s], v[:, :, s], 0) for s in (slice(0, cut), slice(cut, None))]
    full_y, full_lse = attention_op(lib, q, k, v, 0)
    (ya, la), (yb, lb) = parts
    if layout == "3d":
        ya, yb = (y.transpose(0, 2, 1, 3).reshape(b, sq, h * d) for y in (ya, yb))
        full_y = full_y.transpose(0, 2, 1, 3).reshape(b, sq, h * d)
    la[0, 1, 2] = -np.inf  # an empty side weighs 0
    y, lse = run(lib, "MergeAttention", {"Y_a": ya, "lse_a": la, "Y_b": yb, "lse_b": lb}, MERGE_OUT)
    if layout == "3d":
        np.testing.assert_allclose(y.reshape(b, sq, h, d)[0, 2, 1], yb.reshape(b, sq, h, d)[0, 2, 1], rtol=1e-6)
        mask = np.ones((b, sq, h), bool)
        mask[0, 2, 1] = False
        np.testing.assert_allclose(y.reshape(b, sq, h, d)[mask], full_y.reshape(b, sq, h, d)[mask], rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(y[0, 1, 2], yb[0, 1, 2], rtol=1e-6)
        mask = np.ones((b, h, sq), bool)
        mask[0, 1, 2] = False
        np.testing.assert_allclose(y[mask], full_y[mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse[0, 1, 2], lb[0, 1, 2], rtol=1e-6)
    ok = np.ones(lse.shape, bool)
    ok[0, 1, 2] = False
    np.testing.assert_allclose(lse[ok], full_lse[ok], rtol=1e-5, atol=1e-6)


def test_merge_two_empty_sides_give_zero_and_float16(lib):
    ya = np.full((1, 1, 2, 4), 3, np.float16)
    lse = np.full((1, 1, 2), -np.inf, np.float32)
    y, l = run(lib, "MergeAttention", {"Y_a": ya, "lse_a": lse, "Y_b": ya, "lse_b": lse}, [("Y", TP.FLOAT16), ("lse", F)])
    assert y.dtype == np.float16 and (y == 0).all() and np.isneginf(l).all()


# ---------------------------------------------------------------- bad input

def idx_feeds(q=(1, 5, 2, 8), k=(1, 7, 8), w=(1, 5, 2), dt=np.float32):
    return {"index_q": np.ones(q, dt), "index_k": np.ones(k, np.float32), "index_w": np.ones(w, np.float32)}


def topk_feeds(idx=None, q=(1, 2, 4, 8), k=(1, 2, 6, 8)):
    f = {"Q": np.ones(q, np.float32), "K": np.ones(k, np.float32), "V": np.ones(k, np.float32)}
    if idx is not None:
        f["indices"] = np.asarray(idx)
    return f


def merge_feeds(y=(1, 2, 3, 4), lse=(1, 2, 3), yb=None, lse_b=None, lse_val=0.0):
    return {"Y_a": np.ones(y, np.float32), "lse_a": np.full(lse, lse_val, np.float32),
            "Y_b": np.ones(yb or y, np.float32), "lse_b": np.zeros(lse_b or lse, np.float32)}


GOOD_IDX = np.zeros((1, 4, 2), np.int64)
BAD = [
    # op, attrs, feeds, outputs, text the error must contain
    ("LightningIndexer", {"top_k": 0}, idx_feeds(), IDX_OUT, "top_k must be >= 1, got 0"),
    ("LightningIndexer", {"top_k": -3}, idx_feeds(), IDX_OUT, "top_k must be >= 1, got -3"),
    ("LightningIndexer", {}, idx_feeds(), IDX_OUT, "top_k is required"),
    ("LightningIndexer", {"top_k": 2, "format": "fp4"}, idx_feeds(), IDX_OUT, 'format must be "e4m3", "e5m2" or "f32"'),
    ("LightningIndexer", {"top_k": 2}, idx_feeds(k=(1, 7, 9)), IDX_OUT, "index_k: shape [1, 7, 9] must be (batch, kv_seq, index_dim)"),
    ("LightningIndexer", {"top_k": 2}, idx_feeds(k=(2, 7, 8)), IDX_OUT, "index_k: shape [2, 7, 8]"),
    ("LightningIndexer", {"top_k": 2}, idx_feeds(w=(1, 5, 3)), IDX_OUT, "index_w: shape [1, 5, 3] must be (batch, q_seq, index_heads) = [1, 5, 2]"),
    ("LightningIndexer", {"top_k": 2}, idx_feeds(q=(1, 5, 16)), IDX_OUT, "index_q: rank must be 4"),
    ("LightningIndexer", {"top_k": 2}, idx_feeds(dt=np.float64), IDX_OUT, "index_q: element type double is not supported (float, float16 or bfloat16)"),
    ("LightningIndexer", {"top_k": 2}, {**idx_feeds(), "index_k": np.full((1, 7, 8), np.nan, np.float32)}, IDX_OUT,
     "index_k: element 0 is NaN, must be finite"),
    ("TopKAttention", {}, topk_feeds(), TOPK_OUT, "top_k is required without an indices input"),
    ("TopKAttention", {"top_k": 0}, topk_feeds(), TOPK_OUT, "top_k must be >= 1, got 0"),
    ("TopKAttention", {}, topk_feeds(np.array([[[0, 6], [1, 2], [0, 1], [0, 1]]])), TOPK_OUT, "outside [0, 6)"),
    ("TopKAttention", {}, topk_feeds(np.array([[[0, -2], [1, 2], [0, 1], [0, 1]]])), TOPK_OUT, "holds -2, outside [0, 6)"),
    ("TopKAttention", {}, topk_feeds(np.array([[[0, 1], [3, 3], [0, 1], [0, 1]]])), TOPK_OUT, "names key 3 more than once"),
    ("TopKAttention", {}, topk_feeds(GOOD_IDX.astype(np.int32)), TOPK_OUT, "indices: element type int32 is not the expected int64"),
    ("TopKAttention", {}, topk_feeds(GOOD_IDX[0]), TOPK_OUT, "indices: rank must be 3"),
    ("TopKAttention", {}, topk_feeds(np.zeros((1, 3, 2), np.int64)), TOPK_OUT, "indices: shape [1, 3, 2] must be (batch, q_seq, k)"),
    ("TopKAttention", {}, topk_feeds(np.zeros((1, 3, 4, 2), np.int64)), TOPK_OUT, "indices: shape [1, 3, 4, 2] must be (batch, kv_num_heads, q_seq, k)"),
    ("TopKAttention", {}, topk_feeds(np.zeros((1, 4, 0), np.int64)), TOPK_OUT, "at least 1"),
    ("TopKAttention", {"top_k": 3}, topk_feeds(GOOD_IDX), TOPK_OUT, "indices: last axis 2 must equal the top_k attribute 3"),
    ("TopKAttention", {"top_k": 4, "left_window_size": -2}, topk_feeds(), TOPK_OUT, "left_window_size must be >= -1"),
    ("TopKAttention", {"top_k": 4}, topk_feeds(q=(1, 3, 4, 8)), TOPK_OUT, "must be a positive multiple of kv_num_heads"),
    ("TopKAttention", {"top_k": 4}, topk_feeds(k=(1, 2, 6, 7)), TOPK_OUT, "D mismatch"),
    ("TopKAttention", {"top_k": 4}, topk_feeds(q=(2, 8)), TOPK_OUT, "Q: rank must be 3"),
    ("MergeAttention", {}, merge_feeds(lse=(1, 2, 4)), MERGE_OUT, "lse_a: shape (1, 2, 4) must be (batch, heads, seq) of Y_a (1, 2, 3, 4)"),
    ("MergeAttention", {}, merge_feeds(yb=(1, 2, 3, 5)), MERGE_OUT, "Y_b: shape (1, 2, 3, 5) must equal Y_a's"),
    ("MergeAttention", {}, merge_feeds(lse_b=(1, 2, 2)), MERGE_OUT, "lse_b: shape (1, 2, 2) must equal lse_a's"),
    ("MergeAttention", {}, merge_feeds(y=(1, 3, 5), lse=(1, 2, 3)), MERGE_OUT, "must be (batch, heads, seq)"),
    ("MergeAttention", {}, merge_feeds(lse_val=np.nan), MERGE_OUT, "lse_a: element 0 is NaN or +inf"),
    ("MergeAttention", {}, {**merge_feeds(), "lse_b": np.zeros((1, 2, 3), np.float16)}, MERGE_OUT, "lse_b: element type float16 is not the expected float"),
]


@pytest.mark.parametrize("op,attrs,feeds,outputs,want", BAD, ids=[f"{b[0]}:{b[4][:40]}" for b in BAD])
def test_bad_input_names_input_and_rule(lib, op, attrs, feeds, outputs, want):
    slots = TOPK_IN if op == "TopKAttention" else None
    with pytest.raises(Exception) as err:
        run(lib, op, feeds, outputs, attrs, slots=slots)
    assert want in str(err.value), str(err.value)
    assert f"ai.tessera.{op}" in str(err.value), str(err.value)
