//! The materialising path for `qk_matmul_output`: when a node asks for the
//! score matrix, it is built in full, `(B, Hq, Sq, Skv_total)`, exactly as
//! the ONNX reference defines each `qk_matmul_output_mode` (the backend test
//! data decides where the spec text is unclear):
//!
//! - 0, 1: `softcap(scale · q·k)` (no softcap when `softcap = 0`);
//! - 2: that plus the mask bias: the float mask value where the key is
//!   visible, `-inf` where causal, window, padding or a bool mask hide it;
//! - 3: the softmax probabilities; a row whose bias is all `-inf` is 0.
//!
//! Cost: `O(B·Hq·Sq·Skv·D)` time and the output itself; `Y` still comes from
//! the tiled kernel. Nodes that do not request this output never pay it.

use tessera_core::{reference, AttentionSpec, Element, MaskSpec};

use crate::plan::QkMode;

/// Fill `out` (`(B, Hq, Sq, Skv)` contiguous) for `mode`. `q`, `k` are read
/// through the spec's strides; the caller validated spec, mask and buffers
/// (through `tessera_core::Attention::new`), so every index is in range.
pub fn materialise<T: Element>(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    q: &[T],
    k: &[T],
    mode: QkMode,
    out: &mut [T],
) {
    let (d, skv) = (spec.head_dim, spec.kv_len);
    let mut row = vec![0.0f32; skv];
    let mut bias = vec![0.0f32; skv];
    for b in 0..spec.batch {
        for h in 0..spec.q_heads {
            let hk = spec.kv_head(h);
            for i in 0..spec.q_len {
                let qi = &q[spec.q.offset(b, h, i)..][..d];
                for (j, (s, bj)) in row.iter_mut().zip(bias.iter_mut()).enumerate() {
                    let kj = &k[spec.k.offset(b, hk, j)..][..d];
                    let dot: f32 = qi
                        .iter()
                        .zip(kj)
                        .map(|(x, y)| x.to_f32() * y.to_f32())
                        .sum();
                    let mut x = dot * spec.scale;
                    if spec.softcap > 0.0 {
                        x = spec.softcap * (x / spec.softcap).tanh();
                    }
                    *s = x;
                    *bj = if reference::visible(mask, spec, b, h, i, j) {
                        mask.bias(b, h, i, j)
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                match mode {
                    QkMode::Scores => {}
                    QkMode::WithBias => row.iter_mut().zip(&bias).for_each(|(s, b)| *s += b),
                    QkMode::Softmax => softmax_masked(&mut row, &bias),
                }
                let dst = &mut out[((b * spec.q_heads + h) * spec.q_len + i) * skv..][..skv];
                for (o, &x) in dst.iter_mut().zip(&row) {
                    *o = T::from_f32(x);
                }
            }
        }
    }
}

/// `row ← softmax(row + bias)`, or all zeros when every bias is `-inf`.
fn softmax_masked(row: &mut [f32], bias: &[f32]) {
    if bias.iter().all(|&b| b == f32::NEG_INFINITY) {
        row.fill(0.0);
        return;
    }
    row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f64;
    for s in row.iter_mut() {
        *s = (*s - m).exp();
        sum += *s as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|s| *s *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_zeroes_fully_masked_rows_and_normalises_others() {
        let mut r = [1.0, 2.0, 3.0];
        softmax_masked(&mut r, &[f32::NEG_INFINITY; 3]);
        assert_eq!(r, [0.0; 3]);
        let mut r = [1.0f32, 2.0, 3.0];
        softmax_masked(&mut r, &[0.0, f32::NEG_INFINITY, 0.0]);
        let e = (-2.0f32).exp();
        assert!(
            (r[0] - e / (1.0 + e)).abs() < 1e-6
                && r[1] == 0.0
                && (r[2] - 1.0 / (1.0 + e)).abs() < 1e-6
        );
    }
}
