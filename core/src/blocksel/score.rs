//! The steps of [`BlockSelector::score_tile`] for one (query tile, KV
//! head): check the inputs, find the rows' spans, mark the blocks the mask
//! leaves visible, bound them with one gemm per 64-block chunk, and force
//! the always-kept blocks.

use core::ops::Range;

use super::summary::padded_blocks;
use super::{summary_len, BlockSelector, BlockSummaries, BoundFormat, Keep, SCORE_CHUNK};
use crate::element::Element;
use crate::error::{Error, Size, Tensor};
use crate::flash::Attention;
use crate::kernel::MicroKernel;
use crate::mask::{RowSpan, TileClass};
use crate::spec::AttentionSpec;

/// The rows of one (query tile, KV head), as the selector sees them.
pub(super) struct TileRows<const BQ: usize> {
    b: usize,
    hk: usize,
    /// First query row.
    i0: usize,
    /// Valid query rows (`<= BQ`).
    rows: usize,
    /// Position offset of the batch.
    offset: isize,
    /// The visible span of each valid row (the rest are empty).
    spans: [RowSpan; BQ],
    /// Blocks holding some row's global part.
    global: Range<usize>,
    /// Blocks holding some row's local interval (their hull).
    local: Range<usize>,
    /// The keys inside every row's local interval, `[lo, hi]`.
    core: (isize, isize),
    /// Keys the widest row may see.
    pub(super) widest: usize,
}

impl<K: MicroKernel, const BQ: usize, const BK: usize> BlockSelector<K, BQ, BK> {
    /// Q's length, `top_k`, and the summaries' block size and shape.
    pub(super) fn check_inputs<T: Element, S: BoundFormat>(
        att: &Attention<'_, T>,
        q: &[T],
        sums: &BlockSummaries<'_, S>,
        top_k_: usize,
    ) -> Result<(), Error> {
        let spec = att.spec();
        spec.check_len(Tensor::Q, q.len())?;
        if top_k_ == 0 {
            return Err(Error::Zero { what: Size::TopK });
        }
        if sums.block != BK {
            return Err(Error::BlockMismatch {
                summary: sums.block,
                tile: BK,
            });
        }
        if sums.dim != spec.head_dim
            || sums.kv_heads != spec.kv_heads
            || sums.blocks != Self::blocks(spec.kv_len)
            || sums.padded != padded_blocks(spec.kv_len, BK)
            || sums.data.len() != summary_len(spec, BK).unwrap_or(usize::MAX)
        {
            return Err(Error::WrongLength {
                tensor: Tensor::Summaries,
                expected: summary_len(spec, BK).unwrap_or(0),
                got: sums.data.len(),
            });
        }
        Ok(())
    }

    /// The scratch and block-score lengths; returns the blocks per head.
    pub(super) fn check_buffers(
        spec: &AttentionSpec,
        block_scores: usize,
        scratch: usize,
    ) -> Result<usize, Error> {
        let need = Self::scratch_len(spec.group(), spec.head_dim);
        if scratch < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch,
            });
        }
        let nb = Self::blocks(spec.kv_len);
        if block_scores < nb {
            return Err(Error::TooShort {
                tensor: Tensor::BlockScores,
                need: nb,
                got: block_scores,
            });
        }
        Ok(nb)
    }

    /// The row spans of query tile `q_tile` of (batch `b`, KV head `hk`):
    /// the global part, the hull and the common core of the local parts,
    /// and the widest row.
    pub(super) fn tile_rows<T: Element>(
        att: &Attention<'_, T>,
        b: usize,
        hk: usize,
        q_tile: usize,
    ) -> Result<TileRows<BQ>, Error> {
        let (spec, mask) = (att.spec(), att.mask());
        let i0 = q_tile.checked_mul(BQ).filter(|&i| i < spec.q_len);
        let (Some(i0), true) = (i0, b < spec.batch && hk < spec.kv_heads) else {
            return Err(Error::TileOutOfRange);
        };
        let rows = BQ.min(spec.q_len - i0);
        let offset = mask.batch_offset(b, spec.q_len);
        let valid = mask.batch_kv_len(b, spec.kv_len);
        let mut spans = [RowSpan::EMPTY; BQ];
        let (mut g_hi, mut l_lo, mut l_hi) = (-1isize, isize::MAX, -1isize);
        let (mut core_lo, mut core_hi) = (0isize, isize::MAX);
        let mut widest = 0usize;
        for (r, span) in spans.iter_mut().enumerate().take(rows) {
            *span = mask.row_span((i0 + r) as isize + offset, valid);
            g_hi = g_hi.max(span.global_hi);
            if span.lo <= span.hi {
                l_lo = l_lo.min(span.lo);
                l_hi = l_hi.max(span.hi);
            }
            core_lo = core_lo.max(span.lo);
            core_hi = core_hi.min(span.hi);
            widest = widest.max(span_len(span));
        }
        Ok(TileRows {
            b,
            hk,
            i0,
            rows,
            offset,
            spans,
            global: blocks_of::<BK>(0, g_hi),
            local: blocks_of::<BK>(l_lo, l_hi),
            core: (core_lo, core_hi),
            widest,
        })
    }

    /// Set every block's score to `-inf`, then to 0 where the mask leaves
    /// the block non-Empty for the tile; returns how many are. Blocks inside
    /// every row's local interval are visible without a per-row test; the
    /// rest ask the mask (`O(BQ)` each).
    pub(super) fn mark_visible<T: Element>(
        att: &Attention<'_, T>,
        tile: &TileRows<BQ>,
        block_scores: &mut [f32],
    ) -> usize {
        let kv_len = att.spec().kv_len;
        let spans = &tile.spans[..tile.rows];
        let (core_lo, core_hi) = tile.core;
        block_scores.fill(f32::NEG_INFINITY);
        let mut non_empty = 0;
        for n in global_then_local(&tile.global, &tile.local) {
            let (j0, j1) = (n * BK, ((n + 1) * BK).min(kv_len));
            let core = core_lo <= j0 as isize && (j1 as isize - 1) <= core_hi;
            if core || att.mask().classify(spans, j0, j1) != TileClass::Empty {
                block_scores[n] = 0.0;
                non_empty += 1;
            }
        }
        non_empty
    }

    /// Bounds: `[q⁺ | q⁻] · [max; min]`, one gemm per 64-block chunk the
    /// tile touches; each visible block's score becomes its largest bound
    /// over the tile's queries and the group's heads.
    pub(super) fn bound_blocks<T: Element, S: BoundFormat>(
        &self,
        att: &Attention<'_, T>,
        q: &[T],
        sums: &BlockSummaries<'_, S>,
        tile: &TileRows<BQ>,
        block_scores: &mut [f32],
        scratch: &mut [f32],
    ) {
        let spec = att.spec();
        let (g, d, nb) = (spec.group(), spec.head_dim, block_scores.len());
        let r_pad = (BQ * g).div_ceil(K::MR) * K::MR;
        let (a, rest) = scratch.split_at_mut(r_pad * 2 * d);
        let (bt, rest) = rest.split_at_mut(2 * d * SCORE_CHUNK);
        let c = &mut rest[..r_pad * SCORE_CHUNK];
        pack_signed_q(spec, q, tile, a);
        let summary = sums.matrix(tile.b, tile.hk);
        let chunks = |r: &Range<usize>| r.start / SCORE_CHUNK..r.end.div_ceil(SCORE_CHUNK);
        for chunk in global_then_local(&chunks(&tile.global), &chunks(&tile.local)) {
            let c0 = chunk * SCORE_CHUNK;
            let (b_mat, ldb) = widen_chunk(summary, sums.padded, c0, bt);
            // SAFETY: r_pad % MR == 0 and SCORE_CHUNK % NR == 0 (compile-time
            // check); a is r_pad×2d and c is r_pad×SCORE_CHUNK (sized above);
            // b_mat reads rows p < 2d at p·ldb + [0, SCORE_CHUNK): for the
            // summary matrix c0 + SCORE_CHUNK <= np, so the last row ends at
            // (2d-1)·np + np = 2d·np, the matrix length; bt is 2d×SCORE_CHUNK.
            unsafe {
                self.flash().kernel().gemm(
                    r_pad,
                    SCORE_CHUNK,
                    2 * d,
                    a,
                    2 * d,
                    b_mat,
                    ldb,
                    c,
                    SCORE_CHUNK,
                    false,
                )
            };
            let cols = SCORE_CHUNK.min(nb - c0);
            rows_max(c, tile.rows * g, &mut block_scores[c0..c0 + cols]);
        }
    }

    /// Always-kept blocks: the sinks and each row's local window score
    /// `+inf` (Empty blocks stay `-inf`). Returns how many were forced.
    pub(super) fn force_kept(
        keep: Keep,
        kv_len: usize,
        tile: &TileRows<BQ>,
        block_scores: &mut [f32],
    ) -> usize {
        let mut forced = 0;
        let mut force = |n: usize| {
            let s = &mut block_scores[n];
            if *s != f32::NEG_INFINITY && *s != f32::INFINITY {
                *s = f32::INFINITY;
                forced += 1;
            }
        };
        if keep.global_tokens > 0 {
            for n in 0..keep.global_tokens.min(kv_len).div_ceil(BK) {
                force(n);
            }
        }
        if let Some(w) = keep.local_window {
            for (r, span) in tile.spans[..tile.rows].iter().enumerate() {
                let p = (tile.i0 + r) as isize + tile.offset;
                let (a, z) = (p.saturating_sub_unsigned(w).max(span.lo), p.min(span.hi));
                if a <= z {
                    for n in a as usize / BK..=z as usize / BK {
                        force(n);
                    }
                }
            }
        }
        forced
    }
}

/// Every visible block (score 0) is kept (`+inf`).
pub(super) fn keep_every_visible(block_scores: &mut [f32]) {
    block_scores
        .iter_mut()
        .filter(|s| **s == 0.0)
        .for_each(|s| *s = f32::INFINITY);
}

/// The blocks of `BK` keys that hold keys `[a, z]`.
fn blocks_of<const BK: usize>(a: isize, z: isize) -> Range<usize> {
    if a <= z {
        a as usize / BK..z as usize / BK + 1
    } else {
        0..0
    }
}

/// The indices of `global`, then those of `local` past it: each once, in
/// order, when `local` does not start before `global`.
fn global_then_local(global: &Range<usize>, local: &Range<usize>) -> impl Iterator<Item = usize> {
    global.clone().chain(local.start.max(global.end)..local.end)
}

/// `[q⁺ | q⁻]` into `a` (`r_pad × 2D`): one row per (query, group head),
/// padding rows zero.
fn pack_signed_q<T: Element, const BQ: usize>(
    spec: &AttentionSpec,
    q: &[T],
    tile: &TileRows<BQ>,
    a: &mut [f32],
) {
    let (g, d) = (spec.group(), spec.head_dim);
    for (row, dst) in a.chunks_exact_mut(2 * d).enumerate() {
        if row < tile.rows * g {
            let (r, gh) = (row / g, row % g);
            let src = &q[spec.q.offset(tile.b, tile.hk * g + gh, tile.i0 + r)..][..d];
            let (pos, neg) = dst.split_at_mut(d);
            for ((p, n), &x) in pos.iter_mut().zip(neg.iter_mut()).zip(src) {
                let x = x.to_f32();
                *p = if x > 0.0 { x } else { 0.0 };
                *n = if x < 0.0 { x } else { 0.0 };
            }
        } else {
            dst.fill(0.0);
        }
    }
}

/// Columns `c0..c0 + 64` of the `2D × np` summary matrix in f32, with their
/// leading dimension: the matrix itself when it is f32, else widened into
/// `bt` (`2D × 64`).
fn widen_chunk<'m, S: BoundFormat>(
    summary: &'m [S],
    np: usize,
    c0: usize,
    bt: &'m mut [f32],
) -> (&'m [f32], usize) {
    match S::as_f32(summary) {
        Some(m) => (&m[c0..], np),
        None => {
            for (dd, row) in bt.chunks_exact_mut(SCORE_CHUNK).enumerate() {
                row.iter_mut()
                    .zip(&summary[dd * np + c0..][..SCORE_CHUNK])
                    .for_each(|(o, x)| *o = x.value());
            }
            (&*bt, SCORE_CHUNK)
        }
    }
}

/// Each visible block (score 0) of a chunk gets the largest bound over the
/// first `rows` rows of `c` (`rows × 64`).
fn rows_max(c: &[f32], rows: usize, block_scores: &mut [f32]) {
    for (cc, s) in block_scores.iter_mut().enumerate() {
        if *s == 0.0 {
            *s = c
                .chunks_exact(SCORE_CHUNK)
                .take(rows)
                .fold(f32::NEG_INFINITY, |m, row| m.max(row[cc]));
        }
    }
}

/// Number of keys in a row span (`|[lo, hi] ∪ [0, global_hi]|`).
fn span_len(s: &RowSpan) -> usize {
    let local = if s.lo <= s.hi {
        (s.hi - s.lo + 1) as usize
    } else {
        0
    };
    let global = (s.global_hi + 1).max(0) as usize;
    let overlap = if s.lo <= s.hi && s.global_hi >= s.lo {
        (s.global_hi.min(s.hi) - s.lo + 1).max(0) as usize
    } else {
        0
    };
    local + global - overlap
}
