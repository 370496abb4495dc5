//! The f64 references the ops are checked against, and random key lists.

use std::collections::BTreeSet;

use tessera_tests::Rng;

/// Query `i` of `sq` sees key `j` of `skv` (bottom-right causal rule).
pub fn visible(causal: bool, i: usize, sq: usize, j: usize, skv: usize) -> bool {
    !causal || j + sq <= i + skv
}

/// f64 attention of BHSD q/k/v over the keys `allowed(b, h, i, j)` admits;
/// returns Y and lse (`-inf`, Y = 0 for a row with no key).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    (b, hq, hkv, sq, skv, d): (usize, usize, usize, usize, usize, usize),
    q: &[f32],
    k: &[f32],
    v: &[f32],
    allowed: impl Fn(usize, usize, usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut y, mut lse) = (
        vec![0.0; b * hq * sq * d],
        vec![f64::NEG_INFINITY; b * hq * sq],
    );
    for bi in 0..b {
        for h in 0..hq {
            let hk = h / (hq / hkv);
            for i in 0..sq {
                let qr = &q[((bi * hq + h) * sq + i) * d..][..d];
                let s: Vec<(usize, f64)> = (0..skv)
                    .filter(|&j| allowed(bi, h, i, j))
                    .map(|j| {
                        let kr = &k[((bi * hkv + hk) * skv + j) * d..][..d];
                        (
                            j,
                            scale
                                * qr.iter()
                                    .zip(kr)
                                    .map(|(&a, &c)| a as f64 * c as f64)
                                    .sum::<f64>(),
                        )
                    })
                    .collect();
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().fold(f64::NEG_INFINITY, |m, &(_, x)| m.max(x));
                let l: f64 = s.iter().map(|&(_, x)| (x - m).exp()).sum();
                let out = &mut y[((bi * hq + h) * sq + i) * d..][..d];
                for &(j, x) in &s {
                    let p = (x - m).exp() / l;
                    let vr = &v[((bi * hkv + hk) * skv + j) * d..][..d];
                    out.iter_mut()
                        .zip(vr)
                        .for_each(|(o, &c)| *o += p * c as f64);
                }
                lse[(bi * hq + h) * sq + i] = m + l.ln();
            }
        }
    }
    (y, lse)
}

pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g == f32::NEG_INFINITY && w == f64::NEG_INFINITY)
            || (g as f64 - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{name}[{i}] = {g}, want {w}");
    }
}

/// Random duplicate-free key lists of width `k` with some `-1` padding.
pub fn random_lists(rng: &mut Rng, rows: usize, skv: usize, k: usize) -> Vec<i64> {
    let mut out = vec![-1i64; rows * k];
    for row in out.chunks_exact_mut(k) {
        let n = rng.below(k.min(skv) + 1);
        let mut keys = BTreeSet::new();
        while keys.len() < n {
            keys.insert(rng.below(skv) as i64);
        }
        for (slot, j) in row.iter_mut().zip(keys.into_iter().rev()) {
            *slot = j; // descending: the op must not rely on order
        }
    }
    out
}
