//! Running one validated attention problem on ORT's intra-op thread pool.
//!
//! Work is the list of (batch, head, q-tile) triples, optionally times `P`
//! key ranges. Triples are dealt round-robin to at most [`MAX_TASKS`] tasks
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

use tessera_core::kernel::{self, MicroKernel};
use tessera_core::{merge_into, Attention, Element, Flash, Stats};

use crate::error::{Error, Result};
use crate::ffi::KernelContext;

/// Upper bound on parallel tasks per call (and so on live scratch buffers).
pub const MAX_TASKS: usize = 256;
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

/// A mutable buffer shared by tasks that write disjoint parts of it.
struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tasks write disjoint index ranges (each (b, h, row) is written by
// exactly one task), and the buffer outlives the parallel call.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Write `vals` at `at`, bounds-checked.
    fn write(&self, at: usize, vals: impl ExactSizeIterator<Item = T>) -> Result<()> {
        let n = vals.len();
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(Error::fail("internal: output write out of bounds"));
        }
        for (i, v) in vals.enumerate() {
            // SAFETY: `at + i < len` (checked above); no other task writes
            // this index (disjointness, see the Sync impl).
            unsafe { self.ptr.add(at + i).write(v) };
        }
        Ok(())
    }
}

/// Compute `Y` (with the spec's output strides) and optionally the lse
/// `(B, Hq, Sq)` with the best micro-kernel for this CPU.
pub fn run<T: Element>(
    ctx: &KernelContext,
    att: &Attention<'_, T>,
    y: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    match kernel::detect() {
        #[cfg(target_arch = "x86_64")]
        kernel::Detected::Avx2Fma(k) => run_with(ctx, k, att, y, lse),
        #[cfg(target_arch = "aarch64")]
        kernel::Detected::Neon(k) => run_with(ctx, k, att, y, lse),
        kernel::Detected::Portable(k) => run_with(ctx, k, att, y, lse),
    }
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

fn run_tiled<K: MicroKernel, const BQ: usize, T: Element>(
    ctx: &KernelContext,
    flash: Flash<K, BQ, BK>,
    att: &Attention<'_, T>,
    y: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let s = *att.spec();
    let (dv, q_tiles) = (s.v_head_dim, s.q_len.div_ceil(BQ));
    let triples = s.batch * s.q_heads * q_tiles;
    if triples == 0 {
        return Ok(());
    }
    let scratch_len = Flash::<K, BQ, BK>::scratch_len(s.head_dim, s.v_head_dim);
    let kv_tiles = s.kv_len.div_ceil(BK);
    let splits = key_splits(triples, kv_tiles);
    let y_out = Shared::new(y);
    let lse_out = lse.map(Shared::new);
    let triple = |item: usize| {
        let (bh, t) = (item / q_tiles, item % q_tiles);
        (bh / s.q_heads, bh % s.q_heads, t)
    };

    if splits == 1 {
        let tasks = triples.min(MAX_TASKS);
        return ctx.parallel_for(tasks, &|task| {
            let mut scratch = vec![0.0f32; scratch_len];
            let mut stats = Stats::default();
            for item in (task..triples).step_by(tasks) {
                let (b, h, t) = triple(item);
                let out = flash.tile(att, b, h, t, 0..s.kv_len, &mut scratch, &mut stats)?;
                for r in 0..out.rows {
                    let i = out.q_start + r;
                    y_out.write(
                        s.out.offset(b, h, i),
                        out.row(r).iter().map(|&x| T::from_f32(x)),
                    )?;
                    if let Some(l) = &lse_out {
                        l.write(
                            (b * s.q_heads + h) * s.q_len + i,
                            core::iter::once(out.lse(r)),
                        )?;
                    }
                }
            }
            Ok(())
        });
    }

    // Split keys: partial results per (triple, range), then an exact merge.
    let per_split = kv_tiles.div_ceil(splits) * BK;
    let items = triples * splits;
    let mut part_o = vec![0.0f32; items * BQ * dv];
    let mut part_lse = vec![f32::NEG_INFINITY; items * BQ];
    {
        let o_out = Shared::new(&mut part_o);
        let l_out = Shared::new(&mut part_lse);
        let tasks = items.min(MAX_TASKS);
        ctx.parallel_for(tasks, &|task| {
            let mut scratch = vec![0.0f32; scratch_len];
            let mut stats = Stats::default();
            for item in (task..items).step_by(tasks) {
                let (tr, p) = (item / splits, item % splits);
                let (b, h, t) = triple(tr);
                let kv = (p * per_split).min(s.kv_len)..((p + 1) * per_split).min(s.kv_len);
                let out = flash.tile(att, b, h, t, kv, &mut scratch, &mut stats)?;
                for r in 0..out.rows {
                    o_out.write((item * BQ + r) * dv, out.row(r).iter().copied())?;
                    l_out.write(item * BQ + r, core::iter::once(out.lse(r)))?;
                }
            }
            Ok(())
        })?;
    }
    let mut acc = vec![0.0f32; BQ * dv];
    let mut acc_lse = vec![0.0f32; BQ];
    for tr in 0..triples {
        let (b, h, t) = triple(tr);
        let (i0, rows) = (t * BQ, BQ.min(s.q_len - t * BQ));
        let first = tr * splits;
        acc[..rows * dv].copy_from_slice(&part_o[first * BQ * dv..][..rows * dv]);
        acc_lse[..rows].copy_from_slice(&part_lse[first * BQ..][..rows]);
        for p in 1..splits {
            let it = first + p;
            merge_into(
                &mut acc[..rows * dv],
                &mut acc_lse[..rows],
                &part_o[it * BQ * dv..][..rows * dv],
                &part_lse[it * BQ..][..rows],
                dv,
            )?;
        }
        for r in 0..rows {
            y_out.write(
                s.out.offset(b, h, i0 + r),
                acc[r * dv..][..dv].iter().map(|&x| T::from_f32(x)),
            )?;
            if let Some(l) = &lse_out {
                l.write(
                    (b * s.q_heads + h) * s.q_len + i0 + r,
                    core::iter::once(acc_lse[r]),
                )?;
            }
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
