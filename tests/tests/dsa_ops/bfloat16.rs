//! bfloat16 inputs run as their exact values, in the indexer and in
//! attention.

use half::bf16;
use ort::session::SessionInputValue;
use tessera_tests::onnx::elem;
use tessera_tests::Rng;

use crate::env;
use crate::node::{bf16_in, f32_in, model, round_bf16, run};
use crate::reference::{assert_close, reference, visible};
use crate::shared::session;

#[test]
fn bfloat16_inputs_run_as_their_exact_values() {
    if env().is_none() {
        return;
    }
    let mut rng = Rng::new(5);
    // LightningIndexer: bfloat16 operands pick the same keys as their f32 values.
    let (b, sq, skv, hi, di) = (1, 24, 60, 2, 32);
    let (q, k, w) = (
        rng.vec(b * sq * hi * di),
        rng.vec(b * skv * di),
        rng.vec(b * sq * hi),
    );
    let attrs = [("top_k", 8), ("is_causal", 1)];
    let outputs = [("indices", elem::INT64)];
    let half = run(
        "LightningIndexer",
        &attrs,
        vec![
            bf16_in("index_q", &[b, sq, hi, di], &q),
            bf16_in("index_k", &[b, skv, di], &k),
            bf16_in("index_w", &[b, sq, hi], &w),
        ],
        &outputs,
        2,
    )
    .unwrap();
    let wide = run(
        "LightningIndexer",
        &attrs,
        vec![
            f32_in("index_q", &[b, sq, hi, di], round_bf16(&q)),
            f32_in("index_k", &[b, skv, di], round_bf16(&k)),
            f32_in("index_w", &[b, sq, hi], round_bf16(&w)),
        ],
        &outputs,
        2,
    )
    .unwrap();
    assert_eq!(half, wide);

    // TopKAttention (training-free, every key) on bfloat16: dense attention
    // to bfloat16 precision.
    let (hq, d) = (2, 16);
    let (q, k, v) = (
        round_bf16(&rng.vec(hq * sq * d)),
        round_bf16(&rng.vec(hq * skv * d)),
        round_bf16(&rng.vec(hq * skv * d)),
    );
    let env = env().unwrap();
    let decl = [
        ("Q", elem::BFLOAT16),
        ("K", elem::BFLOAT16),
        ("V", elem::BFLOAT16),
    ];
    let m = model(
        "TopKAttention",
        &[("is_causal", 1), ("top_k", skv as i64)],
        &decl,
        &[("Y", elem::BFLOAT16)],
    );
    let mut sess = session(env, &m, 2).unwrap();
    let feeds: Vec<(String, SessionInputValue<'_>)> = vec![
        bf16_in("Q", &[1, hq, sq, d], &q),
        bf16_in("K", &[1, hq, skv, d], &k),
        bf16_in("V", &[1, hq, skv, d], &v),
    ]
    .into_iter()
    .map(|(n, _, x)| (n.to_string(), x.into()))
    .collect();
    let out = sess.run(feeds).unwrap();
    let (_, y) = out["Y"].try_extract_tensor::<bf16>().unwrap();
    let y: Vec<f32> = y.iter().map(|x| x.to_f32()).collect();
    let (want, _) = reference((1, hq, hq, sq, skv, d), &q, &k, &v, |_, _, i, j| {
        visible(true, i, sq, j, skv)
    });
    assert_close("Y (bfloat16)", &y, &want, 8e-3);
}
