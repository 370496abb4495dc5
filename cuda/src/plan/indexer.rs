//! The indexer family (`kernels/indexer.cu`): the FP8 lightning indexer's
//! scores, the FP8 quantiser and the f32 widening that feed it.

use tessera_core::mask::MaskSpec;
use tessera_core::IndexerSpec;

use super::common::{addressable, fits_i32, fits_i64, grid_dim, kv_lens, structural_only};
use super::{DeviceMask, DevicePtr, Dtype, Launch};
use crate::error::CudaError;
use crate::params::{IndexerParams, QuantizeParams};

/// The indexer head dims with an FP8 kernel.
pub const INDEXER_HEAD_DIMS: [usize; 2] = [64, 128];

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
    check(spec, mask, device)?;
    Ok(Launch {
        module: "indexer",
        kernel: indexer_kernel(format, spec.dim),
        geometry: indexer_geometry(format, spec.dim),
        params: params(spec, mask, device, bufs)?,
        grid: |p, g| {
            [
                (p.kv_len as u64).div_ceil(g.tile_b as u64),
                (p.q_len as u64).div_ceil(g.tile_a as u64),
                p.batch as u64,
            ]
        },
    })
}

/// The rules of the indexer kernels that need no pointer: at least one
/// head, a head dim in [`INDEXER_HEAD_DIMS`], a causal/offset/kv-lengths
/// mask only, and tensors that fit the address space.
fn check(spec: &IndexerSpec, mask: &MaskSpec<'_>, device: &DeviceMask) -> Result<(), CudaError> {
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
        addressable(
            input,
            dims.iter().try_fold(1usize, |a, &x| a.checked_mul(x)),
        )?;
    }
    Ok(())
}

/// The parameter block: kv lengths and sizes, then the pointers.
fn params(
    spec: &IndexerSpec,
    mask: &MaskSpec<'_>,
    device: &DeviceMask,
    bufs: &IndexerBuffers,
) -> Result<IndexerParams, CudaError> {
    let (kv_lens, offset_from_kv_lens) = kv_lens(device)?;
    let q_len = fits_i32("index_q", "sequence length", spec.q_len)?;
    grid_dim("index_q", "query blocks (Sq / 8)", spec.q_len.div_ceil(8))?;
    let optional = |p: Option<DevicePtr>, input, align| {
        p.map(|p| p.check(input, align))
            .transpose()
            .map(|p| p.unwrap_or(0))
    };
    Ok(IndexerParams {
        q: bufs.q.check("index_q", 16)?,
        k: bufs.k.check("index_k", 16)?,
        w: bufs.w.check("index_w", 4)?,
        scores: bufs.scores.check("scores", 4)?,
        kv_lens,
        q_scale: optional(bufs.q_scale, "index_q_scale", 4)?,
        k_scale: optional(bufs.k_scale, "index_k_scale", 4)?,
        bad: optional(bufs.bad, "bad", 8)?,
        q_offset: mask.q_offset as i64,
        batch: grid_dim("index_q", "batch", spec.batch)?,
        q_len,
        kv_len: fits_i32("index_k", "sequence length", spec.kv_len)?,
        heads: fits_i32("index_q", "heads", spec.heads)?,
        dim: spec.dim as i32,
        causal: mask.causal as i32,
        offset_from_kv_lens,
        pad_: 0,
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
    addressable(
        input,
        rows.checked_mul(row_len.div_ceil(SCALE_GROUP))
            .and_then(|units| units.checked_mul(SCALE_GROUP)),
    )?;
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
