//! The FP8 indexer and quantiser kernels (`kernels/indexer.cu`) against an
//! f64 reference and the core quantiser.

use tessera_core::fp8::{quantize, SCALE_GROUP};
use tessera_core::mask::MaskSpec;
use tessera_core::{bf16, f16, Element, Fp8, IndexerSpec, E4M3, E5M2};
use tessera_cuda::dsa::{self};
use tessera_cuda::emu;
use tessera_cuda::plan::{self, DeviceMask, Dtype, Fp8Format, IndexerBuffers};

use crate::support::{addr, out, rel_err, Rng};

/// Random FP8 codes of `format` (finite: NaN codes are redrawn as zero).
fn fp8_codes<F: Fp8>(rng: &mut Rng, n: usize, spread: f32) -> Vec<F> {
    (0..n)
        .map(|_| {
            let c = F::from_f32(rng.normal() * spread);
            if c.to_f32().is_finite() {
                c
            } else {
                F::from_f32(0.0)
            }
        })
        .collect()
}

/// One indexer case on the emulator, E4M3 or E5M2, with or without per-row
/// scales, on the fp8 mma (or its sm_80 widened form): scores against an
/// f64 reference over the decoded codes times their scales.
#[allow(clippy::too_many_arguments)]
fn run_indexer_kernel<F: Fp8>(
    format: Fp8Format,
    (b, sq, skv, heads, dim): (usize, usize, usize, usize, usize),
    (causal, offset, lens, align): (bool, isize, Option<[usize; 2]>, bool),
    scaled: bool,
    widened: bool,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng(seed);
    let q: Vec<F> = fp8_codes(&mut rng, b * sq * heads * dim, 2.0);
    let k: Vec<F> = fp8_codes(&mut rng, b * skv * dim, 2.0);
    let w: Vec<f32> = (0..b * sq * heads).map(|_| rng.normal()).collect();
    let positive = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n).map(|_| 0.01 + rng.uniform() * 3.0).collect()
    };
    let (qs, ks) = if scaled {
        (
            positive(&mut rng, b * sq * heads),
            positive(&mut rng, b * skv),
        )
    } else {
        (vec![1.0; b * sq * heads], vec![1.0; b * skv])
    };
    let mut scores = vec![f32::NAN; b * sq * skv];
    let mut bad = [dsa::FLAG_CLEAR];
    let lens64: Vec<i64> = lens
        .map(|l| l.iter().take(b).map(|&x| x as i64).collect())
        .unwrap_or_default();
    let mut mask = MaskSpec::NONE.offset(offset);
    mask.causal = causal;
    let device = DeviceMask {
        kv_lens: lens.map(|_| addr(&lens64)),
        align_to_kv_lens: align,
        dense: None,
    };
    let spec = IndexerSpec {
        batch: b,
        q_len: sq,
        kv_len: skv,
        heads,
        dim,
    };
    let bufs = IndexerBuffers {
        q: addr(&q),
        k: addr(&k),
        w: addr(&w),
        scores: out(&mut scores),
        q_scale: scaled.then(|| addr(&qs)),
        k_scale: scaled.then(|| addr(&ks)),
        bad: Some(out(&mut bad)),
    };
    let mut launch =
        plan::indexer_fp8(&spec, &mask, &device, format, &bufs).map_err(|e| e.to_string())?;
    if widened {
        // The sm_80 path: fp8 widened onto the f16 mma.
        launch.kernel = match (format, dim) {
            (Fp8Format::E4M3, 64) => "tessera_indexer_e4m3_d64_widened",
            (Fp8Format::E4M3, _) => "tessera_indexer_e4m3_d128_widened",
            (Fp8Format::E5M2, 64) => "tessera_indexer_e5m2_d64_widened",
            (Fp8Format::E5M2, _) => "tessera_indexer_e5m2_d128_widened",
        };
    }
    // SAFETY: every pointer is a live Vec of the spec's size.
    unsafe { emu::launch(&launch) }.map_err(|e| e.to_string())?;
    if bad[0] != dsa::FLAG_CLEAR {
        return Err(format!("finite inputs flagged a score: {}", bad[0]));
    }

    let mut want = Vec::with_capacity(scores.len());
    for bi in 0..b {
        let n = lens.map_or(skv, |l| l[bi]) as isize;
        let off = offset + if align { n - sq as isize } else { 0 };
        for t in 0..sq {
            for s in 0..skv {
                let visible = (s as isize) < n && (!causal || s as isize <= t as isize + off);
                if !visible {
                    want.push(f64::NEG_INFINITY);
                    continue;
                }
                let mut total = 0.0f64;
                for j in 0..heads {
                    let row = (bi * sq + t) * heads + j;
                    let qr = &q[row * dim..][..dim];
                    let kr = &k[(bi * skv + s) * dim..][..dim];
                    let dot: f64 = qr
                        .iter()
                        .zip(kr)
                        .map(|(a, c)| a.to_f32() as f64 * c.to_f32() as f64)
                        .sum::<f64>()
                        * qs[row] as f64
                        * ks[bi * skv + s] as f64;
                    total += w[row] as f64 * dot.max(0.0);
                }
                want.push(total);
            }
        }
    }
    let got: Vec<f64> = scores.iter().map(|&x| x as f64).collect();
    let err = rel_err(&got, &want)?;
    if err < 1e-5 {
        Ok(())
    } else {
        Err(format!("err {err:.2e}"))
    }
}

#[test]
fn the_fp8_indexer_matches_an_f64_reference() {
    type Dims = (usize, usize, usize, usize, usize);
    type Mask = (bool, isize, Option<[usize; 2]>, bool);
    let cases: [(Dims, Mask); 6] = [
        ((1, 9, 150, 16, 128), (true, 141, None, false)),
        ((2, 11, 70, 5, 64), (false, 0, Some([70, 33]), false)),
        ((2, 8, 130, 32, 128), (true, 0, Some([130, 64]), true)),
        ((1, 5, 90, 20, 128), (true, 80, None, false)),
        // Several CTAs along the keys, and more heads than stay in registers.
        ((1, 9, 600, 80, 128), (true, 591, None, false)),
        ((1, 6, 700, 40, 64), (false, 0, None, false)),
    ];
    let mut failures = Vec::new();
    for (i, &(dims, mask)) in cases.iter().enumerate() {
        // Every case in both formats; scales on every other one; odd cases
        // on the sm_80 path.
        let seed = 0x51ed + i as u64;
        let (scaled, widened) = (i % 2 == 0, i % 2 == 1);
        let r4 = run_indexer_kernel::<E4M3>(Fp8Format::E4M3, dims, mask, scaled, widened, seed);
        let r5 = run_indexer_kernel::<E5M2>(Fp8Format::E5M2, dims, mask, !scaled, widened, seed);
        for (f, r) in [("e4m3", r4), ("e5m2", r5)] {
            if let Err(e) = r {
                failures.push(format!("case {i} {f}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A visible score that overflows is reported through the flag, never
/// ranked; masked ones are not.
#[test]
fn the_indexer_flags_a_visible_score_that_is_not_finite() {
    let (sq, skv, heads, dim) = (3usize, 40usize, 2usize, 64usize);
    let q = vec![E4M3::from_f32(448.0); sq * heads * dim];
    let k = vec![E4M3::from_f32(448.0); skv * dim];
    let w = vec![1.0f32; sq * heads];
    let qs = vec![1e32f32; sq * heads];
    let ks = vec![1.0f32; skv];
    let mut scores = vec![f32::NAN; sq * skv];
    let mut bad = [dsa::FLAG_CLEAR];
    let spec = IndexerSpec {
        batch: 1,
        q_len: sq,
        kv_len: skv,
        heads,
        dim,
    };
    let bufs = IndexerBuffers {
        q: addr(&q),
        k: addr(&k),
        w: addr(&w),
        scores: out(&mut scores),
        q_scale: Some(addr(&qs)),
        k_scale: Some(addr(&ks)),
        bad: Some(out(&mut bad)),
    };
    let mask = MaskSpec::NONE.causal(0);
    let l =
        plan::indexer_fp8(&spec, &mask, &DeviceMask::default(), Fp8Format::E4M3, &bufs).unwrap();
    // SAFETY: every pointer is a live Vec of the spec's size.
    unsafe { emu::launch(&l) }.unwrap();
    assert_eq!(bad[0], 0, "the first visible score, (0, 0), overflows");
}

/// The quantiser equals `tessera_core::fp8::quantize` bit for bit (codes
/// and scales), from f32, f16 and bf16, in both formats, on rows that are
/// not a multiple of the group, with zero groups and tiny and huge values;
/// a non-finite element is reported by its flat index.
#[test]
fn the_quantiser_equals_the_core_quantiser_bit_for_bit() {
    fn check<F: Fp8, S: Element>(
        format: Fp8Format,
        source: Dtype,
        rows: usize,
        row_len: usize,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let mut x: Vec<S> = (0..rows * row_len)
            .map(|i| {
                let m = [1.0f32, 1e-3, 1e4, 0.0][(i / SCALE_GROUP) % 4];
                S::from_f32(rng.normal() * m)
            })
            .collect();
        let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let groups = row_len.div_ceil(SCALE_GROUP);
        let mut want_codes = vec![F::default(); x.len()];
        let mut want_scales = vec![0.0f32; rows * groups];
        quantize(
            &wide,
            row_len,
            SCALE_GROUP,
            &mut want_codes,
            &mut want_scales,
        )
        .unwrap();
        let mut codes = vec![0xa5u8; x.len()];
        let mut scales = vec![f32::NAN; rows * groups];
        let mut bad = [dsa::FLAG_CLEAR];
        // Quantise `x` on the emulator into codes, scales and the bad-element flag.
        let run = |x: &[S], codes: &mut [u8], scales: &mut [f32], bad: &mut [i64; 1]| {
            let l = plan::quantize(
                "x",
                format,
                source,
                rows,
                row_len,
                addr(x),
                out(codes),
                out(scales),
                out(bad),
            )
            .unwrap();
            // SAFETY: all buffers are sized rows x row_len (codes, source) and rows x groups.
            unsafe { emu::launch(&l) }.unwrap();
        };
        run(&x, &mut codes, &mut scales, &mut bad);
        assert_eq!(bad[0], dsa::FLAG_CLEAR);
        let want: Vec<u8> = want_codes.iter().map(|c| c.to_bits()).collect();
        assert_eq!(codes, want, "{format:?} from {source:?}: codes");
        assert_eq!(
            scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            want_scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            "{format:?} from {source:?}: scales"
        );
        // Poison two elements: the lower index is reported.
        let n = x.len();
        x[n - 1] = S::from_f32(f32::INFINITY);
        x[n / 2] = S::from_f32(f32::NAN);
        run(&x, &mut codes, &mut scales, &mut bad);
        assert_eq!(bad[0], (n / 2) as i64);
    }
    check::<E4M3, f32>(Fp8Format::E4M3, Dtype::F32, 7, 300, 1);
    check::<E5M2, f32>(Fp8Format::E5M2, Dtype::F32, 5, 128, 2);
    check::<E4M3, f16>(Fp8Format::E4M3, Dtype::F16, 9, 64, 3);
    check::<E5M2, bf16>(Fp8Format::E5M2, Dtype::Bf16, 4, 257, 4);
}
