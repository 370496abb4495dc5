//! # tessera-ort
//!
//! ONNX Runtime custom-op library for Tessera (domain `ai.tessera`). Load it
//! with `SessionOptions.register_custom_ops_library(path)` (Python),
//! `RegisterCustomOpsLibrary_V2` (C/C++) or `with_operator_library` (Rust
//! `ort`), which call [`RegisterCustomOps`]. Linked into the host instead,
//! pass [`TesseraRegisterCustomOps`] (the same function under a name no
//! other library uses) to `RegisterCustomOpsUsingFunction`. These two are
//! the library's only exports.
//!
//! - Built against C API 17 and never linked to `libonnxruntime`, so one
//!   binary loads into ONNX Runtime 1.17 through 1.32.
//! - Ops ([`ops`]): `ai.tessera.Attention`, `LightningIndexer`,
//!   `TopKAttention` and `MergeAttention` v1 for float, float16 and
//!   bfloat16 on the CPU execution provider and, with feature `cuda`, the
//!   CUDA execution provider.
//! - Every entry point catches panics; bad input returns an `OrtStatus`
//!   naming the op, the input and the rule.
//!
//! # Layout
//! - [`ops`]: one folder per op: its schema (`mod.rs`), CPU kernel
//!   (`cpu.rs`) and CUDA kernel (`cuda.rs`);
//! - [`registry`]: the one list of kernels and the tables it generates;
//! - [`op`]: the schema and kernel traits, and the table adapters;
//! - the floor the ops share: [`plan`] (input planning of the attention
//!   family), `attrs` (attribute readers), `shape` (dims and sizes),
//!   `parallel` (disjoint writes over ORT's pool), `kernel` (the CPU
//!   micro-kernel, chosen once), [`dtype`], [`ffi`] and [`error`].
//!
//! A new op gets a folder under [`ops`], implements [`op::Schema`] and a
//! kernel trait ([`op::CpuKernel`], `op::CudaKernel`), and adds one line
//! per element type to the list in [`registry`].

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

mod attrs;
pub mod dtype;
pub mod error;
pub mod ffi;
mod kernel;
pub mod op;
pub mod ops;
mod parallel;
pub mod plan;
pub mod preflight;
pub mod registry;
mod shape;

use core::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{OrtApiBase, OrtCustomOp, OrtCustomOpDomain, OrtSessionOptions, OrtStatus};

use crate::error::Error;

#[cfg(feature = "cuda")]
pub use op::cuda::EXECUTION_PROVIDER;
pub use ops::{attention, lightning_indexer, merge_attention, topk_attention};

/// The custom-op domain.
pub const DOMAIN: &CStr = tessera_schema::DOMAIN.c();

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

/// Register the `ai.tessera` domain with a session's options: the entry
/// point ORT looks up when it loads the library
/// (`register_custom_ops_library`, `RegisterCustomOpsLibrary_V2`).
///
/// # Safety
/// Called by ONNX Runtime with valid `options` and `api_base` pointers.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { register_custom_ops(options, api_base) }
}

/// [`RegisterCustomOps`] under a name of its own, for
/// `RegisterCustomOpsUsingFunction` (C API) or
/// `SessionOptions.register_custom_ops_using_function` (Python) when the
/// library is linked into the process: every custom-op library exports a
/// `RegisterCustomOps`, so that name can clash; this one cannot.
///
/// # Safety
/// Called by ONNX Runtime with valid `options` and `api_base` pointers.
#[no_mangle]
pub unsafe extern "C" fn TesseraRegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { register_custom_ops(options, api_base) }
}

/// The body of both entry points.
///
/// # Safety
/// `options` and `api_base` are valid or null (ORT's contract).
unsafe fn register_custom_ops(
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
    // The CUDA-EP kernels (feature `cuda`) follow the CPU ones under the
    // same names.
    let r = catch_unwind(AssertUnwindSafe(|| {
        register(api, options, &registry::tables(with_inference))
    }))
    .unwrap_or_else(|p| Err(Error::fail(format!("panic: {}", ffi::panic_message(&*p)))));
    match r {
        Ok(()) => core::ptr::null_mut(),
        Err(e) => ffi::status_from(
            api,
            &e.context(&format!("{}: RegisterCustomOps", tessera_schema::DOMAIN)),
        ),
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
