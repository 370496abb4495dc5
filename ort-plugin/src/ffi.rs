//! Thin, checked wrappers over the ONNX Runtime C API (version 17).
//!
//! The plugin never links `libonnxruntime`: ORT hands us its API table in
//! `RegisterCustomOps`, and every call goes through that table. Each wrapper
//! turns a non-null `OrtStatus` into an [`Error`] (releasing the status), so
//! the rest of the crate sees only `Result`s.
//!
//! Element types cross the boundary as `i32`: ORT may report types newer
//! than the `ONNXTensorElementDataType` enum of this build, and reading an
//! unknown discriminant into a Rust enum would be undefined behaviour.

use core::ffi::{c_char, c_void, CStr};
use std::ffi::CString;
use std::sync::OnceLock;

use ort_sys::{
    OrtApi, OrtErrorCode, OrtKernelContext, OrtKernelInfo, OrtOpAttr, OrtOpAttrType,
    OrtShapeInferContext, OrtStatus, OrtStatusPtr, OrtTensorTypeAndShapeInfo, OrtValue,
};

use crate::error::{Error, ErrorKind, Result};

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
    let code = match err.kind {
        ErrorKind::InvalidArgument => OrtErrorCode::ORT_INVALID_ARGUMENT,
        ErrorKind::NotImplemented => OrtErrorCode::ORT_NOT_IMPLEMENTED,
        ErrorKind::Fail => OrtErrorCode::ORT_FAIL,
    };
    let msg = CString::new(err.message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: CreateStatus copies the NUL-terminated message.
    unsafe { (api.CreateStatus)(code, msg.as_ptr()).0 }
}

/// Read-only view of the attributes of a node, at kernel creation.
#[derive(Debug)]
pub struct KernelInfo {
    api: &'static OrtApi,
    info: *const OrtKernelInfo,
}

impl KernelInfo {
    /// Wrap a kernel info pointer that ORT passed to `CreateKernelV2`.
    ///
    /// # Safety
    /// `info` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, info: *const OrtKernelInfo) -> Self {
        Self { api, info }
    }

    /// An int attribute, or `None` when the node does not set it.
    pub fn attr_i64(&self, name: &CStr) -> Option<i64> {
        let mut out = 0i64;
        // SAFETY: `info` is valid (constructor contract); `out` is a live i64.
        let st =
            unsafe { (self.api.KernelInfoGetAttribute_int64)(self.info, name.as_ptr(), &mut out) };
        check(self.api, st).ok().map(|()| out)
    }

    /// A float attribute, or `None` when the node does not set it.
    pub fn attr_f32(&self, name: &CStr) -> Option<f32> {
        let mut out = 0f32;
        // SAFETY: as in `attr_i64`.
        let st =
            unsafe { (self.api.KernelInfoGetAttribute_float)(self.info, name.as_ptr(), &mut out) };
        check(self.api, st).ok().map(|()| out)
    }

    /// A string attribute, or `None` when the node does not set it.
    pub fn attr_string(&self, name: &CStr) -> Option<String> {
        let mut size = 0usize;
        // SAFETY: `info` is valid; with a null `out` ORT only writes the
        // needed size (including the NUL) into `size`.
        let st = unsafe {
            (self.api.KernelInfoGetAttribute_string)(
                self.info,
                name.as_ptr(),
                core::ptr::null_mut(),
                &mut size,
            )
        };
        check(self.api, st).ok()?;
        let mut buf = vec![0u8; size.max(1)];
        let mut len = buf.len();
        // SAFETY: `buf` holds `len` bytes, the size ORT asked for.
        let st = unsafe {
            (self.api.KernelInfoGetAttribute_string)(
                self.info,
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        check(self.api, st).ok()?;
        let text = CStr::from_bytes_until_nul(&buf).ok()?;
        Some(text.to_string_lossy().into_owned())
    }
}

/// Element type and shape of a tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeShape {
    /// ONNX element type code.
    pub elem: i32,
    /// Dimensions (`-1` where unknown during shape inference).
    pub dims: Vec<i64>,
    /// Symbolic names (`""` where none), same length as `dims`.
    pub symbols: Vec<String>,
}

/// Read the element type and shape from a type-and-shape info.
///
/// # Safety
/// `info` must be a valid type-and-shape info.
unsafe fn read_type_shape(
    api: &OrtApi,
    info: *const OrtTensorTypeAndShapeInfo,
    symbols: bool,
) -> Result<TypeShape> {
    let mut elem = 0i32;
    let mut n = 0usize;
    // SAFETY: `info` is valid (caller); ORT writes one enum value, which we
    // receive in an i32 (same size and ABI as the C enum).
    unsafe {
        check(
            api,
            (api.GetTensorElementType)(info, (&mut elem as *mut i32).cast()),
        )?;
        check(api, (api.GetDimensionsCount)(info, &mut n))?;
    }
    let mut dims = vec![0i64; n];
    // SAFETY: `dims` holds `n` elements, as ORT reported.
    unsafe { check(api, (api.GetDimensions)(info, dims.as_mut_ptr(), n))? };
    let mut names = vec![String::new(); n];
    if symbols && n > 0 {
        let mut ptrs: Vec<*const c_char> = vec![core::ptr::null(); n];
        // SAFETY: `ptrs` holds `n` pointers; ORT fills them with strings owned by `info`.
        unsafe { check(api, (api.GetSymbolicDimensions)(info, ptrs.as_mut_ptr(), n))? };
        for (name, p) in names.iter_mut().zip(&ptrs) {
            if !p.is_null() {
                // SAFETY: a NUL-terminated string owned by `info`, read before it goes away.
                *name = unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned();
            }
        }
    }
    Ok(TypeShape {
        elem,
        dims,
        symbols: names,
    })
}

/// One input tensor of a running kernel.
#[derive(Clone, Debug)]
pub struct InputTensor {
    /// Element type and shape.
    pub ts: TypeShape,
    data: *const c_void,
}

/// One output tensor, allocated by ORT for a running kernel.
#[derive(Debug)]
pub struct OutputTensor {
    data: *mut c_void,
    len: usize,
}

/// Product of dims as `usize`, or `None` on overflow or a negative dim.
pub fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

impl InputTensor {
    /// The data as a slice of `T`, after checking the element type (`elem`),
    /// the alignment and the size.
    pub fn slice<T>(&self, name: &str, elem: i32) -> Result<&[T]> {
        if self.ts.elem != elem {
            return Err(Error::invalid(format!(
                "{name}: element type {} is not the expected {}",
                elem::name(self.ts.elem),
                elem::name(elem)
            )));
        }
        let len = element_count(&self.ts.dims)
            .ok_or_else(|| Error::invalid(format!("{name}: size overflows")))?;
        if len == 0 {
            return Ok(&[]);
        }
        if self.data.is_null() || (self.data as usize) % core::mem::align_of::<T>() != 0 {
            return Err(Error::fail(format!(
                "{name}: ORT gave a null or misaligned buffer"
            )));
        }
        // SAFETY: ORT owns a buffer of `len` elements of this element type for
        // the duration of the compute call, and `T` matches it (checked above,
        // and every caller pairs `elem` with the matching Rust type).
        Ok(unsafe { core::slice::from_raw_parts(self.data.cast::<T>(), len) })
    }

    /// The raw bytes of a one-byte-per-element tensor (bool).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        if self.ts.elem != elem::BOOL {
            return Err(Error::invalid(format!(
                "{name}: expected bool, got {}",
                elem::name(self.ts.elem)
            )));
        }
        self.slice_unchecked_u8(name)
    }

    fn slice_unchecked_u8(&self, name: &str) -> Result<&[u8]> {
        let len = element_count(&self.ts.dims)
            .ok_or_else(|| Error::invalid(format!("{name}: size overflows")))?;
        if len == 0 {
            return Ok(&[]);
        }
        if self.data.is_null() {
            return Err(Error::fail(format!("{name}: ORT gave a null buffer")));
        }
        // SAFETY: a bool tensor is one byte per element; read as u8 (any bit
        // pattern is a valid u8), `len` elements live for the compute call.
        Ok(unsafe { core::slice::from_raw_parts(self.data.cast::<u8>(), len) })
    }
}

impl OutputTensor {
    /// The output buffer as `&mut [T]`.
    ///
    /// # Safety
    /// `T` must be the element type the output was declared with.
    pub unsafe fn slice_mut<T>(&mut self) -> &mut [T] {
        if self.len == 0 || self.data.is_null() {
            return &mut [];
        }
        // SAFETY: ORT allocated `len` elements of the output's type (caller's
        // contract) aligned for it; we hold the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.data.cast::<T>(), self.len) }
    }
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

    /// Input `i`, or `None` when the node leaves it out.
    pub fn input(&self, i: usize) -> Result<Option<InputTensor>> {
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
        Ok(Some(InputTensor { ts, data }))
    }

    /// Allocate output `i` with `dims`, or `None` when the node does not
    /// request that output.
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
        // SAFETY: `value` is the output value ORT just allocated.
        check(self.api, unsafe {
            (self.api.GetTensorMutableData)(value, &mut data)
        })?;
        Ok(Some(OutputTensor { data, len }))
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

/// A shape-inference context (`InferOutputShapeFn`).
#[derive(Debug)]
pub struct ShapeInference {
    api: &'static OrtApi,
    ctx: *mut OrtShapeInferContext,
}

impl ShapeInference {
    /// Wrap the context ORT passed to `InferOutputShapeFn`.
    ///
    /// # Safety
    /// `ctx` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, ctx: *mut OrtShapeInferContext) -> Self {
        Self { api, ctx }
    }

    /// Number of inputs of the node.
    pub fn input_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid (constructor contract).
        check(self.api, unsafe {
            (self.api.ShapeInferContext_GetInputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Type and shape of input `i`, or `None` when absent.
    pub fn input(&self, i: usize) -> Result<Option<TypeShape>> {
        if i >= self.input_count()? {
            return Ok(None);
        }
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: ctx valid, `i` in range. The info is owned by the context
        // and must NOT be released (ORT frees it; releasing is a double free).
        let st = unsafe { (self.api.ShapeInferContext_GetInputTypeShape)(self.ctx, i, &mut info) };
        if check(self.api, st).is_err() || info.is_null() {
            return Ok(None);
        }
        // SAFETY: `info` is valid while the context is.
        let ts = unsafe { read_type_shape(self.api, info, true)? };
        // A missing optional input shows up as an undefined element type.
        Ok((ts.elem != 0).then_some(ts))
    }

    fn attr(&self, name: &CStr) -> Option<*const OrtOpAttr> {
        let mut attr: *const OrtOpAttr = core::ptr::null();
        // SAFETY: ctx valid, name NUL-terminated.
        let st = unsafe {
            (self.api.ShapeInferContext_GetAttribute)(self.ctx, name.as_ptr(), &mut attr)
        };
        (check(self.api, st).is_ok() && !attr.is_null()).then_some(attr)
    }

    /// An int attribute, or `None`.
    pub fn attr_i64(&self, name: &CStr) -> Option<i64> {
        let attr = self.attr(name)?;
        let mut v = 0i64;
        let mut out = 0usize;
        // SAFETY: `attr` is valid; `v` has room for one int64.
        let st = unsafe {
            (self.api.ReadOpAttr)(
                attr,
                OrtOpAttrType::ORT_OP_ATTR_INT,
                (&mut v as *mut i64).cast(),
                8,
                &mut out,
            )
        };
        check(self.api, st).ok().map(|()| v)
    }

    /// Set output `i` to element type `elem` and `dims`, where a dim is a
    /// known size or a symbol. Outputs with an unknown dim are left alone.
    pub fn set_output(&self, i: usize, elem: i32, dims: &[Dim]) -> Result<()> {
        if dims.iter().any(|d| matches!(d, Dim::Unknown)) {
            return Ok(());
        }
        let api = self.api;
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: we own `info` from here until the release below.
        check(api, unsafe {
            (api.CreateTensorTypeAndShapeInfo)(&mut info)
        })?;
        let values: Vec<i64> = dims
            .iter()
            .map(|d| if let Dim::Known(v) = d { *v } else { -1 })
            .collect();
        let names: Vec<CString> = dims
            .iter()
            .map(|d| match d {
                Dim::Symbol(s) => CString::new(s.replace('\0', "")).unwrap_or_default(),
                _ => CString::default(),
            })
            .collect();
        let mut ptrs: Vec<*const c_char> = names.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `info` is ours; the arrays hold `dims.len()` entries and the
        // strings outlive the calls (ORT copies them).
        let r = unsafe {
            check(api, (api.SetTensorElementType)(info, elem::to_enum(elem)))
                .and_then(|()| {
                    check(
                        api,
                        (api.SetDimensions)(info, values.as_ptr(), values.len()),
                    )
                })
                .and_then(|()| {
                    check(
                        api,
                        (api.SetSymbolicDimensions)(info, ptrs.as_mut_ptr(), ptrs.len()),
                    )
                })
                .and_then(|()| {
                    check(
                        api,
                        (api.ShapeInferContext_SetOutputTypeShape)(self.ctx, i, info),
                    )
                })
        };
        // SAFETY: `info` was created above and is released once.
        unsafe { (api.ReleaseTensorTypeAndShapeInfo)(info) };
        r
    }
}

/// One dimension during shape inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A known size.
    Known(i64),
    /// A named symbolic size.
    Symbol(String),
    /// Neither known nor named.
    Unknown,
}

impl Dim {
    /// Dim `i` of a type-and-shape.
    pub fn of(ts: &TypeShape, i: usize) -> Dim {
        match (ts.dims.get(i), ts.symbols.get(i)) {
            (Some(&v), _) if v >= 0 => Dim::Known(v),
            (_, Some(s)) if !s.is_empty() => Dim::Symbol(s.clone()),
            _ => Dim::Unknown,
        }
    }

    /// `self * k` when known.
    pub fn times(&self, k: i64) -> Dim {
        match self {
            Dim::Known(v) => v.checked_mul(k).map_or(Dim::Unknown, Dim::Known),
            _ if k == 1 => self.clone(),
            _ => Dim::Unknown,
        }
    }

    /// `self / k` when known and exact.
    pub fn div(&self, k: i64) -> Dim {
        match self {
            Dim::Known(v) if k > 0 && v % k == 0 => Dim::Known(v / k),
            _ if k == 1 => self.clone(),
            _ => Dim::Unknown,
        }
    }

    /// `self + other` when both known; `self` when `other` is a known 0.
    pub fn plus(&self, other: &Dim) -> Dim {
        match (self, other) {
            (Dim::Known(a), Dim::Known(b)) => a.checked_add(*b).map_or(Dim::Unknown, Dim::Known),
            (d, Dim::Known(0)) | (Dim::Known(0), d) => d.clone(),
            _ => Dim::Unknown,
        }
    }
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
