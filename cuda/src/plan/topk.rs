//! The top-k family (`kernels/topk.cu`): the radix top-k of each row of
//! scores.

use super::common::{addressable, fits_i32, fits_i64};
use super::{DevicePtr, Launch};
use crate::error::CudaError;
use crate::params::TopkParams;

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
        addressable(input, n)?;
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
