//! Attention over a per-query list of key indices (the exact half of
//! DeepSeek-V3.2's sparse attention): gather the listed K and V rows, run
//! the online softmax over them, and return `Y` and the lse.
//!
//! The result equals dense attention whose mask is the given [`MaskSpec`]
//! **and** "key is in the list": `-1` entries are padding, every other entry
//! must lie in `[0, Skv)` and appear at most once per list (checked, with an
//! error naming the row). Keys in the list that the mask hides are skipped,
//! so an index list can never widen what a query may see.
//!
//! Heads that share a KV head share the gather: one list row serves the
//! `Hq / Hkv` query heads of its KV head (all heads when the list has no
//! head axis, as DSA's indexer produces), so K/V rows are loaded once per
//! group and the score and P·V blocks are `group × BK` gemms on the
//! [`MicroKernel`].
//!
//! # Cost
//! Per (batch, KV head, query): `O(top_k)` to validate the list, and
//! `4·D·group` flops plus `D + Dv` loads per listed key; no work grows with
//! `Skv`. Memory: [`GatherAttention::scratch_len`] f32s and a zeroed bitmap
//! of [`GatherAttention::seen_len`] words per worker (`Skv / 8` bytes).

use crate::element::Element;
use crate::error::{Error, Size, Tensor};
use crate::flash::{
    apply_softcap, normalise, online_softmax_row, Attention, KvBufs, TileBufs, DV_ALIGN,
};
use crate::kernel::MicroKernel;
use crate::mask::{MaskSpec, RowSpan};
use crate::spec::AttentionSpec;
use crate::topk::KeyIndex;

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to).saturating_mul(to)
}

/// Element strides of an index tensor whose rows hold `top_k` contiguous
/// entries; a zero `kv_head` stride shares one list among all heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStrides {
    /// Between batches.
    pub batch: usize,
    /// Between KV heads (0 = shared by every head).
    pub kv_head: usize,
    /// Between queries.
    pub q: usize,
}

/// Per-query key lists: row `(b, hk, i)` is
/// `indices[b·batch + hk·kv_head + i·q ..][.. top_k]`.
#[derive(Clone, Copy, Debug)]
pub struct IndexList<'a, I: KeyIndex> {
    /// The entries.
    pub indices: &'a [I],
    /// Entries per row.
    pub top_k: usize,
    /// Row strides.
    pub strides: IndexStrides,
}

impl<'a, I: KeyIndex> IndexList<'a, I> {
    /// `(B, Sq, top_k)` contiguous, one list per query shared by all heads
    /// (the indexer's output).
    pub const fn shared(indices: &'a [I], q_len: usize, top_k: usize) -> Self {
        Self {
            indices,
            top_k,
            strides: IndexStrides {
                batch: q_len * top_k,
                kv_head: 0,
                q: top_k,
            },
        }
    }

    /// `(B, Hkv, Sq, top_k)` contiguous, one list per KV head and query.
    pub const fn per_kv_head(
        indices: &'a [I],
        kv_heads: usize,
        q_len: usize,
        top_k: usize,
    ) -> Self {
        Self {
            indices,
            top_k,
            strides: IndexStrides {
                batch: kv_heads * q_len * top_k,
                kv_head: q_len * top_k,
                q: top_k,
            },
        }
    }

    #[inline(always)]
    fn offset(&self, b: usize, hk: usize, i: usize) -> usize {
        b * self.strides.batch + hk * self.strides.kv_head + i * self.strides.q
    }

    /// The list of query `i` of (batch `b`, KV head `hk`); in range after
    /// [`SparseAttention::new`].
    #[inline]
    pub fn row(&self, b: usize, hk: usize, i: usize) -> &'a [I] {
        &self.indices[self.offset(b, hk, i)..][..self.top_k]
    }
}

/// A validated sparse problem: an [`Attention`] problem and its index lists.
#[derive(Clone, Copy, Debug)]
pub struct SparseAttention<'a, T: Element, I: KeyIndex> {
    att: Attention<'a, T>,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    list: IndexList<'a, I>,
}

impl<'a, T: Element, I: KeyIndex> SparseAttention<'a, T, I> {
    /// Validate the spec, the mask, Q/K/V (as [`Attention::new`]) and the
    /// index tensor's size (`top_k >= 1`, every row in bounds). The entries
    /// themselves are checked row by row as they are used.
    pub fn new(
        spec: &AttentionSpec,
        mask: &MaskSpec<'a>,
        q: &'a [T],
        k: &'a [T],
        v: &'a [T],
        list: IndexList<'a, I>,
    ) -> Result<Self, Error> {
        let att = Attention::new(spec, mask, q, k, v)?;
        if list.top_k == 0 {
            return Err(Error::Zero { what: Size::TopK });
        }
        let (b, hk, sq) = (spec.batch, spec.kv_heads, spec.q_len);
        if b > 0 && sq > 0 {
            let s = list.strides;
            let last = (|| {
                (b - 1)
                    .checked_mul(s.batch)?
                    .checked_add((hk - 1).checked_mul(s.kv_head)?)?
                    .checked_add((sq - 1).checked_mul(s.q)?)?
                    .checked_add(list.top_k)
            })()
            .ok_or(Error::Overflow(Tensor::Indices))?;
            if list.indices.len() < last {
                return Err(Error::TooShort {
                    tensor: Tensor::Indices,
                    need: last,
                    got: list.indices.len(),
                });
            }
        }
        Ok(Self { att, q, k, v, list })
    }

    /// The attention problem.
    pub const fn attention(&self) -> &Attention<'a, T> {
        &self.att
    }

    /// The index lists.
    pub const fn list(&self) -> &IndexList<'a, I> {
        &self.list
    }
}

/// The outputs of one query for every head of one KV group, in scratch.
#[derive(Debug)]
pub struct GroupOut<'s> {
    /// First query head of the group.
    pub head0: usize,
    /// Heads in the group.
    pub heads: usize,
    o: &'s [f32],
    o_stride: usize,
    dv: usize,
    lse: &'s [f32],
}

impl GroupOut<'_> {
    /// Output row of head `head0 + g` (`Dv` values).
    #[inline]
    pub fn row(&self, g: usize) -> &[f32] {
        &self.o[g * self.o_stride..][..self.dv]
    }

    /// lse of head `head0 + g` (`-inf` when it saw no key).
    #[inline]
    pub fn lse(&self, g: usize) -> f32 {
        self.lse[g]
    }
}

/// The gather kernel over micro-kernel `K`, gathering `BK` keys at a time
/// (`BK` a multiple of `K::NR` and of 8, checked at compile time).
#[derive(Clone, Copy, Debug)]
pub struct GatherAttention<K: MicroKernel, const BK: usize> {
    kernel: K,
}

impl<K: MicroKernel, const BK: usize> GatherAttention<K, BK> {
    const FITS: () = assert!(
        BK > 0 && BK % K::NR == 0 && BK % 8 == 0 && DV_ALIGN % K::NR == 0,
        "BK must be a multiple of K::NR and 8"
    );

    /// A gather kernel over micro-kernel `kernel`.
    pub const fn new(kernel: K) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        Self { kernel }
    }

    /// f32s of scratch per worker, with `G = Hq / Hkv` rounded up to `K::MR`
    /// as `Gp` and `Dv` rounded up to 16 as `Dvp`:
    /// `Gp·D + 2·D·BK + BK·Dvp + Gp·BK + Gp·Dvp + 2·Gp` (saturating).
    pub const fn scratch_len(group: usize, head_dim: usize, v_head_dim: usize) -> usize {
        let gp = round_up(group, K::MR);
        let dvp = round_up(v_head_dim, DV_ALIGN);
        gp.saturating_mul(head_dim)
            .saturating_add(head_dim.saturating_mul(BK).saturating_mul(2))
            .saturating_add(BK.saturating_mul(dvp))
            .saturating_add(gp.saturating_mul(BK))
            .saturating_add(gp.saturating_mul(dvp))
            .saturating_add(gp.saturating_mul(2))
    }

    /// u64 words of the `seen` bitmap: `ceil(Skv / 64)`.
    pub const fn seen_len(kv_len: usize) -> usize {
        kv_len.div_ceil(64)
    }

    /// Check row `(b, hk, i)`'s list and mark its keys in `seen`; on error
    /// the marks made so far are cleared again.
    fn mark_row<I: KeyIndex>(
        list: &[I],
        row: usize,
        kv_len: usize,
        seen: &mut [u64],
    ) -> Result<(), Error> {
        for (n, &x) in list.iter().enumerate() {
            let err = match x.get() {
                Ok(None) => continue,
                Ok(Some(j)) if j < kv_len => {
                    let (w, bit) = (j / 64, 1u64 << (j % 64));
                    if seen[w] & bit == 0 {
                        seen[w] |= bit;
                        continue;
                    }
                    Error::DuplicateIndex {
                        row,
                        index: j as i64,
                    }
                }
                Ok(Some(j)) => Error::IndexOutOfRange {
                    row,
                    index: j as i64,
                    kv_len,
                },
                Err(v) => Error::IndexOutOfRange {
                    row,
                    index: v,
                    kv_len,
                },
            };
            Self::unmark(&list[..n], seen);
            return Err(err);
        }
        Ok(())
    }

    fn unmark<I: KeyIndex>(list: &[I], seen: &mut [u64]) {
        for &x in list {
            if let Ok(Some(j)) = x.get() {
                if let Some(w) = seen.get_mut(j / 64) {
                    *w &= !(1u64 << (j % 64));
                }
            }
        }
    }

    /// Attention of query `i` of batch `b` for every query head of KV head
    /// `hk`, over the keys of its list. `seen` must be all zero (it is left
    /// all zero, also on error).
    #[allow(clippy::too_many_arguments)]
    pub fn query<'s, T: Element, I: KeyIndex>(
        &self,
        p: &SparseAttention<'_, T, I>,
        b: usize,
        hk: usize,
        i: usize,
        scratch: &'s mut [f32],
        seen: &mut [u64],
    ) -> Result<GroupOut<'s>, Error> {
        let spec = p.att.spec();
        let at = Self::locate(spec, b, hk, i, scratch.len(), seen.len())?;
        let list = p.list.row(b, hk, i);
        let row_id = (b * spec.kv_heads + hk) * spec.q_len + i;
        Self::mark_row(list, row_id, spec.kv_len, seen)?;
        let (gp, d, dvp) = (at.gp, at.d, at.dvp);
        let mut buf = TileBufs::cut(scratch, gp, BK, d, dvp, KvBufs::Gather);
        load_group_q(p, &at, buf.q);
        let mask = p.att.mask();
        let span = mask.row_span(
            i as isize + mask.batch_offset(b, spec.q_len),
            mask.batch_kv_len(b, spec.kv_len),
        );
        let mut keys = [0usize; BK];
        let mut entries = list
            .iter()
            .filter_map(|x| x.get().ok().flatten())
            .filter(|&j| span.contains(j as isize));
        loop {
            let cols = next_keys(&mut keys, &mut entries);
            if cols == 0 {
                break;
            }
            gather_kv(p, &at, &keys[..cols], &mut buf);
            self.pack_kt(at.d, cols, buf.k_rows, buf.kt);
            // SAFETY: gp % MR == 0 and BK % NR == 0 (compile-time check);
            // q is gp×d, kt is d×BK and s is gp×BK, cut by TileBufs::cut.
            unsafe {
                self.kernel
                    .gemm(gp, BK, d, buf.q, d, buf.kt, BK, buf.s, BK, false)
            };
            self.softmax_group(p, &at, &span, &keys, cols, &mut buf);
            // SAFETY: gp % MR == 0 and dvp % NR == 0 (DV_ALIGN % NR == 0);
            // s is gp×BK, vt is BK×dvp and o is gp×dvp.
            unsafe {
                self.kernel
                    .gemm(gp, dvp, BK, buf.s, BK, buf.vt, dvp, buf.o, dvp, true)
            };
        }
        Self::unmark(list, seen);
        normalise(self.kernel, at.g, at.dvp, buf.o, buf.m, buf.l);
        Ok(GroupOut {
            head0: at.h0,
            heads: at.g,
            o: buf.o,
            o_stride: at.dvp,
            dv: at.dv,
            lse: buf.m,
        })
    }

    /// Check the scratch and `seen` lengths and the query's coordinates;
    /// derive the group's sizes.
    #[inline(always)]
    fn locate(
        spec: &AttentionSpec,
        b: usize,
        hk: usize,
        i: usize,
        scratch: usize,
        seen: usize,
    ) -> Result<GroupPos, Error> {
        let (d, dv, g) = (spec.head_dim, spec.v_head_dim, spec.group());
        let need = Self::scratch_len(g, d, dv);
        if scratch < need {
            return Err(Error::TooShort {
                tensor: Tensor::Scratch,
                need,
                got: scratch,
            });
        }
        let need = Self::seen_len(spec.kv_len);
        if seen < need {
            return Err(Error::TooShort {
                tensor: Tensor::Seen,
                need,
                got: seen,
            });
        }
        if b >= spec.batch || hk >= spec.kv_heads || i >= spec.q_len {
            return Err(Error::TileOutOfRange);
        }
        Ok(GroupPos {
            b,
            hk,
            i,
            h0: hk * g,
            g,
            gp: round_up(g, K::MR),
            d,
            dv,
            dvp: round_up(dv, DV_ALIGN),
        })
    }

    /// Kᵀ (`D×BK`) from the `cols` gathered K rows, with the kernel's
    /// transpose; padding keys are zero.
    #[inline(always)]
    fn pack_kt(&self, d: usize, cols: usize, k_rows: &[f32], kt: &mut [f32]) {
        self.kernel.transpose(k_rows, cols, d, d, kt, BK);
        if cols < BK {
            kt.chunks_exact_mut(BK)
                .for_each(|row| row[cols..].fill(0.0));
        }
    }

    /// Per head row of `S`: softcap, the mask's non-structural rules, then
    /// the online-softmax update. Padding rows become zeros, padding keys
    /// `-inf`.
    #[inline(always)]
    fn softmax_group<T: Element, I: KeyIndex>(
        &self,
        p: &SparseAttention<'_, T, I>,
        at: &GroupPos,
        span: &RowSpan,
        keys: &[usize; BK],
        cols: usize,
        buf: &mut TileBufs<'_>,
    ) {
        let (spec, mask) = (p.att.spec(), p.att.mask());
        let structural = mask.is_structural();
        for (r, row) in buf.s.chunks_exact_mut(BK).enumerate() {
            if r >= at.g {
                row.fill(0.0);
                continue;
            }
            let (live, pad) = row.split_at_mut(cols);
            if spec.softcap > 0.0 {
                apply_softcap(live, spec.softcap);
            }
            if !structural {
                let (b, h, i) = (at.b, at.h0 + r, at.i);
                for (x, &j) in live.iter_mut().zip(keys) {
                    if mask.visible(span, b, h, i, j, spec.q_len, spec.kv_len) {
                        *x += mask.bias(b, h, i, j);
                    } else {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            pad.fill(f32::NEG_INFINITY);
            let o = &mut buf.o[r * at.dvp..][..at.dvp];
            online_softmax_row(self.kernel, row, o, &mut buf.m[r], &mut buf.l[r]);
        }
    }

    /// The whole problem on one thread: `Y` with `spec.out` strides and,
    /// optionally, `lse (B, Hq, Sq)`. A parallel caller runs
    /// [`query`](Self::query) per (b, hk, i) with scratch and `seen` per
    /// worker. `seen` must be all zero.
    pub fn run<T: Element, I: KeyIndex, O: Element>(
        &self,
        p: &SparseAttention<'_, T, I>,
        y: &mut [O],
        mut lse: Option<&mut [f32]>,
        scratch: &mut [f32],
        seen: &mut [u64],
    ) -> Result<(), Error> {
        let s = *p.att.spec();
        s.check_outputs(y.len(), lse.as_deref().map(<[f32]>::len))?;
        for b in 0..s.batch {
            for hk in 0..s.kv_heads {
                for i in 0..s.q_len {
                    let out = self.query(p, b, hk, i, scratch, seen)?;
                    for g in 0..out.heads {
                        let h = out.head0 + g;
                        let dst = &mut y[s.out.offset(b, h, i)..][..s.v_head_dim];
                        dst.iter_mut()
                            .zip(out.row(g))
                            .for_each(|(d, &x)| *d = O::from_f32(x));
                        if let Some(l) = lse.as_deref_mut() {
                            l[(b * s.q_heads + h) * s.q_len + i] = out.lse(g);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The query one [`GatherAttention::query`] call serves, and its sizes.
struct GroupPos {
    b: usize,
    hk: usize,
    /// The query.
    i: usize,
    /// First query head of the group.
    h0: usize,
    /// Heads in the group.
    g: usize,
    /// `g` rounded up to the kernel's `MR`.
    gp: usize,
    d: usize,
    dv: usize,
    /// `dv` rounded up to [`DV_ALIGN`].
    dvp: usize,
}

/// The group's queries in f32 (`gp×D`), pre-scaled; padding rows are zero.
#[inline(always)]
fn load_group_q<T: Element, I: KeyIndex>(
    p: &SparseAttention<'_, T, I>,
    at: &GroupPos,
    q: &mut [f32],
) {
    let spec = p.att.spec();
    for (r, dst) in q.chunks_exact_mut(at.d).enumerate() {
        if r < at.g {
            let src = &p.q[spec.q.offset(at.b, at.h0 + r, at.i)..][..at.d];
            dst.iter_mut()
                .zip(src)
                .for_each(|(x, &y)| *x = y.to_f32() * spec.scale);
        } else {
            dst.fill(0.0);
        }
    }
}

/// Fill `keys` from `entries`; returns how many (0 when they are spent).
#[inline(always)]
fn next_keys<const BK: usize>(
    keys: &mut [usize; BK],
    entries: &mut impl Iterator<Item = usize>,
) -> usize {
    let mut cols = 0;
    for (slot, j) in keys.iter_mut().zip(entries) {
        *slot = j;
        cols += 1;
    }
    cols
}

/// Gather the K rows (contiguous copies) and V rows (`BK×Dvp`) of `keys`
/// in f32; padding keys and columns of V are zero.
#[inline(always)]
fn gather_kv<T: Element, I: KeyIndex>(
    p: &SparseAttention<'_, T, I>,
    at: &GroupPos,
    keys: &[usize],
    buf: &mut TileBufs<'_>,
) {
    let spec = p.att.spec();
    let (d, dv, dvp) = (at.d, at.dv, at.dvp);
    for (c, dst) in buf.vt.chunks_exact_mut(dvp).enumerate() {
        let Some(&j) = keys.get(c) else {
            dst.fill(0.0);
            continue;
        };
        let src = &p.k[spec.k.offset(at.b, at.hk, j)..][..d];
        let k_dst = &mut buf.k_rows[c * d..][..d];
        k_dst
            .iter_mut()
            .zip(src)
            .for_each(|(x, &y)| *x = y.to_f32());
        let src = &p.v[spec.v.offset(at.b, at.hk, j)..][..dv];
        dst.iter_mut().zip(src).for_each(|(x, &y)| *x = y.to_f32());
        dst[dv..].fill(0.0);
    }
}
