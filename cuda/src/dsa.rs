//! The two DSA ops as sequences of launches, written once for any
//! [`Device`]: the GPU ([`OnStream`]) and the CPU emulator (`emu::Emulator`),
//! so the emulated tests run exactly what the CUDA-EP kernels run.
//!
//! - [`lightning_indexer`]: `LightningIndexer` — quantise q and k to FP8
//!   with per-128 scales (bit for bit the CPU op's), widen the head weights,
//!   score a chunk of queries against every key, take the top-k of each row.
//! - [`topk_attention`]: `TopKAttention`'s index mode — check the lists
//!   (and write `selected_indices`), then the gather kernel.
//!
//! Errors the CPU op finds in the data (non-finite inputs or scores, a bad
//! index list) are found by the kernels, which lower an i64 flag in scratch
//! memory; after the launches the flags are read back (one stream
//! synchronisation per call) and turned into the CPU op's message.

use tessera_core::spec::AttentionSpec;
use tessera_core::{Error, IndexerSpec, MaskSpec};

use crate::error::CudaError;
use crate::params::KernelParams;
use crate::plan::{
    self, AttentionBuffers, DeviceMask, DevicePtr, Dtype, Fp8Format, IndexerBuffers, KeyLists,
    Launch, SparseRules, SCALE_GROUP,
};

/// Where the launches of one call go.
pub trait Device {
    /// Queue a validated launch.
    fn launch<P: KernelParams>(&self, plan: &Launch<P>) -> Result<(), CudaError>;
    /// Queue setting `bytes` bytes at `dst` to `value`.
    fn fill(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), CudaError>;
    /// Wait for everything queued, then read `out.len()` i64 from `src`.
    fn read_i64(&self, src: DevicePtr, out: &mut [i64]) -> Result<(), CudaError>;
}

/// A loaded [`Module`](crate::Module) and the stream its launches go to.
#[derive(Clone, Copy, Debug)]
pub struct OnStream<'a> {
    /// The kernels of the current context.
    pub module: &'a crate::Module,
    /// The stream (e.g. ORT's compute stream of the node).
    pub stream: crate::Stream,
}

impl Device for OnStream<'_> {
    fn launch<P: KernelParams>(&self, plan: &Launch<P>) -> Result<(), CudaError> {
        self.module.launch(plan, self.stream)
    }

    fn fill(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: callers in this module pass ranges inside the scratch or
        // output buffers they were given, which the caller of the op
        // guarantees to be device memory of the current context.
        unsafe {
            self.module
                .driver()
                .fill_async(dst.0, value, bytes, self.stream.0)
        }
    }

    fn read_i64(&self, src: DevicePtr, out: &mut [i64]) -> Result<(), CudaError> {
        let mut bytes = vec![0u8; out.len() * 8];
        // SAFETY: as in `fill`: `src` holds `out.len()` i64 of device memory.
        unsafe {
            self.module
                .driver()
                .read_after(&mut bytes, src.0, self.stream.0)?
        };
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = i64::from_ne_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

/// The value a flag holds until a kernel lowers it: every byte `0x7f`.
pub const FLAG_CLEAR: i64 = 0x7f7f_7f7f_7f7f_7f7f;
const FLAG_BYTE: u8 = 0x7f;
/// Scratch offsets are aligned to this many bytes.
const ALIGN: usize = 256;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn bytes(input: &'static str, dims: &[usize], elem: usize) -> Result<usize, CudaError> {
    dims.iter()
        .try_fold(elem, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 2)
        .map(align)
        .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))
}

// ---- LightningIndexer -----------------------------------------------------------

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
    if call.top_k == 0 {
        return Err(CudaError::invalid("top_k", "must be at least 1"));
    }
    if !plan::INDEXER_HEAD_DIMS.contains(&s.dim) {
        return Err(CudaError::invalid(
            "index_q",
            format!(
                "index_dim {} is not supported by the CUDA LightningIndexer (index_dim in {:?}; the CPU EP takes any)",
                s.dim,
                plan::INDEXER_HEAD_DIMS
            ),
        ));
    }
    let out_len = s.batch * s.q_len * call.top_k;
    if out_len == 0 {
        return Ok(());
    }
    let l = call.layout()?;
    let at = |off: usize| DevicePtr(scratch.0 + off as u64);
    let flag = |i: usize| at(l.flags + 8 * i);
    dev.fill(at(l.flags), FLAG_BYTE, 32)?;
    let q_rows = s.batch * s.q_len * s.heads;
    let k_rows = s.batch * s.kv_len;
    let (f, [q_src, k_src, w_src]) = (call.format, call.sources);
    dev.launch(&plan::quantize(
        "index_q",
        f,
        q_src,
        q_rows,
        s.dim,
        io.q,
        at(l.q_codes),
        at(l.q_scales),
        flag(0),
    )?)?;
    if k_rows > 0 {
        dev.launch(&plan::quantize(
            "index_k",
            f,
            k_src,
            k_rows,
            s.dim,
            io.k,
            at(l.k_codes),
            at(l.k_scales),
            flag(1),
        )?)?;
    }
    dev.launch(&plan::widen(
        "index_w",
        w_src,
        q_rows,
        io.w,
        at(l.w),
        flag(2),
    )?)?;

    if s.kv_len == 0 {
        // No key: every slot is padding.
        dev.fill(io.indices, 0xff, out_len * 8)?;
    } else {
        let offset = s.kv_len as isize - s.q_len as isize;
        for b in 0..s.batch {
            for t0 in (0..s.q_len).step_by(l.chunk) {
                let n = l.chunk.min(s.q_len - t0);
                let row = (b * s.q_len + t0) as u64;
                let mask = if call.causal {
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
                    q: at(l.q_codes + (row as usize) * s.heads * s.dim),
                    k: at(l.k_codes + b * s.kv_len * s.dim),
                    w: at(l.w + (row as usize) * s.heads * 4),
                    scores: at(l.scores),
                    q_scale: Some(at(l.q_scales + (row as usize) * s.heads * 4)),
                    k_scale: Some(at(l.k_scales + b * s.kv_len * 4)),
                    bad: Some(flag(3)),
                };
                dev.launch(&plan::indexer_fp8(
                    &spec,
                    &mask,
                    &DeviceMask::default(),
                    f,
                    &bufs,
                )?)?;
                dev.launch(&plan::top_k(
                    n,
                    s.kv_len,
                    call.top_k,
                    at(l.scores),
                    DevicePtr(io.indices.0 + row * call.top_k as u64 * 8),
                )?)?;
            }
        }
    }
    let mut flags = [0i64; 4];
    dev.read_i64(flag(0), &mut flags)?;
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

// ---- TopKAttention (index mode) ---------------------------------------------------

/// One `TopKAttention` call with an `indices` input.
#[derive(Clone, Copy, Debug)]
pub struct TopKCall {
    /// Sizes, strides and scale (softcap 0).
    pub spec: AttentionSpec,
    /// f16 or bf16.
    pub dtype: Dtype,
    /// The lists, contiguous `(B, L, Sq, k)` with `L` = 1 (shared) or `Hkv`.
    pub lists: KeyLists,
    /// Causal rule, window and sinks.
    pub rules: SparseRules,
}

/// Device buffers of a `TopKAttention` call.
#[derive(Clone, Copy, Debug)]
pub struct TopKIo {
    /// Q, K, V, Y and the optional lse.
    pub attention: AttentionBuffers,
    /// i64 `selected_indices (B, Hkv, Sq, width)` and its width, if requested.
    pub selected: Option<(DevicePtr, usize)>,
}

impl TopKCall {
    /// Bytes of device scratch [`topk_attention`]: two flags.
    pub const fn scratch_bytes(&self) -> usize {
        ALIGN
    }

    /// Lists per batch: 1 when shared by every head, else `Hkv`.
    fn list_heads(&self) -> usize {
        if self.lists.head == 0 {
            1
        } else {
            self.spec.kv_heads
        }
    }
}

/// The width of `selected_indices` for lists of `k` entries under `rules`:
/// `k + min(window + 1 + sinks, Skv)`, or `k` when nothing is kept — the
/// CPU op's rule.
pub fn selected_width(k: usize, kv_len: usize, rules: &SparseRules) -> usize {
    if rules.left_window.is_none() && rules.global_tokens == 0 {
        return k;
    }
    let window = rules
        .left_window
        .map_or(0, |w| w.saturating_add(1).min(kv_len));
    k + window
        .saturating_add(rules.global_tokens.min(kv_len))
        .min(kv_len)
}

/// Run `TopKAttention` (index mode) on `dev`. Lists that name a key outside
/// `[0, Skv)` (other than `-1`) or one key twice are refused with the CPU
/// op's message for the lowest such row (the row is read back to name the
/// entry). `scratch` holds [`TopKCall::scratch_bytes`] bytes.
///
/// Cost: one check launch over the lists (`O(k + kept + Skv/32)` per row),
/// `B·Hkv` more when shared lists fill a per-head `selected_indices`, one
/// gather launch, one stream synchronisation.
pub fn topk_attention<D: Device>(
    dev: &D,
    call: &TopKCall,
    io: &TopKIo,
    scratch: DevicePtr,
) -> Result<(), CudaError> {
    let s = &call.spec;
    let k = call.lists.top_k;
    let lh = call.list_heads();
    let rows = s.batch * lh * s.q_len;
    if rows == 0 || s.q_heads == 0 {
        return Ok(());
    }
    let (bad, spare) = (scratch, DevicePtr(scratch.0 + 8));
    dev.fill(scratch, FLAG_BYTE, 16)?;
    let per_head_selected = io.selected.filter(|_| lh == s.kv_heads);
    dev.launch(&plan::index_check(
        rows,
        s.q_len,
        s.kv_len,
        k,
        &call.rules,
        call.lists.ptr,
        bad,
        per_head_selected,
    )?)?;
    if let (Some((sel, width)), None) = (io.selected, per_head_selected) {
        // Shared lists, per-head output: the same rows for every KV head.
        for b in 0..s.batch {
            for hk in 0..s.kv_heads {
                let row0 = ((b * s.kv_heads + hk) * s.q_len * width * 8) as u64;
                dev.launch(&plan::index_check(
                    s.q_len,
                    s.q_len,
                    s.kv_len,
                    k,
                    &call.rules,
                    DevicePtr(call.lists.ptr.0 + (b * s.q_len * k * 8) as u64),
                    spare,
                    Some((DevicePtr(sel.0 + row0), width)),
                )?)?;
            }
        }
    }
    dev.launch(&plan::sparse_attention(
        s,
        call.dtype,
        &call.lists,
        &call.rules,
        &io.attention,
    )?)?;
    let mut flag = [0i64];
    dev.read_i64(bad, &mut flag)?;
    if flag[0] == FLAG_CLEAR {
        return Ok(());
    }
    let row = usize::try_from(flag[0])
        .ok()
        .filter(|&r| r < rows)
        .ok_or_else(|| CudaError::invalid("indices", "a list is out of range or repeats a key"))?;
    let mut entries = vec![0i64; k];
    dev.read_i64(
        DevicePtr(call.lists.ptr.0 + (row * k * 8) as u64),
        &mut entries,
    )?;
    // The CPU op numbers rows (b·Hkv + hk)·Sq + i; a shared list is hk 0's.
    let (b, h, i) = (row / (lh * s.q_len), row / s.q_len % lh, row % s.q_len);
    let cpu_row = (b * s.kv_heads + h) * s.q_len + i;
    Err(list_error(&entries, cpu_row, s.kv_len))
}

/// The CPU op's error for the first bad entry of a list row.
fn list_error(entries: &[i64], row: usize, kv_len: usize) -> CudaError {
    let mut seen = std::collections::HashSet::new();
    let e = entries.iter().find_map(|&j| match j {
        -1 => None,
        j if j < 0 || j >= kv_len as i64 => Some(Error::IndexOutOfRange {
            row,
            index: j,
            kv_len,
        }),
        j if !seen.insert(j) => Some(Error::DuplicateIndex { row, index: j }),
        _ => None,
    });
    let message = e.map_or_else(
        || format!("row {row} was reported bad by the GPU but reads back valid"),
        |e| e.to_string(),
    );
    CudaError::invalid(
        "indices",
        message
            .strip_prefix("indices: ")
            .unwrap_or(&message)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_width_is_the_cpu_rule() {
        let none = SparseRules::default();
        assert_eq!(selected_width(7, 100, &none), 7);
        let keep = SparseRules {
            left_window: Some(10),
            global_tokens: 3,
            ..none
        };
        assert_eq!(selected_width(7, 100, &keep), 7 + 14);
        assert_eq!(selected_width(7, 5, &keep), 7 + 5);
        let w = SparseRules {
            left_window: Some(0),
            ..none
        };
        assert_eq!(selected_width(2, 100, &w), 3);
    }

    #[test]
    fn list_errors_name_the_row_and_the_entry_like_the_cpu_op() {
        let e = list_error(&[3, -1, 9, 3], 5, 10).to_string();
        assert_eq!(e, "indices: row 5 names key 3 more than once");
        let e = list_error(&[1, 12], 2, 10).to_string();
        assert_eq!(
            e,
            "indices: row 2 holds 12, outside [0, 10) (only -1 may pad)"
        );
        let e = list_error(&[-4], 0, 10).to_string();
        assert!(e.contains("holds -4"), "{e}");
    }

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
