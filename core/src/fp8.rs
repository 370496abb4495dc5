//! FP8 storage: OCP E4M3 (the `fn` variant: no infinities, max 448) and E5M2
//! (IEEE-like, max 57344, with infinities), with optional scales per row or
//! per group of elements (DeepSeek-V3 uses groups of 128).
//!
//! # Conversion rules
//! - f32 → FP8 rounds to nearest, ties to even, and **saturates**: a finite
//!   value beyond the format's max, and ±∞, become ±max (CUDA's
//!   `__NV_SATFINITE`). NaN becomes NaN with the input's sign. Everything
//!   else equals `ml_dtypes` bit for bit (`ml_dtypes` overflows to NaN or ∞
//!   instead of saturating; the tests apply exactly that difference).
//! - FP8 → f32 is exact (a 256-entry table built at compile time). E5M2's
//!   infinity codes decode to ±∞ and every NaN code to NaN.
//!
//! # Cost
//! Encoding is a few integer operations per element, branch-light; decoding
//! is one table load. Quantising with scales makes one pass for the absolute
//! max and one to encode. No memory beyond the caller's buffers.

use crate::element::Element;
use crate::error::{Error, Size, Tensor};

/// An FP8 format: its bit layout. The conversions are its [`Element`]
/// methods: `from_f32` (round to nearest even, saturating; see the module
/// docs) and `to_f32` (exact).
pub trait Fp8: Element + Default + PartialEq + core::fmt::Debug {
    /// Exponent bits.
    const EXP_BITS: u32;
    /// Explicit mantissa bits.
    const MAN_BITS: u32;
    /// Exponent bias.
    const BIAS: i32;
    /// The largest finite value.
    const MAX: f32;
    /// The code of `+MAX`.
    const MAX_CODE: u8;
    /// The code written for a positive NaN (the sign bit is added for a
    /// negative one).
    const NAN_CODE: u8;

    /// The value with these bits.
    fn from_bits(bits: u8) -> Self;
    /// The bits.
    fn to_bits(self) -> u8;
}

/// OCP FP8 E4M3, `fn` variant: 4 exponent bits, 3 mantissa bits, bias 7, no
/// infinities, NaN = `S.1111.111`, max 448, smallest subnormal `2^-9`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Hash)]
#[repr(transparent)]
pub struct E4M3(pub u8);

/// OCP FP8 E5M2: 5 exponent bits, 2 mantissa bits, bias 15, infinities and
/// NaNs as in IEEE 754, max 57344, smallest subnormal `2^-16`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Hash)]
#[repr(transparent)]
pub struct E5M2(pub u8);

/// The exact value of every code, built at compile time.
const fn decode_table(exp_bits: u32, man_bits: u32, bias: i32, ieee_specials: bool) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let exp_max = (1u32 << exp_bits) - 1;
    let man_max = (1u32 << man_bits) - 1;
    let mut c = 0usize;
    while c < 256 {
        let code = c as u32;
        let sign = (code >> 7) << 31;
        let e = (code >> man_bits) & exp_max;
        let m = code & man_max;
        let bits = if ieee_specials && e == exp_max {
            if m == 0 {
                0x7F80_0000
            } else {
                0x7FC0_0000
            }
        } else if !ieee_specials && e == exp_max && m == man_max {
            0x7FC0_0000
        } else if e == 0 {
            if m == 0 {
                0
            } else {
                // m · 2^(1 - bias - man_bits): normalise the leading bit.
                let lead = 31 - m.leading_zeros(); // position of the top bit
                let f32_exp = (lead as i32 + 1 - bias - man_bits as i32 + 127) as u32;
                let frac = (m ^ (1 << lead)) << (23 - lead);
                (f32_exp << 23) | frac
            }
        } else {
            let f32_exp = (e as i32 - bias + 127) as u32;
            (f32_exp << 23) | (m << (23 - man_bits))
        };
        t[c] = f32::from_bits(sign | bits);
        c += 1;
    }
    t
}

static E4M3_TABLE: [f32; 256] = decode_table(4, 3, 7, false);
static E5M2_TABLE: [f32; 256] = decode_table(5, 2, 15, true);

/// f32 → FP8 with round-to-nearest-even and saturation, for a format with
/// `man` mantissa bits and bias `bias`. `max_bits` is the f32 bit pattern of
/// the format's max.
#[inline(always)]
fn encode(x: f32, man: u32, bias: i32, max_code: u8, nan_code: u8, max_bits: u32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7FFF_FFFF;
    if a > 0x7F80_0000 {
        return sign | nan_code;
    }
    if a >= max_bits {
        return sign | max_code; // saturate, ±∞ included
    }
    if a < 0x0080_0000 {
        return sign; // zero or f32 subnormal: far below the smallest FP8 subnormal
    }
    let e = (a >> 23) as i32 - 127;
    let significand = (a & 0x007F_FFFF) | 0x0080_0000; // 24 bits, leading 1
    let emin = 1 - bias;
    let e_eff = if e < emin { emin } else { e };
    // Keep `man` fraction bits at exponent e_eff; the rest round away.
    let shift = (23 - man) + (e_eff - e) as u32;
    let q = if shift > 24 {
        0 // below half the smallest subnormal
    } else {
        let kept = significand >> shift;
        let rest = significand & ((1u32 << shift) - 1);
        let half = 1u32 << (shift - 1);
        kept + u32::from(rest > half || (rest == half && kept & 1 == 1))
    };
    // `q` carries the implicit bit for normals; adding it to the exponent
    // field base makes a mantissa carry (and subnormal → normal) roll over
    // into the exponent by itself. |x| < max, so the result stays ≤ max.
    let code = (((e_eff - emin) as u32) << man) + q;
    sign | code as u8
}

impl Fp8 for E4M3 {
    const EXP_BITS: u32 = 4;
    const MAN_BITS: u32 = 3;
    const BIAS: i32 = 7;
    const MAX: f32 = 448.0;
    const MAX_CODE: u8 = 0x7E;
    const NAN_CODE: u8 = 0x7F;

    #[inline(always)]
    fn from_bits(bits: u8) -> Self {
        Self(bits)
    }
    #[inline(always)]
    fn to_bits(self) -> u8 {
        self.0
    }
}

impl Fp8 for E5M2 {
    const EXP_BITS: u32 = 5;
    const MAN_BITS: u32 = 2;
    const BIAS: i32 = 15;
    const MAX: f32 = 57344.0;
    const MAX_CODE: u8 = 0x7B;
    const NAN_CODE: u8 = 0x7E;

    #[inline(always)]
    fn from_bits(bits: u8) -> Self {
        Self(bits)
    }
    #[inline(always)]
    fn to_bits(self) -> u8 {
        self.0
    }
}

macro_rules! element_for_fp8 {
    ($t:ty, $name:literal, $table:ident) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            /// Exact: one table load.
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $table[self.0 as usize]
            }
            /// Round to nearest even, saturating; NaN stays NaN.
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                Self(encode(
                    x,
                    Self::MAN_BITS,
                    Self::BIAS,
                    Self::MAX_CODE,
                    Self::NAN_CODE,
                    Self::MAX.to_bits(),
                ))
            }
        }
    };
}
element_for_fp8!(E4M3, "e4m3", E4M3_TABLE);
element_for_fp8!(E5M2, "e5m2", E5M2_TABLE);

/// Scales of a quantised `(rows, row_len)` matrix: one f32 per group of
/// `group` consecutive elements of a row (the last group of a row may be
/// shorter). `group = row_len` is one scale per row; `group = 128` is
/// DeepSeek-V3's per-block scaling. The value of element `(r, c)` is
/// `code.to_f32() · scales[r · groups_per_row + c / group]`.
#[derive(Clone, Copy, Debug)]
pub struct Scales<'a> {
    /// The scales, `rows · ceil(row_len / group)` of them.
    pub values: &'a [f32],
    /// Elements per scale.
    pub group: usize,
}

impl Scales<'_> {
    /// Scales per row for rows of `row_len` elements.
    #[inline]
    pub const fn groups_per_row(&self, row_len: usize) -> usize {
        if self.group == 0 {
            0
        } else {
            row_len.div_ceil(self.group)
        }
    }

    /// Check the group size and the length for `rows` rows of `row_len`.
    pub fn check(&self, tensor: Tensor, rows: usize, row_len: usize) -> Result<(), Error> {
        if self.group == 0 {
            return Err(Error::Zero {
                what: Size::ScaleGroup,
            });
        }
        let need = rows
            .checked_mul(self.groups_per_row(row_len))
            .ok_or(Error::Overflow(tensor))?;
        if self.values.len() != need {
            return Err(Error::WrongLength {
                tensor,
                expected: need,
                got: self.values.len(),
            });
        }
        Ok(())
    }
}

/// The default scale group: 128 elements, as in DeepSeek-V3's FP8 recipe.
pub const SCALE_GROUP: usize = 128;

/// Quantise `src`, a row-major `(rows, row_len)` matrix, to FP8 with one
/// scale per group of `group` elements of a row: `scale = amax / F::MAX`
/// (1 for an all-zero group) and `dst = F::from_f32(x / scale)`, so every
/// group uses the full range of the format and nothing saturates.
///
/// Errors: a zero `row_len` or `group`, wrong lengths, or a non-finite input
/// (its scale would be meaningless). Cost: two passes over `src`.
pub fn quantize<F: Fp8>(
    src: &[f32],
    row_len: usize,
    group: usize,
    dst: &mut [F],
    scales: &mut [f32],
) -> Result<(), Error> {
    if row_len == 0 {
        return Err(Error::Zero {
            what: Size::RowLength,
        });
    }
    if group == 0 {
        return Err(Error::Zero {
            what: Size::ScaleGroup,
        });
    }
    if src.len() % row_len != 0 {
        return Err(Error::WrongLength {
            tensor: Tensor::QuantizeSource,
            expected: src.len() / row_len * row_len,
            got: src.len(),
        });
    }
    if dst.len() != src.len() {
        return Err(Error::WrongLength {
            tensor: Tensor::QuantizeDestination,
            expected: src.len(),
            got: dst.len(),
        });
    }
    let per_row = row_len.div_ceil(group);
    let need = (src.len() / row_len) * per_row;
    if scales.len() != need {
        return Err(Error::WrongLength {
            tensor: Tensor::Scales,
            expected: need,
            got: scales.len(),
        });
    }
    if let Some(at) = src.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            tensor: Tensor::QuantizeSource,
            at,
        });
    }
    let groups = src
        .chunks_exact(row_len)
        .zip(dst.chunks_exact_mut(row_len))
        .flat_map(|(s, d)| s.chunks(group).zip(d.chunks_mut(group)));
    for ((s, d), scale) in groups.zip(scales.iter_mut()) {
        let amax = s.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        // At least the smallest normal f32: a subnormal scale loses its
        // precision, and one that underflows to 0 made 0 · ∞ = NaN codes
        // (found by fuzzing).
        *scale = if amax > 0.0 {
            (amax / F::MAX).max(f32::MIN_POSITIVE)
        } else {
            1.0
        };
        let inv = 1.0 / *scale;
        for (o, &x) in d.iter_mut().zip(s) {
            *o = F::from_f32(x * inv);
        }
    }
    Ok(())
}

/// The inverse of [`quantize`]: `dst = code · scale`, exactly as the
/// indexer reads its operands. Same shape rules and errors.
pub fn dequantize<F: Fp8>(
    src: &[F],
    row_len: usize,
    scales: Scales<'_>,
    dst: &mut [f32],
) -> Result<(), Error> {
    if row_len == 0 {
        return Err(Error::Zero {
            what: Size::RowLength,
        });
    }
    if src.len() % row_len != 0 || dst.len() != src.len() {
        return Err(Error::WrongLength {
            tensor: Tensor::DequantizeDestination,
            expected: src.len(),
            got: dst.len(),
        });
    }
    scales.check(Tensor::Scales, src.len() / row_len, row_len)?;
    let groups = src
        .chunks_exact(row_len)
        .zip(dst.chunks_exact_mut(row_len))
        .flat_map(|(s, d)| s.chunks(scales.group).zip(d.chunks_mut(scales.group)));
    for ((s, d), &scale) in groups.zip(scales.values) {
        for (o, &c) in d.iter_mut().zip(s) {
            *o = c.to_f32() * scale;
        }
    }
    Ok(())
}
