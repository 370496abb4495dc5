//! CUDA-EP kernels of the `ai.tessera` ops (feature `cuda`), on the
//! `tessera-cuda` kernels.
//!
//! Each op here shares its name, domain and port table with the CPU op, and
//! its `OrtCustomOp` table differs in two entries: `GetExecutionProviderType`
//! returns `"CUDAExecutionProvider"`, and `KernelComputeV2` runs a
//! [`DeviceKernel`] on device addresses and the EP's compute stream (the
//! CPU path's [`KernelContext`](crate::ffi::KernelContext) hands out host
//! slices, which device memory must never become). ORT keeps one kernel
//! registry per EP, so on a CPU-only runtime these entries are registered
//! and never chosen: nothing opens `libcuda` until a CUDA kernel runs
//! (`tessera_cuda::Driver` loads it on first use).
//!
//! Registered: `Attention` (float16, bfloat16), `LightningIndexer` (its
//! inputs float, float16 or bfloat16), `TopKAttention` (float16, bfloat16;
//! index mode) and `MergeAttention` (float, float16, bfloat16). Float
//! `Attention` and `TopKAttention` have no half-precision kernel, so they
//! are left to the CPU kernels (ORT copies the tensors across). What each
//! CUDA op refuses that the CPU op takes is listed in its module.
//!
//! Errors: a rule the call breaks (shapes, types, a combination the CUDA
//! kernels do not implement) is `ORT_INVALID_ARGUMENT`; a failure of the
//! driver or of ORT is `ORT_EP_FAIL`.

pub mod attention;
pub mod device;
pub mod indexer;
pub mod merge;
pub mod topk_attention;

use core::ffi::{c_char, c_void};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{OrtCustomOp, OrtErrorCode, OrtKernelContext, OrtStatusPtr};
use tessera_cuda::CudaError;

use crate::error::{Error, ErrorKind, Result};
use crate::ffi;
use crate::op::{self, CustomOp};
use device::DeviceContext;

/// The execution provider these kernels declare.
pub const EXECUTION_PROVIDER: &core::ffi::CStr = c"CUDAExecutionProvider";

/// A kernel that runs on the CUDA EP's device buffers and stream.
pub trait DeviceKernel: CustomOp {
    /// Queue the op on the node's stream (asynchronous).
    fn run(&self, ctx: &mut DeviceContext) -> Result<()>;
}

/// The plugin error for a `tessera-cuda` error: a broken rule is bad input,
/// anything else (no driver, a driver call, a module mismatch) a failure.
pub fn from_cuda(e: CudaError) -> Error {
    match e {
        CudaError::Invalid { .. } | CudaError::Spec(_) | CudaError::Unsupported(_) => {
            Error::invalid(e.to_string())
        }
        other => Error::fail(other.to_string()),
    }
}

/// The error a device kernel's [`CustomOp::compute`] returns. That entry is
/// never called: [`table`] replaces `KernelComputeV2` with [`compute`], so
/// this only keeps a misuse from doing anything worse than failing.
pub(crate) fn host_compute_refused() -> Error {
    Error::fail("internal: a CUDA-EP kernel was asked to run on host buffers")
}

unsafe extern "system" fn get_ep(_op: *const OrtCustomOp) -> *const c_char {
    EXECUTION_PROVIDER.as_ptr()
}

/// An `OrtStatus` for a device kernel's error: `ORT_EP_FAIL` for failures.
fn status(r: Result<()>) -> OrtStatusPtr {
    let Err(e) = r else {
        return OrtStatusPtr::default();
    };
    let Ok(api) = ffi::api() else {
        // Without the API table no status can be made; this cannot happen
        // after RegisterCustomOps.
        return OrtStatusPtr::default();
    };
    let code = match e.kind {
        ErrorKind::InvalidArgument => OrtErrorCode::ORT_INVALID_ARGUMENT,
        ErrorKind::NotImplemented => OrtErrorCode::ORT_NOT_IMPLEMENTED,
        ErrorKind::Fail => OrtErrorCode::ORT_EP_FAIL,
    };
    let msg = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: CreateStatus copies the NUL-terminated message.
    OrtStatusPtr(unsafe { (api.CreateStatus)(code, msg.as_ptr()).0 })
}

unsafe extern "system" fn compute<O: DeviceKernel>(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    let name = O::NAME.to_str().unwrap_or("op");
    let r = catch_unwind(AssertUnwindSafe(|| {
        if kernel.is_null() || ctx.is_null() {
            return Err(Error::fail("null pointer from ORT"));
        }
        let api = ffi::api()?;
        // SAFETY: `kernel` came from op.rs's `create_kernel::<O>` (`table::<O>`
        // builds both entries from the same `O`) and lives until `destroy_kernel`;
        // ORT may run several nodes at once, hence a shared reference.
        let op = unsafe { &*(kernel as *const O) };
        // SAFETY: `ctx` is valid for this call.
        let mut ctx = unsafe { DeviceContext::new(api, ctx) };
        op.run(&mut ctx)
    }))
    .unwrap_or_else(|p| {
        Err(Error::fail(format!(
            "internal error (panic): {}",
            ffi::panic_message(&*p)
        )))
    })
    .map_err(|e| e.context(&format!("ai.tessera.{name} (CUDA)")));
    status(r)
}

/// The CUDA-EP table of `O`: its [`op::table`] (or, without shape
/// inference, [`op::table_without_inference`]) with the EP and the compute
/// entry replaced. Building both from one `O` keeps `compute::<O>` reading
/// the kernel that `create_kernel::<O>` made.
pub const fn table<O: DeviceKernel>(with_inference: bool) -> OrtCustomOp {
    let mut t = if with_inference {
        op::table::<O>()
    } else {
        op::table_without_inference::<O>()
    };
    t.GetExecutionProviderType = Some(get_ep);
    t.KernelComputeV2 = Some(compute::<O>);
    t
}

type AttentionF16 = attention::CudaAttentionOp<tessera_core::f16>;
type AttentionBf16 = attention::CudaAttentionOp<tessera_core::bf16>;
type Indexer = indexer::CudaIndexerOp;
type TopKF16 = topk_attention::CudaTopKAttentionOp<tessera_core::f16>;
type TopKBf16 = topk_attention::CudaTopKAttentionOp<tessera_core::bf16>;
type MergeF32 = merge::CudaMergeOp<f32>;
type MergeF16 = merge::CudaMergeOp<tessera_core::f16>;
type MergeBf16 = merge::CudaMergeOp<tessera_core::bf16>;

static ATTENTION_F16: OrtCustomOp = table::<AttentionF16>(true);
static ATTENTION_BF16: OrtCustomOp = table::<AttentionBf16>(true);
static INDEXER: OrtCustomOp = table::<Indexer>(true);
static TOPK_F16: OrtCustomOp = table::<TopKF16>(true);
static TOPK_BF16: OrtCustomOp = table::<TopKBf16>(true);
static MERGE_F32: OrtCustomOp = table::<MergeF32>(true);
static MERGE_F16: OrtCustomOp = table::<MergeF16>(true);
static MERGE_BF16: OrtCustomOp = table::<MergeBf16>(true);

/// The CUDA-EP kernels, registered after the CPU ones of the same names.
pub static OPS: [&OrtCustomOp; 8] = [
    &ATTENTION_F16,
    &ATTENTION_BF16,
    &INDEXER,
    &TOPK_F16,
    &TOPK_BF16,
    &MERGE_F32,
    &MERGE_F16,
    &MERGE_BF16,
];

static ATTENTION_F16_NI: OrtCustomOp = table::<AttentionF16>(false);
static ATTENTION_BF16_NI: OrtCustomOp = table::<AttentionBf16>(false);
static INDEXER_NI: OrtCustomOp = table::<Indexer>(false);
static TOPK_F16_NI: OrtCustomOp = table::<TopKF16>(false);
static TOPK_BF16_NI: OrtCustomOp = table::<TopKBf16>(false);
static MERGE_F32_NI: OrtCustomOp = table::<MergeF32>(false);
static MERGE_F16_NI: OrtCustomOp = table::<MergeF16>(false);
static MERGE_BF16_NI: OrtCustomOp = table::<MergeBf16>(false);

/// [`OPS`] without shape inference, for runtimes before 1.24.
pub static OPS_WITHOUT_INFERENCE: [&OrtCustomOp; 8] = [
    &ATTENTION_F16_NI,
    &ATTENTION_BF16_NI,
    &INDEXER_NI,
    &TOPK_F16_NI,
    &TOPK_BF16_NI,
    &MERGE_F32_NI,
    &MERGE_F16_NI,
    &MERGE_BF16_NI,
];

/// The CUDA-EP tables for a runtime with (`true`) or without shape inference.
pub fn ops(with_inference: bool) -> &'static [&'static OrtCustomOp] {
    if with_inference {
        &OPS
    } else {
        &OPS_WITHOUT_INFERENCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_declare_the_cuda_ep_and_keep_the_cpu_schema() {
        for (t, cpu) in [
            (
                &ATTENTION_F16,
                op::table::<crate::attention::AttentionOp<tessera_core::f16>>(),
            ),
            (
                &MERGE_BF16,
                op::table::<crate::dsa::merge::MergeAttentionOp<tessera_core::bf16>>(),
            ),
            (
                &INDEXER,
                op::table::<crate::dsa::indexer::LightningIndexerOp>(),
            ),
            (
                &TOPK_BF16,
                op::table::<crate::dsa::topk_attention::TopKAttentionOp<tessera_core::bf16>>(),
            ),
        ] {
            // SAFETY: the table functions ignore their argument.
            unsafe {
                let ep = core::ffi::CStr::from_ptr((t.GetExecutionProviderType.unwrap())(t));
                assert_eq!(ep, EXECUTION_PROVIDER);
                assert!((cpu.GetExecutionProviderType.unwrap())(&cpu).is_null());
                let name = |x: &OrtCustomOp| core::ffi::CStr::from_ptr((x.GetName.unwrap())(x));
                assert_eq!(name(t), name(&cpu));
                assert_eq!(
                    (t.GetInputTypeCount.unwrap())(t),
                    (cpu.GetInputTypeCount.unwrap())(&cpu)
                );
                assert_eq!(
                    (t.GetOutputTypeCount.unwrap())(t),
                    (cpu.GetOutputTypeCount.unwrap())(&cpu)
                );
                for i in 0..(t.GetInputTypeCount.unwrap())(t) {
                    assert_eq!(
                        (t.GetInputType.unwrap())(t, i),
                        (cpu.GetInputType.unwrap())(&cpu, i)
                    );
                    assert_eq!(
                        (t.GetInputCharacteristic.unwrap())(t, i),
                        (cpu.GetInputCharacteristic.unwrap())(&cpu, i)
                    );
                }
            }
            assert!(t.InferOutputShapeFn.is_some());
        }
        assert!(OPS_WITHOUT_INFERENCE
            .iter()
            .all(|t| t.InferOutputShapeFn.is_none()));
    }

    #[test]
    fn cuda_errors_map_to_bad_input_or_failure() {
        let bad = from_cuda(CudaError::Unsupported("head dim 96".into()));
        assert_eq!(bad.kind, ErrorKind::InvalidArgument);
        assert!(bad.message.contains("head dim 96"), "{}", bad.message);
        let fail = from_cuda(CudaError::NoContext);
        assert_eq!(fail.kind, ErrorKind::Fail);
        assert!(fail.message.contains("no CUDA context"), "{}", fail.message);
    }
}
