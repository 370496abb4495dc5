//! The CUDA kernels, compiled as host C++ against the CPU emulator
//! (`--features emulate`), checked against tessera-core's f64 reference on
//! random data: outputs are poisoned with NaN first, NaN never passes.
//! Every launch goes through the same `plan` validation and parameter blocks
//! as a GPU launch; only the driver call differs.

use tessera_core::mask::{DenseMask, MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Tensor};
use tessera_core::{bf16, f16, reference, Element, IndexerSpec, E4M3};
use tessera_cuda::plan::{
    self, DeviceDenseMask, DeviceMask, DevicePtr, Dtype, IndexerBuffers, KeyLists, MergeBuffers,
};
use tessera_cuda::{emu, AttentionBuffers};

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

#[test]
fn the_fp8_indexer_matches_an_f64_reference() {
    for (i, &(b, sq, skv, heads, dim, causal, offset, lens, align)) in [
        (
            1usize, 9usize, 150usize, 16usize, 128usize, true, 141isize, None, false,
        ),
        (2, 11, 70, 5, 64, false, 0, Some([70usize, 33usize]), false),
        (2, 8, 130, 32, 128, true, 0, Some([130, 64]), true),
        (1, 5, 90, 20, 128, true, 80, None, false),
        // Several CTAs along the keys, and more heads than stay in registers.
        (1, 9, 600, 80, 128, true, 591, None, false),
        (1, 6, 700, 40, 64, false, 0, None, false),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng(0x51ed + i as u64);
        let q: Vec<E4M3> = (0..b * sq * heads * dim)
            .map(|_| E4M3::from_f32(rng.normal() * 2.0))
            .collect();
        let k: Vec<E4M3> = (0..b * skv * dim)
            .map(|_| E4M3::from_f32(rng.normal() * 2.0))
            .collect();
        let w: Vec<f32> = (0..b * sq * heads).map(|_| rng.normal()).collect();
        let mut scores = vec![f32::NAN; b * sq * skv];
        let lens64: Vec<i64> = lens
            .map(|l| l.iter().map(|&x| x as i64).collect())
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
        };
        let mut launch = plan::indexer(&spec, &mask, &device, &bufs).unwrap();
        // Odd cases run the sm_80 path: fp8 widened onto the f16 mma.
        if i % 2 == 1 {
            launch.kernel = if dim == 64 {
                "tessera_indexer_e4m3_d64_widened"
            } else {
                "tessera_indexer_e4m3_d128_widened"
            };
        }
        // SAFETY: every pointer is a live Vec of the spec's size.
        unsafe { emu::launch(&launch) }.unwrap();

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
                        let qr = &q[((bi * sq + t) * heads + j) * dim..][..dim];
                        let kr = &k[(bi * skv + s) * dim..][..dim];
                        let dot: f64 = qr
                            .iter()
                            .zip(kr)
                            .map(|(a, c)| a.to_f32() as f64 * c.to_f32() as f64)
                            .sum();
                        total += w[(bi * sq + t) * heads + j] as f64 * dot.max(0.0);
                    }
                    want.push(total);
                }
            }
        }
        let got: Vec<f64> = scores.iter().map(|&x| x as f64).collect();
        let err = rel_err(&got, &want).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert!(err < 1e-5, "case {i}: err {err:.2e}");
    }
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

fn run_sparse<T: Element>(dims: [usize; 7], dtype: Dtype, shared: bool, softcap: f32, seed: u64) {
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
    // Distinct keys per list, -1 padding at the end, query 1 sees nothing.
    let mut lists = vec![-1i64; b * list_heads * sq * topk];
    for (li, list) in lists.chunks_mut(topk).enumerate() {
        if li % sq == 1 {
            continue;
        }
        let mut keys: Vec<i64> = (0..skv as i64).collect();
        for slot in 0..topk.saturating_sub(2).min(skv) {
            let j = slot + rng.below(skv - slot);
            keys.swap(slot, j);
            list[slot] = keys[slot];
        }
    }
    let kl = KeyLists {
        ptr: addr(&lists),
        top_k: topk,
        batch: list_heads * sq * topk,
        head: if shared { 0 } else { sq * topk },
        seq: topk,
    };
    let bufs = AttentionBuffers {
        q: addr(&q),
        k: addr(&k),
        v: addr(&v),
        y: out(&mut y),
        lse: Some(out(&mut lse)),
    };
    let launch = plan::sparse_attention(&spec, dtype, &kl, &bufs).unwrap();
    // SAFETY: every pointer is a live Vec sized by the spec and the lists.
    unsafe { emu::launch(&launch) }.unwrap();

    let mut visible = vec![false; b * hq * sq * skv];
    for bi in 0..b {
        for h in 0..hq {
            let lh = if shared { 0 } else { h / (hq / hkv) };
            for t in 0..sq {
                for &key in &lists[((bi * list_heads + lh) * sq + t) * topk..][..topk] {
                    if key >= 0 {
                        visible[((bi * hq + h) * sq + t) * skv + key as usize] = true;
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
    let ey = rel_err(&y_got, &y_ref).unwrap();
    let el = rel_err(&lse_got, &lse_ref).unwrap();
    assert!(
        ey < 1e-2 && el < 1e-2,
        "dims {dims:?}: Y err {ey:.2e}, lse err {el:.2e}"
    );
}

#[test]
fn sparse_gather_attention_matches_the_reference_over_its_key_lists() {
    run_sparse::<f16>([2, 4, 2, 9, 200, 128, 40], Dtype::F16, true, 0.0, 0xa11);
    run_sparse::<bf16>([1, 4, 4, 7, 90, 64, 33], Dtype::Bf16, false, 12.0, 0xa12);
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
