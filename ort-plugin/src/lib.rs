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
//! New ops implement [`op::CustomOp`] and add one line to [`OPS`].

pub mod attention;
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

static ATTENTION_F32: OrtCustomOp = op::table::<attention::AttentionOp<f32>>();
static ATTENTION_F16: OrtCustomOp = op::table::<attention::AttentionOp<tessera_core::f16>>();
static ATTENTION_BF16: OrtCustomOp = op::table::<attention::AttentionOp<tessera_core::bf16>>();

static INDEXER: OrtCustomOp = op::table::<dsa::indexer::LightningIndexerOp>();
static TOPK_F32: OrtCustomOp = op::table::<dsa::topk_attention::TopKAttentionOp<f32>>();
static TOPK_F16: OrtCustomOp =
    op::table::<dsa::topk_attention::TopKAttentionOp<tessera_core::f16>>();
static TOPK_BF16: OrtCustomOp =
    op::table::<dsa::topk_attention::TopKAttentionOp<tessera_core::bf16>>();
static MERGE_F32: OrtCustomOp = op::table::<dsa::merge::MergeAttentionOp<f32>>();
static MERGE_F16: OrtCustomOp = op::table::<dsa::merge::MergeAttentionOp<tessera_core::f16>>();
static MERGE_BF16: OrtCustomOp = op::table::<dsa::merge::MergeAttentionOp<tessera_core::bf16>>();

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
    let r = catch_unwind(AssertUnwindSafe(|| register(api, options)))
        .unwrap_or_else(|p| Err(Error::fail(format!("panic: {}", ffi::panic_message(&*p)))));
    match r {
        Ok(()) => core::ptr::null_mut(),
        Err(e) => ffi::status_from(api, &e.context("ai.tessera: RegisterCustomOps")),
    }
}

fn register(api: &'static ort_sys::OrtApi, options: *mut OrtSessionOptions) -> error::Result<()> {
    if options.is_null() {
        return Err(Error::invalid("null session options"));
    }
    let mut domain: *mut OrtCustomOpDomain = core::ptr::null_mut();
    // SAFETY: DOMAIN is NUL-terminated; `domain` is an out-pointer.
    ffi::check(api, unsafe {
        (api.CreateCustomOpDomain)(DOMAIN.as_ptr(), &mut domain)
    })?;
    for op in OPS {
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
