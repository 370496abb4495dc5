//! The merge family (`kernels/merge.cu`): the exact LSE merge of two
//! partial results.

use super::common::{addressable, fits_i32, fits_i64};
use super::{DevicePtr, Dtype, Launch};
use crate::error::CudaError;
use crate::params::MergeParams;

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
    addressable("Y", rows.checked_mul(dv))?;
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

names!(merge_kernel(dtype: Dtype) {
    Dtype::F32 => "tessera_merge_f32",
    Dtype::F16 => "tessera_merge_f16",
    Dtype::Bf16 => "tessera_merge_bf16",
});
