//! Running one validated attention problem on ORT's intra-op thread pool.
//!
//! Work is the list of (batch, head, q-tile) triples, optionally times `P`
//! key ranges. Triples are dealt round-robin to at most `MAX_TASKS` tasks
//! of `KernelContext_ParallelFor`, so causal work (heavier for later tiles)
//! spreads evenly. Each task allocates one `Flash::scratch_len` scratch on
//! entry and frees it on exit: memory is `tasks × scratch`, bounded and
//! independent of the sequence length.
//!
//! **Decode** (few query tiles, many keys: Sq = 1 with a long past) would
//! leave threads idle, so the keys are split into `P` ranges of whole tiles;
//! each (triple, range) is a task writing an f32 partial result and its lse,
//! and the partials are merged exactly by lse ([`tessera_core::merge_into`]).
//! Extra memory: `triples × P × BQ × Dv` f32s.

use tessera_core::kernel::MicroKernel;
use tessera_core::{merge_into, Attention, Element, Flash, Stats};

use crate::error::Result;
use crate::ffi::KernelContext;
use crate::kernel::with_kernel;
use crate::parallel::{Disjoint, OutputRows, MAX_TASKS};
/// Key tile.
const BK: usize = 64;
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
    if att.spec().q_len <= BQ_DECODE {
        run_tiled::<K, BQ_DECODE, T>(ctx, Flash::new(k), att, y, lse)
    } else {
        run_tiled::<K, BQ_PREFILL, T>(ctx, Flash::new(k), att, y, lse)
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

fn run_tiled<K: MicroKernel, const BQ: usize, T: Element>(
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
    match key_splits(triples.count, s.kv_len.div_ceil(BK)) {
        1 => whole_keys(ctx, &flash, att, triples, &out),
        splits => {
            let (part_o, part_lse) = partials(ctx, &flash, att, triples, splits)?;
            merge_partials::<BQ, T>(att, triples, splits, (&part_o, &part_lse), &out)
        }
    }
}

/// One task per triple (round-robin): every key range at once.
fn whole_keys<K: MicroKernel, const BQ: usize, T: Element>(
    ctx: &KernelContext,
    flash: &Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    triples: Triples,
    out: &OutputRows<'_, T>,
) -> Result<()> {
    let s = *att.spec();
    let scratch_len = Flash::<K, BQ, BK>::scratch_len(s.head_dim, s.v_head_dim);
    let tasks = triples.count.min(MAX_TASKS);
    ctx.parallel_for(tasks, &|task| {
        let mut scratch = vec![0.0f32; scratch_len];
        let mut stats = Stats::default();
        for item in (task..triples.count).step_by(tasks) {
            let (b, h, t) = triples.get(item);
            let o = flash.tile(att, b, h, t, 0..s.kv_len, &mut scratch, &mut stats)?;
            for r in 0..o.rows {
                // SAFETY: triple (b, h, t) owns its tile's rows of head h,
                // and each triple runs in one task.
                unsafe { out.write_row(&s, b, h, o.q_start + r, o.row(r), o.lse(r))? };
            }
        }
        Ok(())
    })
}

/// Split keys: the f32 partial result and lse of every (triple, key range),
/// `BQ` rows each.
fn partials<K: MicroKernel, const BQ: usize, T: Element>(
    ctx: &KernelContext,
    flash: &Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    triples: Triples,
    splits: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = *att.spec();
    let dv = s.v_head_dim;
    let scratch_len = Flash::<K, BQ, BK>::scratch_len(s.head_dim, dv);
    let per_split = s.kv_len.div_ceil(BK).div_ceil(splits) * BK;
    let items = triples.count * splits;
    let mut part_o = vec![0.0f32; items * BQ * dv];
    let mut part_lse = vec![f32::NEG_INFINITY; items * BQ];
    let o_out = Disjoint::new(&mut part_o);
    let l_out = Disjoint::new(&mut part_lse);
    let tasks = items.min(MAX_TASKS);
    ctx.parallel_for(tasks, &|task| {
        let mut scratch = vec![0.0f32; scratch_len];
        let mut stats = Stats::default();
        for item in (task..items).step_by(tasks) {
            let (tr, p) = (item / splits, item % splits);
            let (b, h, t) = triples.get(tr);
            let kv = (p * per_split).min(s.kv_len)..((p + 1) * per_split).min(s.kv_len);
            let o = flash.tile(att, b, h, t, kv, &mut scratch, &mut stats)?;
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
    splits: usize,
    (part_o, part_lse): (&[f32], &[f32]),
    out: &OutputRows<'_, T>,
) -> Result<()> {
    let s = *att.spec();
    let dv = s.v_head_dim;
    let mut acc = vec![0.0f32; BQ * dv];
    let mut acc_lse = vec![0.0f32; BQ];
    for tr in 0..triples.count {
        let (b, h, t) = triples.get(tr);
        let (i0, rows) = (t * BQ, BQ.min(s.q_len - t * BQ));
        let first = tr * splits;
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
