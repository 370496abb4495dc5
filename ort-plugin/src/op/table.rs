//! The CPU EP's `OrtCustomOp` table of an op, and the entries every EP's
//! table shares: the schema's name, ports and inference, and kernel
//! creation from [`Schema::attach`]. Each `extern "C"` entry runs inside
//! [`guard`].

use core::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{
    ONNXTensorElementDataType, OrtApi, OrtCustomOp, OrtCustomOpInputOutputCharacteristic,
    OrtErrorCode, OrtKernelContext, OrtKernelInfo, OrtMemType, OrtShapeInferContext, OrtStatusPtr,
    ORT_API_VERSION,
};

use super::{guard, CpuKernel, Port, PortType, Schema};
use crate::error::{Error, Result};
use crate::ffi::{self, elem, KernelContext, KernelInfo, ShapeInference};

/// The status ORT receives for `r`; `fail` is the code of a failure.
pub(crate) fn to_status(r: Result<()>, fail: OrtErrorCode) -> OrtStatusPtr {
    match r {
        Ok(()) => OrtStatusPtr::default(),
        Err(e) => match ffi::api() {
            Ok(api) => OrtStatusPtr(ffi::status_with(api, &e, fail)),
            // Without the API table no status can be made; this cannot
            // happen after RegisterCustomOps.
            Err(_) => OrtStatusPtr::default(),
        },
    }
}

unsafe extern "system" fn get_name<O: Schema>(_op: *const OrtCustomOp) -> *const c_char {
    O::NAME.c().as_ptr()
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

unsafe extern "system" fn input_type<O: Schema>(
    _op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    type_enum(O::INPUTS.get(i))
}

unsafe extern "system" fn input_count<O: Schema>(_op: *const OrtCustomOp) -> usize {
    O::INPUTS.len()
}

unsafe extern "system" fn output_type<O: Schema>(
    _op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    type_enum(O::OUTPUTS.get(i))
}

unsafe extern "system" fn output_count<O: Schema>(_op: *const OrtCustomOp) -> usize {
    O::OUTPUTS.len()
}

unsafe extern "system" fn input_characteristic<O: Schema>(
    _op: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(O::INPUTS.get(i))
}

unsafe extern "system" fn output_characteristic<O: Schema>(
    _op: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(O::OUTPUTS.get(i))
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
    tessera_schema::VERSION as c_int
}

unsafe extern "system" fn end_version(_op: *const OrtCustomOp) -> c_int {
    c_int::MAX
}

unsafe extern "system" fn create_kernel<O: Schema>(
    _op: *const OrtCustomOp,
    api: *const OrtApi,
    info: *const OrtKernelInfo,
    kernel: *mut *mut c_void,
) -> OrtStatusPtr {
    let r = guard(O::NAME, "", || {
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
    to_status(r, OrtErrorCode::ORT_FAIL)
}

/// The body of every EP's compute entry: the kernel `O` that
/// `create_kernel::<O>` made and ORT's context, handed to `run` inside
/// [`guard`] (errors prefixed `ai.tessera.{op}{suffix}`); a failure
/// becomes a status with code `fail`.
///
/// # Safety
/// `kernel` is null or came from `create_kernel::<O>` and is alive (until
/// `destroy_kernel`); `ctx` is null or valid for this call.
pub(crate) unsafe fn compute_with<O: Schema>(
    suffix: &str,
    fail: OrtErrorCode,
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
    run: impl FnOnce(&O, &'static OrtApi, *mut OrtKernelContext) -> Result<()>,
) -> OrtStatusPtr {
    let r = guard(O::NAME, suffix, || {
        if kernel.is_null() || ctx.is_null() {
            return Err(Error::fail("null pointer from ORT"));
        }
        let api = ffi::api()?;
        // SAFETY: `kernel` came from `create_kernel::<O>` and is alive until
        // `destroy_kernel` (this function's contract); ORT may call compute
        // from several threads at once, hence only a shared reference
        // (O: Sync).
        let op = unsafe { &*(kernel as *const O) };
        run(op, api, ctx)
    });
    to_status(r, fail)
}

unsafe extern "system" fn compute<O: CpuKernel>(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    // SAFETY: ORT passes the kernel `create_kernel::<O>` made for this
    // table (`table::<O>` builds both entries) and a context valid for
    // this call.
    unsafe {
        compute_with::<O>("", OrtErrorCode::ORT_FAIL, kernel, ctx, |op, api, ctx| {
            // SAFETY: `ctx` is valid for this call (checked non-null).
            let mut ctx = KernelContext::new(api, ctx);
            op.compute(&mut ctx)
        })
    }
}

unsafe extern "system" fn destroy_kernel<O: Schema>(kernel: *mut c_void) {
    if kernel.is_null() {
        return;
    }
    // SAFETY: `kernel` came from Box::into_raw in `create_kernel::<O>` and
    // ORT destroys it exactly once.
    let boxed = unsafe { Box::from_raw(kernel as *mut O) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

pub(crate) unsafe extern "system" fn infer_shape<O: Schema>(
    _op: *const OrtCustomOp,
    ctx: *mut OrtShapeInferContext,
) -> OrtStatusPtr {
    // ORT (through 1.32) ignores, and leaks, a status returned from here, so
    // inference never fails: it leaves an output it cannot infer alone and
    // the kernel reports the broken rule at run time.
    let _ = guard(O::NAME, "", || {
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
pub const fn table<O: CpuKernel>() -> OrtCustomOp {
    let mut t = table_without_inference::<O>();
    t.InferOutputShapeFn = Some(infer_shape::<O>);
    t
}

/// The table without `InferOutputShapeFn`, for runtimes older than 1.24:
/// their shape-inference context dereferences the type of every node input
/// and crashes (SIGSEGV, before calling us) on a node that leaves an
/// optional input out in the middle, e.g. `Q, K, V, "", "", "", nonpad`.
/// Measured: 1.17.3, 1.20.1, 1.22.x, 1.23.2 crash; 1.24.1 and later do not.
pub const fn table_without_inference<O: CpuKernel>() -> OrtCustomOp {
    let mut t = schema_table::<O>();
    t.KernelComputeV2 = Some(compute::<O>);
    t
}

/// The entries every EP's table of `O` shares: the schema, kernel creation
/// and destruction. No compute entry, no shape inference, the CPU EP.
pub(crate) const fn schema_table<O: Schema>() -> OrtCustomOp {
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
        KernelComputeV2: None,
        InferOutputShapeFn: None,
        GetStartVersion: Some(start_version),
        GetEndVersion: Some(end_version),
    }
}
