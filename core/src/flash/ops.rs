//! The tile ops of the flash loop, in the order [`Flash`]'s `tile_impl`
//! calls them: locate the tile and cut its scratch, load Q, K and V, the
//! QKᵀ block, softcap and mask, the online-softmax update, the P·V block
//! and the final normalisation. Every op is `#[inline(always)]`: the loop
//! compiles as one function.

use core::ops::Range;

use super::{round_up, Attention, Flash, DV_ALIGN};
use crate::element::Element;
use crate::error::{Error, Tensor};
use crate::kernel::MicroKernel;
use crate::mask::{MaskSpec, RowSpan, TileClass};
use crate::spec::AttentionSpec;

impl<K: MicroKernel, const BQ: usize, const BK: usize> Flash<K, BQ, BK> {
    /// Check the scratch length (`need`) and the tile's coordinates; returns
    /// the tile's first query row.
    #[inline(always)]
    pub(super) fn locate(
        spec: &AttentionSpec,
        b: usize,
        h: usize,
        q_tile: usize,
        kv: &Range<usize>,
        need: usize,
        scratch_len: usize,
    ) -> Result<usize, Error> {
        if scratch_len < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch_len,
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
        Ok(i0)
    }

    /// The key tiles to visit, in order: the `selected` list, or else the
    /// global tiles, then the local ones after them, then any local ones
    /// before them.
    #[inline(always)]
    pub(super) fn kv_order<'l>(
        selected: Option<&'l [usize]>,
        spans: &Spans<'_, '_>,
        kv: &Range<usize>,
    ) -> KvOrder<'l> {
        let (global, local) = spans.key_tiles::<BK>(kv);
        let local_rest = local.start.max(global.end)..local.end;
        let local_head = local.start..local.end.min(global.start);
        KvOrder {
            selected: selected.map(<[usize]>::iter),
            parts: [global, local_rest, local_head],
            part: 0,
        }
    }

    /// Kᵀ of keys `j0..j0 + cols` in f32 (`D×BK`); padding keys are zero.
    #[inline(always)]
    pub(super) fn load_kt<T: Element>(
        &self,
        att: &Attention<'_, T>,
        at: &TilePos,
        j0: usize,
        cols: usize,
        kt: &mut [f32],
    ) {
        let (spec, d) = (&att.spec, at.d);
        let k_base = spec.k.offset(at.b, at.hk, j0);
        match T::as_f32(att.k) {
            Some(k32) if cols > 0 => {
                self.kernel
                    .transpose(&k32[k_base..], cols, d, spec.k.seq, kt, BK);
            }
            _ => {
                // Widen 16 values at a time with the kernel's conversions
                // (F16C / AVX-512 on x86), then scatter them into Kᵀ.
                let mut run = [0.0f32; 16];
                for c in 0..cols {
                    let src = &att.k[k_base + c * spec.k.seq..][..d];
                    for (i, part) in src.chunks(16).enumerate() {
                        T::widen(self.kernel, part, &mut run);
                        for (dd, &x) in run[..part.len()].iter().enumerate() {
                            kt[(i * 16 + dd) * BK + c] = x;
                        }
                    }
                }
            }
        }
        if cols < BK {
            for row in kt.chunks_exact_mut(BK) {
                row[cols..].fill(0.0);
            }
        }
    }

    /// `S = Q·Kᵀ` (`BQ×BK`; Q is already scaled).
    #[inline(always)]
    pub(super) fn scores(&self, d: usize, q: &[f32], kt: &[f32], s: &mut [f32]) {
        // SAFETY: BQ % MR == 0 and BK % NR == 0 (checked at compile time);
        // q is BQ×d, kt is d×BK and s is BQ×BK, all cut by TileBufs::cut.
        unsafe { self.kernel.gemm(BQ, BK, d, q, d, kt, BK, s, BK, false) };
    }

    /// Per valid row of `S`: softcap, mask (Partial tiles only), then the
    /// online-softmax update (`m' = max(m, rowmax S)`, `P = exp(S - m')`,
    /// `α = exp(m - m')`, `l = α·l + rowsum P`, `O = α·O`). Padding rows
    /// become zeros, padding keys `-inf`.
    #[inline(always)]
    pub(super) fn softmax_tile<T: Element>(
        &self,
        att: &Attention<'_, T>,
        at: &TilePos,
        spans: &Spans<'_, '_>,
        class: TileClass,
        keys: Range<usize>,
        buf: &mut TileBufs<'_>,
    ) {
        let softcap = att.spec.softcap;
        let cols = keys.end - keys.start;
        for (r, row) in buf.s.chunks_exact_mut(BK).enumerate() {
            if r >= at.rows {
                row.fill(0.0);
                continue;
            }
            let (live, pad) = row.split_at_mut(cols);
            if softcap > 0.0 {
                apply_softcap(live, softcap);
            }
            if class == TileClass::Partial {
                mask_row(att, at, spans.of(r), r, keys.start, live);
            }
            pad.fill(f32::NEG_INFINITY);
            let o = &mut buf.o[r * at.dvp..][..at.dvp];
            online_softmax_row(self.kernel, row, o, &mut buf.m[r], &mut buf.l[r]);
        }
    }

    /// `O += P·V`.
    #[inline(always)]
    pub(super) fn accumulate_pv(&self, dvp: usize, p: &[f32], vt: &[f32], o: &mut [f32]) {
        // SAFETY: BQ % MR == 0 and dvp % NR == 0 (DV_ALIGN % NR == 0);
        // p is BQ×BK, vt is BK×dvp and o is BQ×dvp, all cut by TileBufs::cut.
        unsafe { self.kernel.gemm(BQ, dvp, BK, p, BK, vt, dvp, o, dvp, true) };
    }
}

/// [`Flash::kv_order`]'s iterator: a selected list, or three ranges in turn.
/// Small on purpose (a `Chain` of `Flatten`s kept three copies of the ranges
/// in the tile loop's frame).
pub(super) struct KvOrder<'l> {
    selected: Option<core::slice::Iter<'l, usize>>,
    parts: [Range<usize>; 3],
    part: usize,
}

impl Iterator for KvOrder<'_> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if let Some(list) = &mut self.selected {
            return list.next().copied();
        }
        while let Some(range) = self.parts.get_mut(self.part) {
            if let Some(t) = range.next() {
                return Some(t);
            }
            self.part += 1;
        }
        None
    }
}

/// Where one query tile sits, and the sizes its buffers are cut to.
#[derive(Clone, Copy)]
pub(super) struct TilePos {
    pub(super) b: usize,
    pub(super) h: usize,
    /// The KV head query head `h` reads.
    pub(super) hk: usize,
    /// First query row.
    pub(super) i0: usize,
    /// Valid query rows (`<= BQ`).
    pub(super) rows: usize,
    pub(super) d: usize,
    pub(super) dv: usize,
    /// `dv` rounded up to [`DV_ALIGN`].
    pub(super) dvp: usize,
}

impl TilePos {
    /// Query tile of `BQ` rows from `i0` of (batch `b`, query head `h`);
    /// `i0 < q_len`.
    #[inline(always)]
    pub(super) fn new<const BQ: usize>(
        spec: &AttentionSpec,
        b: usize,
        h: usize,
        i0: usize,
    ) -> Self {
        Self {
            b,
            h,
            hk: spec.kv_head(h),
            i0,
            rows: BQ.min(spec.q_len - i0),
            d: spec.head_dim,
            dv: spec.v_head_dim,
            dvp: round_up(spec.v_head_dim, DV_ALIGN),
        }
    }
}

/// The Kᵀ and V panels of one (batch, KV head), packed by
/// [`Flash::pack_kv`]: per key tile, its Kᵀ then its V.
#[derive(Clone, Copy)]
pub(super) struct Packed<'p> {
    pub(super) panels: &'p [f32],
}

impl<'p> Packed<'p> {
    /// Key tile `t`'s Kᵀ (`d×BK`) and V (`BK×dvp`).
    #[inline(always)]
    pub(super) fn tile<const BK: usize>(
        self,
        t: usize,
        d: usize,
        dvp: usize,
    ) -> (&'p [f32], &'p [f32]) {
        self.panels[t * BK * (d + dvp)..][..BK * (d + dvp)].split_at(d * BK)
    }
}

/// Which key and value buffers a [`TileBufs`] holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvBufs {
    /// Kᵀ and V of one key tile, packed per tile.
    PerTile,
    /// Kᵀ, V and the gathered K rows before packing.
    Gather,
    /// None: the tile reads panels packed once per head.
    Packed,
}

/// The scratch of one online-softmax pass over `rows` query rows (a flash
/// query tile, or a gather group), cut into its buffers.
pub(crate) struct TileBufs<'s> {
    /// `rows×D`: the pre-scaled queries.
    pub(crate) q: &'s mut [f32],
    /// `D×BK`: Kᵀ (empty with [`KvBufs::Packed`]).
    pub(crate) kt: &'s mut [f32],
    /// `BK×D`: gathered K rows before packing (empty unless gathering).
    pub(crate) k_rows: &'s mut [f32],
    /// `BK×Dvp`: V (empty with [`KvBufs::Packed`]).
    pub(crate) vt: &'s mut [f32],
    /// `rows×BK`: the scores S, then the probabilities P.
    pub(crate) s: &'s mut [f32],
    /// `rows×Dvp`: the output accumulator O, zeroed.
    pub(crate) o: &'s mut [f32],
    /// `rows`: the running max m (then the lse), `-inf`.
    pub(crate) m: &'s mut [f32],
    /// `rows`: the running sum l, zeroed.
    pub(crate) l: &'s mut [f32],
}

impl<'s> TileBufs<'s> {
    /// Cut `scratch` in the order above and reset O, m and l. Panics if it
    /// is shorter than the caller's `scratch_len`, which every caller checks
    /// first.
    #[inline(always)]
    pub(crate) fn cut(
        scratch: &'s mut [f32],
        rows: usize,
        bk: usize,
        d: usize,
        dvp: usize,
        kv: KvBufs,
    ) -> Self {
        let own = if kv == KvBufs::Packed { 0 } else { bk };
        let (q, rest) = scratch.split_at_mut(rows * d);
        let (kt, rest) = rest.split_at_mut(d * own);
        let (k_rows, rest) = rest.split_at_mut(if kv == KvBufs::Gather { bk * d } else { 0 });
        let (vt, rest) = rest.split_at_mut(own * dvp);
        let (s, rest) = rest.split_at_mut(rows * bk);
        let (o, rest) = rest.split_at_mut(rows * dvp);
        let (m, rest) = rest.split_at_mut(rows);
        let l = &mut rest[..rows];
        o.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        Self {
            q,
            kt,
            k_rows,
            vt,
            s,
            o,
            m,
            l,
        }
    }
}

/// The visible-key spans of a query tile's rows. Spans are recomputed where
/// needed (a few integer ops per row per tile) rather than stored: no
/// BQ-sized array on the stack.
#[derive(Clone, Copy)]
pub(super) struct Spans<'m, 'a> {
    mask: &'m MaskSpec<'a>,
    /// Position of the tile's first row (its query index plus the batch's
    /// offset).
    p0: isize,
    rows: usize,
    /// Valid keys of the batch.
    valid: usize,
}

impl<'m, 'a> Spans<'m, 'a> {
    #[inline(always)]
    pub(super) fn new(mask: &'m MaskSpec<'a>, spec: &AttentionSpec, at: &TilePos) -> Self {
        Self {
            mask,
            p0: at.i0 as isize + mask.batch_offset(at.b, spec.q_len),
            rows: at.rows,
            valid: mask.batch_kv_len(at.b, spec.kv_len),
        }
    }

    /// The span of row `r` of the tile.
    #[inline(always)]
    pub(super) fn of(&self, r: usize) -> RowSpan {
        self.mask.row_span(self.p0 + r as isize, self.valid)
    }

    /// The spans of every valid row.
    #[inline(always)]
    pub(super) fn iter(&self) -> impl Iterator<Item = RowSpan> + '_ {
        (0..self.rows).map(|r| self.of(r))
    }

    /// The `BK`-key tiles within `kv` that the rows' global part and local
    /// part can touch.
    #[inline(always)]
    pub(super) fn key_tiles<const BK: usize>(
        &self,
        kv: &Range<usize>,
    ) -> (Range<usize>, Range<usize>) {
        let (mut g_hi, mut l_lo, mut l_hi) = (-1isize, isize::MAX, -1isize);
        for span in self.iter() {
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
        (tiles_in(0, g_hi), tiles_in(l_lo, l_hi))
    }
}

/// The Q tile in f32, pre-scaled by `scale`; padding rows are zero.
#[inline(always)]
pub(super) fn load_q<K: MicroKernel, T: Element>(
    kernel: K,
    att: &Attention<'_, T>,
    at: &TilePos,
    q: &mut [f32],
) {
    let spec = &att.spec;
    for (r, dst) in q.chunks_exact_mut(at.d).enumerate() {
        if r < at.rows {
            let src = &att.q[spec.q.offset(at.b, at.h, at.i0 + r)..][..at.d];
            T::widen(kernel, src, dst);
            kernel.scale_row(dst, spec.scale);
        } else {
            dst.fill(0.0);
        }
    }
}

/// The V tile of keys `j0..j0 + cols` in f32 (`BK×Dvp`); padding keys and
/// columns are zero.
#[inline(always)]
pub(super) fn load_v<K: MicroKernel, T: Element, const BK: usize>(
    kernel: K,
    att: &Attention<'_, T>,
    at: &TilePos,
    j0: usize,
    cols: usize,
    vt: &mut [f32],
) {
    let (spec, dv, dvp) = (&att.spec, at.dv, at.dvp);
    for c in 0..BK {
        let dst = &mut vt[c * dvp..][..dvp];
        if c < cols {
            let src = &att.v[spec.v.offset(at.b, at.hk, j0 + c)..][..dv];
            T::widen(kernel, src, &mut dst[..dv]);
            dst[dv..].fill(0.0);
        } else {
            dst.fill(0.0);
        }
    }
}

/// `S = c·tanh(S / c)`.
#[inline(always)]
pub(crate) fn apply_softcap(s: &mut [f32], c: f32) {
    s.iter_mut().for_each(|x| *x = c * libm::tanhf(*x / c));
}

/// Mask one row `r` of a Partial tile (keys from `j0`): structural rules
/// first (branch-free, vectorises), then segments and dense masks only where
/// they exist.
#[inline(always)]
fn mask_row<T: Element>(
    att: &Attention<'_, T>,
    at: &TilePos,
    span: RowSpan,
    r: usize,
    j0: usize,
    s: &mut [f32],
) {
    for (cc, x) in s.iter_mut().enumerate() {
        if !span.contains((j0 + cc) as isize) {
            *x = f32::NEG_INFINITY;
        }
    }
    let (spec, mask) = (&att.spec, &att.mask);
    if mask.is_structural() {
        return;
    }
    let i = at.i0 + r;
    for (cc, x) in s.iter_mut().enumerate() {
        let j = j0 + cc;
        if *x == f32::NEG_INFINITY {
            continue;
        }
        if mask.extra_visible(at.b, at.h, i, j, spec.q_len, spec.kv_len) {
            *x += mask.bias(at.b, at.h, i, j);
        } else {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// `P = exp(S - m')` for one row, and the running max `m`, sum `l` and
/// output row `o` rescaled to the new max.
#[inline(always)]
pub(crate) fn online_softmax_row<K: MicroKernel>(
    kernel: K,
    row: &mut [f32],
    o: &mut [f32],
    m: &mut f32,
    l: &mut f32,
) {
    let upd = kernel.softmax_row(row, *m);
    if upd.alpha != 1.0 {
        kernel.scale_row(o, upd.alpha);
    }
    *l = *l * upd.alpha + upd.sum;
    *m = upd.max;
}

/// `Y = O / l` and `lse = m + ln l` (in place in `m`) for the first `rows`
/// rows (`dvp` apart); a row that saw no key gives `Y = 0`, `lse = -inf`.
#[inline(always)]
pub(crate) fn normalise<K: MicroKernel>(
    kernel: K,
    rows: usize,
    dvp: usize,
    o: &mut [f32],
    m: &mut [f32],
    l: &[f32],
) {
    for r in 0..rows {
        let row = &mut o[r * dvp..][..dvp];
        if l[r] > 0.0 {
            kernel.scale_row(row, 1.0 / l[r]);
            m[r] += libm::logf(l[r]);
        } else {
            row.fill(0.0);
            m[r] = f32::NEG_INFINITY;
        }
    }
}
