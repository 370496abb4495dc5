//! FP8 crashes and wrong results the fuzzers found (fuzz/fuzz_targets/fp8.rs).

use tessera_core::fp8::{dequantize, quantize};
use tessera_core::{Element, Scales, E4M3, E5M2};

/// A group whose largest magnitude is tiny (subnormal) had a scale of
/// `amax / MAX` that lost its precision, or underflowed to 0 and made
/// `0 · (1 / 0)` = NaN codes. The scale is now at least `f32::MIN_POSITIVE`.
#[test]
fn tiny_groups_quantise_without_nan_and_within_half_a_step() {
    for src in [
        vec![1e-45f32, 0.0, -1e-45],
        vec![-2.1243825e-38, 1e-39, 0.0, 3e-40],
        vec![f32::MIN_POSITIVE, -f32::MIN_POSITIVE / 2.0],
    ] {
        let mut codes = vec![E4M3::default(); src.len()];
        let mut scales = vec![0.0f32; 1];
        quantize(&src, src.len(), src.len(), &mut codes, &mut scales).unwrap();
        assert!(scales[0] >= f32::MIN_POSITIVE, "{scales:?}");
        assert!(
            codes.iter().all(|c| !c.to_f32().is_nan()),
            "{src:?} -> {codes:?}"
        );
        let mut back = vec![0.0f32; src.len()];
        let s = Scales {
            values: &scales,
            group: src.len(),
        };
        dequantize(&codes, src.len(), s, &mut back).unwrap();
        // Half a step at amax (3 mantissa bits), or half the smallest E4M3
        // subnormal step (2^-9) at the scale.
        let amax = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let tol = (amax * 2f32.powi(-4)).max(scales[0] * 2f32.powi(-10)) * 1.001;
        for (x, y) in src.iter().zip(&back) {
            assert!((x - y).abs() <= tol, "{x} -> {y}");
        }
        let mut c5 = vec![E5M2::default(); src.len()];
        quantize(&src, src.len(), src.len(), &mut c5, &mut scales).unwrap();
        assert!(c5.iter().all(|c| !c.to_f32().is_nan()));
    }
}
