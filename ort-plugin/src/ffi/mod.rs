//! The plugin's window onto ONNX Runtime's C API (version 17): the API
//! table and status conversion live here; the wrappers are split by job.
//!
//! - [`tensor`]: element types and shapes, input and output buffers;
//! - [`info`]: a node's attributes at kernel creation;
//! - [`kernel`]: the context of one kernel run and ORT's intra-op pool;
//! - [`infer`]: shape inference;
//! - `device` (feature `cuda`): device addresses, the EP's stream, scratch.
//!
//! The plugin never links `libonnxruntime`: ORT hands us its API table in
//! `RegisterCustomOps`, and every call goes through that table. Each wrapper
//! turns a non-null `OrtStatus` into an [`Error`] (releasing the status), so
//! the rest of the crate sees only `Result`s.
//!
//! Element types cross the boundary as `i32`: ORT may report types newer
//! than the `ONNXTensorElementDataType` enum of this build, and reading an
//! unknown discriminant into a Rust enum would be undefined behaviour.

#[cfg(feature = "cuda")]
pub mod device;
pub mod infer;
pub mod info;
pub mod kernel;
pub mod tensor;

use core::ffi::CStr;
use std::ffi::CString;
use std::sync::OnceLock;

use ort_sys::{OrtApi, OrtErrorCode, OrtStatus, OrtStatusPtr};

use crate::error::{Error, ErrorKind, Result};

pub use infer::{Dim, ShapeInference};
pub use info::KernelInfo;
pub use kernel::{AllocOutput, KernelContext};
pub use tensor::{element_count, Described, InputTensor, OutputTensor, TypeShape};

/// The C API version the plugin is built against. API 17 is ORT 1.17; every
/// later runtime still serves it, so one binary loads into 1.17 through 1.32.
pub const API_VERSION: u32 = 17;

static API: OnceLock<&'static OrtApi> = OnceLock::new();

/// Remember the API table ORT gave us. The table is static inside ORT and
/// lives as long as the process.
pub fn set_api(api: &'static OrtApi) {
    let _ = API.set(api);
}

/// The API table, once `RegisterCustomOps` has run.
pub fn api() -> Result<&'static OrtApi> {
    API.get()
        .copied()
        .ok_or_else(|| Error::fail("the ORT API table is not initialised"))
}

/// ONNX element type codes used by the plugin.
pub mod elem {
    /// float32
    pub const FLOAT: i32 = 1;
    /// int32
    pub const INT32: i32 = 6;
    /// int64
    pub const INT64: i32 = 7;
    /// bool (one byte)
    pub const BOOL: i32 = 9;
    /// float16
    pub const FLOAT16: i32 = 10;
    /// float64
    pub const DOUBLE: i32 = 11;
    /// bfloat16
    pub const BFLOAT16: i32 = 16;

    /// The C enum value of a code the plugin declares (others map to UNDEFINED).
    pub fn to_enum(t: i32) -> ort_sys::ONNXTensorElementDataType {
        use ort_sys::ONNXTensorElementDataType as E;
        match t {
            FLOAT => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
            INT32 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
            INT64 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
            BOOL => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
            FLOAT16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
            DOUBLE => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
            BFLOAT16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
            _ => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
        }
    }

    /// The ONNX name of an element type, for messages.
    pub fn name(t: i32) -> String {
        match t {
            1 => "float".into(),
            2 => "uint8".into(),
            3 => "int8".into(),
            4 => "uint16".into(),
            5 => "int16".into(),
            6 => "int32".into(),
            7 => "int64".into(),
            8 => "string".into(),
            9 => "bool".into(),
            10 => "float16".into(),
            11 => "double".into(),
            12 => "uint32".into(),
            13 => "uint64".into(),
            16 => "bfloat16".into(),
            other => format!("element type {other}"),
        }
    }
}

/// Turn an ORT status into a `Result`, releasing the status.
pub fn check(api: &OrtApi, status: OrtStatusPtr) -> Result<()> {
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: `status` is a live status returned by ORT; GetErrorMessage
    // returns a NUL-terminated string owned by the status, copied before the
    // status is released.
    let msg = unsafe {
        let p = (api.GetErrorMessage)(status.0);
        let msg = if p.is_null() {
            String::from("unknown ORT error")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        (api.ReleaseStatus)(status.0);
        msg
    };
    Err(Error::fail(msg))
}

/// Make an `OrtStatus` for ORT from an error. The message has interior NULs
/// replaced so it always survives.
pub fn status_from(api: &OrtApi, err: &Error) -> *mut OrtStatus {
    status_with(api, err, OrtErrorCode::ORT_FAIL)
}

/// [`status_from`] with `fail` as the code of [`ErrorKind::Fail`] (the CUDA
/// kernels report `ORT_EP_FAIL`).
pub fn status_with(api: &OrtApi, err: &Error, fail: OrtErrorCode) -> *mut OrtStatus {
    let code = match err.kind {
        ErrorKind::InvalidArgument => OrtErrorCode::ORT_INVALID_ARGUMENT,
        ErrorKind::NotImplemented => OrtErrorCode::ORT_NOT_IMPLEMENTED,
        ErrorKind::Fail => fail,
    };
    let msg = CString::new(err.message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: CreateStatus copies the NUL-terminated message.
    unsafe { (api.CreateStatus)(code, msg.as_ptr()).0 }
}

/// The text of a caught panic.
pub fn panic_message(p: &(dyn core::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
