//! What every kernel family shares: device addresses, element types, the
//! launch a plan returns, the device-memory parts of a mask, and the checks
//! that turn sizes, strides and pointers into the kernels' integer fields.

use tessera_core::mask::{MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Strides, Tensor};

use crate::error::CudaError;
use crate::params::KernelParams;

/// A device address (`CUdeviceptr`); 0 is null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The null address.
    pub const NULL: DevicePtr = DevicePtr(0);

    /// The address of a tensor with no elements is never read: any value
    /// (ORT may pass null) is accepted and passed as 0.
    pub(super) fn check_unless_empty(
        self,
        input: &'static str,
        align: u64,
        elements: usize,
    ) -> Result<u64, CudaError> {
        if elements == 0 {
            return Ok(0);
        }
        self.check(input, align)
    }

    pub(super) fn check(self, input: &'static str, align: u64) -> Result<u64, CudaError> {
        if self.0 == 0 {
            return Err(CudaError::invalid(input, "device pointer is null"));
        }
        if self.0 % align != 0 {
            return Err(CudaError::invalid(
                input,
                format!("device pointer {:#x} is not {align}-byte aligned", self.0),
            ));
        }
        Ok(self.0)
    }
}

/// Element type of Q/K/V/Y (and of Y in a merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// f32 (merge only).
    F32,
}

impl Dtype {
    /// The name used in kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }

    pub(super) fn half(self, what: &str) -> Result<(), CudaError> {
        match self {
            Dtype::F16 | Dtype::Bf16 => Ok(()),
            Dtype::F32 => Err(CudaError::Unsupported(format!(
                "{what} in f32 (use f16 or bf16, or the CPU kernels)"
            ))),
        }
    }
}

/// A kernel's launch geometry, read from its module: `{threads, tile A, tile
/// B, dynamic shared bytes}` (see `kernels/params.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Threads per CTA.
    pub threads: u32,
    /// First tile size (query rows per CTA for attention, queries per CTA for the indexer).
    pub tile_a: u32,
    /// Second tile size (keys per tile).
    pub tile_b: u32,
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

/// One validated kernel launch.
#[derive(Clone, Copy, Debug)]
pub struct Launch<P: KernelParams> {
    /// The module (fatbin) that holds the kernel.
    pub module: &'static str,
    /// The entry point.
    pub kernel: &'static str,
    /// The `int[4]` geometry symbol of the kernel's family.
    pub geometry: &'static str,
    /// The parameter block.
    pub params: P,
    /// The grid `[x, y, z]` from the params and the geometry.
    pub grid: fn(&P, &Geometry) -> [u64; 3],
}

/// A dense mask in device memory, broadcast to `(B, Hq, Sq, Skv)` by strides.
#[derive(Clone, Copy, Debug)]
pub struct DeviceDenseMask {
    /// The mask.
    pub ptr: DevicePtr,
    /// u8 bool (nonzero = attend) or f32 additive.
    pub is_bool: bool,
    /// Element strides; 0 broadcasts an axis.
    pub strides: MaskStrides,
}

/// The parts of a mask that live in device memory. The structural rules
/// (causal, offset, windows, globals, chunk) come from a [`MaskSpec`], whose
/// host slices (kv lens, segments, dense) the GPU cannot read.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceMask {
    /// i64 `(B)` valid keys per batch (ONNX `nonpad_kv_seqlen`).
    pub kv_lens: Option<DevicePtr>,
    /// Add `kv_lens[b] - Sq` to the position offset (ONNX external-cache rule).
    pub align_to_kv_lens: bool,
    /// A dense bool or additive mask.
    pub dense: Option<DeviceDenseMask>,
}

/// Device buffers of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBuffers {
    /// Q with `spec.q` strides.
    pub q: DevicePtr,
    /// K with `spec.k` strides.
    pub k: DevicePtr,
    /// V with `spec.v` strides.
    pub v: DevicePtr,
    /// Y with `spec.out` strides, Q's dtype.
    pub y: DevicePtr,
    /// f32 `(B, Hq, Sq)` contiguous, natural log.
    pub lse: Option<DevicePtr>,
}

/// The dtypes with tensor-core kernels.
pub const HALF_DTYPES: [Dtype; 2] = [Dtype::F16, Dtype::Bf16];

const MAX_GRID_YZ: usize = 65535;

pub(super) fn fits_i32(input: &'static str, what: &str, x: usize) -> Result<i32, CudaError> {
    i32::try_from(x).map_err(|_| {
        CudaError::invalid(
            input,
            format!("{what} {x} exceeds the CUDA kernels' limit {}", i32::MAX),
        )
    })
}

pub(super) fn fits_i64(input: &'static str, what: &str, x: usize) -> Result<i64, CudaError> {
    i64::try_from(x)
        .map_err(|_| CudaError::invalid(input, format!("{what} {x} does not fit in i64")))
}

/// A size (in elements, `None` when it overflowed `usize`) that i64
/// offsets can address.
pub(super) fn addressable(input: &'static str, n: Option<usize>) -> Result<usize, CudaError> {
    n.filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| CudaError::invalid(input, "size overflows the address space"))
}

pub(super) fn grid_dim(input: &'static str, what: &str, x: usize) -> Result<i32, CudaError> {
    if x > MAX_GRID_YZ {
        return Err(CudaError::invalid(
            input,
            format!("{what} {x} exceeds the CUDA grid limit {MAX_GRID_YZ}"),
        ));
    }
    Ok(x as i32)
}

/// Strides must keep every row 16-byte aligned for the vector loads.
fn strides(input: &'static str, s: &Strides, align_elems: usize) -> Result<[i64; 3], CudaError> {
    for (name, x) in [("batch", s.batch), ("head", s.head), ("seq", s.seq)] {
        if x % align_elems != 0 {
            return Err(CudaError::invalid(
                input,
                format!("{name} stride {x} must be a multiple of {align_elems} elements (16 bytes) on the GPU"),
            ));
        }
    }
    Ok([
        fits_i64(input, "batch stride", s.batch)?,
        fits_i64(input, "head stride", s.head)?,
        fits_i64(input, "seq stride", s.seq)?,
    ])
}

/// The batch/head/seq strides of Q, K, V and Y, in that order, each a
/// multiple of its `align` elements.
pub(super) fn qkvy_strides(
    spec: &AttentionSpec,
    align: [usize; 4],
) -> Result<[[i64; 3]; 4], CudaError> {
    Ok([
        strides("Q", &spec.q, align[0])?,
        strides("K", &spec.k, align[1])?,
        strides("V", &spec.v, align[2])?,
        strides("Y", &spec.out, align[3])?,
    ])
}

/// Every tensor of the call fits the address space.
pub(super) fn required_lens(spec: &AttentionSpec) -> Result<(), CudaError> {
    for t in [Tensor::Q, Tensor::K, Tensor::V, Tensor::Y, Tensor::Lse] {
        spec.required_len(t)?;
    }
    Ok(())
}

/// Only the structural rules can run on the GPU; host slices cannot.
pub(super) fn structural_only(mask: &MaskSpec<'_>) -> Result<(), CudaError> {
    if mask.kv_lens.is_some() {
        return Err(CudaError::invalid(
            "nonpad_kv_seqlen",
            "host kv lengths cannot be read by the GPU; pass DeviceMask::kv_lens",
        ));
    }
    if mask.segments.is_some() {
        return Err(CudaError::Unsupported("segment ids".into()));
    }
    if mask.dense.is_some() {
        return Err(CudaError::invalid(
            "attn_mask",
            "a host mask cannot be read by the GPU; pass DeviceMask::dense",
        ));
    }
    Ok(())
}

pub(super) fn kv_lens(dev: &DeviceMask) -> Result<(u64, i32), CudaError> {
    match dev.kv_lens {
        Some(p) => Ok((p.check("nonpad_kv_seqlen", 8)?, dev.align_to_kv_lens as i32)),
        None if dev.align_to_kv_lens => Err(CudaError::invalid(
            "nonpad_kv_seqlen",
            "align_to_kv_lens needs DeviceMask::kv_lens",
        )),
        None => Ok((0, 0)),
    }
}
