//! The context of one kernel run: its inputs and outputs, and ORT's
//! intra-op thread pool (`KernelContext_ParallelFor`).

use core::ffi::c_void;

use ort_sys::{OrtApi, OrtKernelContext, OrtTensorTypeAndShapeInfo, OrtValue};

use super::tensor::{read_type_shape, InputTensor, OutputTensor, TypeShape};
use super::{check, element_count, panic_message};
use crate::error::{Error, Result};

/// One input as ORT holds it, before it becomes a host slice or a device
/// address.
#[derive(Debug)]
pub(crate) struct InputValue {
    /// The ORT value (for its memory info).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub value: *const OrtValue,
    /// Element type and shape.
    pub ts: TypeShape,
    /// Buffer address.
    pub data: *mut c_void,
}

/// The context of one kernel run.
#[derive(Debug)]
pub struct KernelContext {
    api: &'static OrtApi,
    ctx: *mut OrtKernelContext,
}

impl KernelContext {
    /// Wrap the context that ORT passed to `KernelComputeV2`.
    ///
    /// # Safety
    /// `ctx` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, ctx: *mut OrtKernelContext) -> Self {
        Self { api, ctx }
    }

    /// Number of inputs the node declares (including empty optional slots).
    pub fn input_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid (constructor contract).
        check(self.api, unsafe {
            (self.api.KernelContext_GetInputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Number of outputs the node declares.
    pub fn output_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid (constructor contract).
        check(self.api, unsafe {
            (self.api.KernelContext_GetOutputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Input `i` as ORT holds it (value, type and shape, buffer address),
    /// or `None` when the node leaves it out. The address is never
    /// dereferenced here: the host kernels check it in [`InputTensor`], the
    /// device kernels only pass it on.
    pub(crate) fn input_value(&self, i: usize) -> Result<Option<InputValue>> {
        if i >= self.input_count()? {
            return Ok(None);
        }
        let mut value: *const OrtValue = core::ptr::null();
        // SAFETY: ctx is valid and `i` is below the input count.
        check(self.api, unsafe {
            (self.api.KernelContext_GetInput)(self.ctx, i, &mut value)
        })?;
        if value.is_null() {
            return Ok(None);
        }
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: `value` is a live input value; the info we get is ours to release.
        check(self.api, unsafe {
            (self.api.GetTensorTypeAndShape)(value, &mut info)
        })?;
        // SAFETY: `info` is valid until released right after reading.
        let ts = unsafe {
            let ts = read_type_shape(self.api, info, false);
            (self.api.ReleaseTensorTypeAndShapeInfo)(info);
            ts?
        };
        let mut data: *mut c_void = core::ptr::null_mut();
        // SAFETY: GetTensorMutableData only reads the value's buffer pointer;
        // the plugin never writes through it (inputs are read-only).
        check(self.api, unsafe {
            (self.api.GetTensorMutableData)(value.cast_mut(), &mut data)
        })?;
        Ok(Some(InputValue { value, ts, data }))
    }

    /// Inputs `0..N`, each `None` when the node leaves it out.
    pub fn inputs<const N: usize>(&self) -> Result<[Option<InputTensor>; N]> {
        slots(|i| self.input(i))
    }

    /// Input `i`, or `None` when the node leaves it out.
    pub fn input(&self, i: usize) -> Result<Option<InputTensor>> {
        Ok(self.input_value(i)?.map(|v| InputTensor {
            ts: v.ts,
            data: v.data,
        }))
    }

    /// Allocate output `i` with `dims`, or `None` when the node does not
    /// request that output. Its buffer is host memory on the CPU EP and
    /// device memory on the CUDA EP (where only its address is used).
    pub fn output(&mut self, i: usize, dims: &[i64]) -> Result<Option<OutputTensor>> {
        if i >= self.output_count()? {
            return Ok(None);
        }
        let len = element_count(dims)
            .ok_or_else(|| Error::invalid(format!("output {i}: size overflows")))?;
        let mut value: *mut OrtValue = core::ptr::null_mut();
        // SAFETY: ctx is valid, `dims` holds `dims.len()` values.
        check(self.api, unsafe {
            (self.api.KernelContext_GetOutput)(self.ctx, i, dims.as_ptr(), dims.len(), &mut value)
        })?;
        if value.is_null() {
            return Ok(None);
        }
        let mut data: *mut c_void = core::ptr::null_mut();
        // SAFETY: `value` is the output value ORT just allocated; only its
        // buffer address is read.
        check(self.api, unsafe {
            (self.api.GetTensorMutableData)(value, &mut data)
        })?;
        Ok(Some(OutputTensor { data, len }))
    }

    /// The API table and the raw context, for the device context.
    #[cfg(feature = "cuda")]
    pub(crate) fn raw(&self) -> (&'static OrtApi, *mut OrtKernelContext) {
        (self.api, self.ctx)
    }

    /// Run `task(i)` for `i in 0..total` on the session's intra-op thread
    /// pool, and wait. Panics inside `task` are caught; the first error or
    /// panic is returned after all tasks ran.
    pub fn parallel_for(
        &self,
        total: usize,
        task: &(dyn Fn(usize) -> Result<()> + Sync),
    ) -> Result<()> {
        if total == 0 {
            return Ok(());
        }
        struct Job<'a> {
            task: &'a (dyn Fn(usize) -> Result<()> + Sync),
            first_error: std::sync::Mutex<Option<Error>>,
        }
        unsafe extern "C" fn trampoline(data: *mut c_void, i: usize) {
            // SAFETY: `data` is the `Job` below, alive until ParallelFor returns,
            // and only shared references are taken.
            let job = unsafe { &*(data as *const Job<'_>) };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.task)(i)))
                .unwrap_or_else(|p| {
                    Err(Error::fail(format!(
                        "panic in worker: {}",
                        panic_message(&p)
                    )))
                });
            if let Err(e) = r {
                if let Ok(mut slot) = job.first_error.lock() {
                    slot.get_or_insert(e);
                }
            }
        }
        let job = Job {
            task,
            first_error: std::sync::Mutex::new(None),
        };
        // SAFETY: ctx is valid; `job` outlives the call, which returns only
        // after every task finished; the trampoline never unwinds.
        let st = unsafe {
            (self.api.KernelContext_ParallelFor)(
                self.ctx,
                trampoline,
                total,
                0,
                &job as *const Job<'_> as *mut c_void,
            )
        };
        check(self.api, st)?;
        match job.first_error.into_inner() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(Error::fail("worker error slot poisoned")),
        }
    }
}

/// A context that allocates outputs: host tensors on the CPU EP, device
/// addresses on the CUDA EP.
pub trait AllocOutput {
    /// What an allocated output is to the kernel.
    type Buffer;

    /// Allocate output `i` with `dims`, or `None` when the node does not
    /// request that output.
    fn alloc_output(&mut self, i: usize, dims: &[i64]) -> Result<Option<Self::Buffer>>;
}

impl AllocOutput for KernelContext {
    type Buffer = OutputTensor;

    fn alloc_output(&mut self, i: usize, dims: &[i64]) -> Result<Option<OutputTensor>> {
        self.output(i, dims)
    }
}

/// `[get(0), .., get(N - 1)]`, stopping at the first error.
pub(crate) fn slots<T, const N: usize>(
    get: impl Fn(usize) -> Result<Option<T>>,
) -> Result<[Option<T>; N]> {
    let mut out: [Option<T>; N] = core::array::from_fn(|_| None);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = get(i)?;
    }
    Ok(out)
}
