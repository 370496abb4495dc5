//! The sparse family (`kernels/sparse.cu`): gather attention over per-query
//! key lists under TopKAttention's rules, and the check of those lists.

use tessera_core::spec::AttentionSpec;

use super::common::{addressable, fits_i32, fits_i64, grid_dim, qkvy_strides, required_lens};
use super::{AttentionBuffers, DevicePtr, Dtype, Launch};
use crate::error::CudaError;
use crate::params::{IndexCheckParams, SparseParams};

/// The largest head dim of the sparse gather kernel.
pub const SPARSE_MAX_DIM: usize = 256;

/// Per-query key lists of a sparse attention call, i64 in device memory:
/// the list of query `t` for KV head `hk` of batch `b` starts at element
/// `b·batch + hk·head + t·seq` and holds `top_k` entries (`-1` = none).
#[derive(Clone, Copy, Debug)]
pub struct KeyLists {
    /// The indices.
    pub ptr: DevicePtr,
    /// Entries per list.
    pub top_k: usize,
    /// Element stride between batches.
    pub batch: usize,
    /// Element stride between KV heads; 0 = one list shared by all heads.
    pub head: usize,
    /// Element stride between queries.
    pub seq: usize,
}

impl KeyLists {
    /// The indexer's output `(B, Sq, top_k)`, shared by all heads.
    pub const fn shared(ptr: DevicePtr, q_len: usize, top_k: usize) -> Self {
        Self {
            ptr,
            top_k,
            batch: q_len * top_k,
            head: 0,
            seq: top_k,
        }
    }
}

/// The visibility rules of a sparse call (TopKAttention's index mode): query
/// `t` sits at position `p = t + q_offset`, sees only keys `j <= p` when
/// `causal`, and always attends (listed or not) the sinks
/// `[0, global_tokens)` and, with `left_window = Some(w)` and `p >= 0`, the
/// window `[p - w, p]`, each key once. [`SparseRules::default`] is "the
/// list and nothing else".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SparseRules {
    /// Hide keys after the query's position.
    pub causal: bool,
    /// Position of query 0 (TopKAttention: `Skv - Sq`).
    pub q_offset: isize,
    /// Keys before the query kept, if any.
    pub left_window: Option<usize>,
    /// Leading keys kept (attention sinks).
    pub global_tokens: usize,
}

impl SparseRules {
    fn fields(&self) -> Result<(i64, i64, i64), CudaError> {
        Ok((
            self.q_offset as i64,
            match self.left_window {
                None => -1,
                Some(w) => fits_i64("left_window_size", "window", w)?,
            },
            fits_i64("num_global_tokens", "count", self.global_tokens)?,
        ))
    }
}

/// Attention of each query over its own key list (gathered K/V rows) and
/// the keys `rules` keep, under its causal rule.
/// Rules: f16/bf16; `D % 8 == 0`, `D, Dv <= 256`; K strides multiples of 8
/// elements and K 16-byte aligned; entries outside `[0, Skv)` are skipped;
/// a list must not name a key twice ([`index_check`] refuses such lists).
pub fn sparse_attention(
    spec: &AttentionSpec,
    dtype: Dtype,
    lists: &KeyLists,
    rules: &SparseRules,
    bufs: &AttentionBuffers,
) -> Result<Launch<SparseParams>, CudaError> {
    spec.validate()?;
    dtype.half("sparse attention")?;
    if spec.head_dim % 8 != 0 || spec.head_dim > SPARSE_MAX_DIM || spec.v_head_dim > SPARSE_MAX_DIM
    {
        return Err(CudaError::Unsupported(format!(
            "head dims D={}, Dv={}: the sparse kernel needs D a multiple of 8 and D, Dv <= {SPARSE_MAX_DIM}",
            spec.head_dim, spec.v_head_dim
        )));
    }
    if lists.top_k == 0 {
        return Err(CudaError::invalid("top_k", "top_k must be at least 1"));
    }
    required_lens(spec)?;
    let [[q_batch, q_head, q_seq], [k_batch, k_head, k_seq], [v_batch, v_head, v_seq], [y_batch, y_head, y_seq]] =
        qkvy_strides(spec, [1, 8, 1, 1])?;
    let (q_offset, left_window, global_tokens) = rules.fields()?;
    let params = SparseParams {
        q: bufs.q.check("Q", 2)?,
        k: bufs.k.check("K", 16)?,
        v: bufs.v.check("V", 2)?,
        y: bufs.y.check("Y", 2)?,
        lse: bufs
            .lse
            .map(|p| p.check("softmax_lse", 4))
            .transpose()?
            .unwrap_or(0),
        indices: lists.ptr.check("indices", 8)?,
        q_batch,
        q_head,
        q_seq,
        k_batch,
        k_head,
        k_seq,
        v_batch,
        v_head,
        v_seq,
        y_batch,
        y_head,
        y_seq,
        idx_batch: fits_i64("indices", "batch stride", lists.batch)?,
        idx_head: fits_i64("indices", "head stride", lists.head)?,
        idx_seq: fits_i64("indices", "seq stride", lists.seq)?,
        q_offset,
        left_window,
        global_tokens,
        batch: grid_dim("Q", "batch", spec.batch)?,
        q_heads: fits_i32("Q", "q_num_heads", spec.q_heads)?,
        kv_heads: fits_i32("K", "kv_num_heads", spec.kv_heads)?,
        q_len: fits_i32("Q", "sequence length", spec.q_len)?,
        kv_len: fits_i32("K", "sequence length", spec.kv_len)?,
        head_dim: spec.head_dim as i32,
        v_head_dim: spec.v_head_dim as i32,
        topk: fits_i32("top_k", "top_k", lists.top_k)?,
        causal: rules.causal as i32,
        scale: spec.scale,
        softcap: spec.softcap,
        pad_: 0,
    };
    Ok(Launch {
        module: "sparse",
        kernel: sparse_kernel(dtype, spec.softcap > 0.0),
        geometry: "tessera_sparse_geom",
        params,
        grid: |p, _| [p.q_len as u64, p.batch as u64, 1],
    })
}

/// The most keys [`index_check`] handles (its bitmap lives in shared memory).
pub const INDEX_CHECK_MAX_KEYS: usize = 11 * 1024 * 32;

/// Check `rows` contiguous index lists of `top_k` entries (row `r` is query
/// `r % q_len`): `bad` (one i64, preset high) is lowered to the lowest row
/// with an entry outside `[0, kv_len)` other than `-1`, or a key named
/// twice. With `selected = Some((ptr, width))`, row `r` of that i64
/// `(rows, width)` buffer gets the keys [`sparse_attention`] attends under
/// `rules`, ascending, `-1`-padded.
#[allow(clippy::too_many_arguments)]
pub fn index_check(
    rows: usize,
    q_len: usize,
    kv_len: usize,
    top_k: usize,
    rules: &SparseRules,
    indices: DevicePtr,
    bad: DevicePtr,
    selected: Option<(DevicePtr, usize)>,
) -> Result<Launch<IndexCheckParams>, CudaError> {
    if kv_len > INDEX_CHECK_MAX_KEYS {
        return Err(CudaError::invalid(
            "K",
            format!(
                "sequence length {kv_len} exceeds the {INDEX_CHECK_MAX_KEYS} keys the CUDA index-list check handles"
            ),
        ));
    }
    if top_k == 0 || q_len == 0 {
        return Err(CudaError::invalid(
            "indices",
            "lists need at least one entry and one query",
        ));
    }
    addressable(
        "indices",
        rows.checked_mul(top_k.max(selected.map_or(0, |s| s.1))),
    )?;
    let (q_offset, left_window, global_tokens) = rules.fields()?;
    let (sel, width) = match selected {
        Some((p, w)) => (p.check_unless_empty("selected_indices", 8, rows * w)?, w),
        None => (0, 0),
    };
    let params = IndexCheckParams {
        indices: indices.check("indices", 8)?,
        bad: bad.check("bad", 8)?,
        selected: sel,
        rows: fits_i64("indices", "rows", rows)?,
        q_offset,
        left_window,
        global_tokens,
        q_len: fits_i32("indices", "queries", q_len)?,
        kv_len: fits_i32("K", "sequence length", kv_len)?,
        topk: fits_i32("indices", "entries per row", top_k)?,
        width: fits_i32("selected_indices", "width", width)?,
        causal: rules.causal as i32,
        pad_: 0,
    };
    Ok(Launch {
        module: "sparse",
        kernel: "tessera_index_check",
        geometry: "tessera_index_check_geom",
        params,
        grid: |p, g| [(p.rows as u64).min(g.tile_a as u64), 1, 1],
    })
}

names!(sparse_kernel(dtype: Dtype, softcap: bool) {
    (Dtype::F16, false) => "tessera_sparse_f16_sc0",
    (Dtype::F16, true) => "tessera_sparse_f16_sc1",
    (Dtype::Bf16, false) => "tessera_sparse_bf16_sc0",
    (Dtype::Bf16, true) => "tessera_sparse_bf16_sc1",
});
