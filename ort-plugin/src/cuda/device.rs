//! The kernel context of a CUDA-EP kernel: inputs and outputs as device
//! addresses (never as Rust slices: the host must not dereference them), the
//! EP's compute stream, and scratch from the EP's own allocator.
//!
//! [`crate::ffi::KernelContext`] hands out host slices, which is right for
//! the CPU EP and undefined behaviour for device memory, so the few C API
//! calls a device kernel needs are wrapped here.

use core::ffi::c_void;

use ort_sys::{
    OrtAllocator, OrtApi, OrtKernelContext, OrtMemoryInfo, OrtTensorTypeAndShapeInfo, OrtValue,
};
use tessera_cuda::{DevicePtr, Stream};

use crate::error::{Error, Result};
use crate::ffi::{check, element_count, TypeShape};

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

/// The context of one CUDA-EP kernel run.
#[derive(Debug)]
pub struct DeviceContext {
    api: &'static OrtApi,
    ctx: *mut OrtKernelContext,
}

impl DeviceContext {
    /// Wrap the context ORT passed to `KernelComputeV2`.
    ///
    /// # Safety
    /// `ctx` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, ctx: *mut OrtKernelContext) -> Self {
        Self { api, ctx }
    }

    /// The CUDA stream the EP runs this node on (`cudaStream_t`).
    pub fn stream(&self) -> Result<Stream> {
        let mut s: *mut c_void = core::ptr::null_mut();
        // SAFETY: ctx is valid (constructor contract); ORT writes one pointer.
        check(self.api, unsafe {
            (self.api.KernelContext_GetGPUComputeStream)(self.ctx, &mut s)
        })?;
        Ok(Stream(s))
    }

    /// Number of inputs the node declares (including empty optional slots).
    pub fn input_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid.
        check(self.api, unsafe {
            (self.api.KernelContext_GetInputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Number of outputs the node declares.
    pub fn output_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid.
        check(self.api, unsafe {
            (self.api.KernelContext_GetOutputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Input `i`, or `None` when the node leaves it out.
    pub fn input(&self, i: usize) -> Result<Option<DeviceTensor>> {
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
        let ts = self.type_shape(value)?;
        let mut data: *mut c_void = core::ptr::null_mut();
        // SAFETY: GetTensorMutableData only reads the value's buffer address;
        // the address is never dereferenced on the host, and inputs are
        // only read by the kernels.
        check(self.api, unsafe {
            (self.api.GetTensorMutableData)(value.cast_mut(), &mut data)
        })?;
        Ok(Some(DeviceTensor {
            ts,
            ptr: DevicePtr(data as u64),
            value,
        }))
    }

    fn type_shape(&self, value: *const OrtValue) -> Result<TypeShape> {
        let api = self.api;
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: `value` is a live input; the info is ours until released below.
        check(api, unsafe {
            (api.GetTensorTypeAndShape)(value, &mut info)
        })?;
        let read = || -> Result<TypeShape> {
            let (mut elem, mut n) = (0i32, 0usize);
            // SAFETY: `info` is valid; ORT writes one enum value, received in
            // an i32 (same size and ABI as the C enum), and one count.
            unsafe {
                check(
                    api,
                    (api.GetTensorElementType)(info, (&mut elem as *mut i32).cast()),
                )?;
                check(api, (api.GetDimensionsCount)(info, &mut n))?;
            }
            let mut dims = vec![0i64; n];
            // SAFETY: `dims` holds `n` elements, as ORT reported.
            check(api, unsafe {
                (api.GetDimensions)(info, dims.as_mut_ptr(), n)
            })?;
            Ok(TypeShape {
                elem,
                symbols: vec![String::new(); n],
                dims,
            })
        };
        let ts = read();
        // SAFETY: `info` was created above and is released once.
        unsafe { (api.ReleaseTensorTypeAndShapeInfo)(info) };
        ts
    }

    /// Allocate output `i` with `dims` in device memory and return its
    /// address, or `None` when the node does not request that output.
    pub fn output(&mut self, i: usize, dims: &[i64]) -> Result<Option<DevicePtr>> {
        if i >= self.output_count()? {
            return Ok(None);
        }
        element_count(dims).ok_or_else(|| Error::invalid(format!("output {i}: size overflows")))?;
        let mut value: *mut OrtValue = core::ptr::null_mut();
        // SAFETY: ctx is valid, `dims` holds `dims.len()` values.
        check(self.api, unsafe {
            (self.api.KernelContext_GetOutput)(self.ctx, i, dims.as_ptr(), dims.len(), &mut value)
        })?;
        if value.is_null() {
            return Ok(None);
        }
        let mut data: *mut c_void = core::ptr::null_mut();
        // SAFETY: `value` is the output ORT just allocated; only its address is read.
        check(self.api, unsafe {
            (self.api.GetTensorMutableData)(value, &mut data)
        })?;
        Ok(Some(DevicePtr(data as u64)))
    }

    /// `bytes` of scratch in the same memory as `like` (the EP's device
    /// allocator), freed when the returned guard drops. Kernels that use it
    /// must be queued on this node's stream before the guard drops: the EP
    /// orders a later reuse of the block after them on the same stream.
    pub fn scratch(&self, like: &DeviceTensor, bytes: usize) -> Result<Scratch> {
        let api = self.api;
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
            (api.KernelContext_GetAllocator)(self.ctx, info, &mut allocator)
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
