//! The tiled forward pass with online softmax.
//!
//! For each query tile of `BQ` rows the loop keeps a running max `m`, a
//! running sum `l` and an f32 accumulator `O`. Every key tile of `BK` keys
//! that the mask does not classify as Empty is loaded once and goes through,
//! in order:
//!
//! ```text
//! S = (scale·Q)·Kᵀ          gemm            (QKᵀ block)
//! S = softcap(S); mask(S)   per element, Partial tiles only
//! m' = max(m, rowmax S)     softmax_row
//! P = exp(S - m')           softmax_row
//! α = exp(m - m'); l = α·l + rowsum P
//! O = α·O + P·V             scale_row, gemm (P·V block)
//! ```
//!
//! and at the end `Y = O / l`, `lse = m + ln l` (a row that saw no key gives
//! `Y = 0`, `lse = -inf`).
//!
//! # Cost
//! Time is `4·D` flops (with `Dv = D`) per visited (query, key) pair plus
//! `O((BQ + BK)·D)` loads per visited tile pair; tiles outside the rows'
//! visible spans are never touched, so a window of `w` costs `O(S·w)`.
//! Memory is the caller's scratch, [`Flash::scratch_len`] f32s (with Kᵀ
//! and V packed once per (batch, KV head) by [`Flash::pack_kv`]:
//! [`Flash::packed_kv_len`] per head plus [`Flash::packed_scratch_len`] per
//! worker, and no per-tile packing); the stack
//! holds only scalars (row spans are recomputed per tile, `O(BQ)` integer
//! work against `O(BQ·BK·D)` flops).

mod ops;

use core::ops::Range;

use crate::element::Element;
use crate::error::{Error, Tensor};
use crate::kernel::MicroKernel;
use crate::mask::{MaskSpec, TileClass};
use crate::spec::AttentionSpec;
use crate::stats::Stats;
pub(crate) use ops::{apply_softcap, normalise, online_softmax_row, KvBufs, TileBufs};
use ops::{load_q, load_v, Packed, Spans, TilePos};

/// `Dv` is padded to a multiple of this in scratch, so every kernel's `NR`
/// divides it.
pub const DV_ALIGN: usize = 16;

/// `Ok` when `got` packed-panel elements hold the `need` asked for.
fn panels_fit(need: usize, got: usize) -> Result<(), Error> {
    if got < need {
        return Err(Error::TooShort {
            tensor: Tensor::PackedKv,
            need,
            got,
        });
    }
    Ok(())
}

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to).saturating_mul(to)
}

/// One validated attention problem: a spec, a mask and the Q, K, V buffers.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a, T: Element> {
    spec: AttentionSpec,
    mask: MaskSpec<'a>,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
}

impl<'a, T: Element> Attention<'a, T> {
    /// Validate the spec, the mask and the buffer lengths. After this, no
    /// kernel call on the problem can index out of bounds or panic.
    pub fn new(
        spec: &AttentionSpec,
        mask: &MaskSpec<'a>,
        q: &'a [T],
        k: &'a [T],
        v: &'a [T],
    ) -> Result<Self, Error> {
        spec.validate()?;
        spec.check_len(Tensor::Q, q.len())?;
        spec.check_len(Tensor::K, k.len())?;
        spec.check_len(Tensor::V, v.len())?;
        spec.required_len(Tensor::Y)?;
        spec.required_len(Tensor::Lse)?;
        mask.validate(spec.batch, spec.q_heads, spec.q_len, spec.kv_len)?;
        Ok(Self {
            spec: *spec,
            mask: *mask,
            q,
            k,
            v,
        })
    }

    /// The spec.
    pub const fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// The mask.
    pub const fn mask(&self) -> &MaskSpec<'a> {
        &self.mask
    }

    /// The queries, `(B, Hq, Sq, D)` through `spec().q` strides.
    pub const fn q(&self) -> &'a [T] {
        self.q
    }

    /// The keys, `(B, Hkv, Skv, D)` through `spec().k` strides.
    pub const fn k(&self) -> &'a [T] {
        self.k
    }

    /// The values, `(B, Hkv, Skv, Dv)` through `spec().v` strides.
    pub const fn v(&self) -> &'a [T] {
        self.v
    }
}

/// The result of one query tile: `rows` normalised output rows and their lse.
#[derive(Debug)]
pub struct TileOut<'s> {
    /// First query row of the tile.
    pub q_start: usize,
    /// Valid rows (`<= BQ`).
    pub rows: usize,
    o: &'s [f32],
    o_stride: usize,
    dv: usize,
    lse: &'s [f32],
}

impl TileOut<'_> {
    /// Output row `r` (`Dv` values).
    #[inline]
    pub fn row(&self, r: usize) -> &[f32] {
        &self.o[r * self.o_stride..][..self.dv]
    }

    /// The lse of row `r` (natural log; `-inf` when the row saw no key).
    #[inline]
    pub fn lse(&self, r: usize) -> f32 {
        self.lse[r]
    }
}

/// The flash kernel: micro-kernel `K`, `BQ` query rows and `BK` keys a tile.
///
/// `BQ` must be a multiple of `K::MR`, `BK` a multiple of `K::NR` and of 8;
/// a wrong choice fails at compile time.
#[derive(Clone, Copy, Debug)]
pub struct Flash<K: MicroKernel, const BQ: usize, const BK: usize> {
    kernel: K,
}

impl<K: MicroKernel, const BQ: usize, const BK: usize> Flash<K, BQ, BK> {
    const TILES_FIT: () = assert!(
        BQ > 0
            && BK > 0
            && BQ % K::MR == 0
            && BK % K::NR == 0
            && BK % 8 == 0
            && DV_ALIGN % K::NR == 0,
        "BQ must be a multiple of K::MR, BK of K::NR and 8, and K::NR must divide DV_ALIGN"
    );

    /// A flash kernel over micro-kernel `kernel`.
    pub const fn new(kernel: K) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::TILES_FIT;
        Self { kernel }
    }

    /// The micro-kernel.
    pub const fn kernel(&self) -> K {
        self.kernel
    }

    /// f32 elements of scratch one call (or one worker) needs:
    /// `BQ·D + D·BK + BK·Dvp + BQ·BK + BQ·Dvp + 2·BQ`, with
    /// `Dvp = Dv` rounded up to [`DV_ALIGN`]. Saturates instead of overflowing.
    pub const fn scratch_len(head_dim: usize, v_head_dim: usize) -> usize {
        let dvp = round_up(v_head_dim, DV_ALIGN);
        BQ.saturating_mul(head_dim)
            .saturating_add(head_dim.saturating_mul(BK))
            .saturating_add(BK.saturating_mul(dvp))
            .saturating_add(BQ * BK)
            .saturating_add(BQ.saturating_mul(dvp))
            .saturating_add(2 * BQ)
    }

    /// f32 elements of the packed Kᵀ and V panels of one (batch, KV head)
    /// for [`pack_kv`](Self::pack_kv): `⌈Skv/BK⌉·BK·(D + Dvp)`, with
    /// `Dvp = Dv` rounded up to [`DV_ALIGN`]. Key tile `t` is one block of
    /// `BK·(D + Dvp)` at `t·BK·(D + Dvp)`: its `D×BK` Kᵀ, then its `BK×Dvp`
    /// V, ragged edges zero-padded. Saturates instead of overflowing.
    pub const fn packed_kv_len(kv_len: usize, head_dim: usize, v_head_dim: usize) -> usize {
        kv_len
            .div_ceil(BK)
            .saturating_mul(Self::packed_tile_len(head_dim, v_head_dim))
    }

    /// f32 elements of one key tile's block in the packed panels,
    /// `BK·(D + Dvp)`.
    pub const fn packed_tile_len(head_dim: usize, v_head_dim: usize) -> usize {
        BK.saturating_mul(head_dim.saturating_add(round_up(v_head_dim, DV_ALIGN)))
    }

    /// f32 elements of scratch one [`tile_packed`](Self::tile_packed) call
    /// (or one worker) needs: [`scratch_len`](Self::scratch_len) without the
    /// Kᵀ and V tiles, `BQ·D + BQ·BK + BQ·Dvp + 2·BQ`. Saturates instead of
    /// overflowing.
    pub const fn packed_scratch_len(head_dim: usize, v_head_dim: usize) -> usize {
        let dvp = round_up(v_head_dim, DV_ALIGN);
        BQ.saturating_mul(head_dim)
            .saturating_add(BQ * BK)
            .saturating_add(BQ.saturating_mul(dvp))
            .saturating_add(2 * BQ)
    }

    /// Pack key tiles `tiles` of (batch `b`, KV head `hk`) once, in f32,
    /// into `dst`, which holds those tiles' blocks
    /// (`tiles.len()·`[`packed_tile_len`](Self::packed_tile_len)); the whole
    /// head is `0..⌈Skv/BK⌉` into [`packed_kv_len`](Self::packed_kv_len).
    /// Disjoint tile ranges may be packed in parallel. Every query tile of
    /// the KV head's query heads then reads the panels with
    /// [`tile_packed`](Self::tile_packed) instead of packing each key tile
    /// again. Time `O(|tiles|·BK·(D + Dv))`.
    pub fn pack_kv<T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        hk: usize,
        tiles: Range<usize>,
        dst: &mut [f32],
    ) -> Result<(), Error> {
        let s = &att.spec;
        let block = Self::packed_tile_len(s.head_dim, s.v_head_dim);
        panels_fit(tiles.len().saturating_mul(block), dst.len())?;
        if b >= s.batch || hk >= s.kv_heads || tiles.end > s.kv_len.div_ceil(BK) {
            return Err(Error::TileOutOfRange);
        }
        let at = TilePos::new::<BQ>(s, b, hk * s.group(), 0);
        for (t, blk) in tiles.zip(dst.chunks_exact_mut(block)) {
            let (kt, vt) = blk.split_at_mut(at.d * BK);
            let (j0, j1) = (t * BK, ((t + 1) * BK).min(s.kv_len));
            self.load_kt(att, &at, j0, j1 - j0, kt);
            load_v::<K, T, BK>(self.kernel, att, &at, j0, j1 - j0, vt);
        }
        Ok(())
    }

    /// Like [`tile`](Self::tile), with the keys and values read from the
    /// `panels` that [`pack_kv`](Self::pack_kv) filled for this batch and
    /// query head's KV head; `scratch` is
    /// [`packed_scratch_len`](Self::packed_scratch_len) long. Both ends of
    /// `kv` must be on a key tile boundary (a multiple of `BK`) or at `Skv`.
    #[allow(clippy::too_many_arguments)]
    pub fn tile_packed<'s, T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        h: usize,
        q_tile: usize,
        kv: Range<usize>,
        panels: &[f32],
        scratch: &'s mut [f32],
        stats: &mut Stats,
    ) -> Result<TileOut<'s>, Error> {
        let s = &att.spec;
        panels_fit(
            Self::packed_kv_len(s.kv_len, s.head_dim, s.v_head_dim),
            panels.len(),
        )?;
        let on_tile = |j: usize| j % BK == 0 || j == s.kv_len;
        if !on_tile(kv.start) || !on_tile(kv.end) {
            return Err(Error::TileOutOfRange);
        }
        let packed = Packed { panels };
        self.tile_impl(att, b, h, q_tile, kv, None, Some(packed), scratch, stats)
    }

    /// Number of query tiles per (batch, head).
    pub const fn q_tiles(q_len: usize) -> usize {
        q_len.div_ceil(BQ)
    }

    /// Run the whole problem: write `Y` (with `spec.out` strides) and,
    /// optionally, `lse` as `(B, Hq, Sq)`. Returns the tile counters.
    pub fn run<T: Element, O: Element>(
        &self,
        att: &Attention<'_, T>,
        y: &mut [O],
        mut lse: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<Stats, Error> {
        let s = att.spec;
        s.check_outputs(y.len(), lse.as_deref().map(<[f32]>::len))?;
        let mut stats = Stats::default();
        for b in 0..s.batch {
            for h in 0..s.q_heads {
                for t in 0..Self::q_tiles(s.q_len) {
                    let out = self.tile(att, b, h, t, 0..s.kv_len, scratch, &mut stats)?;
                    for r in 0..out.rows {
                        let i = out.q_start + r;
                        let dst = &mut y[s.out.offset(b, h, i)..][..s.v_head_dim];
                        for (d, &x) in dst.iter_mut().zip(out.row(r)) {
                            *d = O::from_f32(x);
                        }
                        if let Some(l) = lse.as_deref_mut() {
                            l[(b * s.q_heads + h) * s.q_len + i] = out.lse(r);
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Compute one query tile `q_tile` of (batch `b`, query head `h`) over the
    /// keys in `kv` only (for split-KV work; merge the pieces with
    /// [`merge`](crate::merge)). The result lives in `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn tile<'s, T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        h: usize,
        q_tile: usize,
        kv: Range<usize>,
        scratch: &'s mut [f32],
        stats: &mut Stats,
    ) -> Result<TileOut<'s>, Error> {
        self.tile_impl(att, b, h, q_tile, kv, None, None, scratch, stats)
    }

    /// Like [`tile`](Self::tile), but visit only the key tiles listed in
    /// `kv_tiles` (indices of `BK`-key blocks, strictly ascending, so each at
    /// most once; anything else is `TileOutOfRange`), intersected with what the mask allows. This is the block-sparse
    /// entry point: a block selector picks the tiles, the same loop runs them.
    /// Tiles the mask classifies as Empty are still skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn tile_selected<'s, T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        h: usize,
        q_tile: usize,
        kv_tiles: &[usize],
        scratch: &'s mut [f32],
        stats: &mut Stats,
    ) -> Result<TileOut<'s>, Error> {
        let kv = 0..att.spec.kv_len;
        let ascending = kv_tiles.windows(2).all(|w| w[0] < w[1]);
        if !ascending || kv_tiles.last().is_some_and(|&t| t >= kv.end.div_ceil(BK)) {
            return Err(Error::TileOutOfRange);
        }
        self.tile_impl(att, b, h, q_tile, kv, Some(kv_tiles), None, scratch, stats)
    }

    /// One query tile, as the algorithm reads: load the pre-scaled Q tile,
    /// then for every visited key tile load Kᵀ and V, `S = Q·Kᵀ`, softcap
    /// and mask `S`, the online-softmax update of `m`, `l` and `O`, and
    /// `O += P·V`; at the end `Y = O / l` and `lse = m + ln l`. With
    /// `packed`, Kᵀ and V come from the panels instead.
    #[allow(clippy::too_many_arguments)]
    fn tile_impl<'s, T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        h: usize,
        q_tile: usize,
        kv: Range<usize>,
        selected: Option<&[usize]>,
        packed: Option<Packed<'_>>,
        scratch: &'s mut [f32],
        stats: &mut Stats,
    ) -> Result<TileOut<'s>, Error> {
        let (d, dv) = (att.spec.head_dim, att.spec.v_head_dim);
        let need = match packed {
            Some(_) => Self::packed_scratch_len(d, dv),
            None => Self::scratch_len(d, dv),
        };
        let i0 = Self::locate(&att.spec, b, h, q_tile, &kv, need, scratch.len())?;
        let at = TilePos::new::<BQ>(&att.spec, b, h, i0);
        let kv_bufs = match packed {
            Some(_) => KvBufs::Packed,
            None => KvBufs::PerTile,
        };
        let mut buf = TileBufs::cut(scratch, BQ, BK, at.d, at.dvp, kv_bufs);
        let (kt_buf, vt_buf) = (core::mem::take(&mut buf.kt), core::mem::take(&mut buf.vt));
        let spans = Spans::new(&att.mask, &att.spec, &at);

        load_q(self.kernel, att, &at, buf.q);
        let mut visited = 0usize;
        for t in Self::kv_order(selected, &spans, &kv) {
            let (j0, j1) = ((t * BK).max(kv.start), ((t + 1) * BK).min(kv.end));
            let class = att.mask.classify(spans.iter(), j0, j1);
            if class == TileClass::Empty {
                continue;
            }
            visited += 1;
            stats.count(class == TileClass::Full);
            let (kt, vt): (&[f32], &[f32]) = match packed {
                Some(p) => p.tile::<BK>(t, at.d, at.dvp),
                None => {
                    self.load_kt(att, &at, j0, j1 - j0, kt_buf);
                    load_v::<K, T, BK>(self.kernel, att, &at, j0, j1 - j0, vt_buf);
                    (kt_buf, vt_buf)
                }
            };
            self.scores(at.d, buf.q, kt, buf.s);
            self.softmax_tile(att, &at, &spans, class, j0..j1, &mut buf);
            self.accumulate_pv(at.dvp, buf.s, vt, buf.o);
        }
        let kv_tiles = kv.end.div_ceil(BK) - kv.start / BK;
        stats.skip(kv_tiles.saturating_sub(visited));
        normalise(self.kernel, at.rows, at.dvp, buf.o, buf.m, buf.l);
        Ok(TileOut {
            q_start: at.i0,
            rows: at.rows,
            o: buf.o,
            o_stride: at.dvp,
            dv: at.dv,
            lse: buf.m,
        })
    }
}
