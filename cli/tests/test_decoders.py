"""Decoders exported with a KV cache (models/export.py --decoders): inspect
finds every site with its cache, rewrite feeds the past to ai.tessera.Attention
and keeps the present outputs, and greedy generation through the cache gives
the same tokens as the original and as PyTorch. Run by scripts/test.d/50-cli.sh."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from test_cli import MODELS, PLUGIN, model, tessera

# name: (sites, q heads, kv heads, head dim, windowed sites)
DECODERS = {}
for form in ("kv_eager_opset17", "kv_eager_opset20", "kv_sdpa_opset20", "kv_attention_opset24"):
    DECODERS[f"smollm2_{form}"] = (2, 9, 3, 16, 0)
    DECODERS[f"gemma3_{form}"] = (3, 4, 1, 32, 2)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_inspect_finds_each_cached_site_with_its_offset_mask(name):
    sites, hq, hkv, d, windowed = DECODERS[name]
    report = json.loads(tessera("inspect", model(name), "--json").stdout)["sites"]
    assert len(report) == sites
    for i, s in enumerate(report):
        assert s["exact_rewrite"], s
        assert s["kv_cache"] == {"past_key": f"past_key_values.{i}.key", "past_value": f"past_key_values.{i}.value",
                                 "present_key": f"present.{i}.key", "present_value": f"present.{i}.value"}
        assert (s["q_heads"], s["kv_heads"], s["head_dim"]) == (hq, hkv, d)
        assert s["mask"]["padding"] and (s["mask"]["causal"] or s["mask"]["window"] == [63, 0]), s["mask"]
    # Gemma 3's sliding layers (window 64: the query and the 63 keys before it), then one full layer.
    assert [s["mask"]["window"] is not None for s in report].count(True) == windowed


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_rewrite_takes_the_cache_into_the_op_and_generation_is_identical(name, tmp_path):
    sites, _, _, _, windowed = DECODERS[name]
    out = str(tmp_path / "rewritten.onnx")
    tessera("rewrite", model(name), "-o", out)
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    attn = [n for n in m.graph.node if n.domain == "ai.tessera"]
    assert len(attn) == sites
    for i, n in enumerate(attn):
        assert list(n.input[4:6]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert list(n.output[1:3]) == [f"present.{i}.key", f"present.{i}.value"]
        attrs = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
        assert attrs.get("is_causal") == 1 or (attrs["left_window_size"], attrs["right_window_size"]) == (63, 0)
    assert sum(1 for n in attn if any(a.name == "left_window_size" and a.i == 63 for a in n.attribute)) == windowed
    assert [o.name for o in m.graph.output] == [o.name for o in onnx.load(model(name)).graph.output]
    # verify on a cache model: prefill 100 tokens (left-padded batch of 2), then 8 cached steps.
    rep = json.loads(tessera("verify", model(name), out, "--seq", "100", "--batch", "2", "--tol", "1e-4", "--json").stdout)
    assert rep["pass"] and rep["tokens_identical"] and rep["steps"] == 8
    assert rep["logits_max_abs"]["prefill_compared"] == "unpadded positions"
    # generate: a given prompt, 20 tokens through the cache (the window of 64 is crossed).
    ids = ",".join(str(3 + (7 * i) % 500) for i in range(60))
    r = tessera("generate", model(name), out, "--prompt-ids", ids, "--tokens", "20", "--tol", "1e-4", "--json")
    rep = json.loads(r.stdout)
    assert rep["pass"] and rep["tokens_identical"] and len(rep["tokens"]["rewritten"][0]) == 20
    assert rep["rewritten"]["ms_per_token"] > 0


def greedy_ort(path, ids, mask, steps):
    so = ort.SessionOptions()
    so.register_custom_ops_library(PLUGIN)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    pasts = {i.name: np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
             for i in sess.get_inputs() if i.name.startswith("past_key_values")}
    names = [o.name for o in sess.get_outputs()]
    tokens, logits, done = [], [], 0
    for _ in range(steps):
        pos = np.maximum(np.cumsum(mask, 1) - 1, 0)[:, done:]
        outs = dict(zip(names, sess.run(names, {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **pasts})))
        last = outs["logits"][:, -1]
        logits.append(last)
        tokens.append(last.argmax(-1))
        done, ids = mask.shape[1], tokens[-1][:, None].astype(np.int64)
        pasts = {p: outs[p.replace("past_key_values", "present")] for p in pasts}
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], 1)
    return np.stack(tokens, 1), np.stack(logits, 1)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_original_and_rewrite_generate_what_pytorch_generates(name, tmp_path):
    """models/*.ref.npz holds PyTorch's greedy generation through its own cache for a
    left-padded batch of 2: the export and its rewrite both reproduce it."""
    ref = np.load(os.path.join(MODELS, f"{name}.ref.npz"))
    out = str(tmp_path / "rewritten.onnx")
    tessera("rewrite", model(name), "-o", out)
    assert (ref["prompt_mask"] == 0).any(), "the reference batch is padded"
    for path in (model(name), out):
        tokens, logits = greedy_ort(path, ref["prompt_ids"], ref["prompt_mask"], ref["tokens"].shape[1])
        assert (tokens == ref["tokens"]).all(), path
        assert np.abs(logits - ref["step_logits"]).max() <= 1e-4, path
    assert len(set(ref["tokens"][0].tolist())) > 1, "the reference tokens vary"


def test_generate_refuses_a_model_without_cache_and_a_missing_prompt(tmp_path):
    r = tessera("generate", model("llama_eager_opset17"), model("llama_eager_opset17"), "--prompt-ids", "1,2", check=False)
    assert r.returncode == 2 and "no KV cache" in r.stderr
    r = tessera("generate", model("smollm2_kv_eager_opset17"), model("smollm2_kv_eager_opset17"), check=False)
    assert r.returncode == 2 and "--prompt" in r.stderr
    r = tessera("generate", model("smollm2_kv_eager_opset17"), model("smollm2_kv_eager_opset17"),
                "--prompt", str(tmp_path / "none.txt"), "--tokenizer", str(tmp_path / "none.json"), check=False)
    assert r.returncode == 2 and "none.txt: no such file" in r.stderr


@pytest.mark.parametrize("name", ["smollm2_kv_eager_opset17", "gemma3_kv_eager_opset20"])
def test_logits_last_computes_the_head_at_the_last_position_only(name, tmp_path):
    out = str(tmp_path / "last.onnx")
    r = tessera("rewrite", model(name), "-o", out, "--logits", "last")
    assert "computed at the last position only" in r.stderr
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    dims = m.graph.output[0].type.tensor_type.shape.dim
    assert m.graph.output[0].name == "logits" and dims[1].dim_value == 1 and dims[2].dim_value == 512
    so = ort.SessionOptions()
    so.register_custom_ops_library(PLUGIN)
    sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
    ref = np.load(os.path.join(MODELS, f"{name}.ref.npz"))
    ids, mask = ref["prompt_ids"], ref["prompt_mask"]
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
    logits = sess.run(["logits"], feeds)[0]
    assert logits.shape == (2, 1, 512)
    assert np.abs(logits[:, 0] - ref["step_logits"][:, 0]).max() <= 1e-4, "PyTorch's first step"
    rep = json.loads(tessera("verify", model(name), out, "--seq", "64", "--batch", "2", "--tol", "1e-4", "--json").stdout)
    assert rep["pass"] and rep["logits_max_abs"]["prefill_compared"] == "last position"
    again = str(tmp_path / "again.onnx")
    r = tessera("rewrite", out, "-o", again, "--logits", "last")
    assert "already computed at the last position only" in r.stderr
    assert open(again, "rb").read() == open(out, "rb").read()


def test_logits_last_refuses_a_model_without_logits(tmp_path):
    r = tessera("rewrite", model("llama_eager_opset17"), "-o", str(tmp_path / "x.onnx"), "--logits", "last", check=False)
    assert r.returncode == 2 and "no graph output named like 'logits'" in r.stderr
    r = tessera("rewrite", model("llama_eager_opset17"), "-o", str(tmp_path / "x.onnx"), "--logits", "first", check=False)
    assert r.returncode == 2 and "--logits 'first'" in r.stderr
