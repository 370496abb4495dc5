//! Training-free block selection (in the manner of Quest and of NSA's
//! selection branch): pick, per query tile and KV head, the key tiles whose
//! keys can score highest, then run the exact flash loop on those tiles only
//! ([`Flash::tile_selected`]).
//!
//! # Method
//! 1. **Summaries.** Each block of `BK` keys (one flash key tile) keeps the
//!    element-wise max and min of its keys, `2·D` values, stored in f32, f16
//!    or FP8 with *directed* rounding (max rounded up, min rounded down), so
//!    the bound below stays an upper bound after storage.
//! 2. **Bound.** For a query `q`, no key of the block scores above
//!    `U = Σ_d max(q_d·min_d, q_d·max_d) = q⁺·max + q⁻·min` (with
//!    `q⁺ = max(q, 0)`, `q⁻ = min(q, 0)`). That is two dot products, so the
//!    bounds of a query tile against a run of blocks are one gemm on the
//!    [`MicroKernel`]: `[q⁺ | q⁻] (BQ·G × 2D) · [max; min] (2D × blocks)`.
//!    A block's score for the tile is the largest bound over the tile's
//!    queries and the group's query heads.
//! 3. **Select.** Blocks the mask classifies as Empty for the tile score
//!    `-inf` and are never chosen. The blocks holding the tile's local window
//!    (`[p - local_window, p]` for each query position `p`) and the
//!    global/sink tokens are always kept. The budget is
//!    `max(ceil(top_k / BK), kept blocks)` blocks in all; the rest of it goes
//!    to the best bounds by exact radix [`top_k`] (ties to the lower block).
//!    When `top_k` is at least the largest number of keys any query of the
//!    tile may see, every non-Empty block is chosen, so the result is dense
//!    attention, bit for bit.
//!
//! # Cost
//! Per (query tile, KV head): `4·BQ·G·D` flops per scored block (about
//! `S²·D/BK` over a whole causal problem with `G = 1`), `O(blocks)` to
//! select, then `4·D·BQ·BK` per selected tile and head in the flash loop
//! (`4·S·top_k·D` in all, against `4·S²·D` dense, halved by causality).
//! Memory: summaries `B·Hkv·ceil(Skv/BK)·2·D` elements
//! ([`summary_len`]); per worker [`BlockSelector::scratch_len`] f32s, one
//! f32 and one `usize` per block.
//!
//! # Files
//! `format.rs` the summary storage formats, `summary.rs` the summaries,
//! `score.rs` the steps of scoring one query tile, this file the selector.

mod format;
mod score;
mod summary;

pub use format::BoundFormat;
pub use summary::{summarize, summary_len, BlockSummaries};

use crate::element::Element;
use crate::error::{Error, Tensor};
use crate::flash::{Attention, Flash};
use crate::kernel::MicroKernel;
use crate::stats::Stats;
use crate::topk::top_k;
use score::keep_every_visible;

/// Keys that are always attended, whatever their bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// `Some(w)`: keys `[p - w, p]` of each query position `p` (`Some(0)` =
    /// the query's own position); `None`: no local window is forced.
    pub local_window: Option<usize>,
    /// Keys `[0, global_tokens)`: the global / sink tokens.
    pub global_tokens: usize,
}

/// What [`BlockSelector::score_tile`] decided for one (query tile, KV head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileBudget {
    /// Blocks to select (forced ones included).
    pub blocks: usize,
    /// Blocks the mask leaves non-Empty for the tile.
    pub non_empty: usize,
    /// True when every non-Empty block is taken (`top_k` covers the
    /// tile's visible keys); the scores were then not computed.
    pub dense: bool,
}

/// Blocks scored per gemm: a multiple of every kernel's `NR`.
const SCORE_CHUNK: usize = 64;

/// The block selector: bounds with micro-kernel `K`, query tiles of `BQ`,
/// key blocks of `BK` (the flash kernel's tile sizes).
#[derive(Clone, Copy, Debug)]
pub struct BlockSelector<K: MicroKernel, const BQ: usize, const BK: usize> {
    flash: Flash<K, BQ, BK>,
}

impl<K: MicroKernel, const BQ: usize, const BK: usize> BlockSelector<K, BQ, BK> {
    const FITS: () = assert!(
        SCORE_CHUNK % K::NR == 0,
        "K::NR must divide the score chunk"
    );

    /// A selector (and its flash kernel) over micro-kernel `kernel`.
    pub const fn new(kernel: K) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        Self {
            flash: Flash::new(kernel),
        }
    }

    /// The flash kernel the selected tiles run on.
    pub const fn flash(&self) -> &Flash<K, BQ, BK> {
        &self.flash
    }

    /// f32s of scoring scratch per worker for `group = Hq / Hkv` and head
    /// size `D`: with `R = BQ·group` rounded up to `K::MR`,
    /// `R·2D + 2D·64 + R·64` (saturating).
    pub const fn scratch_len(group: usize, head_dim: usize) -> usize {
        let rows = BQ
            .saturating_mul(group)
            .div_ceil(K::MR)
            .saturating_mul(K::MR);
        let two_d = head_dim.saturating_mul(2);
        rows.saturating_mul(two_d)
            .saturating_add(two_d.saturating_mul(SCORE_CHUNK))
            .saturating_add(rows.saturating_mul(SCORE_CHUNK))
    }

    /// Blocks per (batch, KV head): the length of the per-worker block score
    /// and tile buffers.
    pub const fn blocks(kv_len: usize) -> usize {
        kv_len.div_ceil(BK)
    }

    /// Score every block for query tile `q_tile` of (batch `b`, KV head `hk`)
    /// into `block_scores` (`-inf`: Empty for the tile; `+inf`: always kept;
    /// else the bound) and return the budget.
    #[allow(clippy::too_many_arguments)]
    pub fn score_tile<T: Element, S: BoundFormat>(
        &self,
        att: &Attention<'_, T>,
        q: &[T],
        sums: &BlockSummaries<'_, S>,
        b: usize,
        hk: usize,
        q_tile: usize,
        top_k_: usize,
        keep: Keep,
        block_scores: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<TileBudget, Error> {
        let spec = att.spec();
        Self::check_inputs(att, q, sums, top_k_)?;
        let nb = Self::check_buffers(spec, block_scores.len(), scratch.len())?;
        let tile = Self::tile_rows(att, b, hk, q_tile)?;
        let block_scores = &mut block_scores[..nb];
        let non_empty = Self::mark_visible(att, &tile, block_scores);
        if non_empty == 0 {
            return Ok(TileBudget {
                blocks: 0,
                non_empty: 0,
                dense: true,
            });
        }
        if top_k_ >= tile.widest {
            keep_every_visible(block_scores);
            return Ok(TileBudget {
                blocks: non_empty,
                non_empty,
                dense: true,
            });
        }
        self.bound_blocks(att, q, sums, &tile, block_scores, scratch);
        let forced = Self::force_kept(keep, spec.kv_len, &tile, block_scores);
        Ok(TileBudget {
            blocks: top_k_.div_ceil(BK).max(forced).min(non_empty),
            non_empty,
            dense: false,
        })
    }

    /// Select the budget's blocks from the scores into `tiles` (ascending
    /// block order, the order the flash loop visits dense tiles in) and
    /// return how many. `O(blocks)`.
    pub fn select_tiles(
        block_scores: &[f32],
        budget: TileBudget,
        tiles: &mut [usize],
    ) -> Result<usize, Error> {
        if tiles.len() < budget.blocks {
            return Err(Error::TooShort {
                tensor: Tensor::SelectedTiles,
                need: budget.blocks,
                got: tiles.len(),
            });
        }
        Ok(top_k(block_scores, &mut tiles[..budget.blocks]))
    }

    /// The whole problem on one thread: summaries → per (b, KV head, query
    /// tile) scores → selection → [`Flash::tile_selected`] for each query
    /// head of the group. Writes `Y` (spec.out strides) and optionally `lse`;
    /// returns the flash tile counters. `flash_scratch` holds
    /// `Flash::scratch_len(D, Dv)` f32s, `block_scores` and `tiles`
    /// [`blocks`](Self::blocks) entries each.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Element, S: BoundFormat, O: Element>(
        &self,
        att: &Attention<'_, T>,
        q: &[T],
        sums: &BlockSummaries<'_, S>,
        top_k_: usize,
        keep: Keep,
        y: &mut [O],
        mut lse: Option<&mut [f32]>,
        scratch: &mut [f32],
        flash_scratch: &mut [f32],
        block_scores: &mut [f32],
        tiles: &mut [usize],
    ) -> Result<Stats, Error> {
        let s = *att.spec();
        s.check_outputs(y.len(), lse.as_deref().map(<[f32]>::len))?;
        let mut stats = Stats::default();
        let g = s.group();
        for b in 0..s.batch {
            for hk in 0..s.kv_heads {
                for t in 0..s.q_len.div_ceil(BQ) {
                    let budget = self.score_tile(
                        att,
                        q,
                        sums,
                        b,
                        hk,
                        t,
                        top_k_,
                        keep,
                        block_scores,
                        scratch,
                    )?;
                    let n = Self::select_tiles(block_scores, budget, tiles)?;
                    for h in hk * g..(hk + 1) * g {
                        let out = self.flash.tile_selected(
                            att,
                            b,
                            h,
                            t,
                            &tiles[..n],
                            flash_scratch,
                            &mut stats,
                        )?;
                        for r in 0..out.rows {
                            let i = out.q_start + r;
                            let dst = &mut y[s.out.offset(b, h, i)..][..s.v_head_dim];
                            dst.iter_mut()
                                .zip(out.row(r))
                                .for_each(|(d, &x)| *d = O::from_f32(x));
                            if let Some(l) = lse.as_deref_mut() {
                                l[(b * s.q_heads + h) * s.q_len + i] = out.lse(r);
                            }
                        }
                    }
                }
            }
        }
        Ok(stats)
    }
}
