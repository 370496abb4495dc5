//! The CPU kernel of `ai.tessera.TopKAttention`: the index mode gathers
//! each query's listed keys, the training-free mode selects key blocks
//! from min/max summaries and runs the flash kernel on them; both over
//! ORT's pool.

use std::borrow::Cow;

use tessera_core::blocksel::summary_len;
use tessera_core::kernel::MicroKernel;
use tessera_core::{
    summarize, Attention, AttentionSpec, BlockSelector, BlockSummaries, Flash, GatherAttention,
    IndexList, Keep, MaskSpec, RowSpan, SparseAttention, Stats,
};
use tessera_schema::topk_attention::{attr, input, output};

use super::{list_shape, ListShape, TopKAttentionOp, BK, BQ};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, InputTensor, KernelContext, OutputTensor};
use crate::kernel::with_kernel;
use crate::op::{required, CpuKernel};
use crate::ops::like_q;
use crate::parallel::{chunks, Disjoint, OutputRows};
use crate::plan::{Plan, Shapes};
use crate::shape::{causal_offset, product};

impl<T: Dtype> CpuKernel for TopKAttentionOp<T> {
    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let inputs = ctx.inputs::<4>()?;
        let req = |i: usize| required(&inputs, &input::ALL, i);
        let (q_in, k_in, v_in) = (req(0)?, req(1)?, req(2)?);
        let shapes = Shapes::qkv(&q_in.ts.dims, &k_in.ts.dims, &v_in.ts.dims);
        let plan = Plan::new(&self.attrs, &shapes)?;
        let q = like_q::<T>(q_in, input::Q)?;
        let k = like_q::<T>(k_in, input::K)?;
        let v = like_q::<T>(v_in, input::V)?;
        let spec = plan.cacheless_spec(self.attrs.scale);
        let (hkv, sq, skv) = (spec.kv_heads, spec.q_len, spec.kv_len);
        let mask = if self.attrs.is_causal {
            MaskSpec::NONE.causal(causal_offset(sq, skv)?)
        } else {
            MaskSpec::NONE
        };

        // The index list (index mode) and the width of selected_indices.
        let lists = match &inputs[3] {
            None => None,
            Some(t) => Some(self.index_list(ctx, t, &plan)?),
        };
        let list = lists.as_ref().map(|l| l.view(sq));
        let width = self.width(list.as_ref(), skv)?;
        let sel_dims = [plan.batch, hkv, sq, width];
        product(output::SELECTED_INDICES.as_str(), &sel_dims)?;

        let mut outs = OutputTensors::alloc(ctx, &plan, &sel_dims)?;
        if plan.batch * hkv * sq == 0 {
            return Ok(());
        }
        // SAFETY: output 0 is declared T, 1 int64 and 2 float (`TopKAttentionOp::OUTPUTS`).
        let out = unsafe { outs.shared::<T>(width) };
        match list {
            Some(list) => {
                let p = SparseAttention::new(&spec, &mask, q, k, v, list)?;
                with_kernel!(kern => Self::gather(ctx, kern, &p, &out))
            }
            None => {
                let att = Attention::new(&spec, &mask, q, k, v)?;
                let top_k = self.top_k.unwrap_or(1);
                with_kernel!(kern => self.blocks(ctx, kern, &att, top_k, &out))
            }
        }
    }
}

impl<T: Dtype> TopKAttentionOp<T> {
    /// The width of `selected_indices`: the list width in index mode, the
    /// blocks the selector may choose in the training-free mode.
    fn width(&self, list: Option<&IndexList<'_, i64>>, skv: usize) -> Result<usize> {
        match (list, self.top_k) {
            (Some(l), _) => Ok(l.top_k),
            (None, Some(top_k)) => Ok(block_width(top_k, skv, self.keep)),
            (None, None) => Err(Error::invalid(format!(
                "{} is required without an {} input (training-free mode: keys attended per query, >= 1)",
                attr::TOP_K,
                input::INDICES
            ))),
        }
    }

    /// Check the `indices` input and view it as index lists.
    fn index_list<'a>(
        &self,
        ctx: &KernelContext,
        t: &'a InputTensor,
        plan: &Plan,
    ) -> Result<Lists<'a>> {
        let shown = format!("{:?}", t.ts.dims);
        let ListShape { kv_heads, k } = list_shape(&t.ts.dims, &shown, None, plan, self.top_k)?;
        let data = t.slice::<i64>(input::INDICES.as_str(), elem::INT64)?;
        if self.keep == Keep::default() {
            return Ok(Lists {
                data: Cow::Borrowed(data),
                kv_heads,
                width: k,
            });
        }
        let sq = plan.q_len;
        let offset = causal_offset(sq, plan.kv_new)?;
        let (data, width) = widen(ctx, data, k, sq, plan.kv_new, offset, self.keep)?;
        Ok(Lists {
            data: Cow::Owned(data),
            kv_heads,
            width,
        })
    }
}

/// The outputs of one call, allocated in slot order.
struct OutputTensors {
    y: OutputTensor,
    selected: Option<OutputTensor>,
    lse: Option<OutputTensor>,
}

impl OutputTensors {
    fn alloc(ctx: &mut KernelContext, plan: &Plan, sel_dims: &[usize; 4]) -> Result<Self> {
        Ok(Self {
            y: ctx
                .output(0, &plan.y_dims())?
                .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::Y)))?,
            selected: ctx.output(1, &sel_dims.map(|x| x as i64))?,
            lse: ctx.output(2, &plan.lse_dims())?,
        })
    }

    /// The outputs shared among tasks; `selected_indices` rows are `width`
    /// wide.
    ///
    /// # Safety
    /// `T` is the element type Y was declared with.
    unsafe fn shared<T: Dtype>(&mut self, width: usize) -> Outputs<'_, T> {
        // SAFETY: Y is T (the caller's contract), selected_indices int64
        // and softmax_lse float.
        let (y, selected, lse) = unsafe {
            (
                self.y.slice_mut::<T>(),
                self.selected.as_mut().map(|o| o.slice_mut::<i64>()),
                self.lse.as_mut().map(|o| o.slice_mut::<f32>()),
            )
        };
        Outputs {
            rows: OutputRows::new(y, lse),
            selected: selected.map(Disjoint::new),
            width,
        }
    }
}

/// Where the outputs of one call go.
struct Outputs<'a, T> {
    rows: OutputRows<'a, T>,
    selected: Option<Disjoint<'a, i64>>,
    width: usize,
}

impl<T: Dtype> Outputs<'_, T> {
    /// The `selected_indices` rows of query tile `t` (KV head `hk`, batch
    /// `b`): the visible keys of the chosen `tiles`, then `-1`.
    ///
    /// # Safety
    /// Only the task that owns the tile's queries of KV head `hk` writes them.
    unsafe fn select_block_keys(
        &self,
        att: &Attention<'_, T>,
        b: usize,
        hk: usize,
        t: usize,
        tiles: &[usize],
    ) -> Result<()> {
        let (s, mask) = (att.spec(), att.mask());
        for i in t * BQ..((t + 1) * BQ).min(s.q_len) {
            // SAFETY: the caller owns the tile's rows.
            let Some(dst) = (unsafe { self.selected_row(s, b, hk, i)? }) else {
                break;
            };
            let span = row_span(mask, s, b, i);
            let keys = tiles
                .iter()
                .flat_map(|&n| n * BK..((n + 1) * BK).min(s.kv_len))
                .filter(|&j| span.contains(j as isize));
            let mut n = 0;
            for j in keys {
                let slot = dst
                    .get_mut(n)
                    .ok_or_else(|| Error::fail("internal: selected_indices row too narrow"))?;
                *slot = j as i64;
                n += 1;
            }
            dst[n..].fill(-1);
        }
        Ok(())
    }

    /// Row `(b, hk, i)` of `selected_indices`, if requested.
    ///
    /// # Safety
    /// Only the task that owns query `i` of KV head `hk` in batch `b` asks.
    #[allow(clippy::mut_from_ref)]
    unsafe fn selected_row(
        &self,
        s: &AttentionSpec,
        b: usize,
        hk: usize,
        i: usize,
    ) -> Result<Option<&mut [i64]>> {
        match &self.selected {
            None => Ok(None),
            // SAFETY: the caller owns the row.
            Some(sel) => unsafe {
                sel.range(
                    ((b * s.kv_heads + hk) * s.q_len + i) * self.width,
                    self.width,
                )
            }
            .map(Some),
        }
    }
}

/// Width of `selected_indices` in the training-free mode: every block the
/// selector can choose for a tile, expanded to keys.
pub(crate) fn block_width(top_k: usize, kv_len: usize, keep: Keep) -> usize {
    let blocks = kv_len.div_ceil(BK);
    let forced = keep.global_tokens.min(kv_len).div_ceil(BK)
        + keep
            .local_window
            .map_or(0, |w| (BQ - 1).saturating_add(w) / BK + 2);
    top_k.div_ceil(BK).saturating_add(2).max(forced).min(blocks) * BK
}

impl<T: Dtype> TopKAttentionOp<T> {
    /// Index mode on micro-kernel `K`.
    fn gather<K: MicroKernel>(
        ctx: &KernelContext,
        kernel: K,
        p: &SparseAttention<'_, T, i64>,
        out: &Outputs<'_, T>,
    ) -> Result<()> {
        type G<K> = GatherAttention<K, BK>;
        let gk = G::new(kernel);
        let s = *p.attention().spec();
        let mask = *p.attention().mask();
        let items = s.batch * s.kv_heads * s.q_len;
        let (tasks, per_task) = chunks(items);
        let scratch_len = G::<K>::scratch_len(s.group(), s.head_dim, s.v_head_dim);
        ctx.parallel_for(tasks, &|task| {
            let mut scratch = vec![0.0f32; scratch_len];
            let mut seen = vec![0u64; G::<K>::seen_len(s.kv_len)];
            for item in task * per_task..((task + 1) * per_task).min(items) {
                let (b, hk, i) = (
                    item / (s.kv_heads * s.q_len),
                    item / s.q_len % s.kv_heads,
                    item % s.q_len,
                );
                let o = gk.query(p, b, hk, i, &mut scratch, &mut seen)?;
                for g in 0..o.heads {
                    // SAFETY: item (b, hk, i) owns query i of the heads of KV head hk.
                    unsafe {
                        out.rows
                            .write_row(&s, b, o.head0 + g, i, o.row(g), o.lse(g))?
                    };
                }
                // SAFETY: as above.
                if let Some(dst) = unsafe { out.selected_row(&s, b, hk, i)? } {
                    let span = row_span(&mask, &s, b, i);
                    let mut n = 0;
                    for &j in p.list().row(b, hk, i) {
                        // Entries were checked by `query`: -1 or in range, no repeats.
                        if j >= 0 && span.contains(j as isize) {
                            dst[n] = j;
                            n += 1;
                        }
                    }
                    dst[..n].sort_unstable();
                    dst[n..].fill(-1);
                }
            }
            Ok(())
        })
    }

    /// Training-free mode on micro-kernel `K`.
    fn blocks<K: MicroKernel>(
        &self,
        ctx: &KernelContext,
        kernel: K,
        att: &Attention<'_, T>,
        top_k: usize,
        out: &Outputs<'_, T>,
    ) -> Result<()> {
        type Sel<K> = BlockSelector<K, BQ, BK>;
        let s = *att.spec();
        let sums = summaries(att)?;
        let sums = BlockSummaries::new(&s, BK, &sums)?;
        let sel = Sel::new(kernel);
        let q_tiles = s.q_len.div_ceil(BQ);
        let items = s.batch * s.kv_heads * q_tiles;
        let (tasks, per_task) = chunks(items);
        let g = s.group();
        let (scratch_len, flash_len, nb) = (
            Sel::<K>::scratch_len(g, s.head_dim),
            Flash::<K, BQ, BK>::scratch_len(s.head_dim, s.v_head_dim),
            Sel::<K>::blocks(s.kv_len),
        );
        ctx.parallel_for(tasks, &|task| {
            let mut scratch = vec![0.0f32; scratch_len];
            let mut flash_scratch = vec![0.0f32; flash_len];
            let mut block_scores = vec![0.0f32; nb];
            let mut tiles = vec![0usize; nb];
            let mut stats = Stats::default();
            for item in task * per_task..((task + 1) * per_task).min(items) {
                let (b, hk, t) = (
                    item / (s.kv_heads * q_tiles),
                    item / q_tiles % s.kv_heads,
                    item % q_tiles,
                );
                let (scores, keep) = (&mut block_scores, self.keep);
                let budget = sel.score_tile(
                    att,
                    att.q(),
                    &sums,
                    b,
                    hk,
                    t,
                    top_k,
                    keep,
                    scores,
                    &mut scratch,
                )?;
                let n = Sel::<K>::select_tiles(&block_scores, budget, &mut tiles)?;
                let tiles = &tiles[..n];
                for h in hk * g..(hk + 1) * g {
                    let flash = sel.flash();
                    let o =
                        flash.tile_selected(att, b, h, t, tiles, &mut flash_scratch, &mut stats)?;
                    for r in 0..o.rows {
                        // SAFETY: item (b, hk, t) owns the tile's queries of the group's heads.
                        unsafe {
                            out.rows
                                .write_row(&s, b, h, o.q_start + r, o.row(r), o.lse(r))?
                        };
                    }
                }
                // SAFETY: as above.
                unsafe { out.select_block_keys(att, b, hk, t, tiles)? };
            }
            Ok(())
        })
    }
}

/// The min/max key summaries of every block of [`BK`] keys.
fn summaries<T: Dtype>(att: &Attention<'_, T>) -> Result<Vec<f32>> {
    let s = att.spec();
    let len = summary_len(s, BK).ok_or_else(|| {
        Error::invalid(format!(
            "{}: block summaries overflow the address space",
            input::K
        ))
    })?;
    let mut sums = vec![0.0f32; len];
    summarize::<T, f32>(s, att.k(), BK, &mut sums)?;
    Ok(sums)
}

/// The keys query `i` of batch `b` may see under the call's mask.
fn row_span(mask: &MaskSpec<'_>, s: &AttentionSpec, b: usize, i: usize) -> RowSpan {
    mask.row_span(
        i as isize + mask.batch_offset(b, s.q_len),
        mask.batch_kv_len(b, s.kv_len),
    )
}

/// The index lists of one call: the `indices` input, or a copy widened
/// with the always-kept window and sink keys.
struct Lists<'a> {
    data: Cow<'a, [i64]>,
    /// `Some(Hkv)` for `(B, Hkv, Sq, k)` lists, `None` for shared ones.
    kv_heads: Option<usize>,
    /// Entries per row.
    width: usize,
}

impl Lists<'_> {
    fn view(&self, q_len: usize) -> IndexList<'_, i64> {
        match self.kv_heads {
            None => IndexList::shared(&self.data, q_len, self.width),
            Some(h) => IndexList::per_kv_head(&self.data, h, q_len, self.width),
        }
    }
}

/// Each `k`-entry row of `src` (query `row % sq`, at position `i + offset`)
/// followed by the keys of `keep` it does not list yet: the sinks
/// `[0, global_tokens)` and the window `[p - local_window, p]`, then `-1`.
/// Rows are `k + min(window + 1 + sinks, Skv)` wide. Entries of `src` are
/// copied as they are (the gather checks them). `O(rows · width)`, split
/// over the pool, one `Skv`-bit map per task.
fn widen(
    ctx: &KernelContext,
    src: &[i64],
    k: usize,
    sq: usize,
    skv: usize,
    offset: isize,
    keep: Keep,
) -> Result<(Vec<i64>, usize)> {
    let window = keep
        .local_window
        .map_or(0, |w| w.saturating_add(1).min(skv));
    let width = k + window.saturating_add(keep.global_tokens.min(skv)).min(skv);
    let rows = src.len() / k;
    product(input::INDICES.as_str(), &[rows, width])?;
    let mut out = vec![-1i64; rows * width];
    let (tasks, per_task) = chunks(rows);
    let dst = Disjoint::new(&mut out);
    let in_range = |j: i64| usize::try_from(j).ok().filter(|&j| j < skv);
    ctx.parallel_for(tasks, &|task| {
        let mut seen = vec![0u64; skv.div_ceil(64)];
        for r in task * per_task..((task + 1) * per_task).min(rows) {
            // SAFETY: row r belongs to this task alone.
            let row = unsafe { dst.range(r * width, width)? };
            row[..k].copy_from_slice(&src[r * k..][..k]);
            for j in row[..k].iter().filter_map(|&j| in_range(j)) {
                seen[j / 64] |= 1 << (j % 64);
            }
            let p = (r % sq) as isize + offset;
            let local = match keep.local_window {
                Some(w) if p >= 0 && skv > 0 => {
                    let lo = p.saturating_sub_unsigned(w).max(0) as usize;
                    lo..(p as usize).min(skv - 1) + 1
                }
                _ => 0..0,
            };
            let mut n = k;
            for j in (0..keep.global_tokens.min(skv)).chain(local) {
                if seen[j / 64] & (1 << (j % 64)) == 0 {
                    seen[j / 64] |= 1 << (j % 64);
                    *row.get_mut(n)
                        .ok_or_else(|| Error::fail("internal: widened index row too narrow"))? =
                        j as i64;
                    n += 1;
                }
            }
            for j in row[..n].iter().filter_map(|&j| in_range(j)) {
                seen[j / 64] &= !(1 << (j % 64));
            }
        }
        Ok(())
    })?;
    Ok((out, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_width_covers_budget_and_forced_blocks() {
        let keep = Keep::default();
        assert_eq!(block_width(128, 1000, keep), 4 * BK);
        assert_eq!(
            block_width(5000, 1000, keep),
            16 * BK,
            "capped at every block"
        );
        let keep = Keep {
            local_window: Some(100),
            global_tokens: 3,
        };
        // 1 sink block + (31 + 100) / 64 + 2 = 4 window blocks.
        assert_eq!(block_width(64, 4096, keep), 5 * BK);
        assert_eq!(block_width(1, 0, keep), 0);
    }
}
