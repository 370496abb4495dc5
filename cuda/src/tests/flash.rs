//! The flash plan: the block it builds from a spec and mask, and every
//! call it refuses, named.

use proptest::prelude::*;
use tessera_core::mask::{MaskSpec, MaskStrides};
use tessera_core::spec::AttentionSpec;
use tessera_core::Error;

use super::{bufs, invalid_input, G128};
use crate::error::CudaError;
use crate::plan::{self, *};

#[test]
fn attention_params_carry_the_spec_and_mask() {
    let spec = AttentionSpec::bshd(2, 8, 2, 300, 500, 128, 128).with_softcap(30.0);
    let mask = MaskSpec::NONE
        .causal(7)
        .window(128, 0)
        .globals(4)
        .chunked(0);
    let dev = DeviceMask {
        kv_lens: Some(DevicePtr(0x6000)),
        align_to_kv_lens: true,
        dense: None,
    };
    let l = plan::attention(&spec, &mask, &dev, Dtype::Bf16, &bufs()).unwrap();
    assert_eq!(l.kernel, "tessera_flash_bf16_d128_sc1_dm0");
    assert_eq!(l.geometry, "tessera_flash_bf16_d128_geom");
    let p = l.params;
    assert_eq!(
        (p.batch, p.q_heads, p.kv_heads, p.q_len, p.kv_len),
        (2, 8, 2, 300, 500)
    );
    assert_eq!(
        (p.q_batch, p.q_head, p.q_seq),
        (300 * 8 * 128, 128, 8 * 128)
    );
    assert_eq!(
        (p.k_batch, p.k_head, p.k_seq),
        (500 * 2 * 128, 128, 2 * 128)
    );
    assert_eq!(
        (
            p.causal,
            p.q_offset,
            p.left_window,
            p.right_window,
            p.global_tokens
        ),
        (1, 7, 128, 0, 4)
    );
    assert_eq!((p.kv_lens, p.offset_from_kv_lens, p.mask), (0x6000, 1, 0));
    assert_eq!((p.scale, p.softcap), (spec.scale, 30.0));
    assert_eq!(p.lse, 0x5000);
    assert_eq!((l.grid)(&p, &G128), [3, 8, 2]);
}

#[test]
fn a_dense_mask_selects_the_masked_variant_and_its_strides() {
    let spec = AttentionSpec::bhsd(1, 4, 4, 64, 64, 64, 64);
    let dense = DeviceDenseMask {
        ptr: DevicePtr(0x7001),
        is_bool: true,
        strides: MaskStrides::broadcast(1, 1, 64, 64),
    };
    let dev = DeviceMask {
        dense: Some(dense),
        ..DeviceMask::default()
    };
    let l = plan::attention(&spec, &MaskSpec::NONE, &dev, Dtype::F16, &bufs()).unwrap();
    assert_eq!(l.kernel, "tessera_flash_f16_d64_sc0_dm1");
    assert_eq!(
        (
            l.params.m_batch,
            l.params.m_head,
            l.params.m_q,
            l.params.m_k
        ),
        (0, 0, 64, 1)
    );
    assert_eq!((l.params.mask, l.params.mask_is_bool), (0x7001, 1));
    // An additive mask must be f32-aligned.
    let add = DeviceMask {
        dense: Some(DeviceDenseMask {
            is_bool: false,
            ..dense
        }),
        ..dev
    };
    assert_eq!(
        invalid_input(
            plan::attention(&spec, &MaskSpec::NONE, &add, Dtype::F16, &bufs()).unwrap_err()
        ),
        "attn_mask"
    );
}

/// One call the flash plan must refuse, and the test its error must pass.
struct Refusal {
    what: &'static str,
    spec: AttentionSpec,
    mask: MaskSpec<'static>,
    device: DeviceMask,
    dtype: Dtype,
    bufs: AttentionBuffers,
    want: fn(&CudaError) -> bool,
}

/// A valid f16 call (GQA 4:2, D = 64) refused only for what a case changes.
fn refusal(what: &'static str, want: fn(&CudaError) -> bool) -> Refusal {
    Refusal {
        what,
        spec: AttentionSpec::bhsd(1, 4, 2, 64, 64, 64, 64),
        mask: MaskSpec::NONE,
        device: DeviceMask::default(),
        dtype: Dtype::F16,
        bufs: bufs(),
        want,
    }
}

/// Sizes and types the flash kernels are not built for.
fn shape_refusals() -> Vec<Refusal> {
    vec![
        Refusal {
            spec: AttentionSpec::bhsd(1, 4, 2, 64, 64, 96, 96),
            ..refusal(
                "D = 96",
                |e| matches!(e, CudaError::Unsupported(m) if m.contains("D=96")),
            )
        },
        Refusal {
            spec: AttentionSpec::bhsd(1, 4, 2, 64, 64, 128, 64),
            ..refusal(
                "Dv != D",
                |e| matches!(e, CudaError::Unsupported(m) if m.contains("Dv=64")),
            )
        },
        Refusal {
            dtype: Dtype::F32,
            ..refusal(
                "f32",
                |e| matches!(e, CudaError::Unsupported(m) if m.contains("f32")),
            )
        },
        Refusal {
            spec: AttentionSpec::bhsd(70_000, 4, 2, 1, 64, 64, 64),
            ..refusal("batch over the grid", |e| {
                e.to_string()
                    .contains("batch 70000 exceeds the CUDA grid limit")
            })
        },
    ]
}

/// Specs and masks the core rules refuse before any CUDA rule.
fn spec_refusals() -> Vec<Refusal> {
    let spec = refusal("", |_| true).spec;
    vec![
        Refusal {
            spec: AttentionSpec::bhsd(1, 3, 2, 64, 64, 64, 64),
            ..refusal("heads not divisible", |e| {
                *e == CudaError::Spec(Error::HeadsNotDivisible {
                    q_heads: 3,
                    kv_heads: 2,
                })
            })
        },
        Refusal {
            spec: spec.with_scale(f32::NAN),
            ..refusal("NaN scale", |e| {
                matches!(e, CudaError::Spec(Error::BadScale(_)))
            })
        },
        Refusal {
            mask: MaskSpec::NONE.window(-2, 0),
            ..refusal("window -2", |e| {
                *e == CudaError::Spec(Error::WindowBelowMinusOne(-2))
            })
        },
    ]
}

/// Misaligned or null buffers and strides the vector loads cannot take.
fn buffer_refusals() -> Vec<Refusal> {
    let b = bufs();
    let mut odd = refusal("", |_| true).spec;
    odd.v.seq = 68; // a padded V row: not 16-byte aligned
    vec![
        Refusal {
            bufs: AttentionBuffers {
                k: DevicePtr(0x2008),
                ..b
            },
            ..refusal("K misaligned", |e| {
                matches!(e, CudaError::Invalid { input: "K", .. })
            })
        },
        Refusal {
            bufs: AttentionBuffers {
                y: DevicePtr::NULL,
                ..b
            },
            ..refusal("Y null", |e| e.to_string() == "Y: device pointer is null")
        },
        Refusal {
            bufs: AttentionBuffers {
                lse: Some(DevicePtr(0x5002)),
                ..b
            },
            ..refusal("lse misaligned", |e| {
                matches!(
                    e,
                    CudaError::Invalid {
                        input: "softmax_lse",
                        ..
                    }
                )
            })
        },
        Refusal {
            spec: odd,
            ..refusal("V row not 16-byte aligned", |e| {
                e.to_string()
                    .starts_with("V: seq stride 68 must be a multiple of 8")
            })
        },
    ]
}

/// Mask parts in host memory, which the GPU cannot read.
fn mask_refusals() -> Vec<Refusal> {
    static LENS: [usize; 1] = [64];
    static SEG: [i32; 64] = [0; 64];
    vec![
        Refusal {
            mask: MaskSpec::NONE.kv_lens(&LENS, true),
            ..refusal("host kv lengths", |e| {
                matches!(
                    e,
                    CudaError::Invalid {
                        input: "nonpad_kv_seqlen",
                        ..
                    }
                )
            })
        },
        Refusal {
            mask: MaskSpec::NONE.segments(&SEG, &SEG),
            ..refusal("segments", |e| matches!(e, CudaError::Unsupported(_)))
        },
        Refusal {
            device: DeviceMask {
                align_to_kv_lens: true,
                ..DeviceMask::default()
            },
            ..refusal("align without kv lens", |e| {
                matches!(
                    e,
                    CudaError::Invalid {
                        input: "nonpad_kv_seqlen",
                        ..
                    }
                )
            })
        },
    ]
}

#[test]
fn attention_refuses_what_the_kernels_cannot_do_and_names_the_input() {
    let cases: Vec<Refusal> = [
        shape_refusals(),
        spec_refusals(),
        buffer_refusals(),
        mask_refusals(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(cases.len(), 14);
    for c in cases {
        let got = plan::attention(&c.spec, &c.mask, &c.device, c.dtype, &c.bufs);
        match got {
            Ok(_) => panic!("{}: accepted", c.what),
            Err(e) => assert!((c.want)(&e), "{}: {e}", c.what),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any valid shape plans, with the spec's sizes and strides in the block;
    /// misaligning any one pointer is refused and named.
    #[test]
    fn valid_shapes_plan_and_misaligned_pointers_do_not(
        batch in 1usize..5, kv in 1usize..5, group in 1usize..5, q_len in 1usize..3000, kv_len in 0usize..3000,
        d in prop::sample::select(vec![64usize, 128]), bshd in any::<bool>(), causal in any::<bool>(),
        left in -1isize..300, bf16 in any::<bool>(), which in 0usize..4, off in 1u64..16,
    ) {
        let make = if bshd { AttentionSpec::bshd } else { AttentionSpec::bhsd };
        let spec = make(batch, kv * group, kv, q_len, kv_len, d, d);
        let mut mask = MaskSpec::NONE.window(left, -1);
        mask.causal = causal;
        let dt = if bf16 { Dtype::Bf16 } else { Dtype::F16 };
        let l = plan::attention(&spec, &mask, &DeviceMask::default(), dt, &bufs()).unwrap();
        prop_assert_eq!(l.params.q_seq as usize, spec.q.seq);
        prop_assert_eq!(l.params.y_head as usize, spec.out.head);
        prop_assert_eq!(l.params.kv_heads as usize, kv);
        prop_assert_eq!(l.params.causal, causal as i32);
        prop_assert_eq!((l.grid)(&l.params, &G128)[0] as usize, q_len.div_ceil(128));

        let mut b = bufs();
        match which {
            0 => b.q.0 += off,
            1 => b.k.0 += off,
            2 => b.v.0 += off,
            _ => b.y.0 += off,
        }
        let e = plan::attention(&spec, &mask, &DeviceMask::default(), dt, &b).unwrap_err();
        prop_assert_eq!(invalid_input(e), ["Q", "K", "V", "Y"][which]);
    }
}
