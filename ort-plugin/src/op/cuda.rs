//! The CUDA EP's `OrtCustomOp` table of an op (feature `cuda`): the
//! schema's shared entries ([`super::table::schema_table`]) with two of its
//! own. `GetExecutionProviderType` returns `"CUDAExecutionProvider"`, and
//! `KernelComputeV2` runs the op's [`CudaKernel`] on device addresses and
//! the EP's compute stream (the CPU path's
//! [`KernelContext`](crate::ffi::KernelContext) hands out host slices,
//! which device memory must never become). ORT keeps one kernel registry
//! per EP, so on a CPU-only runtime these entries are registered and never
//! chosen: nothing opens `libcuda` until a CUDA kernel runs
//! (`tessera_cuda::Driver` loads it on first use).
//!
//! Errors: a rule the call breaks (shapes, types, a combination the CUDA
//! kernels do not implement) is `ORT_INVALID_ARGUMENT`; a failure of the
//! driver or of ORT is `ORT_EP_FAIL`.

use core::ffi::{c_char, c_void, CStr};

use ort_sys::{OrtCustomOp, OrtErrorCode, OrtKernelContext, OrtStatusPtr};

use super::table::{infer_shape, schema_table, to_status};
use super::{guard, CudaKernel, DeviceContext};
use crate::error::Error;
use crate::ffi;

/// The execution provider these kernels declare.
pub const EXECUTION_PROVIDER: &CStr = c"CUDAExecutionProvider";

unsafe extern "system" fn get_ep(_op: *const OrtCustomOp) -> *const c_char {
    EXECUTION_PROVIDER.as_ptr()
}

unsafe extern "system" fn compute<O: CudaKernel>(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    let r = guard(O::NAME, " (CUDA)", || {
        if kernel.is_null() || ctx.is_null() {
            return Err(Error::fail("null pointer from ORT"));
        }
        let api = ffi::api()?;
        // SAFETY: `kernel` came from `create_kernel::<O>` (`schema_table::<O>`
        // builds it from the same `O`) and lives until `destroy_kernel`; ORT
        // may run several nodes at once, hence a shared reference.
        let op = unsafe { &*(kernel as *const O) };
        // SAFETY: `ctx` is valid for this call.
        let mut ctx = unsafe { DeviceContext::new(api, ctx) };
        op.run(&mut ctx)
    });
    to_status(r, OrtErrorCode::ORT_EP_FAIL)
}

/// The CUDA-EP table of `O`, with or without shape inference (runtimes
/// before 1.24, see [`super::table_without_inference`]). Building every
/// entry from one `O` keeps `compute::<O>` reading the kernel that
/// `create_kernel::<O>` made.
pub const fn table<O: CudaKernel>(with_inference: bool) -> OrtCustomOp {
    let mut t = schema_table::<O>();
    t.GetExecutionProviderType = Some(get_ep);
    t.KernelComputeV2 = Some(compute::<O>);
    if with_inference {
        t.InferOutputShapeFn = Some(infer_shape::<O>);
    }
    t
}
