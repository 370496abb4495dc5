//! `LightningIndexer` against a reference on dequantised values.

use tessera_core::fp8::{dequantize, quantize, SCALE_GROUP};
use tessera_core::{Scales, E4M3};
use tessera_tests::onnx::elem;
use tessera_tests::Rng;

use crate::env;
use crate::node::{f32_in, run};
use crate::reference::visible;

#[test]
fn indexer_e4m3_top_k_matches_the_reference_on_dequantised_values() {
    if env().is_none() {
        return;
    }
    let (b, sq, skv, hi, di, top_k) = (2, 21, 90, 4, 160, 9);
    let mut rng = Rng::new(1);
    let q = rng.vec(b * sq * hi * di);
    let k = rng.vec(b * skv * di);
    let w: Vec<f32> = (0..b * sq * hi)
        .map(|_| 0.55 + 0.45 * rng.uniform())
        .collect();
    let out = run(
        "LightningIndexer",
        &[("top_k", top_k as i64), ("is_causal", 1)],
        vec![
            f32_in("index_q", &[b, sq, hi, di], q.clone()),
            f32_in("index_k", &[b, skv, di], k.clone()),
            f32_in("index_w", &[b, sq, hi], w.clone()),
        ],
        &[("indices", elem::INT64)],
        2,
    )
    .unwrap();
    let (shape, idx) = out[0].i();
    assert_eq!(shape, [b as i64, sq as i64, top_k as i64]);
    // What the op computes with: per-128 E4M3 quantisation, then exact values.
    let dq = |x: &[f32]| {
        let mut codes = vec![E4M3::default(); x.len()];
        let mut scales = vec![0.0; x.len() / di * di.div_ceil(SCALE_GROUP)];
        quantize(x, di, SCALE_GROUP, &mut codes, &mut scales).unwrap();
        let mut back = vec![0.0; x.len()];
        let s = Scales {
            values: &scales,
            group: SCALE_GROUP,
        };
        dequantize(&codes, di, s, &mut back).unwrap();
        back
    };
    let (qd, kd) = (dq(&q), dq(&k));
    for bi in 0..b {
        for t in 0..sq {
            let scores: Vec<f64> = (0..skv)
                .map(|s| {
                    if !visible(true, t, sq, s, skv) {
                        return f64::NEG_INFINITY;
                    }
                    (0..hi)
                        .map(|j| {
                            let qr = &qd[((bi * sq + t) * hi + j) * di..][..di];
                            let kr = &kd[(bi * skv + s) * di..][..di];
                            let dot: f64 =
                                qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                            w[(bi * sq + t) * hi + j] as f64 * dot.max(0.0)
                        })
                        .sum()
                })
                .collect();
            let mut finite: Vec<f64> = scores.iter().copied().filter(|x| x.is_finite()).collect();
            finite.sort_by(|a, c| c.partial_cmp(a).unwrap());
            let n = top_k.min(finite.len());
            let row = &idx[(bi * sq + t) * top_k..][..top_k];
            assert!(
                row[n..].iter().all(|&x| x == -1),
                "({bi},{t}) padding: {row:?}"
            );
            assert!(
                row[..n].windows(2).all(|p| p[0] < p[1]),
                "({bi},{t}) ascending: {row:?}"
            );
            let kth = finite[n - 1];
            for &j in &row[..n] {
                assert!(
                    scores[j as usize] >= kth - 1e-4 * finite[0].abs(),
                    "({bi},{t}) key {j} is not in the top {n}"
                );
            }
        }
    }
}
