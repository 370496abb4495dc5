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
        y: addr(&y),
        lse: Some(addr(&lse)),
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
