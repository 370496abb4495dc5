//! The f64 reference: the naive, materialising definition of attention that
//! every kernel is tested against. It shares no code with the kernel's mask
//! machinery: visibility is written out from the rules in [`crate::mask`].
//!
//! Cost: `O(B·Hq·Sq·Skv·(D + Dv))` time, three passes over the keys per
//! query, no scratch.

use crate::element::Element;
use crate::mask::{DenseMask, MaskSpec};
use crate::spec::AttentionSpec;

/// Is key `j` visible to query `i` of batch `b`, head `h`? Straight from the
/// rules in the [`crate::mask`] docs.
pub fn visible(
    mask: &MaskSpec<'_>,
    spec: &AttentionSpec,
    b: usize,
    h: usize,
    i: usize,
    j: usize,
) -> bool {
    let n = mask.kv_lens.map_or(spec.kv_len, |l| l[b]);
    if j >= n {
        return false;
    }
    let mut offset = mask.q_offset as i64;
    if mask.offset_from_kv_lens {
        offset += n as i64 - spec.q_len as i64;
    }
    let p = i as i64 + offset;
    let j64 = j as i64;
    if mask.causal && j64 > p {
        return false;
    }
    let g = mask.global_tokens as i64;
    let global = j64 < g || (p >= 0 && p < g);
    if !global {
        if mask.left_window >= 0 && j64 < p - mask.left_window as i64 {
            return false;
        }
        if mask.right_window >= 0 && j64 > p + mask.right_window as i64 {
            return false;
        }
        if mask.chunk > 0 {
            let c = mask.chunk as i64;
            if j64.div_euclid(c) != p.div_euclid(c) {
                return false;
            }
        }
    }
    if let Some(seg) = mask.segments {
        if seg.q[b * spec.q_len + i] != seg.kv[b * spec.kv_len + j] {
            return false;
        }
    }
    match mask.dense {
        Some(DenseMask::Bool(m, s)) => m[b * s.batch + h * s.head + i * s.q + j * s.k],
        _ => true,
    }
}

fn bias(mask: &MaskSpec<'_>, b: usize, h: usize, i: usize, j: usize) -> f64 {
    match mask.dense {
        Some(DenseMask::Additive(m, s)) => m[b * s.batch + h * s.head + i * s.q + j * s.k] as f64,
        _ => 0.0,
    }
}

/// The masked, soft-capped score of `(b, h, i, j)` in f64, or `None` if masked.
#[allow(clippy::too_many_arguments)]
pub fn score<T: Element>(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    q: &[T],
    k: &[T],
    b: usize,
    h: usize,
    i: usize,
    j: usize,
) -> Option<f64> {
    if !visible(mask, spec, b, h, i, j) {
        return None;
    }
    let hk = spec.kv_head(h);
    let qr = &q[spec.q.offset(b, h, i)..][..spec.head_dim];
    let kr = &k[spec.k.offset(b, hk, j)..][..spec.head_dim];
    let dot: f64 = qr
        .iter()
        .zip(kr)
        .map(|(a, c)| a.to_f32() as f64 * c.to_f32() as f64)
        .sum();
    let mut s = dot * spec.scale as f64;
    if spec.softcap > 0.0 {
        let c = spec.softcap as f64;
        s = c * libm::tanh(s / c);
    }
    s += bias(mask, b, h, i, j);
    (s != f64::NEG_INFINITY).then_some(s)
}

/// Attention in f64. `y` is `(B, Hq, Sq, Dv)` contiguous and `lse` is
/// `(B, Hq, Sq)`; a row that sees no key gets `y = 0`, `lse = -inf`.
/// Panics if the buffers do not fit the spec (test use only).
pub fn attention<T: Element>(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    q: &[T],
    k: &[T],
    v: &[T],
    y: &mut [f64],
    lse: &mut [f64],
) {
    let (sq, skv, dv) = (spec.q_len, spec.kv_len, spec.v_head_dim);
    for b in 0..spec.batch {
        for h in 0..spec.q_heads {
            let hk = spec.kv_head(h);
            for i in 0..sq {
                let row = ((b * spec.q_heads + h) * sq + i) * dv;
                let out = &mut y[row..row + dv];
                out.fill(0.0);
                let s = |j| score(spec, mask, q, k, b, h, i, j);
                let m = (0..skv).filter_map(s).fold(f64::NEG_INFINITY, f64::max);
                let li = (b * spec.q_heads + h) * sq + i;
                if m == f64::NEG_INFINITY {
                    lse[li] = f64::NEG_INFINITY;
                    continue;
                }
                let mut l = 0.0;
                for j in 0..skv {
                    if let Some(x) = s(j) {
                        let p = libm::exp(x - m);
                        l += p;
                        let vr = &v[spec.v.offset(b, hk, j)..][..dv];
                        for (o, x) in out.iter_mut().zip(vr) {
                            *o += p * x.to_f32() as f64;
                        }
                    }
                }
                out.iter_mut().for_each(|o| *o /= l);
                lse[li] = m + libm::log(l);
            }
        }
    }
}
