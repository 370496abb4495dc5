//! Shape arithmetic shared by every op: dims checked for rank, sign and
//! addressable size, checked products, shapes printed for messages, and
//! the offset of the bottom-right causal rule.

use tessera_schema::attention::input::{K, Q};

use crate::error::{Error, Result};

/// Largest element count accepted: any element (8 bytes at most) times it
/// still fits in `isize`, so byte offsets never overflow.
const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

/// `(d0, d1, ...)` for messages.
pub(crate) fn fmt_shape(s: &[i64]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("({})", parts.join(", "))
}

/// The dims of input `name` as `usize` after checking its rank against
/// `ranks` (`layout` names the axes in the message), that no dim is negative
/// and that the element count (zero dims counted as 1) is addressable.
pub(crate) fn dims(name: &str, shape: &[i64], ranks: &[usize], layout: &str) -> Result<Vec<usize>> {
    if !ranks.contains(&shape.len()) {
        return Err(Error::invalid(format!(
            "{name}: rank must be {layout}, got rank {} {}",
            shape.len(),
            fmt_shape(shape)
        )));
    }
    checked_dims(name, shape)
}

/// The dims of input `name` as `usize`, refusing negative dims and shapes
/// whose element count (zero dims counted as 1, so layout arithmetic is safe
/// even for empty tensors) overflows the address space.
pub(crate) fn checked_dims(name: &str, shape: &[i64]) -> Result<Vec<usize>> {
    let mut n = 1usize;
    let mut out = Vec::with_capacity(shape.len());
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            Error::invalid(format!(
                "{name}: negative dimension in shape {}",
                fmt_shape(shape)
            ))
        })?;
        n = n
            .checked_mul(d.max(1))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{name}: shape {} has a size that overflows the address space",
                    fmt_shape(shape)
                ))
            })?;
        out.push(d);
    }
    Ok(out)
}

/// `prod(dims)` checked against the addressable element count.
pub(crate) fn product(name: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| {
            acc.checked_mul(d.max(1)).filter(|&n| n <= MAX_ELEMENTS)
        })
        .ok_or_else(|| {
            Error::invalid(format!("{name}: size {dims:?} overflows the address space"))
        })?;
    Ok(dims.iter().product())
}

/// Sizes as ONNX dims. Every size was checked (by [`checked_dims`] or
/// [`product`]) to fit in usize with room for 8-byte elements, so it fits
/// in i64.
pub(crate) fn onnx_dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&x| x as i64).collect()
}

/// The offset of the bottom-right causal rule: `Skv - Sq` (may be negative).
pub(crate) fn causal_offset(q_len: usize, kv_len: usize) -> Result<isize> {
    let (q, k) = (
        isize::try_from(q_len).map_err(|_| Error::invalid(format!("{Q}: sequence too long")))?,
        isize::try_from(kv_len).map_err(|_| Error::invalid(format!("{K}: sequence too long")))?,
    );
    Ok(k - q)
}
