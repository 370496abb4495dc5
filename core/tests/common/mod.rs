//! Shared test helpers: random data, problem generation and comparison with
//! the f64 reference.
#![allow(dead_code)]

use tessera_core::{reference, AttentionSpec, Element, MaskSpec};

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never all zeros.
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec<T: Element>(&mut self, n: usize, amp: f32) -> Vec<T> {
        (0..n).map(|_| T::from_f32(self.f32() * amp)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The f64 reference outputs of a problem.
pub struct Expected {
    pub y: Vec<f64>,
    pub lse: Vec<f64>,
}

pub fn expected<T: Element>(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    q: &[T],
    k: &[T],
    v: &[T],
) -> Expected {
    let rows = spec.batch * spec.q_heads * spec.q_len;
    let mut y = vec![f64::NAN; rows * spec.v_head_dim];
    let mut lse = vec![f64::NAN; rows];
    reference::attention(spec, mask, q, k, v, &mut y, &mut lse);
    Expected { y, lse }
}

/// Compare a kernel's `Y` (read through `spec.out` strides) and lse with the
/// reference: `|y - y_ref| <= tol · max|V|` and `|lse - lse_ref| <= tol · max(1, |lse_ref|)`.
/// Panics with the first mismatch; NaN never passes.
pub fn assert_close<O: Element>(
    spec: &AttentionSpec,
    exp: &Expected,
    y: &[O],
    lse: &[f32],
    v_amp: f64,
    tol: f64,
) {
    let dv = spec.v_head_dim;
    for b in 0..spec.batch {
        for h in 0..spec.q_heads {
            for i in 0..spec.q_len {
                let row = (b * spec.q_heads + h) * spec.q_len + i;
                let want_l = exp.lse[row];
                let got_l = lse[row] as f64;
                if want_l == f64::NEG_INFINITY {
                    assert_eq!(got_l, f64::NEG_INFINITY, "lse[{b},{h},{i}] should be -inf");
                } else {
                    assert!(
                        (got_l - want_l).abs() <= tol * want_l.abs().max(1.0),
                        "lse[{b},{h},{i}]: got {got_l}, want {want_l}"
                    );
                }
                let off = spec.out.offset(b, h, i);
                for e in 0..dv {
                    let got = y[off + e].to_f32() as f64;
                    let want = exp.y[row * dv + e];
                    assert!(
                        (got - want).abs() <= tol * v_amp,
                        "Y[{b},{h},{i},{e}]: got {got}, want {want} (tol {})",
                        tol * v_amp
                    );
                }
            }
        }
    }
}
