//! The op traits and the adapters that turn an implementation into ORT's
//! `OrtCustomOp` function table.
//!
//! An op's [`Schema`] is its name, ports, attributes (read once, in
//! [`Schema::attach`]) and shape inference, written once per op. Its
//! kernels run on that one schema: a [`CpuKernel`] computes on host slices
//! over ORT's pool, a `CudaKernel` (feature `cuda`) queues work on the CUDA
//! EP's stream. [`table`] and `cuda::table` build each EP's table from the
//! schema and the kernel. Every `extern "C"` entry point catches panics, so
//! none crosses the FFI boundary, and turns errors into an `OrtStatus`
//! whose message starts with the op's name.

#[cfg(feature = "cuda")]
pub mod cuda;
pub(crate) mod table;

use std::panic::{catch_unwind, AssertUnwindSafe};

use tessera_schema::Name;

use crate::error::{Error, Result};
use crate::ffi::{self, KernelContext, KernelInfo, ShapeInference};

#[cfg(feature = "cuda")]
pub use crate::ffi::device::DeviceContext;
pub use table::{table, table_without_inference};

/// The element type a port accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// Exactly this ONNX element type (ORT picks the kernel by it).
    Fixed(i32),
    /// Any type; the op checks it when it runs and names the rule.
    Any,
}

/// One input or output of an op schema.
#[derive(Clone, Copy, Debug)]
pub struct Port {
    /// The port's name in the schema.
    pub name: Name,
    /// Accepted element type.
    pub ty: PortType,
    /// May the node leave it out?
    pub optional: bool,
}

impl Port {
    /// A required port.
    pub const fn required(name: Name, ty: PortType) -> Self {
        Self {
            name,
            ty,
            optional: false,
        }
    }

    /// An optional port.
    pub const fn optional(name: Name, ty: PortType) -> Self {
        Self {
            name,
            ty,
            optional: true,
        }
    }
}

/// An op's schema: what ORT registers and how a node's attributes are read.
/// One per op, shared by its CPU and CUDA kernels.
pub trait Schema: Sized + Send + Sync + 'static {
    /// The op type in the model (`Attention`).
    const NAME: Name;

    /// Inputs, in order.
    const INPUTS: &'static [Port];

    /// Outputs, in order.
    const OUTPUTS: &'static [Port];

    /// Read and validate the node's attributes (once, at session creation).
    fn attach(info: &KernelInfo) -> Result<Self>;

    /// Output type and shape inference. The default infers nothing.
    fn infer(_ctx: &ShapeInference) -> Result<()> {
        Ok(())
    }
}

/// A kernel of the CPU execution provider: runs on host slices.
pub trait CpuKernel: Schema {
    /// Run the op.
    fn compute(&self, ctx: &mut KernelContext) -> Result<()>;
}

/// A kernel of the CUDA execution provider: runs on the EP's device
/// buffers and stream.
#[cfg(feature = "cuda")]
pub trait CudaKernel: Schema {
    /// Queue the op on the node's stream (asynchronous).
    fn run(&self, ctx: &mut DeviceContext) -> Result<()>;
}

/// Run `f`, turning a panic into an error and prefixing every error with
/// `ai.tessera.{op}{suffix}` (the suffix names a non-CPU EP).
pub(crate) fn guard<R>(op: Name, suffix: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let label = || format!("{}.{op}{suffix}", tessera_schema::DOMAIN);
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.context(&label())),
        Err(p) => Err(Error::fail(format!(
            "{}: internal error (panic): {}",
            label(),
            ffi::panic_message(&*p)
        ))),
    }
}

/// Input `i` of `inputs` (named `names[i]`), or the error that it is
/// required.
pub(crate) fn required<'a, T>(inputs: &'a [Option<T>], names: &[Name], i: usize) -> Result<&'a T> {
    inputs[i]
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("{} is required", names[i])))
}
