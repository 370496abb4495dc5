//! Running one validated attention problem on ORT's intra-op thread pool.
//!
//! Work is the list of (batch, head, q-tile) triples, optionally times `P`
//! key ranges. K and V are packed once per (batch, KV head) per call
//! (`Flash::pack_kv`, in parallel over runs of key tiles) into panels that
//! all the head's tasks share; KV heads go in groups whose panels fit
//! `PANEL_BUDGET` (64 MiB), so that memory stays bounded. A group's triples
//! are dealt round-robin to at most `MAX_TASKS` tasks of
//! `KernelContext_ParallelFor`, so causal work (heavier for later tiles)
//! spreads evenly. Each task allocates one `Flash::packed_scratch_len`
//! scratch on entry and frees it on exit: memory is the panels plus
//! `tasks × scratch`.
//!
//! **Decode** (few query tiles, many keys: Sq = 1 with a long past) would
//! leave threads idle, so the keys are split into `P` ranges of whole tiles;
//! each (triple, range) is a task writing an f32 partial result and its lse,
//! and the partials are merged exactly by lse ([`tessera_core::merge_into`]).
//! Extra memory: `triples × P × BQ × Dv` f32s per group.

use tessera_core::kernel::MicroKernel;
use tessera_core::{merge_into, Attention, Element, Flash, Stats};

use crate::error::Result;
use crate::ffi::KernelContext;
use crate::kernel::with_kernel;
use crate::parallel::{Disjoint, OutputRows, MAX_TASKS};
/// Key tile with a window (or chunk) in the mask, and for decode.
const BK: usize = 64;
/// Key tile for dense and causal prefill: twice the work per softmax row
/// and per tile's bookkeeping (about 10% faster single-threaded with
/// AVX-512 at D = 64, S = 4K); a window of ±128 would waste more of it.
const BK_WIDE: usize = 128;
/// Query tile for prefill.
const BQ_PREFILL: usize = 64;
/// Query tile for decode (few query rows: smaller tiles waste less work).
const BQ_DECODE: usize = 4;
/// Below this many (batch, head, q-tile) triples, split the keys.
const SPLIT_BELOW: usize = 16;
/// Aim for about this many tasks when splitting.
const SPLIT_TARGET: usize = 32;
/// Never split into ranges shorter than this many key tiles.
const MIN_TILES_PER_SPLIT: usize = 4;

/// Compute `Y` (with the spec's output strides) and optionally the lse
/// `(B, Hq, Sq)` with the best micro-kernel for this CPU.
pub fn run<T: Element>(
    ctx: &KernelContext,
    att: &Attention<'_, T>,
    y: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    with_kernel!(k => run_with(ctx, k, att, y, lse))
}

fn run_with<K: MicroKernel, T: Element>(
    ctx: &KernelContext,
    k: K,
    att: &Attention<'_, T>,
    y: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let m = att.mask();
    let local = m.left_window >= 0 || m.right_window >= 0 || m.chunk > 0;
    if att.spec().q_len <= BQ_DECODE {
        run_tiled::<K, BQ_DECODE, BK, T>(ctx, Flash::new(k), att, y, lse)
    } else if local {
        run_tiled::<K, BQ_PREFILL, BK, T>(ctx, Flash::new(k), att, y, lse)
    } else {
        run_tiled::<K, BQ_PREFILL, BK_WIDE, T>(ctx, Flash::new(k), att, y, lse)
    }
}

/// How many key ranges to split into.
fn key_splits(triples: usize, kv_tiles: usize) -> usize {
    if triples >= SPLIT_BELOW || kv_tiles < 2 * MIN_TILES_PER_SPLIT {
        return 1;
    }
    SPLIT_TARGET
        .div_ceil(triples.max(1))
        .min(kv_tiles / MIN_TILES_PER_SPLIT)
        .max(1)
}

/// The (batch, head, q-tile) triples of a call, numbered `0..count`.
#[derive(Clone, Copy)]
struct Triples {
    q_heads: usize,
    q_tiles: usize,
    count: usize,
}

impl Triples {
    /// `(b, h, t)` of triple `item`.
    fn get(&self, item: usize) -> (usize, usize, usize) {
        let (bh, t) = (item / self.q_tiles, item % self.q_tiles);
        (bh / self.q_heads, bh % self.q_heads, t)
    }
}

fn run_tiled<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    ctx: &KernelContext,
    flash: Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    y: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let s = *att.spec();
    let q_tiles = s.q_len.div_ceil(BQ);
    let triples = Triples {
        q_heads: s.q_heads,
        q_tiles,
        count: s.batch * s.q_heads * q_tiles,
    };
    if triples.count == 0 {
        return Ok(());
    }
    let out = OutputRows::new(y, lse);
    let splits = key_splits(triples.count, s.kv_len.div_ceil(BK));
    let per_head = Flash::<K, BQ, BK>::packed_kv_len(s.kv_len, s.head_dim, s.v_head_dim);
    let kv_heads = s.batch * s.kv_heads;
    let group = Group {
        heads: (PANEL_BUDGET / per_head.max(1)).clamp(1, kv_heads),
        per_head,
        triples_per_head: (s.q_heads / s.kv_heads) * q_tiles,
        first: 0,
    };
    let mut panels = vec![0.0f32; group.heads * per_head];
    for first in (0..kv_heads).step_by(group.heads) {
        let g = Group {
            first,
            heads: group.heads.min(kv_heads - first),
            ..group
        };
        pack_heads(ctx, &flash, att, g, &mut panels)?;
        match splits {
            1 => whole_keys(ctx, &flash, att, triples, g, &panels, &out)?,
            splits => {
                let (part_o, part_lse) = partials(ctx, &flash, att, triples, g, &panels, splits)?;
                merge_partials::<BQ, T>(att, triples, g, splits, (&part_o, &part_lse), &out)?
            }
        }
    }
    Ok(())
}

/// At most this many bytes of packed K/V panels live at once: the KV heads
/// are packed and run in groups that fit.
const PANEL_BUDGET: usize = (64 << 20) / core::mem::size_of::<f32>();
/// Key tiles per packing task.
const PACK_TILES: usize = 16;

/// A group of consecutive KV heads (numbered `b·Hkv + hk`) whose panels are
/// packed together, and the triples that read them.
#[derive(Clone, Copy)]
struct Group {
    /// The first KV head.
    first: usize,
    /// KV heads in the group.
    heads: usize,
    /// f32s of one head's panels.
    per_head: usize,
    /// (q head, q tile) triples per KV head: the query heads that share a KV
    /// head are consecutive, so a group's triples are one range.
    triples_per_head: usize,
}

impl Group {
    fn triples(&self) -> core::ops::Range<usize> {
        self.first * self.triples_per_head..(self.first + self.heads) * self.triples_per_head
    }

    /// The panels of the KV head that triple `tr` (in this group) reads.
    fn panels<'p>(&self, panels: &'p [f32], tr: usize) -> &'p [f32] {
        let i = tr / self.triples_per_head - self.first;
        &panels[i * self.per_head..][..self.per_head]
    }
}

/// Pack the group's K and V panels once, in parallel over (head, run of
/// `PACK_TILES` key tiles): the query tiles of each head then share them.
fn pack_heads<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    ctx: &KernelContext,
    flash: &Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    g: Group,
    panels: &mut [f32],
) -> Result<()> {
    let s = *att.spec();
    let kv_tiles = s.kv_len.div_ceil(BK);
    let block = Flash::<K, BQ, BK>::packed_tile_len(s.head_dim, s.v_head_dim);
    let runs = kv_tiles.div_ceil(PACK_TILES);
    let out = Disjoint::new(panels);
    ctx.parallel_for(g.heads * runs, &|item| {
        let (i, run) = (item / runs, item % runs);
        let kvi = g.first + i;
        let tiles = run * PACK_TILES..((run + 1) * PACK_TILES).min(kv_tiles);
        // SAFETY: item (head i, run) owns exactly these tiles' blocks of
        // head i's panels, and each item runs in one task.
        let dst = unsafe { out.range(i * g.per_head + tiles.start * block, tiles.len() * block)? };
        flash.pack_kv(att, kvi / s.kv_heads, kvi % s.kv_heads, tiles, dst)?;
        Ok(())
    })
}

/// One task per triple (round-robin): every key range at once.
fn whole_keys<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    ctx: &KernelContext,
    flash: &Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    triples: Triples,
    g: Group,
    panels: &[f32],
    out: &OutputRows<'_, T>,
) -> Result<()> {
    let s = *att.spec();
    let scratch_len = Flash::<K, BQ, BK>::packed_scratch_len(s.head_dim, s.v_head_dim);
    let range = g.triples();
    let tasks = range.len().min(MAX_TASKS);
    ctx.parallel_for(tasks, &|task| {
        let mut scratch = vec![0.0f32; scratch_len];
        let mut stats = Stats::default();
        for item in (range.start + task..range.end).step_by(tasks) {
            let (b, h, t) = triples.get(item);
            let kv = g.panels(panels, item);
            let o = flash.tile_packed(att, b, h, t, 0..s.kv_len, kv, &mut scratch, &mut stats)?;
            for r in 0..o.rows {
                // SAFETY: triple (b, h, t) owns its tile's rows of head h,
                // and each triple runs in one task.
                unsafe { out.write_row(&s, b, h, o.q_start + r, o.row(r), o.lse(r))? };
            }
        }
        Ok(())
    })
}

/// Split keys: the f32 partial result and lse of every (triple of the
/// group, key range), `BQ` rows each.
fn partials<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    ctx: &KernelContext,
    flash: &Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    triples: Triples,
    g: Group,
    panels: &[f32],
    splits: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = *att.spec();
    let dv = s.v_head_dim;
    let scratch_len = Flash::<K, BQ, BK>::packed_scratch_len(s.head_dim, dv);
    let per_split = s.kv_len.div_ceil(BK).div_ceil(splits) * BK;
    let range = g.triples();
    let items = range.len() * splits;
    let mut part_o = vec![0.0f32; items * BQ * dv];
    let mut part_lse = vec![f32::NEG_INFINITY; items * BQ];
    let o_out = Disjoint::new(&mut part_o);
    let l_out = Disjoint::new(&mut part_lse);
    let tasks = items.min(MAX_TASKS);
    ctx.parallel_for(tasks, &|task| {
        let mut scratch = vec![0.0f32; scratch_len];
        let mut stats = Stats::default();
        for item in (task..items).step_by(tasks) {
            let (tr, p) = (range.start + item / splits, item % splits);
            let (b, h, t) = triples.get(tr);
            let kv = (p * per_split).min(s.kv_len)..((p + 1) * per_split).min(s.kv_len);
            let panels = g.panels(panels, tr);
            let o = flash.tile_packed(att, b, h, t, kv, panels, &mut scratch, &mut stats)?;
            for r in 0..o.rows {
                // SAFETY: rows [item·BQ, item·BQ + BQ) belong to this item,
                // and each item runs in one task.
                unsafe {
                    o_out.write((item * BQ + r) * dv, o.row(r).iter().copied())?;
                    l_out.write(item * BQ + r, core::iter::once(o.lse(r)))?;
                }
            }
        }
        Ok(())
    })?;
    Ok((part_o, part_lse))
}

/// Merge each triple's partials exactly by lse and write its rows.
fn merge_partials<const BQ: usize, T: Element>(
    att: &Attention<'_, T>,
    triples: Triples,
    g: Group,
    splits: usize,
    (part_o, part_lse): (&[f32], &[f32]),
    out: &OutputRows<'_, T>,
) -> Result<()> {
    let s = *att.spec();
    let dv = s.v_head_dim;
    let mut acc = vec![0.0f32; BQ * dv];
    let mut acc_lse = vec![0.0f32; BQ];
    let range = g.triples();
    for tr in range.clone() {
        let (b, h, t) = triples.get(tr);
        let (i0, rows) = (t * BQ, BQ.min(s.q_len - t * BQ));
        let first = (tr - range.start) * splits;
        acc[..rows * dv].copy_from_slice(&part_o[first * BQ * dv..][..rows * dv]);
        acc_lse[..rows].copy_from_slice(&part_lse[first * BQ..][..rows]);
        for it in first + 1..first + splits {
            merge_into(
                &mut acc[..rows * dv],
                &mut acc_lse[..rows],
                &part_o[it * BQ * dv..][..rows * dv],
                &part_lse[it * BQ..][..rows],
                dv,
            )?;
        }
        for r in 0..rows {
            // SAFETY: no task is running; this loop is the only writer.
            unsafe { out.write_row(&s, b, h, i0 + r, &acc[r * dv..][..dv], acc_lse[r])? };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::key_splits;

    #[test]
    fn decode_splits_keys_prefill_does_not() {
        assert_eq!(key_splits(12 * 64, 64), 1, "prefill has enough tiles");
        assert_eq!(
            key_splits(1, 512),
            32,
            "one decode query spreads over 32 ranges"
        );
        assert_eq!(key_splits(12, 512), 3);
        assert_eq!(key_splits(1, 6), 1, "too few keys to split");
        assert_eq!(key_splits(1, 8), 2);
    }
}
