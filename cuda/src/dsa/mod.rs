//! The two DSA ops as sequences of launches, written once for any
//! [`Device`]: the GPU ([`OnStream`]) and the CPU emulator (`emu::Emulator`),
//! so the emulated tests run exactly what the CUDA-EP kernels run.
//!
//! - [`lightning_indexer`]: `LightningIndexer` — quantise q and k to FP8
//!   with per-128 scales (bit for bit the CPU op's), widen the head weights,
//!   score a chunk of queries against every key, take the top-k of each row.
//! - [`topk_attention`]: `TopKAttention`'s index mode — check the lists
//!   (and write `selected_indices`), then the gather kernel.
//!
//! Errors the CPU op finds in the data (non-finite inputs or scores, a bad
//! index list) are found by the kernels, which lower an i64 flag in scratch
//! memory; after the launches the flags are read back (one stream
//! synchronisation per call) and turned into the CPU op's message.
//!
//! `indexer` and `topk_attention` hold one op each; this module holds what
//! they share: the [`Device`] they launch on, the flags and the scratch
//! sizing. Every item is re-exported here, at the path callers use.

use crate::error::CudaError;
use crate::params::KernelParams;
use crate::plan::{DevicePtr, Launch};

mod indexer;
mod topk_attention;

pub use indexer::{lightning_indexer, IndexerCall, IndexerIo, SCORES_BUDGET};
pub use topk_attention::{selected_width, topk_attention, TopKCall, TopKIo};

/// Where the launches of one call go.
pub trait Device {
    /// Queue a validated launch.
    fn launch<P: KernelParams>(&self, plan: &Launch<P>) -> Result<(), CudaError>;
    /// Queue setting `bytes` bytes at `dst` to `value`.
    fn fill(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), CudaError>;
    /// Wait for everything queued, then read `out.len()` i64 from `src`.
    fn read_i64(&self, src: DevicePtr, out: &mut [i64]) -> Result<(), CudaError>;
}

/// A loaded [`Module`](crate::Module) and the stream its launches go to.
#[derive(Clone, Copy, Debug)]
pub struct OnStream<'a> {
    /// The kernels of the current context.
    pub module: &'a crate::Module,
    /// The stream (e.g. ORT's compute stream of the node).
    pub stream: crate::Stream,
}

impl Device for OnStream<'_> {
    fn launch<P: KernelParams>(&self, plan: &Launch<P>) -> Result<(), CudaError> {
        self.module.launch(plan, self.stream)
    }

    fn fill(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: callers in this module pass ranges inside the scratch or
        // output buffers they were given, which the caller of the op
        // guarantees to be device memory of the current context.
        unsafe {
            self.module
                .driver()
                .fill_async(dst.0, value, bytes, self.stream.0)
        }
    }

    fn read_i64(&self, src: DevicePtr, out: &mut [i64]) -> Result<(), CudaError> {
        let mut bytes = vec![0u8; out.len() * 8];
        // SAFETY: as in `fill`: `src` holds `out.len()` i64 of device memory.
        unsafe {
            self.module
                .driver()
                .read_after(&mut bytes, src.0, self.stream.0)?
        };
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = i64::from_ne_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

/// The value a flag holds until a kernel lowers it: every byte `0x7f`.
pub const FLAG_CLEAR: i64 = 0x7f7f_7f7f_7f7f_7f7f;
const FLAG_BYTE: u8 = 0x7f;
/// Scratch offsets are aligned to this many bytes.
const ALIGN: usize = 256;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn bytes(input: &'static str, dims: &[usize], elem: usize) -> Result<usize, CudaError> {
    dims.iter()
        .try_fold(elem, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 2)
        .map(align)
        .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))
}
