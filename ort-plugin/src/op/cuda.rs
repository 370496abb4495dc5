//! The CUDA EP's `OrtCustomOp` table of an op (feature `cuda`): the
//! schema's shared entries (`table::schema_table`) with two of its
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

use super::table::{compute_with, infer_shape, schema_table};
use super::{CudaKernel, DeviceContext};

/// The execution provider these kernels declare.
pub const EXECUTION_PROVIDER: &CStr = c"CUDAExecutionProvider";

unsafe extern "system" fn get_ep(_op: *const OrtCustomOp) -> *const c_char {
    EXECUTION_PROVIDER.as_ptr()
}

unsafe extern "system" fn compute<O: CudaKernel>(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    // SAFETY: ORT passes the kernel `create_kernel::<O>` made for this
    // table (`table::<O>` builds both entries from the same `O`) and a
    // context valid for this call.
    unsafe {
        compute_with::<O>(
            " (CUDA)",
            OrtErrorCode::ORT_EP_FAIL,
            kernel,
            ctx,
            |op, api, ctx| {
                // SAFETY: `ctx` is valid for this call (checked non-null).
                let mut ctx = DeviceContext::new(api, ctx);
                op.run(&mut ctx)
            },
        )
    }
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
