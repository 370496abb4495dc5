//! Validation and parameter blocks, without a GPU: each function checks a
//! call against the rules of the CUDA kernels and returns the [`Launch`] --
//! the kernel's name, its parameter block and how its grid follows from the
//! kernel's geometry. [`Module`](crate::Module) only looks the kernel up and
//! launches it, so every rule here is unit-tested on machines without CUDA.

use tessera_core::mask::{MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Strides, Tensor};
use tessera_core::IndexerSpec;

use crate::error::CudaError;
use crate::params::{
    FlashParams, IndexCheckParams, IndexerParams, KernelParams, MergeParams, QuantizeParams,
    SparseParams, TopkParams,
};

/// A device address (`CUdeviceptr`); 0 is null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The null address.
    pub const NULL: DevicePtr = DevicePtr(0);

    /// The address of a tensor with no elements is never read: any value
    /// (ORT may pass null) is accepted and passed as 0.
    fn check_unless_empty(
        self,
        input: &'static str,
        align: u64,
        elements: usize,
    ) -> Result<u64, CudaError> {
        if elements == 0 {
            return Ok(0);
        }
        self.check(input, align)
    }

    fn check(self, input: &'static str, align: u64) -> Result<u64, CudaError> {
        if self.0 == 0 {
            return Err(CudaError::invalid(input, "device pointer is null"));
        }
        if self.0 % align != 0 {
            return Err(CudaError::invalid(
                input,
                format!("device pointer {:#x} is not {align}-byte aligned", self.0),
            ));
        }
        Ok(self.0)
    }
}

/// Element type of Q/K/V/Y (and of Y in a merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// f32 (merge only).
    F32,
}

impl Dtype {
    /// The name used in kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }

    fn half(self, what: &str) -> Result<(), CudaError> {
        match self {
            Dtype::F16 | Dtype::Bf16 => Ok(()),
            Dtype::F32 => Err(CudaError::Unsupported(format!(
                "{what} in f32 (use f16 or bf16, or the CPU kernels)"
            ))),
        }
    }
}

/// A kernel's launch geometry, read from its module: `{threads, tile A, tile
/// B, dynamic shared bytes}` (see `kernels/params.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Threads per CTA.
    pub threads: u32,
    /// First tile size (query rows per CTA for attention, queries per CTA for the indexer).
    pub tile_a: u32,
    /// Second tile size (keys per tile).
    pub tile_b: u32,
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

/// One validated kernel launch.
#[derive(Clone, Copy, Debug)]
pub struct Launch<P: KernelParams> {
    /// The module (fatbin) that holds the kernel.
    pub module: &'static str,
    /// The entry point.
    pub kernel: &'static str,
    /// The `int[4]` geometry symbol of the kernel's family.
    pub geometry: &'static str,
    /// The parameter block.
    pub params: P,
    /// The grid `[x, y, z]` from the params and the geometry.
    pub grid: fn(&P, &Geometry) -> [u64; 3],
}

/// A dense mask in device memory, broadcast to `(B, Hq, Sq, Skv)` by strides.
#[derive(Clone, Copy, Debug)]
pub struct DeviceDenseMask {
    /// The mask.
    pub ptr: DevicePtr,
    /// u8 bool (nonzero = attend) or f32 additive.
    pub is_bool: bool,
    /// Element strides; 0 broadcasts an axis.
    pub strides: MaskStrides,
}

/// The parts of a mask that live in device memory. The structural rules
/// (causal, offset, windows, globals, chunk) come from a [`MaskSpec`], whose
/// host slices (kv lens, segments, dense) the GPU cannot read.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceMask {
    /// i64 `(B)` valid keys per batch (ONNX `nonpad_kv_seqlen`).
    pub kv_lens: Option<DevicePtr>,
    /// Add `kv_lens[b] - Sq` to the position offset (ONNX external-cache rule).
    pub align_to_kv_lens: bool,
    /// A dense bool or additive mask.
    pub dense: Option<DeviceDenseMask>,
}

/// Device buffers of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBuffers {
    /// Q with `spec.q` strides.
    pub q: DevicePtr,
    /// K with `spec.k` strides.
    pub k: DevicePtr,
    /// V with `spec.v` strides.
    pub v: DevicePtr,
    /// Y with `spec.out` strides, Q's dtype.
    pub y: DevicePtr,
    /// f32 `(B, Hq, Sq)` contiguous, natural log.
    pub lse: Option<DevicePtr>,
}

/// The head dims with a tensor-core flash kernel.
pub const FLASH_HEAD_DIMS: [usize; 2] = [64, 128];
/// The indexer head dims with an FP8 kernel.
pub const INDEXER_HEAD_DIMS: [usize; 2] = [64, 128];
/// The largest head dim of the sparse gather kernel.
pub const SPARSE_MAX_DIM: usize = 256;
/// The dtypes with tensor-core kernels.
pub const HALF_DTYPES: [Dtype; 2] = [Dtype::F16, Dtype::Bf16];

const MAX_GRID_YZ: usize = 65535;

fn fits_i32(input: &'static str, what: &str, x: usize) -> Result<i32, CudaError> {
    i32::try_from(x).map_err(|_| {
        CudaError::invalid(
            input,
            format!("{what} {x} exceeds the CUDA kernels' limit {}", i32::MAX),
        )
    })
}

fn fits_i64(input: &'static str, what: &str, x: usize) -> Result<i64, CudaError> {
    i64::try_from(x)
        .map_err(|_| CudaError::invalid(input, format!("{what} {x} does not fit in i64")))
}

fn grid_dim(input: &'static str, what: &str, x: usize) -> Result<i32, CudaError> {
    if x > MAX_GRID_YZ {
        return Err(CudaError::invalid(
            input,
            format!("{what} {x} exceeds the CUDA grid limit {MAX_GRID_YZ}"),
        ));
    }
    Ok(x as i32)
}

/// Strides must keep every row 16-byte aligned for the vector loads.
fn strides(input: &'static str, s: &Strides, align_elems: usize) -> Result<[i64; 3], CudaError> {
    for (name, x) in [("batch", s.batch), ("head", s.head), ("seq", s.seq)] {
        if x % align_elems != 0 {
            return Err(CudaError::invalid(
                input,
                format!("{name} stride {x} must be a multiple of {align_elems} elements (16 bytes) on the GPU"),
            ));
        }
    }
    Ok([
        fits_i64(input, "batch stride", s.batch)?,
        fits_i64(input, "head stride", s.head)?,
        fits_i64(input, "seq stride", s.seq)?,
    ])
}

/// Only the structural rules can run on the GPU; host slices cannot.
fn structural_only(mask: &MaskSpec<'_>) -> Result<(), CudaError> {
    if mask.kv_lens.is_some() {
        return Err(CudaError::invalid(
            "nonpad_kv_seqlen",
            "host kv lengths cannot be read by the GPU; pass DeviceMask::kv_lens",
        ));
    }
    if mask.segments.is_some() {
        return Err(CudaError::Unsupported("segment ids".into()));
    }
    if mask.dense.is_some() {
        return Err(CudaError::invalid(
            "attn_mask",
            "a host mask cannot be read by the GPU; pass DeviceMask::dense",
        ));
    }
    Ok(())
}

fn kv_lens(dev: &DeviceMask) -> Result<(u64, i32), CudaError> {
    match dev.kv_lens {
        Some(p) => Ok((p.check("nonpad_kv_seqlen", 8)?, dev.align_to_kv_lens as i32)),
        None if dev.align_to_kv_lens => Err(CudaError::invalid(
            "nonpad_kv_seqlen",
            "align_to_kv_lens needs DeviceMask::kv_lens",
        )),
        None => Ok((0, 0)),
    }
}

/// Flash attention: `Y = softmax(mask(softcap(scale Q Kt))) V` and its lse.
///
/// Rules: f16/bf16; `D = Dv` in [`FLASH_HEAD_DIMS`]; every batch/head/seq
/// stride a multiple of 8 elements and Q/K/V/Y 16-byte aligned; batch and
/// query heads at most 65535; lengths below 2^31.
pub fn attention(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    device: &DeviceMask,
    dtype: Dtype,
    bufs: &AttentionBuffers,
) -> Result<Launch<FlashParams>, CudaError> {
    spec.validate()?;
    mask.validate(spec.batch, spec.q_heads, spec.q_len, spec.kv_len)?;
    structural_only(mask)?;
    dtype.half("flash attention")?;
    let d = spec.head_dim;
    if d != spec.v_head_dim || !FLASH_HEAD_DIMS.contains(&d) {
        return Err(CudaError::Unsupported(format!(
            "head dims D={d}, Dv={}: the flash kernel has D = Dv in {FLASH_HEAD_DIMS:?}",
            spec.v_head_dim
        )));
    }
    for t in [Tensor::Q, Tensor::K, Tensor::V, Tensor::Y, Tensor::Lse] {
        spec.required_len(t)?;
    }
    let [q_batch, q_head, q_seq] = strides("Q", &spec.q, 8)?;
    let [k_batch, k_head, k_seq] = strides("K", &spec.k, 8)?;
    let [v_batch, v_head, v_seq] = strides("V", &spec.v, 8)?;
    let [y_batch, y_head, y_seq] = strides("Y", &spec.out, 8)?;
    let (kv_lens, offset_from_kv_lens) = kv_lens(device)?;
    let (mask_ptr, is_bool, ms) = match device.dense {
        Some(m) => (
            m.ptr.check("attn_mask", if m.is_bool { 1 } else { 4 })?,
            m.is_bool,
            m.strides,
        ),
        None => (0, false, MaskStrides::default()),
    };
    let rows = spec
        .batch
        .saturating_mul(spec.q_heads)
        .saturating_mul(spec.q_len);
    let keys = spec
        .batch
        .saturating_mul(spec.kv_heads)
        .saturating_mul(spec.kv_len);
    let params = FlashParams {
        q: bufs.q.check_unless_empty("Q", 16, rows)?,
        k: bufs.k.check_unless_empty("K", 16, keys)?,
        v: bufs.v.check_unless_empty("V", 16, keys)?,
        y: bufs.y.check_unless_empty("Y", 16, rows)?,
        lse: bufs
            .lse
            .map(|p| p.check_unless_empty("softmax_lse", 4, rows))
            .transpose()?
            .unwrap_or(0),
        kv_lens,
        mask: mask_ptr,
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
        m_batch: fits_i64("attn_mask", "batch stride", ms.batch)?,
        m_head: fits_i64("attn_mask", "head stride", ms.head)?,
        m_q: fits_i64("attn_mask", "query stride", ms.q)?,
        m_k: fits_i64("attn_mask", "key stride", ms.k)?,
        q_offset: mask.q_offset as i64,
        left_window: mask.left_window as i64,
        right_window: mask.right_window as i64,
        global_tokens: fits_i64("num_global_tokens", "count", mask.global_tokens)?,
        chunk: fits_i64("chunk", "size", mask.chunk)?,
        batch: grid_dim("Q", "batch", spec.batch)?,
        q_heads: grid_dim("Q", "q_num_heads", spec.q_heads)?,
        kv_heads: fits_i32("K", "kv_num_heads", spec.kv_heads)?,
        q_len: fits_i32("Q", "sequence length", spec.q_len)?,
        kv_len: fits_i32("K", "sequence length", spec.kv_len)?,
        causal: mask.causal as i32,
        offset_from_kv_lens,
        mask_is_bool: is_bool as i32,
        scale: spec.scale,
        softcap: spec.softcap,
    };
    Ok(Launch {
        module: "flash",
        kernel: flash_kernel(dtype, d, spec.softcap > 0.0, device.dense.is_some()),
        geometry: flash_geometry(dtype, d),
        params,
        grid: |p, g| {
            [
                (p.q_len as u64).div_ceil(g.tile_a as u64),
                p.q_heads as u64,
                p.batch as u64,
            ]
        },
    })
}

/// The FP8 storage formats of the indexer (OCP E4M3 "fn" and E5M2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Format {
    /// 4 exponent bits, 3 mantissa bits, max 448, no infinities.
    E4M3,
    /// 5 exponent bits, 2 mantissa bits, max 57344.
    E5M2,
}

impl Fp8Format {
    /// The name used in kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            Fp8Format::E4M3 => "e4m3",
            Fp8Format::E5M2 => "e5m2",
        }
    }
}

/// Device buffers of an indexer call (contiguous).
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexerBuffers {
    /// FP8 codes `(B, Sq, Hi, Di)`.
    pub q: DevicePtr,
    /// FP8 codes `(B, Skv, Di)`.
    pub k: DevicePtr,
    /// f32 `(B, Sq, Hi)`.
    pub w: DevicePtr,
    /// f32 `(B, Sq, Skv)` out; `-inf` where a key is not visible.
    pub scores: DevicePtr,
    /// f32 `(B, Sq, Hi)` scales of q's rows, all `> 0`; none = 1.
    pub q_scale: Option<DevicePtr>,
    /// f32 `(B, Skv)` scales of k's rows, all `> 0`; none = 1.
    pub k_scale: Option<DevicePtr>,
    /// One i64 the kernel lowers (atomic min) to the flat index of a
    /// visible score that is not finite; the caller presets it high.
    pub bad: Option<DevicePtr>,
}

/// The FP8 (E4M3) lightning indexer scores; [`indexer_fp8`] with
/// [`Fp8Format::E4M3`].
pub fn indexer(
    spec: &IndexerSpec,
    mask: &MaskSpec<'_>,
    device: &DeviceMask,
    bufs: &IndexerBuffers,
) -> Result<Launch<IndexerParams>, CudaError> {
    indexer_fp8(spec, mask, device, Fp8Format::E4M3, bufs)
}

/// The FP8 lightning indexer scores, q and k in `format` with optional
/// per-row scales (one per row: `Di <= 128` is one group of the CPU's
/// per-128 scaling). The mask may be causal with an offset and per-batch kv
/// lengths; windows, globals, chunks, segments and dense masks are for the
/// CPU path.
pub fn indexer_fp8(
    spec: &IndexerSpec,
    mask: &MaskSpec<'_>,
    device: &DeviceMask,
    format: Fp8Format,
    bufs: &IndexerBuffers,
) -> Result<Launch<IndexerParams>, CudaError> {
    if spec.heads == 0 {
        return Err(CudaError::invalid(
            "index_q",
            "index heads must be at least 1",
        ));
    }
    if !INDEXER_HEAD_DIMS.contains(&spec.dim) {
        return Err(CudaError::invalid(
            "index_q",
            format!(
                "index_dim {} is not supported by the CUDA indexer (index_dim in {INDEXER_HEAD_DIMS:?})",
                spec.dim
            ),
        ));
    }
    mask.validate(spec.batch, 1, spec.q_len, spec.kv_len)?;
    structural_only(mask)?;
    if mask.left_window != -1
        || mask.right_window != -1
        || mask.global_tokens != 0
        || mask.chunk != 0
    {
        return Err(CudaError::Unsupported(
            "windows, global tokens or chunks in the indexer".into(),
        ));
    }
    if device.dense.is_some() {
        return Err(CudaError::Unsupported("a dense mask in the indexer".into()));
    }
    let (b, sq, skv) = (spec.batch, spec.q_len, spec.kv_len);
    for (input, dims) in [
        ("index_q", [b, sq, spec.heads * spec.dim]),
        ("index_k", [b, skv, spec.dim]),
        ("index_w", [b, sq, spec.heads]),
        ("scores", [b, sq, skv]),
    ] {
        dims.iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .filter(|&n| n <= i64::MAX as usize)
            .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))?;
    }
    let (kv_lens, offset_from_kv_lens) = kv_lens(device)?;
    let q_len = fits_i32("index_q", "sequence length", sq)?;
    grid_dim("index_q", "query blocks (Sq / 8)", sq.div_ceil(8))?;
    let optional = |p: Option<DevicePtr>, input, align| {
        p.map(|p| p.check(input, align))
            .transpose()
            .map(|p| p.unwrap_or(0))
    };
    let params = IndexerParams {
        q: bufs.q.check("index_q", 16)?,
        k: bufs.k.check("index_k", 16)?,
        w: bufs.w.check("index_w", 4)?,
        scores: bufs.scores.check("scores", 4)?,
        kv_lens,
        q_scale: optional(bufs.q_scale, "index_q_scale", 4)?,
        k_scale: optional(bufs.k_scale, "index_k_scale", 4)?,
        bad: optional(bufs.bad, "bad", 8)?,
        q_offset: mask.q_offset as i64,
        batch: grid_dim("index_q", "batch", b)?,
        q_len,
        kv_len: fits_i32("index_k", "sequence length", skv)?,
        heads: fits_i32("index_q", "heads", spec.heads)?,
        dim: spec.dim as i32,
        causal: mask.causal as i32,
        offset_from_kv_lens,
        pad_: 0,
    };
    Ok(Launch {
        module: "indexer",
        kernel: indexer_kernel(format, spec.dim),
        geometry: indexer_geometry(format, spec.dim),
        params,
        grid: |p, g| {
            [
                (p.kv_len as u64).div_ceil(g.tile_b as u64),
                (p.q_len as u64).div_ceil(g.tile_a as u64),
                p.batch as u64,
            ]
        },
    })
}

/// The elements of one FP8 scale group (`tessera_core::fp8::SCALE_GROUP`).
pub const SCALE_GROUP: usize = 128;

/// Quantise `rows` rows of `row_len` elements of `source` (f32, f16 or
/// bf16, contiguous) to FP8 `format` codes with one f32 scale per
/// [`SCALE_GROUP`] elements of a row: `tessera_core::fp8::quantize`, bit
/// for bit. `bad` (one i64, preset high) is lowered to the flat index of a
/// non-finite element.
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    input: &'static str,
    format: Fp8Format,
    source: Dtype,
    rows: usize,
    row_len: usize,
    src: DevicePtr,
    codes: DevicePtr,
    scales: DevicePtr,
    bad: DevicePtr,
) -> Result<Launch<QuantizeParams>, CudaError> {
    if row_len == 0 {
        return Err(CudaError::invalid(
            input,
            "rows must hold at least 1 element",
        ));
    }
    rows.checked_mul(row_len.div_ceil(SCALE_GROUP))
        .and_then(|units| units.checked_mul(SCALE_GROUP))
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))?;
    let params = QuantizeParams {
        src: src.check(input, source.size())?,
        codes: codes.check("codes", 1)?,
        scales: scales.check("scales", 4)?,
        bad: bad.check("bad", 8)?,
        rows: fits_i64(input, "rows", rows)?,
        row_len: fits_i32(input, "row length", row_len)?,
        pad_: 0,
    };
    Ok(Launch {
        module: "indexer",
        kernel: quantize_kernel(format, source),
        geometry: "tessera_quantize_geom",
        params,
        grid: |p, g| {
            let units = p.rows as u64 * (p.row_len as u64).div_ceil(g.tile_b as u64);
            [units.div_ceil(g.tile_a as u64), 1, 1]
        },
    })
}

/// Widen `n` elements of `source` to f32 into `dst`, lowering `bad` (one
/// i64, preset high) to the index of a non-finite element.
pub fn widen(
    input: &'static str,
    source: Dtype,
    n: usize,
    src: DevicePtr,
    dst: DevicePtr,
    bad: DevicePtr,
) -> Result<Launch<QuantizeParams>, CudaError> {
    let params = QuantizeParams {
        src: src.check_unless_empty(input, source.size(), n)?,
        codes: dst.check_unless_empty("widened", 4, n)?,
        scales: 0,
        bad: bad.check("bad", 8)?,
        rows: fits_i64(input, "elements", n)?,
        row_len: 1,
        pad_: 0,
    };
    Ok(Launch {
        module: "indexer",
        kernel: widen_kernel(source),
        geometry: "tessera_widen_geom",
        params,
        grid: |p, g| {
            [
                (p.rows as u64)
                    .div_ceil(g.threads as u64)
                    .min(g.tile_b as u64),
                1,
                1,
            ]
        },
    })
}

/// Top-k of each row of `scores` (f32 `(rows, row_len)`) into `indices`
/// (i64 `(rows, k)`): ties to the lower index, ascending order, `-1` padding.
pub fn top_k(
    rows: usize,
    row_len: usize,
    k: usize,
    scores: DevicePtr,
    indices: DevicePtr,
) -> Result<Launch<TopkParams>, CudaError> {
    if k == 0 {
        return Err(CudaError::invalid("top_k", "top_k must be at least 1"));
    }
    if row_len == 0 {
        return Err(CudaError::invalid(
            "scores",
            "row length must be at least 1",
        ));
    }
    for (input, n) in [
        ("scores", rows.checked_mul(row_len)),
        ("indices", rows.checked_mul(k)),
    ] {
        n.filter(|&n| n <= i64::MAX as usize)
            .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))?;
    }
    let params = TopkParams {
        scores: scores.check("scores", 4)?,
        indices: indices.check("indices", 8)?,
        rows: fits_i32("scores", "rows", rows)? as i64,
        row_len: fits_i64("scores", "row length", row_len)?,
        k: fits_i32("top_k", "top_k", k)?,
        pad_: 0,
    };
    Ok(Launch {
        module: "topk",
        kernel: "tessera_topk_f32",
        geometry: "tessera_topk_f32_geom",
        params,
        grid: |p, _| [p.rows as u64, 1, 1],
    })
}

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
    for t in [Tensor::Q, Tensor::K, Tensor::V, Tensor::Y, Tensor::Lse] {
        spec.required_len(t)?;
    }
    let one = |s: &Strides, input| -> Result<[i64; 3], CudaError> { strides(input, s, 1) };
    let [q_batch, q_head, q_seq] = one(&spec.q, "Q")?;
    let [k_batch, k_head, k_seq] = strides("K", &spec.k, 8)?;
    let [v_batch, v_head, v_seq] = one(&spec.v, "V")?;
    let [y_batch, y_head, y_seq] = one(&spec.out, "Y")?;
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
    rows.checked_mul(top_k.max(selected.map_or(0, |s| s.1)))
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| CudaError::invalid("indices", "size overflows the address space"))?;
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

/// Device buffers of a merge: `y*` are `(rows, dv)` contiguous, `lse*` f32
/// `(rows)`. The output may alias either input.
#[derive(Clone, Copy, Debug)]
pub struct MergeBuffers {
    /// First part.
    pub y_a: DevicePtr,
    /// Its lse.
    pub lse_a: DevicePtr,
    /// Second part.
    pub y_b: DevicePtr,
    /// Its lse.
    pub lse_b: DevicePtr,
    /// Merged output.
    pub y: DevicePtr,
    /// Merged lse.
    pub lse: DevicePtr,
}

/// Exact LSE merge of two results over disjoint key sets.
pub fn merge(
    rows: usize,
    dv: usize,
    dtype: Dtype,
    bufs: &MergeBuffers,
) -> Result<Launch<MergeParams>, CudaError> {
    if dv == 0 {
        return Err(CudaError::invalid("Y", "head dimension must be at least 1"));
    }
    rows.checked_mul(dv)
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| CudaError::invalid("Y", "size overflows the address space"))?;
    let a = dtype.size();
    let params = MergeParams {
        y_a: bufs.y_a.check("Y_a", a)?,
        lse_a: bufs.lse_a.check("lse_a", 4)?,
        y_b: bufs.y_b.check("Y_b", a)?,
        lse_b: bufs.lse_b.check("lse_b", 4)?,
        y: bufs.y.check("Y", a)?,
        lse: bufs.lse.check("lse", 4)?,
        rows: fits_i64("Y", "rows", rows)?,
        dv: fits_i32("Y", "head dimension", dv)?,
        pad_: 0,
    };
    Ok(Launch {
        module: "merge",
        kernel: merge_kernel(dtype),
        geometry: "tessera_merge_geom",
        params,
        grid: |p, g| {
            [
                (p.rows as u64).div_ceil(g.tile_a as u64).clamp(1, 1 << 20),
                1,
                1,
            ]
        },
    })
}

// ---- kernel names: the Rust side of the instantiation tables -------------

macro_rules! names {
    ($name:ident($($arg:ident: $t:ty),*) { $($pat:pat => $s:literal,)* }) => {
        /// The entry point (a name in the instantiation table of the `.cu` file).
        pub fn $name($($arg: $t),*) -> &'static str {
            match ($($arg),*) {
                $($pat => $s,)*
                #[allow(unreachable_patterns)]
                _ => "tessera_not_instantiated",
            }
        }
    };
}

names!(flash_kernel(dtype: Dtype, d: usize, softcap: bool, dense: bool) {
    (Dtype::F16, 64, false, false) => "tessera_flash_f16_d64_sc0_dm0",
    (Dtype::F16, 64, false, true) => "tessera_flash_f16_d64_sc0_dm1",
    (Dtype::F16, 64, true, false) => "tessera_flash_f16_d64_sc1_dm0",
    (Dtype::F16, 64, true, true) => "tessera_flash_f16_d64_sc1_dm1",
    (Dtype::F16, 128, false, false) => "tessera_flash_f16_d128_sc0_dm0",
    (Dtype::F16, 128, false, true) => "tessera_flash_f16_d128_sc0_dm1",
    (Dtype::F16, 128, true, false) => "tessera_flash_f16_d128_sc1_dm0",
    (Dtype::F16, 128, true, true) => "tessera_flash_f16_d128_sc1_dm1",
    (Dtype::Bf16, 64, false, false) => "tessera_flash_bf16_d64_sc0_dm0",
    (Dtype::Bf16, 64, false, true) => "tessera_flash_bf16_d64_sc0_dm1",
    (Dtype::Bf16, 64, true, false) => "tessera_flash_bf16_d64_sc1_dm0",
    (Dtype::Bf16, 64, true, true) => "tessera_flash_bf16_d64_sc1_dm1",
    (Dtype::Bf16, 128, false, false) => "tessera_flash_bf16_d128_sc0_dm0",
    (Dtype::Bf16, 128, false, true) => "tessera_flash_bf16_d128_sc0_dm1",
    (Dtype::Bf16, 128, true, false) => "tessera_flash_bf16_d128_sc1_dm0",
    (Dtype::Bf16, 128, true, true) => "tessera_flash_bf16_d128_sc1_dm1",
});

names!(flash_geometry(dtype: Dtype, d: usize) {
    (Dtype::F16, 64) => "tessera_flash_f16_d64_geom",
    (Dtype::F16, 128) => "tessera_flash_f16_d128_geom",
    (Dtype::Bf16, 64) => "tessera_flash_bf16_d64_geom",
    (Dtype::Bf16, 128) => "tessera_flash_bf16_d128_geom",
});

names!(indexer_kernel(format: Fp8Format, d: usize) {
    (Fp8Format::E4M3, 64) => "tessera_indexer_e4m3_d64",
    (Fp8Format::E4M3, 128) => "tessera_indexer_e4m3_d128",
    (Fp8Format::E5M2, 64) => "tessera_indexer_e5m2_d64",
    (Fp8Format::E5M2, 128) => "tessera_indexer_e5m2_d128",
});

names!(indexer_geometry(format: Fp8Format, d: usize) {
    (Fp8Format::E4M3, 64) => "tessera_indexer_e4m3_d64_geom",
    (Fp8Format::E4M3, 128) => "tessera_indexer_e4m3_d128_geom",
    (Fp8Format::E5M2, 64) => "tessera_indexer_e5m2_d64_geom",
    (Fp8Format::E5M2, 128) => "tessera_indexer_e5m2_d128_geom",
});

names!(quantize_kernel(format: Fp8Format, source: Dtype) {
    (Fp8Format::E4M3, Dtype::F32) => "tessera_quantize_e4m3_f32",
    (Fp8Format::E4M3, Dtype::F16) => "tessera_quantize_e4m3_f16",
    (Fp8Format::E4M3, Dtype::Bf16) => "tessera_quantize_e4m3_bf16",
    (Fp8Format::E5M2, Dtype::F32) => "tessera_quantize_e5m2_f32",
    (Fp8Format::E5M2, Dtype::F16) => "tessera_quantize_e5m2_f16",
    (Fp8Format::E5M2, Dtype::Bf16) => "tessera_quantize_e5m2_bf16",
});

names!(widen_kernel(source: Dtype) {
    Dtype::F32 => "tessera_widen_f32",
    Dtype::F16 => "tessera_widen_f16",
    Dtype::Bf16 => "tessera_widen_bf16",
});

names!(sparse_kernel(dtype: Dtype, softcap: bool) {
    (Dtype::F16, false) => "tessera_sparse_f16_sc0",
    (Dtype::F16, true) => "tessera_sparse_f16_sc1",
    (Dtype::Bf16, false) => "tessera_sparse_bf16_sc0",
    (Dtype::Bf16, true) => "tessera_sparse_bf16_sc1",
});

names!(merge_kernel(dtype: Dtype) {
    Dtype::F32 => "tessera_merge_f32",
    Dtype::F16 => "tessera_merge_f16",
    Dtype::Bf16 => "tessera_merge_bf16",
});

/// Every (module, entry point, geometry symbol) the host can launch.
pub fn all_kernels() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = Vec::new();
    for dt in HALF_DTYPES {
        for d in FLASH_HEAD_DIMS {
            for sc in [false, true] {
                for dm in [false, true] {
                    v.push(("flash", flash_kernel(dt, d, sc, dm), flash_geometry(dt, d)));
                }
            }
        }
        for sc in [false, true] {
            v.push(("sparse", sparse_kernel(dt, sc), "tessera_sparse_geom"));
        }
    }
    for f in [Fp8Format::E4M3, Fp8Format::E5M2] {
        for d in INDEXER_HEAD_DIMS {
            v.push(("indexer", indexer_kernel(f, d), indexer_geometry(f, d)));
        }
        for src in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            v.push(("indexer", quantize_kernel(f, src), "tessera_quantize_geom"));
        }
    }
    for src in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        v.push(("indexer", widen_kernel(src), "tessera_widen_geom"));
    }
    v.push(("sparse", "tessera_index_check", "tessera_index_check_geom"));
    v.push(("topk", "tessera_topk_f32", "tessera_topk_f32_geom"));
    for dt in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        v.push(("merge", merge_kernel(dt), "tessera_merge_geom"));
    }
    v
}
