//! Bench inputs: random or structured (topic) queries and keys for the
//! indexer and attention, and their FP8 quantisation.

use super::*;

/// Indexer inputs: `(q, k, w)` as f32, random or structured (a few strong
/// keys per topic among noise).
pub(super) fn indexer_inputs(
    s: usize,
    hi: usize,
    di: usize,
    structured: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    if !structured {
        return (
            rng.vec(s * hi * di, 1.0),
            rng.vec(s * di, 1.0),
            (0..s * hi).map(|_| rng.f32().abs() + 0.05).collect(),
        );
    }
    const TOPICS: usize = 32;
    let topics = rng.vec(TOPICS * di, 1.0);
    let mut k = rng.vec(s * di, 0.3);
    for key in 0..s {
        if rng.below(100) < 3 {
            let t = rng.below(TOPICS);
            for d in 0..di {
                k[key * di + d] += 3.0 * topics[t * di + d];
            }
        }
    }
    let mut q = rng.vec(s * hi * di, 0.3);
    for t in 0..s {
        let topic = rng.below(TOPICS);
        for j in 0..hi {
            for d in 0..di {
                q[(t * hi + j) * di + d] += topics[topic * di + d];
            }
        }
    }
    (q, k, (0..s * hi).map(|_| rng.f32().abs() + 0.05).collect())
}

pub(super) fn quantized<F: Fp8>(x: &[f32], di: usize) -> (Vec<F>, Vec<f32>) {
    let mut q = vec![F::default(); x.len()];
    let mut s = vec![0.0f32; x.len() / di];
    quantize(x, di, di, &mut q, &mut s).unwrap();
    (q, s)
}

/// Attention inputs for one head: random, or structured (keys drift slowly
/// along the sequence so nearby keys are alike; queries aim at a few
/// earlier positions shared by runs of 32 queries).
pub(super) fn attention_inputs(
    s: usize,
    d: usize,
    structured: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    let v = rng.vec(s * d, 1.0);
    if !structured {
        return (rng.vec(s * d, 1.0), rng.vec(s * d, 1.0), v);
    }
    let mut k = vec![0.0f32; s * d];
    let mut walk = rng.vec(d, 1.0);
    for key in 0..s {
        for dd in 0..d {
            walk[dd] = 0.995 * walk[dd] + 0.1 * rng.f32();
            k[key * d + dd] = 2.0 * walk[dd] + 0.3 * rng.f32();
        }
    }
    // Each run of 32 queries aims at 4 shared earlier positions (nearby
    // queries attend alike), each query at one of them.
    let mut q = vec![0.0f32; s * d];
    let mut targets = [0usize; 4];
    for t in 0..s {
        if t % 32 == 0 {
            targets.iter_mut().for_each(|x| *x = rng.below(t + 1));
        }
        let target = targets[rng.below(4)];
        for dd in 0..d {
            q[t * d + dd] = 0.5 * k[target * d + dd] + 0.3 * rng.f32();
        }
    }
    (q, k, v)
}
