"""ai.tessera.Attention from Python: numbers against an f64 reference, a
table of bad inputs with the message each must give, and threads sharing
one session."""

import threading

import numpy as np
import pytest
from onnx import TensorProto as TP

from conftest import attention_model, reference, session

F = TP.FLOAT


def rand(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize(
    "name,attrs,shapes,ref",
    [
        ("dense gqa", {}, ((2, 4, 33, 16), (2, 2, 47, 16), (2, 2, 47, 16)), {}),
        ("causal", {"is_causal": 1}, ((1, 3, 70, 8), (1, 3, 70, 8), (1, 3, 70, 8)), {"causal": True}),
        ("window+globals", {"is_causal": 1, "left_window_size": 6, "right_window_size": 0, "num_global_tokens": 2},
         ((1, 2, 90, 8), (1, 1, 90, 8), (1, 1, 90, 8)), {"causal": True, "left": 6, "right": 0, "globals_": 2}),
        ("scale", {"scale": 0.3}, ((1, 2, 5, 8), (1, 2, 9, 8), (1, 2, 9, 8)), {"scale": 0.3}),
    ],
)
def test_matches_reference(lib, name, attrs, shapes, ref):
    rng = np.random.default_rng(len(name))
    q, k, v = (rand(rng, *s) for s in shapes)
    sess = session(lib, attention_model([("Q", F), ("K", F), ("V", F)], attrs), threads=2)
    (y,) = sess.run(None, {"Q": q, "K": k, "V": v})
    want = reference(q, k, v, **ref)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=2e-5, err_msg=name)


def test_bool_mask_and_lse(lib):
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 1, 2, 6, 8), rand(rng, 1, 2, 10, 8), rand(rng, 1, 2, 10, 8)
    mask = rng.uniform(size=(6, 10)) > 0.3
    mask[2] = False  # a fully masked row must give 0 and lse -inf
    model = attention_model(
        [("Q", F), ("K", F), ("V", F), ("attn_mask", TP.BOOL)],
        outputs=(("Y", None), ("", None), ("", None), ("", None), ("lse", F)),
    )
    y, lse = session(lib, model).run(None, {"Q": q, "K": k, "V": v, "attn_mask": mask})
    np.testing.assert_allclose(y, reference(q, k, v, bool_mask=mask), rtol=1e-4, atol=2e-5)
    assert (y[:, :, 2] == 0).all() and np.isneginf(lse[:, :, 2]).all()
    assert np.isfinite(lse[:, :, [0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("rows", ["right-padded", "one row empty", "one row with a hole", "broadcast batch"])
@pytest.mark.parametrize("attrs,ref", [({}, {}), ({"is_causal": 1}, {"causal": True}),
                                       ({"left_window_size": 9, "right_window_size": 9}, {"left": 9, "right": 9})])
def test_key_padding_masks(lib, rows, attrs, ref):
    """(B|1, 1, 1, S) bool masks: prefix rows run as key lengths (tiles
    skipped), anything else as a dense mask; both must equal the reference."""
    rng = np.random.default_rng(7)
    b, s = 3, 150
    q, k, v = rand(rng, b, 2, s, 16), rand(rng, b, 1, s, 16), rand(rng, b, 1, s, 16)
    lens = {"right-padded": [150, 97, 1], "one row empty": [150, 0, 64], "one row with a hole": [150, 97, 40]}
    if rows == "broadcast batch":
        mask = (np.arange(s) < 77)[None, None, None, :]
    else:
        mask = (np.arange(s)[None, :] < np.array(lens[rows])[:, None])[:, None, None, :]
        if rows == "one row with a hole":
            mask[2, 0, 0, 10] = False
    model = attention_model([("Q", F), ("K", F), ("V", F), ("attn_mask", TP.BOOL)], attrs)
    (y,) = session(lib, model, threads=2).run(None, {"Q": q, "K": k, "V": v, "attn_mask": mask})
    np.testing.assert_allclose(y, reference(q, k, v, bool_mask=mask, **ref), rtol=1e-4, atol=2e-5)


def q_k_v(q=(1, 2, 4, 8), k=(1, 2, 5, 8), v=(1, 2, 5, 8), dt=np.float32):
    return {"Q": np.ones(q, dt), "K": np.ones(k, dt), "V": np.ones(v, dt)}


BAD = [
    # name, attrs, feeds, text the error must contain
    ("wrong rank", {}, q_k_v(q=(2, 8)), "Q: rank must be 3"),
    ("heads do not divide", {}, q_k_v(q=(1, 3, 4, 8)), "q_num_heads (3) must be a positive multiple of kv_num_heads (2)"),
    ("D mismatch", {}, q_k_v(k=(1, 2, 5, 7)), "D mismatch"),
    ("bad mask shape", {}, {**q_k_v(), "attn_mask": np.zeros((3, 5), np.float32)}, "attn_mask: shape (3, 5) does not broadcast"),
    ("mask dtype", {}, {**q_k_v(), "attn_mask": np.zeros((4, 5), np.int32)}, "attn_mask: element type int32 is not supported"),
    ("K dtype", {}, {**q_k_v(), "K": np.ones((1, 2, 5, 8), np.float16)}, "K: element type float16 must equal Q's float"),
    ("Q dtype", {}, q_k_v(dt=np.float64), "tensor(double)"),
    ("window below -1", {"right_window_size": -3}, q_k_v(), "right_window_size must be >= -1"),
    ("size overflow", {}, q_k_v(q=(0, 3 << 19, 1 << 20, 1 << 20), k=(0, 1, 1, 1 << 20), v=(0, 1, 1, 8)), "overflows the address space"),
    ("nonpad out of range", {}, {**q_k_v(), "nonpad_kv_seqlen": np.array([6], np.int64)}, "nonpad_kv_seqlen[0] = 6 must be within [0, 5]"),
    ("3-D without head counts", {}, q_k_v(q=(1, 4, 16), k=(1, 5, 16), v=(1, 5, 16)), "3-D inputs need"),
]


@pytest.mark.parametrize("name,attrs,feeds,want", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_input_and_rule(lib, name, attrs, feeds, want):
    types = {np.dtype(np.float32): F, np.dtype(np.float16): TP.FLOAT16, np.dtype(np.float64): TP.DOUBLE,
             np.dtype(np.int32): TP.INT32, np.dtype(np.int64): TP.INT64, np.dtype(bool): TP.BOOL}
    model = attention_model([(n, types[x.dtype]) for n, x in feeds.items()], attrs)
    with pytest.raises(Exception) as err:
        session(lib, model).run(None, feeds)
    assert want in str(err.value), str(err.value)


def test_threads_share_one_session(lib):
    rng = np.random.default_rng(5)
    feeds = {"Q": rand(rng, 2, 4, 150, 32), "K": rand(rng, 2, 2, 150, 32), "V": rand(rng, 2, 2, 150, 32)}
    model = attention_model([("Q", F), ("K", F), ("V", F)], {"is_causal": 1, "left_window_size": 50})
    (single,) = session(lib, model, threads=1).run(None, feeds)
    np.testing.assert_allclose(single, reference(feeds["Q"], feeds["K"], feeds["V"], causal=True, left=50), rtol=1e-4, atol=2e-5)
    shared = session(lib, model, threads=2)
    others = [session(lib, model, threads=2) for _ in range(3)]
    results, errors = [], []

    def worker(t):
        try:
            for _ in range(5):
                results.append(shared.run(None, feeds)[0])
                results.append(others[t % 3].run(None, feeds)[0])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 80
    for r in results:
        assert np.array_equal(r, single)


def test_tessera_kernel_forces_one_or_fails_clearly(lib, monkeypatch):
    """TESSERA_KERNEL picks the micro-kernel; every kernel gives the same
    numbers, and a name the CPU cannot run (or no kernel's name) fails the
    op with a message naming the variable, never a silent fallback."""
    rng = np.random.default_rng(11)
    feeds = {"Q": rand(rng, 1, 2, 150, 64), "K": rand(rng, 1, 2, 300, 64), "V": rand(rng, 1, 2, 300, 64)}
    want = reference(feeds["Q"], feeds["K"], feeds["V"])
    model = attention_model([("Q", F), ("K", F), ("V", F)], {})
    ran = []
    for name in ["portable", "avx2", "avx512", "neon"]:
        monkeypatch.setenv("TESSERA_KERNEL", name)
        try:
            (y,) = session(lib, model, threads=2).run(None, feeds)
        except Exception as e:  # noqa: BLE001
            assert "TESSERA_KERNEL" in str(e), str(e)
            print(f"kernel {name}: skipped ({e})")
            continue
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=2e-5, err_msg=name)
        ran.append(name)
    assert "portable" in ran
    monkeypatch.setenv("TESSERA_KERNEL", "avx1024")
    with pytest.raises(Exception) as err:
        session(lib, model).run(None, feeds)
    assert "TESSERA_KERNEL" in str(err.value) and "avx1024" in str(err.value), str(err.value)
