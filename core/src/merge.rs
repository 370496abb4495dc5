//! Exact merging of attention results computed over disjoint key sets.
//!
//! With `Y_x = softmax-weighted V over keys X` and `lse_x = ln Σ_X e^s`, the
//! result over `A ∪ B` is
//! `Y = (e^{lse_a}·Y_a + e^{lse_b}·Y_b) / (e^{lse_a} + e^{lse_b})`,
//! `lse = ln(e^{lse_a} + e^{lse_b})`, computed relative to `max(lse_a, lse_b)`
//! so nothing overflows. An empty side has `lse = -inf` and weight 0; two
//! empty sides give `Y = 0`, `lse = -inf`. Cost: `O(rows · Dv)`, no scratch.

use crate::element::Element;
use crate::error::{Error, Tensor};

/// Merge row `(y_a, lse_a)` with `(y_b, lse_b)` into `(y, lse)`; one row of
/// `y` per entry of `lse`. Buffers may be any [`Element`]; math is f32.
pub fn merge<A: Element, B: Element, O: Element>(
    y_a: &[A],
    lse_a: &[f32],
    y_b: &[B],
    lse_b: &[f32],
    y: &mut [O],
    lse: &mut [f32],
    v_head_dim: usize,
) -> Result<(), Error> {
    let rows = lse.len();
    let need = rows
        .checked_mul(v_head_dim)
        .ok_or(Error::Overflow(Tensor::Y))?;
    for (t, got) in [(Tensor::Lse, lse_a.len()), (Tensor::Lse, lse_b.len())] {
        if got != rows {
            return Err(Error::WrongLength {
                tensor: t,
                expected: rows,
                got,
            });
        }
    }
    for got in [y_a.len(), y_b.len(), y.len()] {
        if got != need {
            return Err(Error::WrongLength {
                tensor: Tensor::Y,
                expected: need,
                got,
            });
        }
    }
    if v_head_dim == 0 {
        return Err(Error::ZeroHeadDim);
    }
    let rows_a = y_a.chunks_exact(v_head_dim);
    let rows_b = y_b.chunks_exact(v_head_dim);
    for (r, ((ya, yb), yo)) in rows_a
        .zip(rows_b)
        .zip(y.chunks_exact_mut(v_head_dim))
        .enumerate()
    {
        let (wa, wb, l) = weights(lse_a[r], lse_b[r]);
        lse[r] = l;
        for ((o, a), b) in yo.iter_mut().zip(ya).zip(yb) {
            let va = if wa == 0.0 { 0.0 } else { wa * a.to_f32() };
            let vb = if wb == 0.0 { 0.0 } else { wb * b.to_f32() };
            *o = O::from_f32(va + vb);
        }
    }
    Ok(())
}

/// Merge `(y_b, lse_b)` into an f32 accumulator in place.
pub fn merge_into(
    y: &mut [f32],
    lse: &mut [f32],
    y_b: &[f32],
    lse_b: &[f32],
    v_head_dim: usize,
) -> Result<(), Error> {
    let rows = lse.len();
    let need = rows
        .checked_mul(v_head_dim)
        .ok_or(Error::Overflow(Tensor::Y))?;
    if lse_b.len() != rows {
        return Err(Error::WrongLength {
            tensor: Tensor::Lse,
            expected: rows,
            got: lse_b.len(),
        });
    }
    for got in [y.len(), y_b.len()] {
        if got != need {
            return Err(Error::WrongLength {
                tensor: Tensor::Y,
                expected: need,
                got,
            });
        }
    }
    if v_head_dim == 0 {
        return Err(Error::ZeroHeadDim);
    }
    for (r, (ya, yb)) in y
        .chunks_exact_mut(v_head_dim)
        .zip(y_b.chunks_exact(v_head_dim))
        .enumerate()
    {
        let (wa, wb, l) = weights(lse[r], lse_b[r]);
        lse[r] = l;
        for (a, &b) in ya.iter_mut().zip(yb) {
            let va = if wa == 0.0 { 0.0 } else { wa * *a };
            let vb = if wb == 0.0 { 0.0 } else { wb * b };
            *a = va + vb;
        }
    }
    Ok(())
}

/// Normalised weights of the two sides and the merged lse.
#[inline]
fn weights(la: f32, lb: f32) -> (f32, f32, f32) {
    let m = la.max(lb);
    if m == f32::NEG_INFINITY {
        return (0.0, 0.0, f32::NEG_INFINITY);
    }
    let ea = libm::expf(la - m);
    let eb = libm::expf(lb - m);
    let sum = ea + eb;
    (ea / sum, eb / sum, m + libm::logf(sum))
}
