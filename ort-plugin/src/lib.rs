//! # tessera-ort
//!
//! ONNX Runtime custom-op library for Tessera (domain `ai.tessera`). Load it
//! with `SessionOptions.register_custom_ops_library(path)` (Python),
//! `RegisterCustomOpsLibrary_V2` (C/C++) or `with_operator_library` (Rust
//! `ort`); the library exports one symbol, [`RegisterCustomOps`].
//!
//! - Built against C API 17 and never linked to `libonnxruntime`, so one
//!   binary loads into ONNX Runtime 1.17 through 1.32.
//! - Ops: `ai.tessera.Attention` v1 ([`attention`]) for float, float16 and
//!   bfloat16 on the CPU execution provider.
//! - Every entry point catches panics; bad input returns an `OrtStatus`
//!   naming the op, the input and the rule.
//!
//! New ops implement [`op::CustomOp`] and add one line to [`OPS`] (and to
//! [`OPS_WITHOUT_INFERENCE`], used on runtimes before 1.24).

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(super::parse_version("1.32.0"), Some((1, 32)));
        assert_eq!(super::parse_version("1.17.3"), Some((1, 17)));
        assert!(super::parse_version("1.9.0") < Some(super::INFERENCE_SAFE_FROM));
        assert_eq!(super::parse_version("garbage"), None);
    }
}

pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dsa;
pub mod error;
pub mod ffi;
pub mod op;

use core::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{OrtApiBase, OrtCustomOp, OrtCustomOpDomain, OrtSessionOptions, OrtStatus};

use crate::error::Error;

/// The custom-op domain.
pub const DOMAIN: &CStr = c"ai.tessera";

type AttentionF32 = attention::AttentionOp<f32>;
type AttentionF16 = attention::AttentionOp<tessera_core::f16>;
type AttentionBf16 = attention::AttentionOp<tessera_core::bf16>;

static ATTENTION_F32: OrtCustomOp = op::table::<AttentionF32>();
static ATTENTION_F16: OrtCustomOp = op::table::<AttentionF16>();
static ATTENTION_BF16: OrtCustomOp = op::table::<AttentionBf16>();

type Indexer = dsa::indexer::LightningIndexerOp;
type TopKF32 = dsa::topk_attention::TopKAttentionOp<f32>;
type TopKF16 = dsa::topk_attention::TopKAttentionOp<tessera_core::f16>;
type TopKBf16 = dsa::topk_attention::TopKAttentionOp<tessera_core::bf16>;
type MergeF32 = dsa::merge::MergeAttentionOp<f32>;
type MergeF16 = dsa::merge::MergeAttentionOp<tessera_core::f16>;
type MergeBf16 = dsa::merge::MergeAttentionOp<tessera_core::bf16>;

static INDEXER: OrtCustomOp = op::table::<Indexer>();
static TOPK_F32: OrtCustomOp = op::table::<TopKF32>();
static TOPK_F16: OrtCustomOp = op::table::<TopKF16>();
static TOPK_BF16: OrtCustomOp = op::table::<TopKBf16>();
static MERGE_F32: OrtCustomOp = op::table::<MergeF32>();
static MERGE_F16: OrtCustomOp = op::table::<MergeF16>();
static MERGE_BF16: OrtCustomOp = op::table::<MergeBf16>();

/// Every op of the domain: one entry per (op, element type). ORT merges
/// entries that share a name into one schema and picks the kernel by type.
pub static OPS: [&OrtCustomOp; 10] = [
    &ATTENTION_F32,
    &ATTENTION_F16,
    &ATTENTION_BF16,
    &INDEXER,
    &TOPK_F32,
    &TOPK_F16,
    &TOPK_BF16,
    &MERGE_F32,
    &MERGE_F16,
    &MERGE_BF16,
];

static ATTENTION_F32_NI: OrtCustomOp = op::table_without_inference::<AttentionF32>();
static ATTENTION_F16_NI: OrtCustomOp = op::table_without_inference::<AttentionF16>();
static ATTENTION_BF16_NI: OrtCustomOp = op::table_without_inference::<AttentionBf16>();
static INDEXER_NI: OrtCustomOp = op::table_without_inference::<Indexer>();
static TOPK_F32_NI: OrtCustomOp = op::table_without_inference::<TopKF32>();
static TOPK_F16_NI: OrtCustomOp = op::table_without_inference::<TopKF16>();
static TOPK_BF16_NI: OrtCustomOp = op::table_without_inference::<TopKBf16>();
static MERGE_F32_NI: OrtCustomOp = op::table_without_inference::<MergeF32>();
static MERGE_F16_NI: OrtCustomOp = op::table_without_inference::<MergeF16>();
static MERGE_BF16_NI: OrtCustomOp = op::table_without_inference::<MergeBf16>();

/// [`OPS`] without shape inference, registered on runtimes older than 1.24
/// (see [`op::table_without_inference`]).
pub static OPS_WITHOUT_INFERENCE: [&OrtCustomOp; 10] = [
    &ATTENTION_F32_NI,
    &ATTENTION_F16_NI,
    &ATTENTION_BF16_NI,
    &INDEXER_NI,
    &TOPK_F32_NI,
    &TOPK_F16_NI,
    &TOPK_BF16_NI,
    &MERGE_F32_NI,
    &MERGE_F16_NI,
    &MERGE_BF16_NI,
];

/// First runtime whose shape inference survives a node with a left-out
/// optional input.
const INFERENCE_SAFE_FROM: (u32, u32) = (1, 24);

/// `(major, minor)` of a version string like `"1.32.0"`.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((
        it.next()?.trim().parse().ok()?,
        it.next()?.trim().parse().ok()?,
    ))
}

/// Register the `ai.tessera` domain with a session's options.
///
/// # Safety
/// Called by ONNX Runtime with valid `options` and `api_base` pointers.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    if api_base.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: ORT passes a valid OrtApiBase whose functions live for the process.
    let base = unsafe { &*api_base };
    // SAFETY: GetApi is safe to call with any version; it returns NULL when
    // the runtime is older than the version asked for.
    let api = unsafe { (base.GetApi)(ffi::API_VERSION) };
    if api.is_null() {
        // Older than 1.17: report through the oldest API table, which every
        // runtime serves.
        // SAFETY: as above; version 1 always exists.
        let old = unsafe { (base.GetApi)(1) };
        if old.is_null() {
            return core::ptr::null_mut();
        }
        let msg = c"ai.tessera: libtessera_ort needs ONNX Runtime 1.17 or newer (C API 17)";
        // SAFETY: CreateStatus is the first entry of every API version.
        return unsafe { ((*old).CreateStatus)(ort_sys::OrtErrorCode::ORT_FAIL, msg.as_ptr()).0 };
    }
    // SAFETY: the table is static inside ORT.
    let api: &'static ort_sys::OrtApi = unsafe { &*api };
    ffi::set_api(api);
    // SAFETY: GetVersionString returns a static NUL-terminated string.
    let version = unsafe {
        let p = (base.GetVersionString)();
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let with_inference = matches!(parse_version(&version), Some(v) if v >= INFERENCE_SAFE_FROM);
    let ops: &[&OrtCustomOp] = if with_inference {
        &OPS
    } else {
        &OPS_WITHOUT_INFERENCE
    };
    // The CUDA-EP kernels follow the CPU ones under the same names.
    #[cfg(feature = "cuda")]
    let ops = &[ops, cuda::ops(with_inference)].concat();
    let r = catch_unwind(AssertUnwindSafe(|| register(api, options, ops)))
        .unwrap_or_else(|p| Err(Error::fail(format!("panic: {}", ffi::panic_message(&*p)))));
    match r {
        Ok(()) => core::ptr::null_mut(),
        Err(e) => ffi::status_from(api, &e.context("ai.tessera: RegisterCustomOps")),
    }
}

fn register(
    api: &'static ort_sys::OrtApi,
    options: *mut OrtSessionOptions,
    ops: &[&'static OrtCustomOp],
) -> error::Result<()> {
    if options.is_null() {
        return Err(Error::invalid("null session options"));
    }
    let mut domain: *mut OrtCustomOpDomain = core::ptr::null_mut();
    // SAFETY: DOMAIN is NUL-terminated; `domain` is an out-pointer.
    ffi::check(api, unsafe {
        (api.CreateCustomOpDomain)(DOMAIN.as_ptr(), &mut domain)
    })?;
    for &op in ops {
        // SAFETY: `domain` was just created; each op table is a `static`, so
        // it outlives every session that uses it.
        ffi::check(api, unsafe { (api.CustomOpDomain_Add)(domain, op) })?;
    }
    // SAFETY: `options` is valid (ORT's contract). The domain is deliberately
    // never released: sessions made from these options keep using it, and
    // ORT gives no hook for when the last of them is gone. It costs a few
    // hundred bytes per registration.
    ffi::check(api, unsafe { (api.AddCustomOpDomain)(options, domain) })
}
