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

use half::f16;

use crate::element::Element;
use crate::error::{Error, Size, Tensor};
use crate::flash::{Attention, Flash};
use crate::fp8::{Fp8, E4M3, E5M2};
use crate::kernel::MicroKernel;
use crate::mask::{RowSpan, TileClass};
use crate::spec::AttentionSpec;
use crate::stats::Stats;
use crate::topk::top_k;

/// A storage format for block summaries with directed rounding.
pub trait BoundFormat: Copy + Default + core::fmt::Debug + Send + Sync + 'static {
    /// The largest representable value `<= x`, or `None` when that is not
    /// finite (`x` is out of range).
    fn round_down(x: f32) -> Option<Self>;
    /// The smallest representable value `>= x`, or `None` when out of range.
    fn round_up(x: f32) -> Option<Self>;
    /// The exact value.
    fn value(self) -> f32;
    /// The slice itself when the format is f32 (the gemm then reads the
    /// summaries in place); `None` for narrower formats, which are widened
    /// a chunk at a time.
    #[inline(always)]
    fn as_f32(data: &[Self]) -> Option<&[f32]> {
        let _ = data;
        None
    }
}

impl BoundFormat for f32 {
    fn round_down(x: f32) -> Option<Self> {
        x.is_finite().then_some(x)
    }
    fn round_up(x: f32) -> Option<Self> {
        x.is_finite().then_some(x)
    }
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
    #[inline(always)]
    fn as_f32(data: &[Self]) -> Option<&[f32]> {
        Some(data)
    }
}

/// Step a sign-magnitude code one value toward `-inf` (`down`) or `+inf`.
#[inline]
fn step(bits: u32, sign_bit: u32, down: bool) -> u32 {
    let negative = bits & sign_bit != 0;
    let magnitude = bits & (sign_bit - 1);
    match (magnitude == 0, negative, down) {
        (true, _, true) => sign_bit | 1, // ±0 → smallest negative subnormal
        (true, _, false) => 1,           // ±0 → smallest positive subnormal
        (false, false, true) | (false, true, false) => bits - 1,
        (false, false, false) | (false, true, true) => bits + 1,
    }
}

macro_rules! directed {
    ($t:ty, $bits:ty, $sign:expr, $from:expr, $to_bits:expr, $from_bits:expr, $value:expr) => {
        impl BoundFormat for $t {
            fn round_down(x: f32) -> Option<Self> {
                let mut v: $t = $from(x);
                if $value(v) > x {
                    v = $from_bits(step($to_bits(v) as u32, $sign, true) as $bits);
                }
                $value(v).is_finite().then_some(v)
            }
            fn round_up(x: f32) -> Option<Self> {
                let mut v: $t = $from(x);
                if $value(v) < x {
                    v = $from_bits(step($to_bits(v) as u32, $sign, false) as $bits);
                }
                $value(v).is_finite().then_some(v)
            }
            #[inline(always)]
            fn value(self) -> f32 {
                $value(self)
            }
        }
    };
}
directed!(
    f16,
    u16,
    0x8000,
    f16::from_f32,
    f16::to_bits,
    f16::from_bits,
    f16::to_f32
);
directed!(
    E4M3,
    u8,
    0x80,
    <E4M3 as Element>::from_f32,
    E4M3::to_bits,
    E4M3::from_bits,
    <E4M3 as Element>::to_f32
);
directed!(
    E5M2,
    u8,
    0x80,
    <E5M2 as Element>::from_f32,
    E5M2::to_bits,
    E5M2::from_bits,
    <E5M2 as Element>::to_f32
);

/// Blocks per summary row: `ceil(Skv / block)` rounded up to the scoring
/// chunk (64), so every chunk the gemm reads is in bounds.
const fn padded_blocks(kv_len: usize, block: usize) -> usize {
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
    data: &'a [S],
    block: usize,
    blocks: usize,
    padded: usize,
    kv_heads: usize,
    dim: usize,
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
    fn matrix(&self, b: usize, hk: usize) -> &[S] {
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
        let mask = att.mask();
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
        let (g, d) = (spec.group(), spec.head_dim);
        let need = Self::scratch_len(g, d);
        if scratch.len() < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch.len(),
            });
        }
        let nb = Self::blocks(spec.kv_len);
        if block_scores.len() < nb {
            return Err(Error::TooShort {
                tensor: Tensor::BlockScores,
                need: nb,
                got: block_scores.len(),
            });
        }
        let i0 = q_tile.checked_mul(BQ).filter(|&i| i < spec.q_len);
        let (Some(i0), true) = (i0, b < spec.batch && hk < spec.kv_heads) else {
            return Err(Error::TileOutOfRange);
        };
        let rows = BQ.min(spec.q_len - i0);
        let block_scores = &mut block_scores[..nb];

        // Row spans: the global part, the hull and the common core of the
        // local parts, and the widest row.
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
        let spans = &spans[..rows];
        block_scores.fill(f32::NEG_INFINITY);
        let blocks_of = |a: isize, z: isize| {
            if a <= z {
                a as usize / BK..z as usize / BK + 1
            } else {
                0..0
            }
        };
        let (global, local) = (blocks_of(0, g_hi), blocks_of(l_lo, l_hi));
        let mut non_empty = 0;
        for n in global.clone().chain(local.start.max(global.end)..local.end) {
            let (j0, j1) = (n * BK, ((n + 1) * BK).min(spec.kv_len));
            // Blocks inside every row's local interval are visible without a
            // per-row test; the rest ask the mask (O(BQ) each).
            let core = core_lo <= j0 as isize && (j1 as isize - 1) <= core_hi;
            if core || mask.classify(spans, j0, j1) != TileClass::Empty {
                block_scores[n] = 0.0;
                non_empty += 1;
            }
        }
        if non_empty == 0 {
            return Ok(TileBudget {
                blocks: 0,
                non_empty: 0,
                dense: true,
            });
        }
        if top_k_ >= widest {
            block_scores
                .iter_mut()
                .filter(|s| **s == 0.0)
                .for_each(|s| *s = f32::INFINITY);
            return Ok(TileBudget {
                blocks: non_empty,
                non_empty,
                dense: true,
            });
        }

        // Bounds: [q⁺ | q⁻] · [max; min] over the touched blocks.
        let r_pad = (BQ * g).div_ceil(K::MR) * K::MR;
        let (a, rest) = scratch.split_at_mut(r_pad * 2 * d);
        let (bt, rest) = rest.split_at_mut(2 * d * SCORE_CHUNK);
        let c = &mut rest[..r_pad * SCORE_CHUNK];
        let real_rows = rows * g;
        for (row, dst) in a.chunks_exact_mut(2 * d).enumerate() {
            if row < real_rows {
                let (r, gh) = (row / g, row % g);
                let src = &q[spec.q.offset(b, hk * g + gh, i0 + r)..][..d];
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
        // Whole 64-block chunks of the summary matrix that the global and
        // local block ranges touch, each once, in order.
        let np = sums.padded;
        let summary = sums.matrix(b, hk);
        let chunks =
            |r: &core::ops::Range<usize>| r.start / SCORE_CHUNK..r.end.div_ceil(SCORE_CHUNK);
        let (cg, cl) = (chunks(&global), chunks(&local));
        for chunk in cg.clone().chain(cl.start.max(cg.end)..cl.end) {
            let c0 = chunk * SCORE_CHUNK;
            let (b_mat, ldb): (&[f32], usize) = match S::as_f32(summary) {
                Some(m) => (&m[c0..], np),
                None => {
                    for (dd, row) in bt.chunks_exact_mut(SCORE_CHUNK).enumerate() {
                        row.iter_mut()
                            .zip(&summary[dd * np + c0..][..SCORE_CHUNK])
                            .for_each(|(o, x)| *o = x.value());
                    }
                    (&*bt, SCORE_CHUNK)
                }
            };
            // SAFETY: r_pad % MR == 0 and SCORE_CHUNK % NR == 0 (compile-time
            // check); a is r_pad×2d and c is r_pad×SCORE_CHUNK (sized above);
            // b_mat reads rows p < 2d at p·ldb + [0, SCORE_CHUNK): for the
            // summary matrix c0 + SCORE_CHUNK <= np, so the last row ends at
            // (2d-1)·np + np = 2d·np, the matrix length; bt is 2d×SCORE_CHUNK.
            unsafe {
                self.flash.kernel().gemm(
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
            for (cc, s) in block_scores[c0..c0 + cols].iter_mut().enumerate() {
                if *s == 0.0 {
                    *s = c
                        .chunks_exact(SCORE_CHUNK)
                        .take(real_rows)
                        .fold(f32::NEG_INFINITY, |m, row| m.max(row[cc]));
                }
            }
        }

        // Always-kept blocks: sinks and each row's local window.
        let mut forced = 0;
        let mut force = |n: usize, s: &mut [f32]| {
            if s[n] != f32::NEG_INFINITY && s[n] != f32::INFINITY {
                s[n] = f32::INFINITY;
                forced += 1;
            }
        };
        if keep.global_tokens > 0 {
            for n in 0..keep.global_tokens.min(spec.kv_len).div_ceil(BK) {
                force(n, block_scores);
            }
        }
        if let Some(w) = keep.local_window {
            for (r, span) in spans.iter().enumerate() {
                let p = (i0 + r) as isize + offset;
                let (a, z) = (p.saturating_sub_unsigned(w).max(span.lo), p.min(span.hi));
                if a <= z {
                    for n in a as usize / BK..=z as usize / BK {
                        force(n, block_scores);
                    }
                }
            }
        }
        let budget = top_k_.div_ceil(BK).max(forced).min(non_empty);
        Ok(TileBudget {
            blocks: budget,
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
        s.check_len(Tensor::Y, y.len())?;
        if let Some(l) = lse.as_deref() {
            let need = s.required_len(Tensor::Lse)?;
            if l.len() != need {
                return Err(Error::WrongLength {
                    tensor: Tensor::Lse,
                    expected: need,
                    got: l.len(),
                });
            }
        }
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
