//! The lightning indexer of DeepSeek-V3.2's sparse attention (DSA): a cheap
//! score for every (query, key) pair that decides which keys the exact
//! attention reads.
//!
//! ```text
//! I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s])     (j over the Hi indexer heads)
//! ```
//!
//! Operands are stored in any [`Element`] format: FP8 ([`E4M3`](crate::E4M3),
//! [`E5M2`](crate::E5M2)) with optional [`Scales`], or f16/bf16/f32. They are
//! widened to f32 (times their scale) once per tile, and everything is
//! accumulated in f32. Visibility follows [`MaskSpec`] (causal with offset,
//! windows, globals, chunks, kv lengths, segments, a dense bool mask with a
//! head axis of 1); a masked pair scores `-inf`.
//!
//! # Layouts (contiguous)
//! `index_q (B, Sq, Hi, Di)`, `index_k (B, Skv, Di)`, `index_w (B, Sq, Hi)`;
//! scales of q are `(B, Sq, Hi, ceil(Di / group))`, of k `(B, Skv, ceil(Di / group))`.
//!
//! # Cost
//! `2·Hi·Di + 2·Hi` flops per visible pair, as one `(BQ·Hi) × BK × Di` gemm
//! per non-Empty (query tile, key tile) pair plus the ReLU-weighted head
//! reduction; key tiles the mask classifies as Empty are never loaded.
//! FP8 storage reads a quarter of the bytes of f32 (half of bf16). Scratch:
//! [`LightningIndexer::scratch_len`] f32s; scores of one query tile:
//! `BQ·Skv` f32s.

use core::ops::Range;

use crate::element::Element;
use crate::error::{Error, Size, Tensor};
use crate::fp8::Scales;
use crate::kernel::MicroKernel;
use crate::mask::{MaskSpec, RowSpan, TileClass};
use crate::topk::{top_k_in_place, KeyIndex};

/// The sizes of one indexer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerSpec {
    /// Batch `B`.
    pub batch: usize,
    /// Queries `Sq`.
    pub q_len: usize,
    /// Keys `Skv`.
    pub kv_len: usize,
    /// Indexer heads `Hi`.
    pub heads: usize,
    /// Indexer head size `Di`.
    pub dim: usize,
}

fn mul(tensor: Tensor, xs: &[usize]) -> Result<usize, Error> {
    xs.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or(Error::Overflow(tensor))
}

fn exact_len(tensor: Tensor, expected: usize, got: usize) -> Result<(), Error> {
    if expected != got {
        return Err(Error::WrongLength {
            tensor,
            expected,
            got,
        });
    }
    Ok(())
}

/// One validated indexer problem.
#[derive(Clone, Copy, Debug)]
pub struct Indexer<'a, T: Element> {
    spec: IndexerSpec,
    mask: MaskSpec<'a>,
    q: &'a [T],
    q_scales: Option<Scales<'a>>,
    k: &'a [T],
    k_scales: Option<Scales<'a>>,
    w: &'a [f32],
}

impl<'a, T: Element> Indexer<'a, T> {
    /// Validate sizes, buffers (exact lengths), scales and the mask; after
    /// this no call on the problem can index out of bounds.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: IndexerSpec,
        mask: &MaskSpec<'a>,
        q: &'a [T],
        q_scales: Option<Scales<'a>>,
        k: &'a [T],
        k_scales: Option<Scales<'a>>,
        w: &'a [f32],
    ) -> Result<Self, Error> {
        if spec.heads == 0 {
            return Err(Error::Zero {
                what: Size::IndexHeads,
            });
        }
        if spec.dim == 0 {
            return Err(Error::Zero {
                what: Size::IndexHeadDim,
            });
        }
        let (b, sq, skv, hi, di) = (spec.batch, spec.q_len, spec.kv_len, spec.heads, spec.dim);
        exact_len(
            Tensor::IndexQ,
            mul(Tensor::IndexQ, &[b, sq, hi, di])?,
            q.len(),
        )?;
        exact_len(Tensor::IndexK, mul(Tensor::IndexK, &[b, skv, di])?, k.len())?;
        exact_len(Tensor::IndexW, mul(Tensor::IndexW, &[b, sq, hi])?, w.len())?;
        if let Some(s) = q_scales {
            s.check(
                Tensor::IndexQScale,
                mul(Tensor::IndexQScale, &[b, sq, hi])?,
                di,
            )?;
        }
        if let Some(s) = k_scales {
            s.check(
                Tensor::IndexKScale,
                mul(Tensor::IndexKScale, &[b, skv])?,
                di,
            )?;
        }
        mul(Tensor::Scores, &[sq, skv])?;
        mask.validate(b, 1, sq, skv)?;
        Ok(Self {
            spec,
            mask: *mask,
            q,
            q_scales,
            k,
            k_scales,
            w,
        })
    }

    /// The sizes.
    pub const fn spec(&self) -> &IndexerSpec {
        &self.spec
    }

    /// The mask.
    pub const fn mask(&self) -> &MaskSpec<'a> {
        &self.mask
    }

    /// Row `row` (flat over the leading axes) of a `(rows, dim)` operand,
    /// widened and scaled into `dst[d · stride]` for `d < dim`.
    #[inline]
    fn load_row(
        src: &[T],
        scales: Option<Scales<'_>>,
        dim: usize,
        row: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        let x = &src[row * dim..][..dim];
        match scales {
            None => x
                .iter()
                .enumerate()
                .for_each(|(d, &c)| dst[d * stride] = c.to_f32()),
            Some(s) => {
                let per_row = s.groups_per_row(dim);
                let sc = &s.values[row * per_row..][..per_row];
                for (g, (c, &scale)) in x.chunks(s.group).zip(sc).enumerate() {
                    for (o, &c) in c.iter().enumerate() {
                        dst[(g * s.group + o) * stride] = c.to_f32() * scale;
                    }
                }
            }
        }
    }

    /// The dequantised value of `index_q[b, t, j, :]` into `dst[..Di]`
    /// (what the kernel computes with; references use it).
    pub fn q_row(&self, b: usize, t: usize, j: usize, dst: &mut [f32]) -> Result<(), Error> {
        let s = &self.spec;
        if b >= s.batch || t >= s.q_len || j >= s.heads || dst.len() < s.dim {
            return Err(Error::TileOutOfRange);
        }
        Self::load_row(
            self.q,
            self.q_scales,
            s.dim,
            (b * s.q_len + t) * s.heads + j,
            dst,
            1,
        );
        Ok(())
    }

    /// The dequantised value of `index_k[b, key, :]` into `dst[..Di]`.
    pub fn k_row(&self, b: usize, key: usize, dst: &mut [f32]) -> Result<(), Error> {
        let s = &self.spec;
        if b >= s.batch || key >= s.kv_len || dst.len() < s.dim {
            return Err(Error::TileOutOfRange);
        }
        Self::load_row(self.k, self.k_scales, s.dim, b * s.kv_len + key, dst, 1);
        Ok(())
    }

    /// `index_w[b, t, j]` (in range after validation; the caller keeps the
    /// indices in range).
    #[inline(always)]
    fn weight(&self, b: usize, t: usize, j: usize) -> f32 {
        self.w[(b * self.spec.q_len + t) * self.spec.heads + j]
    }
}

/// The indexer kernel over micro-kernel `K`, `BQ` queries and `BK` keys a
/// tile. `BQ` must be a multiple of `K::MR` and `BK` of `K::NR` (checked at
/// compile time).
#[derive(Clone, Copy, Debug)]
pub struct LightningIndexer<K: MicroKernel, const BQ: usize, const BK: usize> {
    kernel: K,
}

impl<K: MicroKernel, const BQ: usize, const BK: usize> LightningIndexer<K, BQ, BK> {
    const TILES_FIT: () = assert!(
        BQ > 0 && BK > 0 && BQ % K::MR == 0 && BK % K::NR == 0,
        "BQ must be a multiple of K::MR and BK of K::NR"
    );

    /// An indexer over micro-kernel `kernel`.
    pub const fn new(kernel: K) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::TILES_FIT;
        Self { kernel }
    }

    /// f32s of scratch per call (or per worker): `BQ·Hi·Di + Di·BK + BQ·Hi·BK`
    /// (saturating).
    pub const fn scratch_len(heads: usize, dim: usize) -> usize {
        let rows = BQ.saturating_mul(heads);
        rows.saturating_mul(dim)
            .saturating_add(dim.saturating_mul(BK))
            .saturating_add(rows.saturating_mul(BK))
    }

    /// f32s of score buffer per query tile: `BQ·Skv`.
    pub const fn scores_len(kv_len: usize) -> usize {
        BQ.saturating_mul(kv_len)
    }

    /// Query tiles per batch.
    pub const fn q_tiles(q_len: usize) -> usize {
        q_len.div_ceil(BQ)
    }

    /// Score query tile `q_tile` of batch `b` against every key: row `r` of
    /// the tile goes to `scores[r·Skv ..][.. Skv]`, `-inf` where masked.
    /// Returns the number of rows in the tile (`<= BQ`).
    ///
    /// Errors: short buffers, a tile outside the problem, or a visible score
    /// that is not finite (NaN or overflow in the inputs).
    pub fn scores_tile<T: Element>(
        &self,
        ix: &Indexer<'_, T>,
        b: usize,
        q_tile: usize,
        scores: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<usize, Error> {
        let (i0, rows) = Self::locate(&ix.spec, b, q_tile, scores.len(), scratch.len())?;
        let IndexerSpec {
            q_len,
            kv_len,
            heads: hi,
            dim: di,
            ..
        } = ix.spec;
        let (q_buf, rest) = scratch.split_at_mut(BQ * hi * di);
        let (kt, rest) = rest.split_at_mut(di * BK);
        let c = &mut rest[..BQ * hi * BK];
        load_q_tile(ix, b, i0, rows, q_buf);
        let (offset, valid) = (
            ix.mask.batch_offset(b, q_len),
            ix.mask.batch_kv_len(b, kv_len),
        );
        let mut spans = [RowSpan::EMPTY; BQ];
        for (r, span) in spans.iter_mut().enumerate().take(rows) {
            *span = ix.mask.row_span((i0 + r) as isize + offset, valid);
        }
        let spans = &spans[..rows];
        for t in 0..kv_len.div_ceil(BK) {
            let keys = t * BK..((t + 1) * BK).min(kv_len);
            let class = ix.mask.classify(spans, keys.start, keys.end);
            if class == TileClass::Empty {
                for r in 0..rows {
                    scores[r * kv_len + keys.start..][..keys.len()].fill(f32::NEG_INFINITY);
                }
                continue;
            }
            load_kt::<T, BK>(ix, b, keys.clone(), kt);
            // SAFETY: BQ % MR == 0 and BK % NR == 0 (compile-time check);
            // q_buf is (BQ·Hi)×Di, kt is Di×BK, c is (BQ·Hi)×BK, sized above.
            unsafe {
                self.kernel
                    .gemm(BQ * hi, BK, di, q_buf, di, kt, BK, c, BK, false)
            };
            for (r, span) in spans.iter().enumerate() {
                let out = &mut scores[r * kv_len + keys.start..][..keys.len()];
                weigh_heads::<T, BK>(ix, b, i0 + r, &c[r * hi * BK..], out);
                let span = (class == TileClass::Partial).then_some(span);
                mask_or_check(ix, b, i0 + r, keys.start, span, out)?;
            }
        }
        Ok(rows)
    }

    /// Check the scratch, the tile's coordinates and the score length;
    /// returns the tile's first query and its rows.
    #[inline(always)]
    fn locate(
        spec: &IndexerSpec,
        b: usize,
        q_tile: usize,
        scores: usize,
        scratch: usize,
    ) -> Result<(usize, usize), Error> {
        let need = Self::scratch_len(spec.heads, spec.dim);
        if scratch < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch,
            });
        }
        let i0 = q_tile
            .checked_mul(BQ)
            .filter(|&i| i < spec.q_len && b < spec.batch)
            .ok_or(Error::TileOutOfRange)?;
        let rows = BQ.min(spec.q_len - i0);
        let need = rows * spec.kv_len;
        if scores < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scores,
                need,
                got: scores,
            });
        }
        Ok((i0, rows))
    }

    /// Score query tile `q_tile` of batch `b` and write the top `top_k` keys
    /// of each of its rows (ascending key order, `-1`-padded) to
    /// `tile_indices[r·top_k ..][.. top_k]`, `r` the row within the tile:
    /// the tile's own slice of the `(B, Sq, top_k)` output, starting at row
    /// `b·Sq + q_tile·BQ`, so parallel workers write disjoint slices. It must
    /// hold at least `rows·top_k` entries. `scores` holds
    /// [`scores_len`](Self::scores_len) f32s and is overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn top_k_tile<T: Element, I: KeyIndex>(
        &self,
        ix: &Indexer<'_, T>,
        b: usize,
        q_tile: usize,
        top_k_: usize,
        tile_indices: &mut [I],
        scores: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<usize, Error> {
        let s = ix.spec;
        if top_k_ == 0 {
            return Err(Error::Zero { what: Size::TopK });
        }
        let i0 = q_tile
            .checked_mul(BQ)
            .filter(|&i| i < s.q_len && b < s.batch)
            .ok_or(Error::TileOutOfRange)?;
        let rows = BQ.min(s.q_len - i0);
        let need = mul(Tensor::Indices, &[rows, top_k_])?;
        if tile_indices.len() < need {
            return Err(Error::TooShort {
                tensor: Tensor::Indices,
                need,
                got: tile_indices.len(),
            });
        }
        self.scores_tile(ix, b, q_tile, scores, scratch)?;
        for (r, out) in tile_indices.chunks_exact_mut(top_k_).take(rows).enumerate() {
            top_k_in_place(&mut scores[r * s.kv_len..][..s.kv_len], out);
        }
        Ok(rows)
    }

    /// The whole problem on one thread: `indices (B, Sq, top_k)`. A parallel
    /// caller runs [`top_k_tile`](Self::top_k_tile) per (b, query tile)
    /// instead, with its own `scores` and `scratch` per worker.
    pub fn run<T: Element, I: KeyIndex>(
        &self,
        ix: &Indexer<'_, T>,
        top_k_: usize,
        indices: &mut [I],
        scores: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        let sp = ix.spec;
        if top_k_ == 0 {
            return Err(Error::Zero { what: Size::TopK });
        }
        exact_len(
            Tensor::Indices,
            mul(Tensor::Indices, &[sp.batch, sp.q_len, top_k_])?,
            indices.len(),
        )?;
        for b in 0..sp.batch {
            for t in 0..Self::q_tiles(sp.q_len) {
                let row0 = b * sp.q_len + t * BQ;
                self.top_k_tile(
                    ix,
                    b,
                    t,
                    top_k_,
                    &mut indices[row0 * top_k_..],
                    scores,
                    scratch,
                )?;
            }
        }
        Ok(())
    }
}

/// The tile's queries in f32 (scaled), one `Hi·Di` row per query; padding
/// rows are zero.
#[inline(always)]
fn load_q_tile<T: Element>(ix: &Indexer<'_, T>, b: usize, i0: usize, rows: usize, q: &mut [f32]) {
    let IndexerSpec {
        q_len, heads, dim, ..
    } = ix.spec;
    for (r, dst) in q.chunks_exact_mut(heads * dim).enumerate() {
        if r < rows {
            for (j, d) in dst.chunks_exact_mut(dim).enumerate() {
                let row = (b * q_len + i0 + r) * heads + j;
                Indexer::<T>::load_row(ix.q, ix.q_scales, dim, row, d, 1);
            }
        } else {
            dst.fill(0.0);
        }
    }
}

/// Kᵀ of `keys` in f32, scaled (`Di×BK`); padding keys are zero.
#[inline(always)]
fn load_kt<T: Element, const BK: usize>(
    ix: &Indexer<'_, T>,
    b: usize,
    keys: Range<usize>,
    kt: &mut [f32],
) {
    let (kv_len, di) = (ix.spec.kv_len, ix.spec.dim);
    for cc in 0..BK {
        if cc < keys.len() {
            let row = b * kv_len + keys.start + cc;
            Indexer::<T>::load_row(ix.k, ix.k_scales, di, row, &mut kt[cc..], BK);
        } else {
            for dd in 0..di {
                kt[dd * BK + cc] = 0.0;
            }
        }
    }
}

/// `I[i, s] = Σ_j w[i, j]·ReLU(q[i, j]·k[s])` for query `i` over one key
/// tile, from its `Hi` rows of `q·k` in `c` (`BK` apart).
#[inline(always)]
fn weigh_heads<T: Element, const BK: usize>(
    ix: &Indexer<'_, T>,
    b: usize,
    i: usize,
    c: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    for j in 0..ix.spec.heads {
        let wj = ix.weight(b, i, j);
        let cr = &c[j * BK..][..out.len()];
        for (o, &x) in out.iter_mut().zip(cr) {
            // ReLU that keeps NaN (f32::max would hide it).
            *o += wj * if x < 0.0 { 0.0 } else { x };
        }
    }
}

/// Scores of query `i` from key `j0` on: `-inf` where `span` (given for
/// Partial tiles) or the mask hides the key; else an error if not finite.
#[inline(always)]
fn mask_or_check<T: Element>(
    ix: &Indexer<'_, T>,
    b: usize,
    i: usize,
    j0: usize,
    span: Option<&RowSpan>,
    out: &mut [f32],
) -> Result<(), Error> {
    let (q_len, kv_len) = (ix.spec.q_len, ix.spec.kv_len);
    for (cc, o) in out.iter_mut().enumerate() {
        let j = j0 + cc;
        if span.is_some_and(|s| !ix.mask.visible(s, b, 0, i, j, q_len, kv_len)) {
            *o = f32::NEG_INFINITY;
        } else if !o.is_finite() {
            return Err(Error::NonFinite {
                tensor: Tensor::IndexScores,
                at: (b * q_len + i) * kv_len + j,
            });
        }
    }
    Ok(())
}
