"""Greedy generation with onnxruntime-genai on make_tiny_decoder.py's model
(ai.tessera.Attention with a KV cache, loaded through genai_config.json's
`custom_ops_library`), checked token by token and logit by logit against the
same decoder in numpy (float64, whole sequence recomputed at every step):

  run_tiny_decoder.py MODEL_DIR
"""

import sys

import numpy as np
import onnxruntime_genai as og

HQ, HKV, D, EOS, MAX_LENGTH = 4, 2, 8, 2, 24
PROMPT = [5, 17, 42, 3, 9]


def reference_logits(w, tokens):
    """Logits of the last token, float64, no cache."""
    x = w["E"].astype(np.float64)[tokens]  # (S, C)
    s = len(tokens)
    q = (x @ w["Wq"]).reshape(s, HQ, D).transpose(1, 0, 2)
    k = np.repeat((x @ w["Wk"]).reshape(s, HKV, D).transpose(1, 0, 2), HQ // HKV, axis=0)
    v = np.repeat((x @ w["Wv"]).reshape(s, HKV, D).transpose(1, 0, 2), HQ // HKV, axis=0)
    a = q @ k.transpose(0, 2, 1) / np.sqrt(D)
    a = np.where(np.tril(np.ones((s, s), bool)), a, -np.inf)
    p = np.exp(a - a.max(-1, keepdims=True))
    y = ((p / p.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(s, HQ * D)
    return (y @ w["Wo"])[-1]


model_dir = sys.argv[1]
w = np.load(f"{model_dir}/weights.npz")
model = og.Model(model_dir)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=MAX_LENGTH)
gen = og.Generator(model, params)
gen.append_tokens(np.array([PROMPT], dtype=np.int32))
tokens, worst = list(PROMPT), 0.0
while not gen.is_done():
    # generate_next_token runs the model on the tokens so far (the prompt at
    # first, then one new token against the cache) and picks the next one;
    # get_output then holds the logits that it picked from.
    gen.generate_next_token()
    logits = np.asarray(gen.get_output("logits"))[0, -1]
    want = reference_logits(w, tokens)
    err = float(np.abs(logits - want).max() / np.abs(want).max())
    worst = max(worst, err)
    assert err < 1e-5, f"after {len(tokens)} tokens: logits off by {err:.1e} (relative to the largest)"
    tokens.append(int(gen.get_next_tokens()[0]))
    assert tokens[-1] == int(np.argmax(want)), f"after {len(tokens) - 1} tokens: genai chose {tokens[-1]}, numpy {np.argmax(want)}"
assert len(tokens) == MAX_LENGTH or tokens[-1] == EOS, f"genai stopped early: {tokens}"
assert len(tokens) - len(PROMPT) >= 8, f"too few tokens to test the cache: {tokens}"
print(f"ok   onnxruntime-genai {og.__version__}: {len(tokens) - len(PROMPT)} greedy tokens with the KV cache "
      f"equal numpy's; logits within {worst:.1e} of the largest")
