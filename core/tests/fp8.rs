//! FP8 conversion against ml_dtypes (vectors made by python/gen_fp8_vectors.py)
//! and against an independent nearest-value search over all 256 codes.

use proptest::prelude::*;
use tessera_core::fp8::{dequantize, quantize, Fp8, Scales, E4M3, E5M2};
use tessera_core::{Element, Error, Size, Tensor};

static VECTORS: &[u8] = include_bytes!("data/fp8_vectors.bin");
static CODES: &[u8] = include_bytes!("data/fp8_codes.bin");

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

fn is_nan_code<F: Fp8>(c: u8) -> bool {
    F::from_bits(c).to_f32().is_nan()
}

/// ml_dtypes' code, with the one documented difference applied: where a
/// non-NaN input overflows to NaN or inf in ml_dtypes, Tessera saturates.
fn expected<F: Fp8>(x: f32, ml: u8) -> Option<u8> {
    if x.is_nan() {
        return None; // any NaN code
    }
    let v = F::from_bits(ml).to_f32();
    if v.is_nan() || v.is_infinite() {
        return Some((ml & 0x80) | F::MAX_CODE);
    }
    Some(ml)
}

#[test]
fn all_256_codes_decode_as_ml_dtypes() {
    assert_eq!(CODES.len(), 256 * 8);
    for c in 0..256usize {
        let want4 = f32::from_bits(u32_at(CODES, c * 8));
        let want5 = f32::from_bits(u32_at(CODES, c * 8 + 4));
        let got4 = E4M3(c as u8).to_f32();
        let got5 = E5M2(c as u8).to_f32();
        for (got, want, f) in [(got4, want4, "e4m3"), (got5, want5, "e5m2")] {
            if want.is_nan() {
                assert!(got.is_nan(), "{f} code {c:#04x}: want NaN, got {got}");
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{f} code {c:#04x}: want {want}, got {got}"
                );
            }
        }
    }
    // Spot facts of the formats.
    assert_eq!(E4M3(0x7E).to_f32(), 448.0);
    assert!(E4M3(0x7F).to_f32().is_nan() && E4M3(0xFF).to_f32().is_nan());
    assert_eq!(E4M3(0x01).to_f32(), 2f32.powi(-9));
    assert_eq!(E5M2(0x7B).to_f32(), 57344.0);
    assert_eq!(E5M2(0x7C).to_f32(), f32::INFINITY);
    assert_eq!(E5M2(0x01).to_f32(), 2f32.powi(-16));
}

#[test]
fn sweep_encodes_as_ml_dtypes() {
    assert_eq!(VECTORS.len() % 6, 0);
    let n = VECTORS.len() / 6;
    assert!(n > 30_000, "vector file too small: {n}");
    let (mut ties, mut subnormal, mut saturated) = (0, 0, 0);
    for r in VECTORS.chunks_exact(6) {
        let x = f32::from_bits(u32_at(r, 0));
        for (ml, got, f, nan) in [
            (
                r[4],
                E4M3::from_f32(x).0,
                "e4m3",
                is_nan_code::<E4M3> as fn(u8) -> bool,
            ),
            (r[5], E5M2::from_f32(x).0, "e5m2", is_nan_code::<E5M2>),
        ] {
            let want = if f == "e4m3" {
                expected::<E4M3>(x, ml)
            } else {
                expected::<E5M2>(x, ml)
            };
            match want {
                None => assert!(
                    nan(got),
                    "{f}: NaN input {:#010x} gave {got:#04x}",
                    x.to_bits()
                ),
                Some(w) => {
                    assert_eq!(
                        got,
                        w,
                        "{f}: x = {x:e} ({:#010x}): want {w:#04x}, got {got:#04x}",
                        x.to_bits()
                    );
                    saturated += usize::from(w != ml);
                }
            }
        }
        let m = x.to_bits() & 0xFFFF;
        ties += usize::from(m == 0 && x.abs() > 1e-6);
        subnormal += usize::from(x.abs() > 0.0 && x.abs() < 2f32.powi(-6));
    }
    // The sweep really exercises ties, subnormals and saturation.
    assert!(
        ties > 1000 && subnormal > 1000 && saturated > 100,
        "ties {ties}, subnormal {subnormal}, saturated {saturated}"
    );
}

/// Independent reference: the nearest finite code by search, ties to the
/// even code, saturating. Shares nothing with the encoder.
fn nearest<F: Fp8>(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs() as f64;
    if a >= F::MAX as f64 {
        return sign | F::MAX_CODE; // saturation (f64 cannot separate codes far out)
    }
    let mut best = 0u8;
    let mut best_d = f64::INFINITY;
    for c in 0..=F::MAX_CODE {
        let v = F::from_bits(c).to_f32() as f64;
        let d = (v - a).abs();
        if d < best_d || (d == best_d && c % 2 == 0) {
            best = c;
            best_d = d;
        }
    }
    sign | best
}

#[test]
fn strided_sweep_matches_nearest_search() {
    // Every 4099th f32 bit pattern (~1M values) across the whole range.
    let mut bits = 0u64;
    while bits < 1 << 32 {
        let x = f32::from_bits(bits as u32);
        if !x.is_nan() {
            assert_eq!(E4M3::from_f32(x).0, nearest::<E4M3>(x), "e4m3 x = {x:e}");
            assert_eq!(E5M2::from_f32(x).0, nearest::<E5M2>(x), "e5m2 x = {x:e}");
        } else {
            assert!(E4M3::from_f32(x).to_f32().is_nan() && E5M2::from_f32(x).to_f32().is_nan());
        }
        bits += 4099;
    }
}

#[test]
fn every_code_round_trips() {
    for c in 0..=255u8 {
        let enc4: fn(f32) -> u8 = |x| E4M3::from_f32(x).0;
        let enc5: fn(f32) -> u8 = |x| E5M2::from_f32(x).0;
        for (v, back) in [(E4M3(c).to_f32(), enc4), (E5M2(c).to_f32(), enc5)] {
            if v.is_nan() {
                assert!(back(v) != 0);
            } else if v.is_infinite() {
                assert_eq!(back(v) & 0x7F, E5M2::MAX_CODE, "inf saturates");
            } else {
                assert_eq!(back(v), c, "code {c:#04x} value {v}");
            }
        }
    }
}

proptest! {
    #[test]
    fn quantize_round_trip_within_half_ulp(
        rows in 1usize..5, row_len in 1usize..300, group_pick in 0usize..3, seed in any::<u64>(), mag in -20i32..20,
    ) {
        let group = [row_len, 128, 32][group_pick];
        let mut s = seed | 1;
        let src: Vec<f32> = (0..rows * row_len).map(|_| {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 2f32.powi(mag)
        }).collect();
        let per_row = row_len.div_ceil(group);
        let mut q = vec![E4M3::default(); src.len()];
        let mut sc = vec![f32::NAN; rows * per_row];
        quantize(&src, row_len, group, &mut q, &mut sc).unwrap();
        let mut back = vec![f32::NAN; src.len()];
        dequantize(&q, row_len, Scales { values: &sc, group }, &mut back).unwrap();
        for (i, (&x, &y)) in src.iter().zip(&back).enumerate() {
            let scale = sc[(i / row_len) * per_row + (i % row_len) / group];
            // E4M3 has 3 mantissa bits: relative error ≤ 2^-4 for normals, and
            // absolute error ≤ half the smallest subnormal step times scale.
            let tol = x.abs() as f64 * 2f64.powi(-4) + scale as f64 * 2f64.powi(-10) + 1e-30;
            prop_assert!(((x - y) as f64).abs() <= tol * 1.0001, "i={i} x={x} y={y} scale={scale}");
            prop_assert!(y.abs() <= x.abs() * 1.07 + scale * 1e-3);
        }
        // Each group's largest element maps to ±MAX exactly (the full range is used).
        for (g, &scale) in sc.iter().enumerate() {
            let r = g / per_row;
            let c0 = (g % per_row) * group;
            let idx = (c0..(c0 + group).min(row_len)).map(|c| r * row_len + c);
            let amax = idx.clone().map(|i| src[i].abs()).fold(0.0f32, f32::max);
            if amax > 0.0 {
                prop_assert!(idx.map(|i| q[i].0 & 0x7F).any(|c| c == E4M3::MAX_CODE));
                prop_assert!((scale - amax / 448.0).abs() <= scale * 1e-6);
            }
        }
    }
}

#[test]
fn quantize_rejects_bad_input() {
    let mut q = [E5M2::default(); 4];
    let mut sc = [0.0f32; 2];
    assert_eq!(
        quantize(&[1.0, f32::NAN, 0.0, 0.0], 2, 2, &mut q, &mut sc),
        Err(Error::NonFinite {
            tensor: Tensor::QuantizeSource,
            at: 1
        })
    );
    assert_eq!(
        quantize(&[1.0; 4], 0, 2, &mut q, &mut sc),
        Err(Error::Zero {
            what: Size::RowLength
        })
    );
    assert!(matches!(
        quantize(&[1.0; 4], 2, 2, &mut q, &mut sc[..1]),
        Err(Error::WrongLength {
            tensor: Tensor::Scales,
            ..
        })
    ));
    assert!(matches!(
        quantize(&[1.0; 4], 2, 0, &mut q, &mut sc),
        Err(Error::Zero { .. })
    ));
    // All-zero groups get scale 1 and zero codes.
    quantize(&[0.0; 4], 2, 2, &mut q, &mut sc).unwrap();
    assert_eq!(sc, [1.0, 1.0]);
    assert!(q.iter().all(|c| c.0 == 0));
}
