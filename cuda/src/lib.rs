//! # tessera-cuda
//!
//! Tessera's attention kernels for NVIDIA GPUs (sm_80 and newer): flash
//! forward on the tensor cores (f16/bf16, f32 accumulation, per-tile mask
//! classes, GQA, softcap, LSE), the FP8 (E4M3/E5M2) quantiser and lightning
//! indexer, radix top-k, sparse gather attention with TopKAttention's
//! causal/window/sink rules and its index-list check, and the LSE merge.
//!
//! - The kernels (`kernels/*.cu`) are compiled by nvcc at build time, with the
//!   `cuda` feature only, into fatbins (sm_80 and sm_90 SASS plus compute_90
//!   PTX) embedded in the crate: [`kernels::FATBINS`], with the ptxas resource
//!   report in [`kernels::PTXAS_REPORT`].
//! - They launch through the CUDA driver API, loaded at run time from
//!   `libcuda.so.1` ([`Driver`]): nothing links CUDA, and on a machine without
//!   a driver every entry point returns [`CudaError::NoDriver`].
//! - [`plan`] validates a call and builds the kernel's parameter block
//!   without touching the GPU; [`Module`] (one per CUDA context) launches it.
//! - [`dsa`] runs the DSA ops (`LightningIndexer`, `TopKAttention`) as
//!   sequences of launches on any [`dsa::Device`]: a stream, or the CPU
//!   emulator (feature `emulate`) in tests.
//!
//! ```no_run
//! use tessera_core::{AttentionSpec, MaskSpec};
//! use tessera_cuda::{AttentionBuffers, DeviceMask, DevicePtr, Dtype, Module, Stream};
//! # fn run(q: u64, k: u64, v: u64, y: u64, stream: *mut core::ffi::c_void) -> Result<(), tessera_cuda::CudaError> {
//! let module = Module::for_current_context()?;        // loads once per CUDA context
//! let spec = AttentionSpec::bhsd(1, 16, 16, 4096, 4096, 128, 128);
//! let bufs = AttentionBuffers { q: DevicePtr(q), k: DevicePtr(k), v: DevicePtr(v), y: DevicePtr(y), lse: None };
//! module.attention(Stream(stream), &spec, &MaskSpec::NONE.causal(0), &DeviceMask::default(), Dtype::Bf16, &bufs)?;
//! # Ok(()) }
//! ```

pub mod driver;
pub mod dsa;
#[cfg(feature = "emulate")]
pub mod emu;
pub mod error;
pub mod module;
pub mod params;
pub mod plan;

/// The embedded fatbins and their ptxas report (empty without `cuda`).
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use driver::Driver;
pub use error::CudaError;
pub use module::{Module, Stream};
pub use plan::{
    AttentionBuffers, DeviceDenseMask, DeviceMask, DevicePtr, Dtype, Fp8Format, Geometry,
    IndexerBuffers, KeyLists, Launch, MergeBuffers, SparseRules,
};

#[cfg(test)]
mod tests;
