//! The flash kernels (`kernels/flash.cu`) against the f64 reference, on
//! every mask kind and on random problems.

use tessera_core::mask::{DenseMask, MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Tensor};
use tessera_core::{bf16, f16, reference, Element};
use tessera_cuda::plan::{self, DeviceDenseMask, DeviceMask, Dtype};
use tessera_cuda::{emu, AttentionBuffers};

use crate::support::{addr, fill, out, rel_err, Rng};

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
    let spec = c.spec();
    let [b, hq, _, sq, _, _] = c.dims;
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<T>(&mut rng, len(Tensor::Q)),
        fill::<T>(&mut rng, len(Tensor::K)),
        fill::<T>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![T::from_f32(f32::NAN); len(Tensor::Y)];
    let mut lse = vec![f32::NAN; b * hq * sq];
    let dense = DenseMasks::random(&mut rng, c);
    let lens64: Vec<i64> = c
        .kv_lens
        .map(|l| l.iter().map(|&x| x as i64).collect())
        .unwrap_or_default();
    let (reference_mask, device) = dense.masks(c, &lens64);
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

    let (b, d) = (spec.batch, spec.head_dim);
    let mut y_ref = vec![0.0f64; b * hq * sq * d];
    let mut lse_ref = vec![0.0f64; b * hq * sq];
    reference::attention(&spec, &reference_mask, &q, &k, &v, &mut y_ref, &mut lse_ref);
    let (ey, el) = errors(&spec, &y, &lse, &y_ref, &lse_ref)?;
    if ey > 1e-2 || el > 1e-2 {
        return Err(format!("Y err {ey:.2e}, lse err {el:.2e} (of max |ref|)"));
    }
    eprintln!("{}: Y err {ey:.1e}, lse err {el:.1e}", c.name);
    Ok(())
}

impl Case {
    /// BHSD or BSHD, with the case's softcap and scale.
    fn spec(&self) -> AttentionSpec {
        let [b, hq, hkv, sq, skv, d] = self.dims;
        let mut spec = if self.bshd {
            AttentionSpec::bshd
        } else {
            AttentionSpec::bhsd
        }(b, hq, hkv, sq, skv, d, d);
        spec.softcap = self.softcap;
        if let Some(s) = self.scale {
            spec.scale = s;
        }
        spec
    }
}

/// Random dense masks over `(1, Hq, Sq, Skv)`: a bool one with one row
/// fully masked, and an additive one with some `-inf`.
struct DenseMasks {
    strides: MaskStrides,
    bool_mask: Vec<bool>,
    additive: Vec<f32>,
}

impl DenseMasks {
    fn random(rng: &mut Rng, c: &Case) -> Self {
        let [_, hq, _, sq, skv, _] = c.dims;
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
        Self {
            strides,
            bool_mask,
            additive,
        }
    }

    /// The case's mask as the reference takes it (host slices) and as the
    /// kernel takes it (device addresses of `lens64` and of these masks).
    fn masks<'a>(&'a self, c: &Case, lens64: &[i64]) -> (MaskSpec<'a>, DeviceMask) {
        let strides = self.strides;
        let mut reference_mask = c.mask;
        if let Some(l) = c.kv_lens {
            reference_mask = reference_mask.kv_lens(l, c.align);
        }
        let device = DeviceMask {
            kv_lens: c.kv_lens.map(|_| addr(lens64)),
            align_to_kv_lens: c.align,
            dense: match c.dense {
                Dense::None => None,
                Dense::Bool => {
                    reference_mask =
                        reference_mask.dense(DenseMask::Bool(&self.bool_mask, strides));
                    Some(DeviceDenseMask {
                        ptr: addr(&self.bool_mask),
                        is_bool: true,
                        strides,
                    })
                }
                Dense::Additive => {
                    reference_mask =
                        reference_mask.dense(DenseMask::Additive(&self.additive, strides));
                    Some(DeviceDenseMask {
                        ptr: addr(&self.additive),
                        is_bool: false,
                        strides,
                    })
                }
            },
        };
        (reference_mask, device)
    }
}

/// The relative errors of Y (read through the spec's output strides) and
/// of the lse against the reference.
fn errors<T: Element>(
    spec: &AttentionSpec,
    y: &[T],
    lse: &[f32],
    y_ref: &[f64],
    lse_ref: &[f64],
) -> Result<(f64, f64), String> {
    let d = spec.head_dim;
    let mut y_got = Vec::with_capacity(y_ref.len());
    for bi in 0..spec.batch {
        for h in 0..spec.q_heads {
            for i in 0..spec.q_len {
                let o = spec.out.offset(bi, h, i);
                y_got.extend(y[o..o + d].iter().map(|x| x.to_f32() as f64));
            }
        }
    }
    let lse_got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let ey = rel_err(&y_got, y_ref).map_err(|e| format!("Y: {e}"))?;
    let el = rel_err(&lse_got, lse_ref).map_err(|e| format!("lse: {e}"))?;
    Ok((ey, el))
}

/// The fixed cases, in the order that seeds them.
fn flash_cases() -> Vec<(Case, Dtype)> {
    let mut cases = structural_cases();
    cases.extend(dense_mask_cases());
    cases.extend(edge_cases());
    cases
}

/// Both head dims and types under each structural rule: causal (GQA,
/// bottom-right), windows with sinks, softcap and scale, kv lengths, chunks.
fn structural_cases() -> Vec<(Case, Dtype)> {
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
    ]
}

/// A bool mask, and an additive one under a causal rule.
fn dense_mask_cases() -> Vec<(Case, Dtype)> {
    let none = MaskSpec::NONE;
    vec![
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
    ]
}

/// A negative offset (leading rows fully masked), BSHD, and no keys.
fn edge_cases() -> Vec<(Case, Dtype)> {
    let none = MaskSpec::NONE;
    vec![
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
