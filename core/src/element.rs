//! Element types the kernel reads and writes. Arithmetic is always f32.

use half::{bf16, f16};

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
}
