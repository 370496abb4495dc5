//! Work spread over ORT's intra-op pool: output buffers that parallel
//! tasks write in disjoint parts ([`Disjoint`]), and the split of work
//! items into at most [`MAX_TASKS`] tasks.

use core::marker::PhantomData;

use tessera_core::{AttentionSpec, Element};

use crate::error::{Error, Result};

/// Upper bound on parallel tasks per call (and so on live scratch buffers).
pub const MAX_TASKS: usize = 256;

/// An output buffer that parallel tasks write in disjoint ranges.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only write through ranges they own (the contract of
// `Disjoint::range` and `Disjoint::write`), and the buffer outlives the
// parallel call (lifetime 'a). T: Send, so moving the values between
// threads is allowed.
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

    /// Write `vals` from element `at` on, bounds-checked.
    ///
    /// # Safety
    /// As [`Disjoint::range`]: no other task reads or writes these elements.
    pub(crate) unsafe fn write(
        &self,
        at: usize,
        vals: impl ExactSizeIterator<Item = T>,
    ) -> Result<()> {
        // SAFETY: the caller owns the range (this function's contract).
        let dst = unsafe { self.range(at, vals.len())? };
        dst.iter_mut().zip(vals).for_each(|(d, v)| *d = v);
        Ok(())
    }
}

/// Split `items` work items into at most [`MAX_TASKS`] contiguous ranges:
/// `(tasks, items per task)`.
pub(crate) fn chunks(items: usize) -> (usize, usize) {
    let tasks = items.clamp(1, MAX_TASKS);
    (tasks, items.div_ceil(tasks))
}

/// The Y rows (in the spec's output layout) and lse rows `(B, Hq, Sq)` of
/// an attention call, written by the tasks that own them.
pub(crate) struct OutputRows<'a, T> {
    y: Disjoint<'a, T>,
    lse: Option<Disjoint<'a, f32>>,
}

impl<'a, T: Element> OutputRows<'a, T> {
    /// Share `y` and `lse` among tasks.
    pub(crate) fn new(y: &'a mut [T], lse: Option<&'a mut [f32]>) -> Self {
        Self {
            y: Disjoint::new(y),
            lse: lse.map(Disjoint::new),
        }
    }

    /// Row `(b, h, i)` of Y from f32 and its lse.
    ///
    /// # Safety
    /// Only the task that owns query `i` of head `h` in batch `b` writes it.
    pub(crate) unsafe fn write_row(
        &self,
        s: &AttentionSpec,
        b: usize,
        h: usize,
        i: usize,
        row: &[f32],
        lse: f32,
    ) -> Result<()> {
        // SAFETY: the caller owns row (b, h, i): one Dv run of Y and one lse.
        unsafe {
            self.y.write(
                s.out.offset(b, h, i),
                row.iter().take(s.v_head_dim).map(|&x| T::from_f32(x)),
            )?;
            if let Some(l) = &self.lse {
                l.write((b * s.q_heads + h) * s.q_len + i, core::iter::once(lse))?;
            }
        }
        Ok(())
    }
}
