//! The CUDA kernels, compiled as host C++ against the CPU emulator
//! (`--features emulate`), checked against tessera-core's f64 reference on
//! random data: outputs are poisoned with NaN first, NaN never passes.
//! Every launch goes through the same `plan` validation and parameter blocks
//! as a GPU launch; only the driver call differs.

use tessera_core::fp8::{quantize, SCALE_GROUP};
use tessera_core::mask::{DenseMask, MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Tensor};
use tessera_core::{bf16, f16, reference, Element, Fp8, IndexerSpec, E4M3, E5M2};
use tessera_cuda::dsa::{self, IndexerCall, IndexerIo, TopKCall, TopKIo};
use tessera_cuda::plan::{
    self, DeviceDenseMask, DeviceMask, DevicePtr, Dtype, Fp8Format, IndexerBuffers, KeyLists,
    MergeBuffers, SparseRules,
};
use tessera_cuda::{emu, AttentionBuffers, CudaError};

/// xorshift64*, with a roughly normal `normal()`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.7 - 3.4
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn addr<T>(v: &[T]) -> DevicePtr {
    DevicePtr(v.as_ptr() as u64)
}

/// The address of an output buffer (the kernel writes through it).
fn out<T>(v: &mut [T]) -> DevicePtr {
    DevicePtr(v.as_mut_ptr() as u64)
}

fn fill<T: Element>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.normal())).collect()
}

/// max |got - want| / max |want| over finite entries; infinities must match
/// exactly and NaN fails.
fn rel_err(got: &[f64], want: &[f64]) -> Result<f64, String> {
    let mut err = 0.0f64;
    let mut scale = 1e-30f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() {
            return Err(format!("NaN at {i}"));
        }
        if w.is_infinite() || g.is_infinite() {
            if g != w {
                return Err(format!("at {i}: got {g}, want {w}"));
            }
            continue;
        }
        err = err.max((g - w).abs());
        scale = scale.max(w.abs());
    }
    Ok(err / scale)
}

#[derive(Clone, Copy)]
enum Dense {
    None,
    Bool,
    Additive,
}

struct Case {
    name: &'static str,
    dims: [usize; 6], // B, Hq, Hkv, Sq, Skv, D
    bshd: bool,
    mask: MaskSpec<'static>,
    kv_lens: Option<&'static [usize]>,
    align: bool,
    softcap: f32,
    scale: Option<f32>,
    dense: Dense,
}

const fn case(name: &'static str, dims: [usize; 6], mask: MaskSpec<'static>) -> Case {
    Case {
        name,
        dims,
        bshd: false,
        mask,
        kv_lens: None,
        align: false,
        softcap: 0.0,
        scale: None,
        dense: Dense::None,
    }
}

fn run_flash<T: Element>(c: &Case, dtype: Dtype, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let [b, hq, hkv, sq, skv, d] = c.dims;
    let mut spec = if c.bshd {
        AttentionSpec::bshd
    } else {
        AttentionSpec::bhsd
    }(b, hq, hkv, sq, skv, d, d);
    spec.softcap = c.softcap;
    if let Some(s) = c.scale {
        spec.scale = s;
    }
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<T>(&mut rng, len(Tensor::Q)),
        fill::<T>(&mut rng, len(Tensor::K)),
        fill::<T>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![T::from_f32(f32::NAN); len(Tensor::Y)];
    let mut lse = vec![f32::NAN; b * hq * sq];

    // Dense masks over (1, Hq, Sq, Skv), one row fully masked.
    let strides = MaskStrides::broadcast(1, hq, sq, skv);
    let mut bool_mask: Vec<bool> = (0..hq * sq * skv).map(|_| rng.uniform() > 0.3).collect();
    if sq > 3 {
        bool_mask[3 * skv..4 * skv]
            .iter_mut()
            .for_each(|m| *m = false);
    }
    let additive: Vec<f32> = (0..hq * sq * skv)
        .map(|_| {
            if rng.uniform() < 0.1 {
                f32::NEG_INFINITY
            } else {
                rng.normal()
            }
        })
        .collect();
    let lens64: Vec<i64> = c
        .kv_lens
        .map(|l| l.iter().map(|&x| x as i64).collect())
        .unwrap_or_default();

    let mut reference_mask = c.mask;
    if let Some(l) = c.kv_lens {
        reference_mask = reference_mask.kv_lens(l, c.align);
    }
    let device = DeviceMask {
        kv_lens: c.kv_lens.map(|_| addr(&lens64)),
        align_to_kv_lens: c.align,
        dense: match c.dense {
            Dense::None => None,
            Dense::Bool => {
                reference_mask = reference_mask.dense(DenseMask::Bool(&bool_mask, strides));
                Some(DeviceDenseMask {
                    ptr: addr(&bool_mask),
                    is_bool: true,
                    strides,
                })
            }
            Dense::Additive => {
                reference_mask = reference_mask.dense(DenseMask::Additive(&additive, strides));
                Some(DeviceDenseMask {
                    ptr: addr(&additive),
                    is_bool: false,
                    strides,
                })
            }
        },
    };
    let bufs = AttentionBuffers {
        q: addr(&q),
        k: addr(&k),
        v: addr(&v),
        y: out(&mut y),
        lse: Some(out(&mut lse)),
    };
    let launch =
        plan::attention(&spec, &c.mask, &device, dtype, &bufs).map_err(|e| e.to_string())?;
    // SAFETY: every pointer is a live Vec sized by the spec.
    unsafe { emu::launch(&launch) }.map_err(|e| e.to_string())?;

    let mut y_ref = vec![0.0f64; b * hq * sq * d];
    let mut lse_ref = vec![0.0f64; b * hq * sq];
    reference::attention(&spec, &reference_mask, &q, &k, &v, &mut y_ref, &mut lse_ref);
    let mut y_got = Vec::with_capacity(y_ref.len());
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..sq {
                let o = spec.out.offset(bi, h, i);
                y_got.extend(y[o..o + d].iter_mut().map(|x| x.to_f32() as f64));
            }
        }
    }
    let lse_got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let ey = rel_err(&y_got, &y_ref).map_err(|e| format!("Y: {e}"))?;
    let el = rel_err(&lse_got, &lse_ref).map_err(|e| format!("lse: {e}"))?;
    if ey > 1e-2 || el > 1e-2 {
        return Err(format!("Y err {ey:.2e}, lse err {el:.2e} (of max |ref|)"));
    }
    eprintln!("{}: Y err {ey:.1e}, lse err {el:.1e}", c.name);
    Ok(())
}

fn flash_cases() -> Vec<(Case, Dtype)> {
    let none = MaskSpec::NONE;
    vec![
        (
            case("plain D64 f16", [1, 2, 2, 70, 90, 64], none),
            Dtype::F16,
        ),
        (
            case(
                "causal GQA 2:1 D128 bf16",
                [1, 4, 2, 130, 130, 128],
                none.causal(0),
            ),
            Dtype::Bf16,
        ),
        (
            case(
                "causal bottom-right D64 bf16",
                [1, 2, 1, 40, 150, 64],
                none.causal(110),
            ),
            Dtype::Bf16,
        ),
        (
            case(
                "window 16 + 3 sinks D64 f16",
                [1, 1, 1, 150, 150, 64],
                none.causal(0).window(16, 0).globals(3),
            ),
            Dtype::F16,
        ),
        (
            Case {
                softcap: 7.0,
                scale: Some(0.2),
                ..case(
                    "window 8/8 softcap D128 f16",
                    [1, 1, 1, 90, 200, 128],
                    none.window(8, 8),
                )
            },
            Dtype::F16,
        ),
        (
            Case {
                kv_lens: Some(&[65, 20]),
                align: true,
                ..case(
                    "kv_lens aligned causal D64 bf16",
                    [2, 2, 1, 33, 65, 64],
                    none.causal(0),
                )
            },
            Dtype::Bf16,
        ),
        (
            case(
                "chunk 32 causal D64 f16",
                [1, 1, 1, 100, 100, 64],
                none.causal(0).chunked(32),
            ),
            Dtype::F16,
        ),
        (
            Case {
                dense: Dense::Bool,
                ..case("bool mask D64 bf16", [1, 2, 2, 40, 70, 64], none)
            },
            Dtype::Bf16,
        ),
        (
            Case {
                dense: Dense::Additive,
                ..case(
                    "additive mask + causal D128 f16",
                    [1, 2, 1, 30, 80, 128],
                    none.causal(50),
                )
            },
            Dtype::F16,
        ),
        (
            case(
                "negative offset D64 bf16",
                [1, 1, 1, 50, 70, 64],
                none.causal(-20),
            ),
            Dtype::Bf16,
        ),
        (
            Case {
                bshd: true,
                ..case("BSHD D128 bf16", [2, 2, 2, 20, 70, 128], none)
            },
            Dtype::Bf16,
        ),
        (
            case("no keys D64 f16", [1, 1, 1, 10, 0, 64], none),
            Dtype::F16,
        ),
    ]
}

#[test]
fn flash_matches_the_f64_reference_on_every_mask_kind() {
    let mut failures = Vec::new();
    for (i, (c, dt)) in flash_cases().into_iter().enumerate() {
        let r = match dt {
            Dtype::F16 => run_flash::<f16>(&c, dt, 0x9e37_79b9 + i as u64),
            _ => run_flash::<bf16>(&c, dt, 0x9e37_79b9 + i as u64),
        };
        if let Err(e) = r {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

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

/// A random `LightningIndexer` call through `dsa::lightning_indexer` (the
/// CUDA-EP op's own sequence of launches) on the emulator, against the CPU
/// op's math: q and k quantised by the core quantiser, f64 scores, and
/// exact ties where keys repeat.
#[allow(clippy::too_many_arguments)]
fn run_indexer_op<S: Element, F: Fp8>(
    source: Dtype,
    format: Fp8Format,
    (b, sq, skv, heads, dim): (usize, usize, usize, usize, usize),
    top_k: usize,
    causal: bool,
    budget: usize,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng(seed);
    let spread = |rng: &mut Rng| if rng.uniform() < 0.5 { 0.01 } else { 20.0 };
    let q: Vec<S> = (0..b * sq * heads * dim)
        .map(|i| S::from_f32(rng.normal() * if i % 7 == 0 { 5.0 } else { 1.0 }))
        .collect();
    let row_spread: Vec<f32> = (0..b * skv).map(|_| spread(&mut rng)).collect();
    let mut k: Vec<S> = (0..b * skv * dim)
        .map(|i| S::from_f32(rng.normal() * row_spread[i / dim]))
        .collect();
    // Repeated key rows score exactly alike: ties, broken to the lower key.
    for r in 0..b * skv {
        if r % skv >= 3 && rng.uniform() < 0.25 {
            let src = r - 1 - rng.below(2);
            let row: Vec<S> = k[src * dim..][..dim].to_vec();
            k[r * dim..][..dim].copy_from_slice(&row);
        }
    }
    let w: Vec<S> = (0..b * sq * heads)
        .map(|_| S::from_f32(rng.normal()))
        .collect();
    let mut indices = vec![-7i64; b * sq * top_k];
    let call = IndexerCall {
        spec: IndexerSpec {
            batch: b,
            q_len: sq,
            kv_len: skv,
            heads,
            dim,
        },
        top_k,
        causal,
        format,
        sources: [source; 3],
        scores_budget: budget,
    };
    let mut scratch = vec![0u64; call.scratch_bytes().map_err(|e| e.to_string())?.div_ceil(8)];
    let io = IndexerIo {
        q: addr(&q),
        k: addr(&k),
        w: addr(&w),
        indices: out(&mut indices),
    };
    // SAFETY: every address is a live Vec of the call's size.
    let dev = unsafe { emu::Emulator::new() };
    dsa::lightning_indexer(&dev, &call, &io, out(&mut scratch)).map_err(|e| e.to_string())?;

    // The CPU op's operands.
    let wide = |x: &[S]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
    let quant = |x: &[f32]| {
        let mut c = vec![F::default(); x.len()];
        let mut s = vec![0.0f32; x.len() / dim];
        if !x.is_empty() {
            quantize(x, dim, SCALE_GROUP, &mut c, &mut s).unwrap();
        }
        (c, s)
    };
    let (qc, qsc) = quant(&wide(&q));
    let (kc, ksc) = quant(&wide(&k));
    let wf = wide(&w);
    let offset = skv as isize - sq as isize;
    for bi in 0..b {
        for t in 0..sq {
            let row_out = &indices[(bi * sq + t) * top_k..][..top_k];
            let cap = if causal {
                t as isize + offset
            } else {
                skv as isize - 1
            };
            let visible = (cap + 1).clamp(0, skv as isize) as usize;
            let score = |s: usize| -> f64 {
                (0..heads)
                    .map(|j| {
                        let r = (bi * sq + t) * heads + j;
                        let dot: f64 = (0..dim)
                            .map(|d| {
                                qc[r * dim + d].to_f32() as f64
                                    * qsc[r] as f64
                                    * kc[(bi * skv + s) * dim + d].to_f32() as f64
                                    * ksc[bi * skv + s] as f64
                            })
                            .sum();
                        wf[r] as f64 * dot.max(0.0)
                    })
                    .sum()
            };
            let n = top_k.min(visible);
            let chosen = &row_out[..n];
            let ctx = || format!("b {bi} t {t}: {row_out:?}");
            if row_out[n..].iter().any(|&x| x != -1) {
                return Err(format!("padding: {}", ctx()));
            }
            if chosen.windows(2).any(|p| p[0] >= p[1])
                || chosen.iter().any(|&j| j < 0 || j as usize >= visible)
            {
                return Err(format!("not ascending visible keys: {}", ctx()));
            }
            let scores: Vec<f64> = (0..visible).map(score).collect();
            let tol = 1e-5 * scores.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
            let picked = |j: usize| chosen.binary_search(&(j as i64)).is_ok();
            let worst_in = chosen
                .iter()
                .map(|&j| scores[j as usize])
                .fold(f64::INFINITY, f64::min);
            let best_out = (0..visible)
                .filter(|&j| !picked(j))
                .map(|j| scores[j])
                .fold(f64::NEG_INFINITY, f64::max);
            if best_out > worst_in + tol {
                return Err(format!(
                    "key scoring {best_out} left out for {worst_in}: {}",
                    ctx()
                ));
            }
            // Ties: a left-out key whose row repeats a chosen key's must come after it.
            for u in (0..visible).filter(|&u| !picked(u)) {
                let ku = &k[(bi * skv + u) * dim..][..dim];
                for &c in chosen {
                    let kc_ = &k[(bi * skv + c as usize) * dim..][..dim];
                    if ku
                        .iter()
                        .zip(kc_)
                        .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits())
                        && u < c as usize
                    {
                        return Err(format!(
                            "tie broken to the higher key {c} over {u}: {}",
                            ctx()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Mixed input types (as the CPU op takes them: each input float, float16 or
/// bfloat16) give exactly what their f32 widening gives: the quantiser sees
/// the same values.
#[test]
fn the_indexer_op_takes_each_input_in_its_own_type() {
    let (b, sq, skv, heads, dim, top_k) = (2usize, 9usize, 77usize, 5usize, 128usize, 72usize);
    let mut rng = Rng(0x31);
    let q: Vec<f16> = fill(&mut rng, b * sq * heads * dim);
    let k: Vec<bf16> = fill(&mut rng, b * skv * dim);
    let w: Vec<f32> = (0..b * sq * heads).map(|_| rng.normal()).collect();
    let (qf, kf): (Vec<f32>, Vec<f32>) = (
        q.iter().map(|x| x.to_f32()).collect(),
        k.iter().map(|x| x.to_f32()).collect(),
    );
    // SAFETY: every address below is a live Vec of the call's size.
    let dev = unsafe { emu::Emulator::new() };
    let run = |sources: [Dtype; 3], q: DevicePtr, k: DevicePtr| {
        let call = IndexerCall {
            spec: IndexerSpec {
                batch: b,
                q_len: sq,
                kv_len: skv,
                heads,
                dim,
            },
            top_k,
            causal: true,
            format: Fp8Format::E5M2,
            sources,
            scores_budget: dsa::SCORES_BUDGET,
        };
        let mut scratch = vec![0u64; call.scratch_bytes().unwrap().div_ceil(8)];
        let mut indices = vec![-7i64; b * sq * top_k];
        let io = IndexerIo {
            q,
            k,
            w: addr(&w),
            indices: out(&mut indices),
        };
        dsa::lightning_indexer(&dev, &call, &io, out(&mut scratch)).unwrap();
        indices
    };
    let mixed = run([Dtype::F16, Dtype::Bf16, Dtype::F32], addr(&q), addr(&k));
    let wide = run([Dtype::F32; 3], addr(&qf), addr(&kf));
    assert_eq!(mixed, wide);
    assert!(mixed.iter().all(|&j| j >= -1 && j < skv as i64) && mixed.contains(&-1));
}

/// Non-finite inputs are refused by name and element, as on the CPU.
#[test]
fn the_indexer_op_refuses_non_finite_inputs_by_name() {
    let (sq, skv, heads, dim) = (4usize, 9usize, 2usize, 64usize);
    let mut rng = Rng(9);
    let q: Vec<f32> = (0..sq * heads * dim).map(|_| rng.normal()).collect();
    let mut k: Vec<f32> = (0..skv * dim).map(|_| rng.normal()).collect();
    let mut w: Vec<f32> = (0..sq * heads).map(|_| rng.normal()).collect();
    let mut indices = vec![0i64; sq * 3];
    let call = IndexerCall {
        spec: IndexerSpec {
            batch: 1,
            q_len: sq,
            kv_len: skv,
            heads,
            dim,
        },
        top_k: 3,
        causal: false,
        format: Fp8Format::E4M3,
        sources: [Dtype::F32; 3],
        scores_budget: dsa::SCORES_BUDGET,
    };
    let mut scratch = vec![0u64; call.scratch_bytes().unwrap().div_ceil(8)];
    // SAFETY: every address below is a live Vec of the call's size.
    let dev = unsafe { emu::Emulator::new() };
    let mut run = |k: &[f32], w: &[f32]| {
        let io = IndexerIo {
            q: addr(&q),
            k: addr(k),
            w: addr(w),
            indices: out(&mut indices),
        };
        dsa::lightning_indexer(&dev, &call, &io, out(&mut scratch))
    };
    k[77] = f32::NAN;
    let e = run(&k, &w).unwrap_err();
    assert_eq!(
        e.to_string(),
        "index_k: element 77 is not finite (NaN or infinity), must be finite"
    );
    k[77] = 0.5;
    w[5] = f32::NEG_INFINITY;
    let e = run(&k, &w).unwrap_err();
    assert!(
        matches!(
            e,
            CudaError::Invalid {
                input: "index_w",
                ..
            }
        ),
        "{e}"
    );
    w[5] = 1.0;
    run(&k, &w).unwrap();
    let mut bad_dim = call;
    bad_dim.spec.dim = 32;
    let io = IndexerIo {
        q: addr(&q),
        k: addr(&k),
        w: addr(&w),
        indices: out(&mut indices),
    };
    let e = dsa::lightning_indexer(&dev, &bad_dim, &io, out(&mut scratch)).unwrap_err();
    assert!(e.to_string().contains("index_dim 32"), "{e}");
}

#[test]
fn radix_top_k_equals_the_core_selection_exactly() {
    let mut rng = Rng(0x70b);
    for &(rows, n, k, ties) in &[
        (6usize, 3000usize, 100usize, false),
        (4, 2000, 700, true),
        (3, 40, 64, false),
        (2, 5, 1, true),
    ] {
        let mut s: Vec<f32> = (0..rows * n)
            .map(|_| {
                let x = rng.normal();
                if ties {
                    (x * 4.0).round() / 4.0
                } else {
                    x
                }
            })
            .collect();
        for x in s.iter_mut() {
            if rng.uniform() < 0.2 {
                *x = f32::NEG_INFINITY;
            }
        }
        s[..n / 2].iter_mut().for_each(|x| *x = f32::NEG_INFINITY); // a row with few candidates
        if n > 3 {
            s[n + 1] = f32::NAN;
            s[n + 2] = -0.0;
        }
        let mut idx = vec![-7i64; rows * k];
        let launch = plan::top_k(rows, n, k, addr(&s), out(&mut idx)).unwrap();
        // SAFETY: `s` holds rows*n f32 and `idx` rows*k i64.
        unsafe { emu::launch(&launch) }.unwrap();
        for r in 0..rows {
            let mut want = vec![0i64; k];
            tessera_core::top_k(&s[r * n..][..n], &mut want);
            assert_eq!(
                &idx[r * k..][..k],
                &want[..],
                "rows={rows} n={n} k={k} row {r}"
            );
        }
    }
}

/// The keys query `t` attends under `rules`, given its list: the listed
/// keys in range plus the kept ones, restricted by the causal cap — the CPU
/// op's widened list after its visibility filter, as a set.
fn attended(list: &[i64], t: usize, skv: usize, rules: &SparseRules) -> Vec<usize> {
    let p = t as isize + rules.q_offset;
    let cap = if rules.causal {
        p.min(skv as isize - 1)
    } else {
        skv as isize - 1
    };
    let mut keys: Vec<usize> = list
        .iter()
        .filter(|&&j| j >= 0 && (j as usize) < skv)
        .map(|&j| j as usize)
        .collect();
    keys.extend(0..rules.global_tokens.min(skv));
    if let (Some(w), true) = (rules.left_window, p >= 0) {
        let lo = (p - w as isize).max(0) as usize;
        keys.extend(lo..=(p as usize).min(skv - 1));
    }
    keys.retain(|&j| j as isize <= cap);
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// One `TopKAttention` (index mode) call through `dsa::topk_attention` on
/// the emulator: Y and the lse against the f64 reference whose mask is
/// "attended" (listed or kept, and visible), `selected_indices` against the
/// same set, ascending and `-1`-padded.
#[allow(clippy::too_many_arguments)]
fn run_sparse<T: Element>(
    dims: [usize; 7],
    dtype: Dtype,
    shared: bool,
    softcap: f32,
    rules: SparseRules,
    with_selected: bool,
    seed: u64,
) -> Result<(), String> {
    let [b, hq, hkv, sq, skv, d, topk] = dims;
    let mut rng = Rng(seed);
    let spec = AttentionSpec::bhsd(b, hq, hkv, sq, skv, d, d).with_softcap(softcap);
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<T>(&mut rng, len(Tensor::Q)),
        fill::<T>(&mut rng, len(Tensor::K)),
        fill::<T>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![T::from_f32(f32::NAN); len(Tensor::Y)];
    let mut lse = vec![f32::NAN; b * hq * sq];
    let list_heads = if shared { 1 } else { hkv };
    // Distinct keys per list with -1 padding anywhere; some lists empty.
    let mut lists = vec![-1i64; b * list_heads * sq * topk];
    for (li, list) in lists.chunks_mut(topk).enumerate() {
        if li % sq == 1 {
            continue;
        }
        let mut keys: Vec<i64> = (0..skv as i64).collect();
        for slot in 0..topk.min(skv) {
            let j = slot + rng.below(skv - slot);
            keys.swap(slot, j);
            if rng.uniform() < 0.85 {
                list[slot] = keys[slot];
            }
        }
        for i in (1..topk).rev() {
            list.swap(i, rng.below(i + 1));
        }
    }
    let width = dsa::selected_width(topk, skv, &rules);
    let mut selected = vec![-7i64; b * hkv * sq * width];
    let call = TopKCall {
        spec,
        dtype,
        lists: KeyLists {
            ptr: addr(&lists),
            top_k: topk,
            batch: list_heads * sq * topk,
            head: if shared { 0 } else { sq * topk },
            seq: topk,
        },
        rules,
    };
    let mut scratch = vec![0u64; call.scratch_bytes().div_ceil(8)];
    let io = TopKIo {
        attention: AttentionBuffers {
            q: addr(&q),
            k: addr(&k),
            v: addr(&v),
            y: out(&mut y),
            lse: Some(out(&mut lse)),
        },
        selected: with_selected.then(|| (out(&mut selected), width)),
    };
    // SAFETY: every address is a live Vec sized by the spec and the lists.
    let dev = unsafe { emu::Emulator::new() };
    dsa::topk_attention(&dev, &call, &io, out(&mut scratch)).map_err(|e| e.to_string())?;

    let mut visible = vec![false; b * hq * sq * skv];
    for bi in 0..b {
        for h in 0..hq {
            let lh = if shared { 0 } else { h / (hq / hkv) };
            for t in 0..sq {
                let list = &lists[((bi * list_heads + lh) * sq + t) * topk..][..topk];
                let keys = attended(list, t, skv, &rules);
                for &j in &keys {
                    visible[((bi * hq + h) * sq + t) * skv + j] = true;
                }
                if with_selected && h % (hq / hkv) == 0 {
                    let hk = h / (hq / hkv);
                    let row = &selected[((bi * hkv + hk) * sq + t) * width..][..width];
                    let mut want: Vec<i64> = keys.iter().map(|&j| j as i64).collect();
                    want.resize(width, -1);
                    if row != &want[..] {
                        return Err(format!(
                            "selected (b {bi}, hk {hk}, t {t}): {row:?}, want {want:?}"
                        ));
                    }
                }
            }
        }
    }
    let mask = MaskSpec::NONE.dense(DenseMask::Bool(
        &visible,
        MaskStrides::broadcast(b, hq, sq, skv),
    ));
    let mut y_ref = vec![0.0f64; b * hq * sq * d];
    let mut lse_ref = vec![0.0f64; b * hq * sq];
    reference::attention(&spec, &mask, &q, &k, &v, &mut y_ref, &mut lse_ref);
    let y_got: Vec<f64> = y.iter().map(|x| x.to_f32() as f64).collect();
    let lse_got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let ey = rel_err(&y_got, &y_ref)?;
    let el = rel_err(&lse_got, &lse_ref)?;
    if ey < 1e-2 && el < 1e-2 {
        Ok(())
    } else {
        Err(format!("dims {dims:?}: Y err {ey:.2e}, lse err {el:.2e}"))
    }
}

#[test]
fn sparse_gather_attention_matches_the_reference_over_its_key_lists() {
    let none = SparseRules::default();
    run_sparse::<f16>(
        [2, 4, 2, 9, 200, 128, 40],
        Dtype::F16,
        true,
        0.0,
        none,
        false,
        0xa11,
    )
    .unwrap();
    run_sparse::<bf16>(
        [1, 4, 4, 7, 90, 64, 33],
        Dtype::Bf16,
        false,
        12.0,
        none,
        true,
        0xa12,
    )
    .unwrap();
    // Bottom-right causal with a window and sinks, shared lists, per-head output.
    let keep = SparseRules {
        causal: true,
        q_offset: 70 - 11,
        left_window: Some(6),
        global_tokens: 3,
    };
    run_sparse::<f16>(
        [1, 4, 2, 11, 70, 64, 9],
        Dtype::F16,
        true,
        0.0,
        keep,
        true,
        0xa13,
    )
    .unwrap();
    // More queries than keys: the leading rows see nothing.
    let early = SparseRules {
        causal: true,
        q_offset: 20 - 30,
        left_window: Some(0),
        global_tokens: 0,
    };
    run_sparse::<bf16>(
        [1, 2, 1, 30, 20, 64, 5],
        Dtype::Bf16,
        false,
        0.0,
        early,
        true,
        0xa14,
    )
    .unwrap();
    // Not causal: sinks and window only widen.
    let wide = SparseRules {
        causal: false,
        q_offset: 0,
        left_window: Some(40),
        global_tokens: 50,
    };
    run_sparse::<f16>(
        [2, 2, 2, 8, 60, 128, 4],
        Dtype::F16,
        false,
        0.0,
        wide,
        true,
        0xa15,
    )
    .unwrap();
}

/// Repeated or out-of-range entries are refused with the CPU op's message,
/// naming the lowest bad row in the CPU's numbering.
#[test]
fn bad_index_lists_are_refused_like_the_cpu_op() {
    let (b, hq, hkv, sq, skv, d, topk) = (2usize, 2usize, 2usize, 5usize, 30usize, 64usize, 4usize);
    let spec = AttentionSpec::bhsd(b, hq, hkv, sq, skv, d, d);
    let mut rng = Rng(0xbad);
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<f16>(&mut rng, len(Tensor::Q)),
        fill::<f16>(&mut rng, len(Tensor::K)),
        fill::<f16>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![f16::from_f32(f32::NAN); len(Tensor::Y)];
    let mut scratch = vec![0u64; 64];
    // SAFETY: every address is a live Vec sized by the spec and the lists.
    let dev = unsafe { emu::Emulator::new() };
    let mut run = |lists: &[i64], shared: bool| {
        let call = TopKCall {
            spec,
            dtype: Dtype::F16,
            lists: KeyLists {
                ptr: addr(lists),
                top_k: topk,
                batch: if shared { sq * topk } else { hkv * sq * topk },
                head: if shared { 0 } else { sq * topk },
                seq: topk,
            },
            rules: SparseRules::default(),
        };
        let io = TopKIo {
            attention: AttentionBuffers {
                q: addr(&q),
                k: addr(&k),
                v: addr(&v),
                y: out(&mut y),
                lse: None,
            },
            selected: None,
        };
        dsa::topk_attention(&dev, &call, &io, out(&mut scratch)).map(|_| ())
    };
    let good: Vec<i64> = (0..b * hkv * sq * topk)
        .map(|i| (i % topk) as i64 * 3 - 1)
        .collect();
    run(&good, false).unwrap();
    let mut dup = good.clone();
    // Row (b 1, hk 0, t 2) = 12 repeats key 5; row 17 holds 30.
    dup[12 * topk + 3] = 5;
    dup[12 * topk + 2] = 5;
    dup[17 * topk] = 30;
    let e = run(&dup, false).unwrap_err().to_string();
    assert_eq!(e, "indices: row 12 names key 5 more than once");
    // Shared lists (B, Sq, k): list row 7 = (b 1, t 2), CPU row (1·2 + 0)·5 + 2 = 12.
    let mut shared: Vec<i64> = good[..b * sq * topk].to_vec();
    shared[7 * topk + 1] = -2;
    let e = run(&shared, true).unwrap_err().to_string();
    assert_eq!(
        e,
        "indices: row 12 holds -2, outside [0, 30) (only -1 may pad)"
    );
}

#[test]
fn lse_merge_equals_the_core_merge() {
    let mut rng = Rng(0x3e6);
    let (rows, dv) = (37usize, 72usize);
    let ya: Vec<f32> = (0..rows * dv).map(|_| rng.normal()).collect();
    let yb: Vec<f32> = (0..rows * dv).map(|_| rng.normal()).collect();
    let mut la: Vec<f32> = (0..rows).map(|_| rng.normal() * 3.0).collect();
    let lb: Vec<f32> = (0..rows)
        .map(|i| {
            if i % 5 == 0 {
                f32::NEG_INFINITY
            } else {
                rng.normal() * 3.0
            }
        })
        .collect();
    la[0] = f32::NEG_INFINITY; // both sides empty
    la[3] = f32::NEG_INFINITY;
    let (mut want_y, mut want_l) = (vec![0.0f32; rows * dv], vec![0.0f32; rows]);
    tessera_core::merge(&ya, &la, &yb, &lb, &mut want_y, &mut want_l, dv).unwrap();

    let (mut y, mut l) = (vec![f32::NAN; rows * dv], vec![f32::NAN; rows]);
    let b1 = MergeBuffers {
        y_a: addr(&ya),
        lse_a: addr(&la),
        y_b: addr(&yb),
        lse_b: addr(&lb),
        y: out(&mut y),
        lse: out(&mut l),
    };
    let launch = plan::merge(rows, dv, Dtype::F32, &b1).unwrap();
    // SAFETY: all buffers are rows*dv / rows f32.
    unsafe { emu::launch(&launch) }.unwrap();
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x - y).abs() <= 1e-5 * y.abs().max(1.0))
    };
    assert!(close(&y, &want_y) && close(&l, &want_l));

    // In place: the output aliases side a.
    let (mut ya2, mut la2) = (ya.clone(), la.clone());
    let (pa, pl) = (out(&mut ya2), out(&mut la2));
    let b2 = MergeBuffers {
        y_a: pa,
        lse_a: pl,
        y_b: addr(&yb),
        lse_b: addr(&lb),
        y: pa,
        lse: pl,
    };
    let launch = plan::merge(rows, dv, Dtype::F32, &b2).unwrap();
    // SAFETY: as above; aliasing the output with an input is allowed.
    unsafe { emu::launch(&launch) }.unwrap();
    assert!(close(&ya2, &want_y) && close(&la2, &want_l));

    // bf16 rows.
    let ya16: Vec<bf16> = ya.iter().map(|&x| bf16::from_f32(x)).collect();
    let yb16: Vec<bf16> = yb.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut y16 = vec![bf16::from_f32(f32::NAN); rows * dv];
    let mut l16 = vec![f32::NAN; rows];
    let b16 = MergeBuffers {
        y_a: addr(&ya16),
        lse_a: addr(&la),
        y_b: addr(&yb16),
        lse_b: addr(&lb),
        y: out(&mut y16),
        lse: out(&mut l16),
    };
    let launch = plan::merge(rows, dv, Dtype::Bf16, &b16).unwrap();
    // SAFETY: as above.
    unsafe { emu::launch(&launch) }.unwrap();
    let mut want16 = vec![bf16::from_f32(0.0); rows * dv];
    let mut wl = vec![0.0f32; rows];
    tessera_core::merge(&ya16, &la, &yb16, &lb, &mut want16, &mut wl, dv).unwrap();
    for (g, w) in y16.iter().zip(&want16) {
        assert!(
            (g.to_f32() - w.to_f32()).abs() <= 1e-2 * w.to_f32().abs().max(1e-3),
            "{g} vs {w}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 10, ..Default::default() })]

    /// Random shapes, strides and structural masks: ragged tiles, GQA,
    /// offsets, windows, sinks, chunks, kv lengths and softcap together.
    #[test]
    fn flash_matches_the_reference_on_random_problems(
        b in 1usize..3, hkv in 1usize..3, group in 1usize..3, sq in 1usize..140, skv in 0usize..200,
        d128 in proptest::bool::ANY, bf in proptest::bool::ANY, bshd in proptest::bool::ANY,
        causal in proptest::bool::ANY, offset in -40isize..60, left in -1isize..80, right in -1isize..20,
        globals in 0usize..5, chunk in proptest::sample::select(vec![0usize, 0, 16, 48]),
        softcap in proptest::sample::select(vec![0.0f32, 0.0, 3.0, 25.0]),
        lens in proptest::option::of(proptest::collection::vec(0usize..200, 2)), align in proptest::bool::ANY,
        seed in proptest::num::u64::ANY,
    ) {
        let mut mask = MaskSpec::NONE.offset(offset).window(left, right).globals(globals).chunked(chunk);
        mask.causal = causal;
        let kv_lens: Option<&'static [usize]> = lens.map(|l| &*Box::leak(l.iter().take(b).map(|&x| x.min(skv)).collect::<Vec<_>>().into_boxed_slice()));
        let c = Case {
            bshd,
            softcap,
            kv_lens,
            align: align && kv_lens.is_some(),
            ..case("random", [b, hkv * group, hkv, sq, skv, if d128 { 128 } else { 64 }], mask)
        };
        let r = if bf { run_flash::<bf16>(&c, Dtype::Bf16, seed) } else { run_flash::<f16>(&c, Dtype::F16, seed) };
        proptest::prop_assert!(r.is_ok(), "{:?}", r);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, ..Default::default() })]

    /// Random `LightningIndexer` calls (the CUDA-EP op's launches): shapes,
    /// both formats, f32/f16/bf16 inputs, causal or not, top_k above and
    /// below the visible keys, and score chunks small enough to split the
    /// queries.
    #[test]
    fn the_indexer_op_selects_the_cpu_op_keys_on_random_problems(
        b in 1usize..3, sq in 1usize..20, skv in 0usize..150, heads in 1usize..40,
        d128 in proptest::bool::ANY, e5m2 in proptest::bool::ANY, src in 0usize..3,
        top_k in 1usize..40, causal in proptest::bool::ANY, small_chunks in proptest::bool::ANY,
        seed in proptest::num::u64::ANY,
    ) {
        let dims = (b, sq, skv, heads, if d128 { 128 } else { 64 });
        let budget = if small_chunks { 4 * skv.max(1) * 3 } else { dsa::SCORES_BUDGET };
        let r = match (src, e5m2) {
            (0, false) => run_indexer_op::<f32, E4M3>(Dtype::F32, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (0, true) => run_indexer_op::<f32, E5M2>(Dtype::F32, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
            (1, false) => run_indexer_op::<f16, E4M3>(Dtype::F16, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (1, true) => run_indexer_op::<f16, E5M2>(Dtype::F16, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
            (_, false) => run_indexer_op::<bf16, E4M3>(Dtype::Bf16, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (_, true) => run_indexer_op::<bf16, E5M2>(Dtype::Bf16, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
        };
        proptest::prop_assert!(r.is_ok(), "{:?}", r);
    }

    /// Random `TopKAttention` index-mode calls: GQA, shared or per-head
    /// lists with -1 padding, bottom-right causal offsets, windows, sinks,
    /// and `selected_indices`.
    #[test]
    fn topk_attention_matches_the_reference_on_random_problems(
        b in 1usize..3, hkv in 1usize..3, group in 1usize..3, sq in 1usize..24, skv in 1usize..120,
        d128 in proptest::bool::ANY, bf in proptest::bool::ANY, shared in proptest::bool::ANY,
        topk in 1usize..40, causal in proptest::bool::ANY,
        window in proptest::option::of(0usize..30), globals in 0usize..6,
        selected in proptest::bool::ANY, seed in proptest::num::u64::ANY,
    ) {
        let rules = SparseRules {
            causal,
            q_offset: skv as isize - sq as isize,
            left_window: window,
            global_tokens: globals,
        };
        let dims = [b, hkv * group, hkv, sq, skv, if d128 { 128 } else { 64 }, topk];
        let r = if bf {
            run_sparse::<bf16>(dims, Dtype::Bf16, shared, 0.0, rules, selected, seed)
        } else {
            run_sparse::<f16>(dims, Dtype::F16, shared, 0.0, rules, selected, seed)
        };
        proptest::prop_assert!(r.is_ok(), "{:?}", r);
    }
}
