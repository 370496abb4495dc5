//! The flash family (`kernels/flash.cu`): validates a dense attention call
//! and builds its [`FlashParams`].

use tessera_core::mask::{MaskSpec, MaskStrides};
use tessera_core::spec::AttentionSpec;

use super::common::{
    fits_i32, fits_i64, grid_dim, kv_lens, qkvy_strides, required_lens, structural_only,
};
use super::{AttentionBuffers, DeviceMask, Dtype, Launch};
use crate::error::CudaError;
use crate::params::FlashParams;

/// The head dims with a tensor-core flash kernel.
pub const FLASH_HEAD_DIMS: [usize; 2] = [64, 128];

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
    check(spec, mask, dtype)?;
    let d = spec.head_dim;
    Ok(Launch {
        module: "flash",
        kernel: flash_kernel(dtype, d, spec.softcap > 0.0, device.dense.is_some()),
        geometry: flash_geometry(dtype, d),
        params: params(spec, mask, device, bufs)?,
        grid: |p, g| {
            [
                (p.q_len as u64).div_ceil(g.tile_a as u64),
                p.q_heads as u64,
                p.batch as u64,
            ]
        },
    })
}

/// The rules of the flash kernels that need no pointer: the core rules of
/// the spec and mask, structural masks only, f16/bf16, `D = Dv` in
/// [`FLASH_HEAD_DIMS`], and sizes that fit.
fn check(spec: &AttentionSpec, mask: &MaskSpec<'_>, dtype: Dtype) -> Result<(), CudaError> {
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
    required_lens(spec)
}

/// The dense mask's address, kind and strides; `(0, false, 0s)` without one.
fn dense_mask(device: &DeviceMask) -> Result<(u64, bool, MaskStrides), CudaError> {
    Ok(match device.dense {
        Some(m) => (
            m.ptr.check("attn_mask", if m.is_bool { 1 } else { 4 })?,
            m.is_bool,
            m.strides,
        ),
        None => (0, false, MaskStrides::default()),
    })
}

/// The parameter block: strides (16-byte rows), kv lengths, the dense
/// mask, then the pointers and the sizes, each checked as it is read.
fn params(
    spec: &AttentionSpec,
    mask: &MaskSpec<'_>,
    device: &DeviceMask,
    bufs: &AttentionBuffers,
) -> Result<FlashParams, CudaError> {
    let [[q_batch, q_head, q_seq], [k_batch, k_head, k_seq], [v_batch, v_head, v_seq], [y_batch, y_head, y_seq]] =
        qkvy_strides(spec, [8; 4])?;
    let (kv_lens, offset_from_kv_lens) = kv_lens(device)?;
    let (mask_ptr, is_bool, ms) = dense_mask(device)?;
    let rows = spec
        .batch
        .saturating_mul(spec.q_heads)
        .saturating_mul(spec.q_len);
    let keys = spec
        .batch
        .saturating_mul(spec.kv_heads)
        .saturating_mul(spec.kv_len);
    Ok(FlashParams {
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
    })
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
