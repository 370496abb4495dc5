//! The kernel context of a CUDA-EP kernel (feature `cuda`): inputs and
//! outputs as device addresses (never as Rust slices: the host must not
//! dereference them), the EP's compute stream, and scratch from the EP's
//! own allocator.
//!
//! Inputs and outputs come from [`KernelContext`]'s accessors, which read
//! a buffer's address without touching it; only the host slices
//! ([`super::InputTensor::slice`], [`super::OutputTensor::slice_mut`]) are
//! kept away from device memory.

use core::ffi::c_void;

use ort_sys::{OrtAllocator, OrtApi, OrtKernelContext, OrtMemoryInfo, OrtValue};
use tessera_cuda::{DevicePtr, Stream};

use super::{check, KernelContext, TypeShape};
use crate::error::{Error, Result};

/// One input of a device kernel: its type, shape and device address.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    /// Element type and shape.
    pub ts: TypeShape,
    /// Device address of the first element (0 for an empty tensor is allowed).
    pub ptr: DevicePtr,
    value: *const OrtValue,
}

impl DeviceTensor {
    /// A tensor description without an ORT value, for planning tests.
    #[cfg(test)]
    pub(crate) fn for_tests(ts: TypeShape, ptr: u64) -> Self {
        Self {
            ts,
            ptr: DevicePtr(ptr),
            value: core::ptr::null(),
        }
    }
}

impl super::tensor::Described for DeviceTensor {
    fn type_shape(&self) -> &TypeShape {
        &self.ts
    }
}

/// The context of one CUDA-EP kernel run.
#[derive(Debug)]
pub struct DeviceContext {
    kernel: KernelContext,
}

impl DeviceContext {
    /// Wrap the context ORT passed to `KernelComputeV2`.
    ///
    /// # Safety
    /// `ctx` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, ctx: *mut OrtKernelContext) -> Self {
        Self {
            // SAFETY: the same contract, passed on.
            kernel: unsafe { KernelContext::new(api, ctx) },
        }
    }

    /// The CUDA stream the EP runs this node on (`cudaStream_t`).
    pub fn stream(&self) -> Result<Stream> {
        let (api, ctx) = self.kernel.raw();
        let mut s: *mut c_void = core::ptr::null_mut();
        // SAFETY: ctx is valid (constructor contract); ORT writes one pointer.
        check(api, unsafe {
            (api.KernelContext_GetGPUComputeStream)(ctx, &mut s)
        })?;
        Ok(Stream(s))
    }

    /// Number of inputs the node declares (including empty optional slots).
    pub fn input_count(&self) -> Result<usize> {
        self.kernel.input_count()
    }

    /// Number of outputs the node declares.
    pub fn output_count(&self) -> Result<usize> {
        self.kernel.output_count()
    }

    /// Inputs `0..N`, each `None` when the node leaves it out.
    pub fn inputs<const N: usize>(&self) -> Result<[Option<DeviceTensor>; N]> {
        super::kernel::slots(|i| self.input(i))
    }

    /// Input `i`, or `None` when the node leaves it out.
    pub fn input(&self, i: usize) -> Result<Option<DeviceTensor>> {
        Ok(self.kernel.input_value(i)?.map(|v| DeviceTensor {
            ts: v.ts,
            ptr: DevicePtr(v.data as u64),
            value: v.value,
        }))
    }

    /// Allocate output `i` with `dims` in device memory and return its
    /// address, or `None` when the node does not request that output.
    pub fn output(&mut self, i: usize, dims: &[i64]) -> Result<Option<DevicePtr>> {
        Ok(self
            .kernel
            .output(i, dims)?
            .map(|o| DevicePtr(o.data as u64)))
    }

    /// `bytes` of scratch in the same memory as `like` (the EP's device
    /// allocator), freed when the returned guard drops. Kernels that use it
    /// must be queued on this node's stream before the guard drops: the EP
    /// orders a later reuse of the block after them on the same stream.
    pub fn scratch(&self, like: &DeviceTensor, bytes: usize) -> Result<Scratch> {
        let (api, ctx) = self.kernel.raw();
        let mut info: *const OrtMemoryInfo = core::ptr::null();
        // SAFETY: `like.value` is a live input of this context; the memory
        // info is owned by the value and is not released here.
        check(api, unsafe {
            (api.GetTensorMemoryInfo)(like.value, &mut info)
        })?;
        let mut allocator: *mut OrtAllocator = core::ptr::null_mut();
        // SAFETY: ctx and `info` are valid; the allocator wrapper returned is
        // ours and released by `Scratch::drop`.
        check(api, unsafe {
            (api.KernelContext_GetAllocator)(ctx, info, &mut allocator)
        })?;
        if allocator.is_null() {
            return Err(Error::fail("no device allocator for scratch memory"));
        }
        let mut ptr: *mut c_void = core::ptr::null_mut();
        // SAFETY: `allocator` is valid; ORT writes one address.
        let st = unsafe { (api.AllocatorAlloc)(allocator, bytes.max(1), &mut ptr) };
        let scratch = Scratch {
            api,
            allocator,
            ptr,
        };
        check(api, st)?;
        if ptr.is_null() {
            return Err(Error::fail(format!(
                "the device allocator returned null for {bytes} bytes"
            )));
        }
        Ok(scratch)
    }
}

impl super::kernel::AllocOutput for DeviceContext {
    type Buffer = DevicePtr;

    fn alloc_output(&mut self, i: usize, dims: &[i64]) -> Result<Option<DevicePtr>> {
        self.output(i, dims)
    }
}

/// A block of device scratch memory, freed on drop.
#[derive(Debug)]
pub struct Scratch {
    api: &'static OrtApi,
    allocator: *mut OrtAllocator,
    ptr: *mut c_void,
}

impl Scratch {
    /// The block's device address.
    pub fn ptr(&self) -> DevicePtr {
        DevicePtr(self.ptr as u64)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: `ptr` (when set) came from this allocator and is freed
        // once; the allocator wrapper came from KernelContext_GetAllocator
        // and is released once, after its last use.
        unsafe {
            if !self.ptr.is_null() {
                let st = (self.api.AllocatorFree)(self.allocator, self.ptr);
                let _ = check(self.api, st);
            }
            (self.api.ReleaseAllocator)(self.allocator);
        }
    }
}
