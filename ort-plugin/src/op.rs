//! One trait for every custom op, and the adapter that turns an
//! implementation into ORT's `OrtCustomOp` function table.
//!
//! An op reads its attributes once, in [`CustomOp::attach`], and then runs
//! [`CustomOp::compute`] for every call. Every `extern "C"` entry point
//! below catches panics, so none crosses the FFI boundary, and turns errors
//! into an `OrtStatus` whose message starts with the op's name.

use core::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{
    ONNXTensorElementDataType, OrtApi, OrtCustomOp, OrtCustomOpInputOutputCharacteristic,
    OrtKernelContext, OrtKernelInfo, OrtMemType, OrtShapeInferContext, OrtStatusPtr,
    ORT_API_VERSION,
};

use crate::error::{Error, Result};
use crate::ffi::{self, elem, KernelContext, KernelInfo, ShapeInference};

/// The element type a port accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// Exactly this ONNX element type (ORT picks the kernel by it).
    Fixed(i32),
    /// Any type; the op checks it in `compute` and names the rule.
    Any,
}

/// One input or output of an op schema.
#[derive(Clone, Copy, Debug)]
pub struct Port {
    /// The name used in messages.
    pub name: &'static str,
    /// Accepted element type.
    pub ty: PortType,
    /// May the node leave it out?
    pub optional: bool,
}

impl Port {
    /// A required port.
    pub const fn required(name: &'static str, ty: PortType) -> Self {
        Self {
            name,
            ty,
            optional: false,
        }
    }

    /// An optional port.
    pub const fn optional(name: &'static str, ty: PortType) -> Self {
        Self {
            name,
            ty,
            optional: true,
        }
    }
}

/// A custom op: its schema, how it reads attributes and how it runs.
pub trait CustomOp: Sized + Send + Sync + 'static {
    /// The op type in the model (`Attention`).
    const NAME: &'static CStr;

    /// Inputs, in order.
    fn inputs() -> &'static [Port];

    /// Outputs, in order.
    fn outputs() -> &'static [Port];

    /// Read and validate the node's attributes (once, at session creation).
    fn attach(info: &KernelInfo) -> Result<Self>;

    /// Run the op.
    fn compute(&self, ctx: &mut KernelContext) -> Result<()>;

    /// Output type and shape inference. The default infers nothing.
    fn infer(_ctx: &ShapeInference) -> Result<()> {
        Ok(())
    }
}

fn guard<R>(op: &CStr, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let name = op.to_str().unwrap_or("op");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.context(&format!("ai.tessera.{name}"))),
        Err(p) => Err(Error::fail(format!(
            "ai.tessera.{name}: internal error (panic): {}",
            ffi::panic_message(&*p)
        ))),
    }
}

fn to_status(r: Result<()>) -> OrtStatusPtr {
    match r {
        Ok(()) => OrtStatusPtr::default(),
        Err(e) => match ffi::api() {
            Ok(api) => OrtStatusPtr(ffi::status_from(api, &e)),
            // Without the API table no status can be made; this cannot
            // happen after RegisterCustomOps.
            Err(_) => OrtStatusPtr::default(),
        },
    }
}

unsafe extern "system" fn get_name<O: CustomOp>(_op: *const OrtCustomOp) -> *const c_char {
    O::NAME.as_ptr()
}

unsafe extern "system" fn get_ep(_op: *const OrtCustomOp) -> *const c_char {
    // NULL = the CPU execution provider.
    core::ptr::null()
}

fn type_enum(port: Option<&Port>) -> ONNXTensorElementDataType {
    match port.map(|p| p.ty) {
        Some(PortType::Fixed(t)) => elem::to_enum(t),
        _ => ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
    }
}

fn characteristic(port: Option<&Port>) -> OrtCustomOpInputOutputCharacteristic {
    match port {
        Some(p) if p.optional => OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL,
        _ => OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED,
    }
}

unsafe extern "system" fn input_type<O: CustomOp>(
    _op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    type_enum(O::inputs().get(i))
}

unsafe extern "system" fn input_count<O: CustomOp>(_op: *const OrtCustomOp) -> usize {
    O::inputs().len()
}

unsafe extern "system" fn output_type<O: CustomOp>(
    _op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    type_enum(O::outputs().get(i))
}

unsafe extern "system" fn output_count<O: CustomOp>(_op: *const OrtCustomOp) -> usize {
    O::outputs().len()
}

unsafe extern "system" fn input_characteristic<O: CustomOp>(
    _op: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(O::inputs().get(i))
}

unsafe extern "system" fn output_characteristic<O: CustomOp>(
    _op: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(O::outputs().get(i))
}

unsafe extern "system" fn input_memory_type(_op: *const OrtCustomOp, _i: usize) -> OrtMemType {
    OrtMemType::OrtMemTypeDefault
}

unsafe extern "system" fn variadic_min_arity(_op: *const OrtCustomOp) -> c_int {
    1
}

unsafe extern "system" fn variadic_homogeneity(_op: *const OrtCustomOp) -> c_int {
    1
}

unsafe extern "system" fn start_version(_op: *const OrtCustomOp) -> c_int {
    1
}

unsafe extern "system" fn end_version(_op: *const OrtCustomOp) -> c_int {
    c_int::MAX
}

unsafe extern "system" fn create_kernel<O: CustomOp>(
    _op: *const OrtCustomOp,
    api: *const OrtApi,
    info: *const OrtKernelInfo,
    kernel: *mut *mut c_void,
) -> OrtStatusPtr {
    let r = guard(O::NAME, || {
        if api.is_null() || info.is_null() || kernel.is_null() {
            return Err(Error::fail("null pointer from ORT"));
        }
        // SAFETY: ORT's API table is static for the process lifetime.
        let api: &'static OrtApi = unsafe { &*api };
        ffi::set_api(api);
        // SAFETY: `info` is valid for this call.
        let info = unsafe { KernelInfo::new(api, info) };
        let op = O::attach(&info)?;
        // SAFETY: `kernel` is a valid out-pointer (checked non-null).
        unsafe { *kernel = Box::into_raw(Box::new(op)).cast() };
        Ok(())
    });
    to_status(r)
}

unsafe extern "system" fn compute<O: CustomOp>(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    let r = guard(O::NAME, || {
        if kernel.is_null() || ctx.is_null() {
            return Err(Error::fail("null pointer from ORT"));
        }
        let api = ffi::api()?;
        // SAFETY: `kernel` came from `create_kernel::<O>` and is alive until
        // `destroy_kernel`; ORT may call compute from several threads at once,
        // hence only a shared reference (O: Sync).
        let op = unsafe { &*(kernel as *const O) };
        // SAFETY: `ctx` is valid for this call.
        let mut ctx = unsafe { KernelContext::new(api, ctx) };
        op.compute(&mut ctx)
    });
    to_status(r)
}

unsafe extern "system" fn destroy_kernel<O: CustomOp>(kernel: *mut c_void) {
    if kernel.is_null() {
        return;
    }
    // SAFETY: `kernel` came from Box::into_raw in `create_kernel::<O>` and
    // ORT destroys it exactly once.
    let boxed = unsafe { Box::from_raw(kernel as *mut O) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

unsafe extern "system" fn infer_shape<O: CustomOp>(
    _op: *const OrtCustomOp,
    ctx: *mut OrtShapeInferContext,
) -> OrtStatusPtr {
    // ORT (through 1.32) ignores, and leaks, a status returned from here, so
    // inference never fails: it leaves an output it cannot infer alone and
    // the kernel reports the broken rule at run time.
    let _ = guard(O::NAME, || {
        if ctx.is_null() {
            return Ok(());
        }
        let api = ffi::api()?;
        // SAFETY: `ctx` is valid for this call.
        let ctx = unsafe { ShapeInference::new(api, ctx) };
        O::infer(&ctx)
    });
    OrtStatusPtr::default()
}

/// The `OrtCustomOp` table for op `O`. It is `const`, so each op's table is
/// a `static` with a stable address, as ORT requires.
pub const fn table<O: CustomOp>() -> OrtCustomOp {
    let mut t = table_without_inference::<O>();
    t.InferOutputShapeFn = Some(infer_shape::<O>);
    t
}

/// The table without `InferOutputShapeFn`, for runtimes older than 1.24:
/// their shape-inference context dereferences the type of every node input
/// and crashes (SIGSEGV, before calling us) on a node that leaves an
/// optional input out in the middle, e.g. `Q, K, V, "", "", "", nonpad`.
/// Measured: 1.17.3, 1.20.1, 1.22.x, 1.23.2 crash; 1.24.1 and later do not.
pub const fn table_without_inference<O: CustomOp>() -> OrtCustomOp {
    OrtCustomOp {
        // Must equal the version of the headers the table was built with; a
        // larger value makes ORT read fields this struct does not have.
        version: ORT_API_VERSION,
        CreateKernel: None,
        GetName: Some(get_name::<O>),
        GetExecutionProviderType: Some(get_ep),
        GetInputType: Some(input_type::<O>),
        GetInputTypeCount: Some(input_count::<O>),
        GetOutputType: Some(output_type::<O>),
        GetOutputTypeCount: Some(output_count::<O>),
        KernelCompute: None,
        KernelDestroy: Some(destroy_kernel::<O>),
        GetInputCharacteristic: Some(input_characteristic::<O>),
        GetOutputCharacteristic: Some(output_characteristic::<O>),
        GetInputMemoryType: Some(input_memory_type),
        GetVariadicInputMinArity: Some(variadic_min_arity),
        GetVariadicInputHomogeneity: Some(variadic_homogeneity),
        GetVariadicOutputMinArity: Some(variadic_min_arity),
        GetVariadicOutputHomogeneity: Some(variadic_homogeneity),
        CreateKernelV2: Some(create_kernel::<O>),
        KernelComputeV2: Some(compute::<O>),
        InferOutputShapeFn: None,
        GetStartVersion: Some(start_version),
        GetEndVersion: Some(end_version),
    }
}
