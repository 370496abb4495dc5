//! Readers of attribute values shared by the ops: each checks one rule and
//! names the attribute in its message. Ops call them once, at attach.

use crate::error::{Error, Result};

/// An int attribute checked to lie in `[min, i64::MAX]`.
pub(crate) fn attr_at_least(name: &str, v: Option<i64>, min: i64) -> Result<Option<i64>> {
    match v {
        Some(x) if x < min => Err(Error::invalid(format!("{name} must be >= {min}, got {x}"))),
        _ => Ok(v),
    }
}

/// A 0/1 flag such as `is_causal`: absent = 0.
pub(crate) fn attr_bool(name: &str, v: Option<i64>) -> Result<bool> {
    match v.unwrap_or(0) {
        0 => Ok(false),
        1 => Ok(true),
        x => Err(Error::invalid(format!("{name} must be 0 or 1, got {x}"))),
    }
}

/// A count such as `top_k` (>= 1, when set) as `usize`.
pub(crate) fn attr_count(name: &str, v: Option<i64>) -> Result<Option<usize>> {
    match attr_at_least(name, v, 1)? {
        None => Ok(None),
        Some(k) => usize::try_from(k)
            .map(Some)
            .map_err(|_| Error::invalid(format!("{name} = {k} is too large"))),
    }
}
