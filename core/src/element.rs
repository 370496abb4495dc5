//! Element types the kernel reads and writes. Arithmetic is always f32.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::kernel::MicroKernel;

/// A storage format for Q, K, V and Y. Every value is widened to f32 on load
/// and narrowed (round-to-nearest-even) on store; accumulation is f32.
pub trait Element: Copy + Send + Sync + 'static {
    /// The name used in error messages (`"f32"`, `"f16"`, `"bf16"`).
    const NAME: &'static str;
    /// Widen to f32 (exact for every supported format).
    fn to_f32(self) -> f32;
    /// Narrow from f32, rounding to nearest even.
    fn from_f32(x: f32) -> Self;
    /// The same slice as f32 when the format is f32 (lets kernels read it in
    /// place instead of converting a copy).
    #[inline(always)]
    fn as_f32(_s: &[Self]) -> Option<&[f32]> {
        None
    }
    /// `dst[i] = src[i].to_f32()` over `min(len)` elements, with the
    /// conversion instructions of `kernel` where the format has them (F16C
    /// or AVX-512 for f16 and bf16).
    #[inline(always)]
    fn widen<K: MicroKernel>(_kernel: K, src: &[Self], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f32());
    }
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn widen<K: MicroKernel>(_kernel: K, src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn widen<K: MicroKernel>(kernel: K, src: &[Self], dst: &mut [f32]) {
        kernel.widen_f16(src.reinterpret_cast(), dst)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn widen<K: MicroKernel>(kernel: K, src: &[Self], dst: &mut [f32]) {
        kernel.widen_bf16(src.reinterpret_cast(), dst)
    }
}
