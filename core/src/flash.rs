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
//! Memory is the caller's scratch, [`Flash::scratch_len`] f32s; the stack
//! holds only scalars (row spans are recomputed per tile, `O(BQ)` integer
//! work against `O(BQ·BK·D)` flops).

use core::ops::Range;

use crate::element::Element;
use crate::error::{Error, Tensor};
use crate::kernel::MicroKernel;
use crate::mask::{MaskSpec, TileClass};
use crate::spec::AttentionSpec;
use crate::stats::Stats;

/// `Dv` is padded to a multiple of this in scratch, so every kernel's `NR`
/// divides it.
pub const DV_ALIGN: usize = 16;

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
        self.tile_impl(att, b, h, q_tile, kv, None, scratch, stats)
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
        self.tile_impl(att, b, h, q_tile, kv, Some(kv_tiles), scratch, stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn tile_impl<'s, T: Element>(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        h: usize,
        q_tile: usize,
        kv: Range<usize>,
        selected: Option<&[usize]>,
        scratch: &'s mut [f32],
        stats: &mut Stats,
    ) -> Result<TileOut<'s>, Error> {
        let spec = &att.spec;
        let mask = &att.mask;
        let (d, dv) = (spec.head_dim, spec.v_head_dim);
        let dvp = round_up(dv, DV_ALIGN);
        let need = Self::scratch_len(d, dv);
        if scratch.len() < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch.len(),
            });
        }
        let i0 = q_tile.checked_mul(BQ).filter(|&i| i < spec.q_len);
        let (Some(i0), true, true) = (
            i0,
            b < spec.batch && h < spec.q_heads,
            kv.start <= kv.end && kv.end <= spec.kv_len,
        ) else {
            return Err(Error::TileOutOfRange);
        };
        let rows = BQ.min(spec.q_len - i0);
        let hk = spec.kv_head(h);

        let (q_buf, rest) = scratch.split_at_mut(BQ * d);
        let (kt, rest) = rest.split_at_mut(d * BK);
        let (vt, rest) = rest.split_at_mut(BK * dvp);
        let (sc, rest) = rest.split_at_mut(BQ * BK);
        let (o, rest) = rest.split_at_mut(BQ * dvp);
        let (m_run, rest) = rest.split_at_mut(BQ);
        let l_run = &mut rest[..BQ];

        // Row spans and the key range the tile can touch.
        let offset = mask.batch_offset(b, spec.q_len);
        let valid = mask.batch_kv_len(b, spec.kv_len);
        // Spans are recomputed where needed (a few integer ops per row per
        // tile) rather than stored: no BQ-sized array on the stack.
        let span_of = |r: usize| mask.row_span((i0 + r) as isize + offset, valid);
        let (mut g_hi, mut l_lo, mut l_hi) = (-1isize, isize::MAX, -1isize);
        for span in (0..rows).map(span_of) {
            g_hi = g_hi.max(span.global_hi);
            if span.lo <= span.hi {
                l_lo = l_lo.min(span.lo);
                l_hi = l_hi.max(span.hi);
            }
        }
        let tiles_in = |lo: isize, hi: isize| -> Range<usize> {
            let lo = (lo.max(kv.start as isize)) as usize;
            let hi = (hi + 1).min(kv.end as isize);
            if hi <= lo as isize {
                0..0
            } else {
                lo / BK..(hi as usize).div_ceil(BK)
            }
        };
        let global = tiles_in(0, g_hi);
        let local = tiles_in(l_lo, l_hi);

        // Q, pre-scaled; padding rows are zero.
        for (r, dst) in q_buf.chunks_exact_mut(d).enumerate() {
            if r < rows {
                let src = &att.q[spec.q.offset(b, h, i0 + r)..][..d];
                for (x, &y) in dst.iter_mut().zip(src) {
                    *x = y.to_f32() * spec.scale;
                }
            } else {
                dst.fill(0.0);
            }
        }
        o.fill(0.0);
        m_run.fill(f32::NEG_INFINITY);
        l_run.fill(0.0);

        let kv_tiles = kv.end.div_ceil(BK) - kv.start / BK;
        let mut visited = 0usize;
        let local_rest = local.start.max(global.end)..local.end;
        let local_head = local.start..local.end.min(global.start);
        let bounded = global.clone().chain(local_rest).chain(local_head);
        let (mut sel, mut all) = (None, None);
        match selected {
            Some(list) => sel = Some(list.iter().copied()),
            None => all = Some(bounded),
        }
        for t in sel.into_iter().flatten().chain(all.into_iter().flatten()) {
            let j0 = (t * BK).max(kv.start);
            let j1 = ((t + 1) * BK).min(kv.end);
            let class = mask.classify((0..rows).map(span_of), j0, j1);
            if class == TileClass::Empty {
                continue;
            }
            visited += 1;
            stats.count(class == TileClass::Full);
            let cols = j1 - j0;

            // Kᵀ and V tiles in f32; padding keys are zero.
            let k_base = spec.k.offset(b, hk, j0);
            match T::as_f32(att.k) {
                Some(k32) if cols > 0 => {
                    self.kernel
                        .transpose(&k32[k_base..], cols, d, spec.k.seq, kt, BK);
                }
                _ => {
                    for c in 0..cols {
                        let src = &att.k[k_base + c * spec.k.seq..][..d];
                        for (dd, &x) in src.iter().enumerate() {
                            kt[dd * BK + c] = x.to_f32();
                        }
                    }
                }
            }
            if cols < BK {
                for row in kt.chunks_exact_mut(BK) {
                    row[cols..].fill(0.0);
                }
            }
            for c in 0..BK {
                let dst = &mut vt[c * dvp..][..dvp];
                if c < cols {
                    let src = &att.v[spec.v.offset(b, hk, j0 + c)..][..dv];
                    for (x, &y) in dst.iter_mut().zip(src) {
                        *x = y.to_f32();
                    }
                    dst[dv..].fill(0.0);
                } else {
                    dst.fill(0.0);
                }
            }

            // SAFETY: BQ % MR == 0 and BK % NR == 0 (checked at compile time);
            // q_buf is BQ×d, kt is d×BK and sc is BQ×BK, all sized above.
            unsafe { self.kernel.gemm(BQ, BK, d, q_buf, d, kt, BK, sc, BK, false) };

            for (r, row) in sc.chunks_exact_mut(BK).enumerate() {
                if r >= rows {
                    row.fill(0.0);
                    continue;
                }
                let (live, pad) = row.split_at_mut(cols);
                if spec.softcap > 0.0 {
                    let c = spec.softcap;
                    live.iter_mut().for_each(|x| *x = c * libm::tanhf(*x / c));
                }
                if class == TileClass::Partial {
                    // Structural rules first (branch-free, vectorises), then
                    // segments and dense masks only where they exist.
                    let span = span_of(r);
                    for (cc, x) in live.iter_mut().enumerate() {
                        if !span.contains((j0 + cc) as isize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                    if !mask.is_structural() {
                        let i = i0 + r;
                        for (cc, x) in live.iter_mut().enumerate() {
                            let j = j0 + cc;
                            if *x == f32::NEG_INFINITY {
                                continue;
                            }
                            if mask.extra_visible(b, h, i, j, spec.q_len, spec.kv_len) {
                                *x += mask.bias(b, h, i, j);
                            } else {
                                *x = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                pad.fill(f32::NEG_INFINITY);
                let upd = self.kernel.softmax_row(row, m_run[r]);
                if upd.alpha != 1.0 {
                    self.kernel.scale_row(&mut o[r * dvp..][..dvp], upd.alpha);
                }
                l_run[r] = l_run[r] * upd.alpha + upd.sum;
                m_run[r] = upd.max;
            }

            // SAFETY: BQ % MR == 0 and dvp % NR == 0 (DV_ALIGN % NR == 0);
            // sc is BQ×BK, vt is BK×dvp and o is BQ×dvp.
            unsafe { self.kernel.gemm(BQ, dvp, BK, sc, BK, vt, dvp, o, dvp, true) };
        }
        stats.skip(kv_tiles.saturating_sub(visited));

        // Normalise; m_run becomes the lse.
        for r in 0..rows {
            let row = &mut o[r * dvp..][..dvp];
            if l_run[r] > 0.0 {
                self.kernel.scale_row(row, 1.0 / l_run[r]);
                m_run[r] += libm::logf(l_run[r]);
            } else {
                row.fill(0.0);
                m_run[r] = f32::NEG_INFINITY;
            }
        }
        Ok(TileOut {
            q_start: i0,
            rows,
            o,
            o_stride: dvp,
            dv,
            lse: m_run,
        })
    }
}
