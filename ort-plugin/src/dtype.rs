//! The element types the ops run on (float, float16, bfloat16): their ONNX
//! code and, with feature `cuda`, the CUDA kernels' name for them.

use tessera_core::{bf16, f16, Element};

use crate::ffi::elem;

/// An element type of the ops' data tensors.
pub trait Dtype: Element {
    /// ONNX element type code.
    const ONNX: i32;
    /// The CUDA kernels' dtype.
    #[cfg(feature = "cuda")]
    const CUDA: tessera_cuda::Dtype;
}

/// The half types, which the CUDA flash and gather kernels take.
pub trait Half: Dtype {}

impl Dtype for f32 {
    const ONNX: i32 = elem::FLOAT;
    #[cfg(feature = "cuda")]
    const CUDA: tessera_cuda::Dtype = tessera_cuda::Dtype::F32;
}

impl Dtype for f16 {
    const ONNX: i32 = elem::FLOAT16;
    #[cfg(feature = "cuda")]
    const CUDA: tessera_cuda::Dtype = tessera_cuda::Dtype::F16;
}

impl Dtype for bf16 {
    const ONNX: i32 = elem::BFLOAT16;
    #[cfg(feature = "cuda")]
    const CUDA: tessera_cuda::Dtype = tessera_cuda::Dtype::Bf16;
}

impl Half for f16 {}
impl Half for bf16 {}
