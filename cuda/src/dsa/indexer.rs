//! `LightningIndexer` as launches: quantise q and k, widen w, then per
//! chunk of queries the FP8 scores and their top-k; one read-back of the
//! flags at the end.

use tessera_core::{IndexerSpec, MaskSpec};

use super::{bytes, Device, FLAG_BYTE, FLAG_CLEAR};
use crate::error::CudaError;
use crate::plan::{self, DeviceMask, DevicePtr, Dtype, Fp8Format, IndexerBuffers, SCALE_GROUP};

/// One `LightningIndexer` call: sizes and attributes of the CPU op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerCall {
    /// Batch, queries, keys, index heads and index dim.
    pub spec: IndexerSpec,
    /// Keys kept per query (`>= 1`).
    pub top_k: usize,
    /// Bottom-right causal: query `t` sees keys `j <= t + Skv - Sq`.
    pub causal: bool,
    /// The FP8 format q and k are quantised to.
    pub format: Fp8Format,
    /// The element types of `index_q`, `index_k` and `index_w` (each f32,
    /// f16 or bf16, as the CPU op takes them).
    pub sources: [Dtype; 3],
    /// Most bytes of f32 scores live at once (queries are scored in chunks
    /// of `budget / (4·Skv)` rows, at least one).
    pub scores_budget: usize,
}

/// The default [`IndexerCall::scores_budget`]: 256 MiB.
pub const SCORES_BUDGET: usize = 256 << 20;

/// Device buffers of a `LightningIndexer` call.
#[derive(Clone, Copy, Debug)]
pub struct IndexerIo {
    /// `index_q (B, Sq, Hi, Di)`, of [`IndexerCall::sources`]`[0]`.
    pub q: DevicePtr,
    /// `index_k (B, Skv, Di)`.
    pub k: DevicePtr,
    /// `index_w (B, Sq, Hi)`.
    pub w: DevicePtr,
    /// i64 `indices (B, Sq, top_k)` out.
    pub indices: DevicePtr,
}

/// Where each part of the indexer's scratch lies (byte offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexerScratch {
    flags: usize,
    q_codes: usize,
    q_scales: usize,
    k_codes: usize,
    k_scales: usize,
    w: usize,
    scores: usize,
    chunk: usize,
    total: usize,
}

impl IndexerCall {
    fn layout(&self) -> Result<IndexerScratch, CudaError> {
        let s = self.spec;
        let (q_rows, k_rows) = ([s.batch, s.q_len, s.heads], [s.batch, s.kv_len]);
        let groups = s.dim.div_ceil(SCALE_GROUP);
        let chunk = (self.scores_budget / (4 * s.kv_len.max(1))).clamp(1, s.q_len.max(1));
        let parts = [
            bytes("flags", &[4], 8)?,
            bytes("index_q", &[q_rows[0], q_rows[1], q_rows[2], s.dim], 1)?,
            bytes("index_q", &[q_rows[0], q_rows[1], q_rows[2], groups], 4)?,
            bytes("index_k", &[k_rows[0], k_rows[1], s.dim], 1)?,
            bytes("index_k", &[k_rows[0], k_rows[1], groups], 4)?,
            bytes("index_w", &q_rows, 4)?,
            bytes("scores", &[chunk, s.kv_len], 4)?,
        ];
        let mut at = [0usize; 7];
        let mut total = 0usize;
        for (o, p) in at.iter_mut().zip(parts) {
            *o = total;
            total = total
                .checked_add(p)
                .ok_or_else(|| CudaError::invalid("index_q", "scratch overflows"))?;
        }
        Ok(IndexerScratch {
            flags: at[0],
            q_codes: at[1],
            q_scales: at[2],
            k_codes: at[3],
            k_scales: at[4],
            w: at[5],
            scores: at[6],
            chunk,
            total,
        })
    }

    /// Bytes of device scratch [`lightning_indexer`] needs: the quantised q
    /// and k (one byte per element, one f32 per 128), the f32 weights, the
    /// scores of one chunk of queries and four flags.
    pub fn scratch_bytes(&self) -> Result<usize, CudaError> {
        Ok(self.layout()?.total)
    }
}

/// Run `LightningIndexer` on `dev`: `indices` gets, per query, the `top_k`
/// best keys in ascending order, `-1`-padded, ties to the lower key — the
/// CPU op's result up to the order of f32 additions. `scratch` holds
/// [`IndexerCall::scratch_bytes`] bytes of device memory. Refused like the
/// CPU op: a non-finite input element (naming the input and the element)
/// or a visible score that is not finite. Head dims other than 64 and 128
/// are refused naming `index_dim`.
///
/// Cost: three small conversion launches, then per chunk of queries one
/// indexer and one top-k launch; one stream synchronisation at the end.
pub fn lightning_indexer<D: Device>(
    dev: &D,
    call: &IndexerCall,
    io: &IndexerIo,
    scratch: DevicePtr,
) -> Result<(), CudaError> {
    let s = call.spec;
    check_indexer_call(call)?;
    let out_len = s.batch * s.q_len * call.top_k;
    if out_len == 0 {
        return Ok(());
    }
    let at = PlacedScratch {
        base: scratch,
        layout: call.layout()?,
    };
    dev.fill(at.flag(0), FLAG_BYTE, 32)?;
    convert_inputs(dev, call, io, &at)?;
    if s.kv_len == 0 {
        // No key: every slot is padding.
        dev.fill(io.indices, 0xff, out_len * 8)?;
    } else {
        for b in 0..s.batch {
            for t0 in (0..s.q_len).step_by(at.layout.chunk) {
                select_chunk(dev, call, io, &at, b, t0)?;
            }
        }
    }
    indexer_flags(dev, at.flag(0))
}

/// What the CUDA indexer refuses before any launch: `top_k = 0` and head
/// dims other than [`plan::INDEXER_HEAD_DIMS`].
fn check_indexer_call(call: &IndexerCall) -> Result<(), CudaError> {
    if call.top_k == 0 {
        return Err(CudaError::invalid("top_k", "must be at least 1"));
    }
    if !plan::INDEXER_HEAD_DIMS.contains(&call.spec.dim) {
        return Err(CudaError::invalid(
            "index_q",
            format!(
                "index_dim {} is not supported by the CUDA LightningIndexer (index_dim in {:?}; the CPU EP takes any)",
                call.spec.dim,
                plan::INDEXER_HEAD_DIMS
            ),
        ));
    }
    Ok(())
}

/// The indexer's scratch layout at its device address.
struct PlacedScratch {
    base: DevicePtr,
    layout: IndexerScratch,
}

impl PlacedScratch {
    /// The address `off` bytes into the scratch.
    fn at(&self, off: usize) -> DevicePtr {
        DevicePtr(self.base.0 + off as u64)
    }

    /// Flag `i`: 0, 1, 2 for a non-finite `index_q`, `index_k`, `index_w`
    /// element, 3 for a non-finite visible score.
    fn flag(&self, i: usize) -> DevicePtr {
        self.at(self.layout.flags + 8 * i)
    }
}

/// q and k to FP8 codes with per-128 scales, w widened to f32, each
/// lowering its flag at a non-finite element.
fn convert_inputs<D: Device>(
    dev: &D,
    call: &IndexerCall,
    io: &IndexerIo,
    at: &PlacedScratch,
) -> Result<(), CudaError> {
    let (s, l) = (call.spec, at.layout);
    let q_rows = s.batch * s.q_len * s.heads;
    let k_rows = s.batch * s.kv_len;
    let (f, [q_src, k_src, w_src]) = (call.format, call.sources);
    let quantized = [
        ("index_q", q_src, q_rows, io.q, l.q_codes, l.q_scales, true),
        ("index_k", k_src, k_rows, io.k, l.k_codes, l.k_scales, false),
    ];
    // q always launches; K only when there are keys (else its address may be null).
    for (i, (input, source, rows, src, codes, scales, always)) in quantized.into_iter().enumerate()
    {
        if rows == 0 && !always {
            continue;
        }
        dev.launch(&plan::quantize(
            input,
            f,
            source,
            rows,
            s.dim,
            src,
            at.at(codes),
            at.at(scales),
            at.flag(i),
        )?)?;
    }
    dev.launch(&plan::widen(
        "index_w",
        w_src,
        q_rows,
        io.w,
        at.at(l.w),
        at.flag(2),
    )?)
}

/// Scores the chunk of queries of batch `b` from `t0` against every key of
/// the batch, then writes the top-k of each of its rows to `indices`.
fn select_chunk<D: Device>(
    dev: &D,
    call: &IndexerCall,
    io: &IndexerIo,
    at: &PlacedScratch,
    b: usize,
    t0: usize,
) -> Result<(), CudaError> {
    let (s, l) = (call.spec, at.layout);
    let n = l.chunk.min(s.q_len - t0);
    let row = (b * s.q_len + t0) as u64;
    let mask = if call.causal {
        let offset = s.kv_len as isize - s.q_len as isize;
        MaskSpec::NONE.causal(offset + t0 as isize)
    } else {
        MaskSpec::NONE
    };
    let spec = IndexerSpec {
        batch: 1,
        q_len: n,
        ..s
    };
    let bufs = IndexerBuffers {
        q: at.at(l.q_codes + (row as usize) * s.heads * s.dim),
        k: at.at(l.k_codes + b * s.kv_len * s.dim),
        w: at.at(l.w + (row as usize) * s.heads * 4),
        scores: at.at(l.scores),
        q_scale: Some(at.at(l.q_scales + (row as usize) * s.heads * 4)),
        k_scale: Some(at.at(l.k_scales + b * s.kv_len * 4)),
        bad: Some(at.flag(3)),
    };
    dev.launch(&plan::indexer_fp8(
        &spec,
        &mask,
        &DeviceMask::default(),
        call.format,
        &bufs,
    )?)?;
    dev.launch(&plan::top_k(
        n,
        s.kv_len,
        call.top_k,
        at.at(l.scores),
        DevicePtr(io.indices.0 + row * call.top_k as u64 * 8),
    )?)
}

/// Waits for the launches and turns a lowered flag into the CPU op's error.
fn indexer_flags<D: Device>(dev: &D, flags_at: DevicePtr) -> Result<(), CudaError> {
    let mut flags = [0i64; 4];
    dev.read_i64(flags_at, &mut flags)?;
    for (i, name) in ["index_q", "index_k", "index_w"].into_iter().enumerate() {
        if flags[i] != FLAG_CLEAR {
            return Err(CudaError::invalid(
                name,
                format!(
                    "element {} is not finite (NaN or infinity), must be finite",
                    flags[i]
                ),
            ));
        }
    }
    if flags[3] != FLAG_CLEAR {
        return Err(CudaError::invalid(
            "index scores",
            "a visible score is not finite: the inputs overflow f32",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsa::ALIGN;

    #[test]
    fn indexer_scratch_splits_queries_into_chunks_within_the_budget() {
        let call = IndexerCall {
            spec: IndexerSpec {
                batch: 2,
                q_len: 1000,
                kv_len: 4096,
                heads: 8,
                dim: 128,
            },
            top_k: 64,
            causal: true,
            format: Fp8Format::E4M3,
            sources: [Dtype::F32; 3],
            scores_budget: 1 << 20,
        };
        let l = call.layout().unwrap();
        assert_eq!(l.chunk, 64);
        assert!(l.total >= 2 * 1000 * 8 * 128 + 2 * 4096 * 128 + 64 * 4096 * 4);
        assert!(
            [l.q_codes, l.q_scales, l.k_codes, l.k_scales, l.w, l.scores]
                .iter()
                .all(|o| o % ALIGN == 0)
        );
    }
}
