//! Storage formats for block summaries, with directed rounding: a max is
//! rounded up and a min down, so a bound computed from stored summaries is
//! still an upper bound.

use half::f16;

use crate::element::Element;
use crate::fp8::{Fp8, E4M3, E5M2};

/// A storage format for block summaries with directed rounding.
pub trait BoundFormat: Copy + Default + core::fmt::Debug + Send + Sync + 'static {
    /// The largest representable value `<= x`, or `None` when that is not
    /// finite (`x` is out of range).
    fn round_down(x: f32) -> Option<Self>;
    /// The smallest representable value `>= x`, or `None` when out of range.
    fn round_up(x: f32) -> Option<Self>;
    /// The exact value.
    fn value(self) -> f32;
    /// The slice itself when the format is f32 (the gemm then reads the
    /// summaries in place); `None` for narrower formats, which are widened
    /// a chunk at a time.
    #[inline(always)]
    fn as_f32(data: &[Self]) -> Option<&[f32]> {
        let _ = data;
        None
    }
}

impl BoundFormat for f32 {
    fn round_down(x: f32) -> Option<Self> {
        x.is_finite().then_some(x)
    }
    fn round_up(x: f32) -> Option<Self> {
        x.is_finite().then_some(x)
    }
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
    #[inline(always)]
    fn as_f32(data: &[Self]) -> Option<&[f32]> {
        Some(data)
    }
}

/// Step a sign-magnitude code one value toward `-inf` (`down`) or `+inf`.
#[inline]
fn step(bits: u32, sign_bit: u32, down: bool) -> u32 {
    let negative = bits & sign_bit != 0;
    let magnitude = bits & (sign_bit - 1);
    match (magnitude == 0, negative, down) {
        (true, _, true) => sign_bit | 1, // ±0 → smallest negative subnormal
        (true, _, false) => 1,           // ±0 → smallest positive subnormal
        (false, false, true) | (false, true, false) => bits - 1,
        (false, false, false) | (false, true, true) => bits + 1,
    }
}

macro_rules! directed {
    ($t:ty, $bits:ty, $sign:expr, $from:expr, $to_bits:expr, $from_bits:expr, $value:expr) => {
        impl BoundFormat for $t {
            fn round_down(x: f32) -> Option<Self> {
                let mut v: $t = $from(x);
                if $value(v) > x {
                    v = $from_bits(step($to_bits(v) as u32, $sign, true) as $bits);
                }
                $value(v).is_finite().then_some(v)
            }
            fn round_up(x: f32) -> Option<Self> {
                let mut v: $t = $from(x);
                if $value(v) < x {
                    v = $from_bits(step($to_bits(v) as u32, $sign, false) as $bits);
                }
                $value(v).is_finite().then_some(v)
            }
            #[inline(always)]
            fn value(self) -> f32 {
                $value(self)
            }
        }
    };
}
directed!(
    f16,
    u16,
    0x8000,
    f16::from_f32,
    f16::to_bits,
    f16::from_bits,
    f16::to_f32
);
directed!(
    E4M3,
    u8,
    0x80,
    <E4M3 as Element>::from_f32,
    E4M3::to_bits,
    E4M3::from_bits,
    <E4M3 as Element>::to_f32
);
directed!(
    E5M2,
    u8,
    0x80,
    <E5M2 as Element>::from_f32,
    E5M2::to_bits,
    E5M2::from_bits,
    <E5M2 as Element>::to_f32
);
