//! Per-block min/max key summaries: their layout, their length and the one
//! pass over K that writes them.

use super::{BoundFormat, SCORE_CHUNK};
use crate::element::Element;
use crate::error::{Error, Size, Tensor};
use crate::spec::AttentionSpec;

/// Blocks per summary row: `ceil(Skv / block)` rounded up to the scoring
/// chunk (64), so every chunk the gemm reads is in bounds.
pub(super) const fn padded_blocks(kv_len: usize, block: usize) -> usize {
    if block == 0 {
        0
    } else {
        kv_len
            .div_ceil(block)
            .div_ceil(SCORE_CHUNK)
            .saturating_mul(SCORE_CHUNK)
    }
}

/// Elements of the summaries of a spec's keys in blocks of `block`:
/// `B·Hkv·2D·Nb` with `Nb = ceil(Skv / block)` rounded up to 64, or `None`
/// on overflow.
pub fn summary_len(spec: &AttentionSpec, block: usize) -> Option<usize> {
    spec.batch
        .checked_mul(spec.kv_heads)?
        .checked_mul(padded_blocks(spec.kv_len, block))?
        .checked_mul(2)?
        .checked_mul(spec.head_dim)
}

/// Per-block key summaries, laid out as the bound gemm reads them:
/// `(B, Hkv, 2D, Nb)`. Row `d < D` holds, for every block, the rounded-up
/// max of its keys' element `d`; row `D + d` the rounded-down min. Columns
/// past the last block are zero.
#[derive(Clone, Copy, Debug)]
pub struct BlockSummaries<'a, S: BoundFormat> {
    pub(super) data: &'a [S],
    pub(super) block: usize,
    pub(super) blocks: usize,
    pub(super) padded: usize,
    pub(super) kv_heads: usize,
    pub(super) dim: usize,
}

impl<'a, S: BoundFormat> BlockSummaries<'a, S> {
    /// A view of summaries made by [`summarize`] for `spec` with `block`
    /// keys a block; checks the length.
    pub fn new(spec: &AttentionSpec, block: usize, data: &'a [S]) -> Result<Self, Error> {
        if block == 0 {
            return Err(Error::Zero {
                what: Size::SummaryBlock,
            });
        }
        let need = summary_len(spec, block).ok_or(Error::Overflow(Tensor::Summaries))?;
        if data.len() != need {
            return Err(Error::WrongLength {
                tensor: Tensor::Summaries,
                expected: need,
                got: data.len(),
            });
        }
        Ok(Self {
            data,
            block,
            blocks: spec.kv_len.div_ceil(block),
            padded: padded_blocks(spec.kv_len, block),
            kv_heads: spec.kv_heads,
            dim: spec.head_dim,
        })
    }

    /// Keys per block.
    pub const fn block(&self) -> usize {
        self.block
    }

    /// Blocks per (batch, KV head).
    pub const fn blocks(&self) -> usize {
        self.blocks
    }

    /// The `2D × Nb` summary matrix of (batch `b`, KV head `hk`).
    #[inline]
    pub(super) fn matrix(&self, b: usize, hk: usize) -> &[S] {
        let len = 2 * self.dim * self.padded;
        &self.data[(b * self.kv_heads + hk) * len..][..len]
    }

    /// `(max, min)` of element `d` over the keys of block `n` of (batch
    /// `b`, KV head `hk`), as stored.
    pub fn bounds(&self, b: usize, hk: usize, n: usize, d: usize) -> Option<(f32, f32)> {
        if b * self.kv_heads + hk >= self.data.len() / (2 * self.dim * self.padded).max(1)
            || hk >= self.kv_heads
            || n >= self.blocks
            || d >= self.dim
        {
            return None;
        }
        let m = self.matrix(b, hk);
        Some((
            m[d * self.padded + n].value(),
            m[(self.dim + d) * self.padded + n].value(),
        ))
    }
}

/// Write the summaries of `k` (with the spec's K strides) in blocks of
/// `block` keys into `out` ([`summary_len`] elements). Keys past a batch's
/// `kv_lens` are included: the bound is then over a superset, still valid.
///
/// Errors: wrong lengths, a non-finite key, or a key outside the range of
/// `S`. Cost: one pass over K.
pub fn summarize<T: Element, S: BoundFormat>(
    spec: &AttentionSpec,
    k: &[T],
    block: usize,
    out: &mut [S],
) -> Result<(), Error> {
    spec.validate()?;
    spec.check_len(Tensor::K, k.len())?;
    if block == 0 {
        return Err(Error::Zero {
            what: Size::SummaryBlock,
        });
    }
    let need = summary_len(spec, block).ok_or(Error::Overflow(Tensor::Summaries))?;
    if out.len() != need {
        return Err(Error::WrongLength {
            tensor: Tensor::Summaries,
            expected: need,
            got: out.len(),
        });
    }
    let (d, nb) = (spec.head_dim, padded_blocks(spec.kv_len, block));
    out.fill(S::default());
    if d == 0 || nb == 0 {
        return Ok(());
    }
    let mut hi = [f32::NEG_INFINITY; 64];
    let mut lo = [f32::INFINITY; 64];
    for (bh, m) in out.chunks_exact_mut(2 * d * nb).enumerate() {
        let (b, hk) = (bh / spec.kv_heads, bh % spec.kv_heads);
        for (n, j0) in (0..spec.kv_len).step_by(block).enumerate() {
            // Up to 64 dimensions at a time in registers-sized stack arrays.
            for d0 in (0..d).step_by(64) {
                let w = 64.min(d - d0);
                hi[..w].fill(f32::NEG_INFINITY);
                lo[..w].fill(f32::INFINITY);
                for j in j0..(j0 + block).min(spec.kv_len) {
                    let at = spec.k.offset(b, hk, j) + d0;
                    for (i, x) in k[at..at + w].iter().enumerate() {
                        let x = x.to_f32();
                        if !x.is_finite() {
                            return Err(Error::NonFinite {
                                tensor: Tensor::K,
                                at: at + i,
                            });
                        }
                        hi[i] = hi[i].max(x);
                        lo[i] = lo[i].min(x);
                    }
                }
                for i in 0..w {
                    let at = spec.k.offset(b, hk, j0) + d0 + i;
                    m[(d0 + i) * nb + n] =
                        S::round_up(hi[i]).ok_or(Error::SummaryOverflow { at })?;
                    m[(d + d0 + i) * nb + n] =
                        S::round_down(lo[i]).ok_or(Error::SummaryOverflow { at })?;
                }
            }
        }
    }
    Ok(())
}
