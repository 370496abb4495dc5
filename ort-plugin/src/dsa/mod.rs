//! DeepSeek-V3.2-style sparse attention ops (DSA), domain `ai.tessera`:
//!
//! - [`indexer::LightningIndexerOp`]: FP8 lightning indexer and exact top-k,
//!   `indices (B, Sq, top_k)` int64;
//! - [`topk_attention::TopKAttentionOp`]: attention restricted to the keys
//!   of an index list, or to blocks chosen training-free from min/max key
//!   summaries;
//! - [`merge::MergeAttentionOp`]: the exact LSE merge of two partial results.
//!
//! The math lives in `tessera-core` (`indexer`, `topk`, `sparse`, `blocksel`,
//! `merge`); this module checks shapes and attributes, turns every refusal
//! into an error naming the input and the rule, and spreads the work over
//! ORT's intra-op pool with `KernelContext_ParallelFor`.
//!
//! **Causal alignment.** The DSA ops have no cache inputs: K holds every key
//! and the queries are the *last* `Sq` positions, so query `i` sees key `j`
//! iff `j <= i + Skv - Sq` (bottom-right; the same as `ai.tessera.Attention`
//! with `nonpad_kv_seqlen = Skv`, and as plain causal when `Sq = Skv`).

pub mod indexer;
pub mod merge;
pub mod topk_attention;

use core::marker::PhantomData;

use crate::error::{Error, Result};

/// Upper bound on parallel tasks per call (and so on live scratch buffers).
pub const MAX_TASKS: usize = 256;

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

/// An int attribute checked to lie in `[min, i64::MAX]`, as `usize`/`isize`.
pub(crate) fn attr_at_least(name: &str, v: Option<i64>, min: i64) -> Result<Option<i64>> {
    match v {
        Some(x) if x < min => Err(Error::invalid(format!("{name} must be >= {min}, got {x}"))),
        _ => Ok(v),
    }
}

/// `is_causal`: absent = 0.
pub(crate) fn attr_bool(name: &str, v: Option<i64>) -> Result<bool> {
    match v.unwrap_or(0) {
        0 => Ok(false),
        1 => Ok(true),
        x => Err(Error::invalid(format!("{name} must be 0 or 1, got {x}"))),
    }
}

/// The offset of the bottom-right causal rule: `Skv - Sq` (may be negative).
pub(crate) fn causal_offset(q_len: usize, kv_len: usize) -> Result<isize> {
    let (q, k) = (
        isize::try_from(q_len).map_err(|_| Error::invalid("Q: sequence too long"))?,
        isize::try_from(kv_len).map_err(|_| Error::invalid("K: sequence too long"))?,
    );
    Ok(k - q)
}

/// Run `$body` with `$k` bound to the best micro-kernel of this CPU.
macro_rules! with_kernel {
    ($k:ident => $body:expr) => {
        match tessera_core::kernel::detect() {
            #[cfg(target_arch = "x86_64")]
            tessera_core::kernel::Detected::Avx2Fma($k) => $body,
            #[cfg(target_arch = "aarch64")]
            tessera_core::kernel::Detected::Neon($k) => $body,
            tessera_core::kernel::Detected::Portable($k) => $body,
        }
    };
}
pub(crate) use with_kernel;

/// An output buffer that parallel tasks write in disjoint ranges.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only write through ranges they own (the contract of
// `Disjoint::range`), and the buffer outlives the parallel call (lifetime
// 'a). T: Send, so moving the values between threads is allowed.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    /// Share `buf` among tasks.
    pub(crate) fn new(buf: &'a mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Elements `[start, start + len)`, bounds-checked.
    ///
    /// # Safety
    /// No other live slice from this buffer overlaps the range: each task
    /// asks only for the ranges of the work items it owns.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> Result<&mut [T]> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::fail("internal: output range out of bounds"));
        }
        // SAFETY: in bounds (checked above); exclusive by the caller's
        // contract; the buffer lives for 'a.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), len) })
    }
}

/// Split `items` work items into at most [`MAX_TASKS`] contiguous ranges.
pub(crate) fn chunks(items: usize) -> (usize, usize) {
    let tasks = items.clamp(1, MAX_TASKS);
    (tasks, items.div_ceil(tasks))
}
