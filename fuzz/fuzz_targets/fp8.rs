//! FP8 E4M3 and E5M2 on arbitrary f32 bit patterns (NaN, ±inf, subnormals,
//! ±0). Invariants, checked for every value, not just "no crash":
//! - every code round-trips: `encode(decode(c)) == c` (NaN codes: NaN);
//! - NaN stays NaN; the sign is kept (saturating, so +x never turns -x);
//! - encoding is monotone: `x <= y` ⇒ `decode(encode(x)) <= decode(encode(y))`;
//! - nearest: no code lies strictly closer to `x` than the chosen one
//!   (within the finite range; beyond it the result saturates to ±MAX, or
//!   ±inf for E5M2 when IEEE rounding says so);
//! - `quantize` then `dequantize` of a row agrees with the per-element
//!   rule under the row's scale.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::fp8::{self, Fp8};
use tessera_core::{Scales, E4M3, E5M2};
use tessera_fuzz::Bytes;

fn check<F: Fp8>(xs: &[f32]) {
    // Round trip of every code (cheap: 256).
    for c in 0..=255u8 {
        let v = F::from_bits(c).to_f32();
        let back = F::from_f32(v);
        if v.is_nan() {
            assert!(
                back.to_f32().is_nan(),
                "NaN code {c:#x} re-encodes to a number"
            );
        } else if v.is_infinite() {
            // Saturating by design (module docs): ±inf encodes as ±MAX.
            assert_eq!(back.to_f32(), F::MAX.copysign(v), "{v} does not saturate");
        } else if v == 0.0 {
            assert_eq!(back.to_f32(), 0.0);
        } else {
            assert_eq!(back.to_bits(), c, "code {c:#x} = {v} does not round-trip");
        }
    }
    let q = |x: f32| F::from_f32(x).to_f32();
    for &x in xs {
        let y = q(x);
        if x.is_nan() {
            assert!(y.is_nan(), "{x} -> {y}: NaN lost");
            continue;
        }
        assert!(!y.is_nan(), "{x} -> NaN");
        if y != 0.0 {
            assert_eq!(
                x.is_sign_negative(),
                y.is_sign_negative(),
                "{x} -> {y}: sign flipped"
            );
        }
        if x.is_finite() && x.abs() <= F::MAX {
            // Nearest: no finite code is strictly closer.
            let err = (f64::from(y) - f64::from(x)).abs();
            for c in 0..=255u8 {
                let v = F::from_bits(c).to_f32();
                if v.is_finite() {
                    let e = (f64::from(v) - f64::from(x)).abs();
                    assert!(e >= err, "{x} -> {y}, but code {c:#x} = {v} is closer");
                }
            }
        }
    }
    // Monotone over every pair of the (small) input.
    for &a in xs.iter().filter(|x| !x.is_nan()) {
        for &b in xs.iter().filter(|x| !x.is_nan()) {
            if a <= b {
                assert!(
                    q(a) <= q(b),
                    "not monotone: {a} <= {b} but {} > {}",
                    q(a),
                    q(b)
                );
            }
        }
    }
}

/// `quantize` then `dequantize` of finite rows: no NaN, and each element
/// within half a code step (at the group's scale) of its input.
fn check_scaled<F: Fp8>(xs: &[f32], row_len: usize, group: usize) {
    let rows = xs.len() / row_len;
    let src = &xs[..rows * row_len];
    let mut codes = vec![F::default(); src.len()];
    let groups = rows * row_len.div_ceil(group);
    let mut scales = vec![0.0f32; groups];
    let finite = src.iter().all(|x| x.is_finite());
    match fp8::quantize(src, row_len, group, &mut codes, &mut scales) {
        Ok(()) => assert!(finite, "quantize accepted a non-finite input"),
        Err(_) => {
            assert!(!finite, "quantize refused a finite input");
            return;
        }
    }
    let mut back = vec![0.0f32; src.len()];
    fp8::dequantize(
        &codes,
        row_len,
        Scales {
            values: &scales,
            group,
        },
        &mut back,
    )
    .expect("dequantize of quantize's output");
    for (r, (s, b)) in src.chunks(row_len).zip(back.chunks(row_len)).enumerate() {
        for (g, (sg, bg)) in s.chunks(group).zip(b.chunks(group)).enumerate() {
            let amax = sg.iter().fold(0.0f64, |m, x| m.max(f64::from(*x).abs()));
            // Half a step at amax, or half the smallest subnormal step at
            // the scale (at least f32::MIN_POSITIVE) for tiny groups.
            let scale = f64::from(scales[r * row_len.div_ceil(group) + g]);
            let sub = scale * 2f64.powi(1 - F::BIAS - F::MAN_BITS as i32 - 1);
            let tol = (amax * 0.5f64.powi(F::MAN_BITS as i32 + 1)).max(sub) * 1.001;
            for (&x, &y) in sg.iter().zip(bg) {
                let err = (f64::from(y) - f64::from(x)).abs();
                assert!(
                    err <= tol,
                    "{}: row {r} group {g}: {x} -> {y} (scale {}), error {err} > {tol}",
                    F::NAME,
                    scales[r * row_len.div_ceil(group) + g]
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let mut xs = Vec::new();
    while !r.is_empty() && xs.len() < 64 {
        xs.push(r.f32());
    }
    check::<E4M3>(&xs);
    check::<E5M2>(&xs);
    if !xs.is_empty() {
        let row_len = 1 + data[0] as usize % xs.len();
        let group = 1 + data[data.len() - 1] as usize % row_len;
        check_scaled::<E4M3>(&xs, row_len, group);
        check_scaled::<E5M2>(&xs, row_len, group);
    }
});
