//! Unit tests that need no GPU: the validation rules of every plan, the
//! grids, the kernel-name tables against the compiled report, and the
//! embedded fatbins.

use proptest::prelude::*;
use tessera_core::mask::{MaskSpec, MaskStrides};
use tessera_core::spec::AttentionSpec;
use tessera_core::Error;
use tessera_core::IndexerSpec;

use crate::error::CudaError;
use crate::plan::{self, *};

const G128: Geometry = Geometry {
    threads: 256,
    tile_a: 128,
    tile_b: 64,
    smem: 98304,
};

fn bufs() -> AttentionBuffers {
    AttentionBuffers {
        q: DevicePtr(0x1000),
        k: DevicePtr(0x2000),
        v: DevicePtr(0x3000),
        y: DevicePtr(0x4000),
        lse: Some(DevicePtr(0x5000)),
    }
}

fn invalid_input(e: CudaError) -> &'static str {
    match e {
        CudaError::Invalid { input, .. } => input,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

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

#[test]
fn attention_refuses_what_the_kernels_cannot_do_and_names_the_input() {
    let spec = AttentionSpec::bhsd(1, 4, 2, 64, 64, 64, 64);
    let none = DeviceMask::default();
    let run =
        |s: &AttentionSpec, m: &MaskSpec<'_>, d: &DeviceMask, t: Dtype, b: &AttentionBuffers| {
            plan::attention(s, m, d, t, b)
        };

    let e = run(
        &AttentionSpec::bhsd(1, 4, 2, 64, 64, 96, 96),
        &MaskSpec::NONE,
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, CudaError::Unsupported(m) if m.contains("D=96")),
        "{e}"
    );
    let e = run(
        &AttentionSpec::bhsd(1, 4, 2, 64, 64, 128, 64),
        &MaskSpec::NONE,
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, CudaError::Unsupported(m) if m.contains("Dv=64")),
        "{e}"
    );
    let e = run(&spec, &MaskSpec::NONE, &none, Dtype::F32, &bufs()).unwrap_err();
    assert!(
        matches!(&e, CudaError::Unsupported(m) if m.contains("f32")),
        "{e}"
    );

    let e = run(
        &AttentionSpec::bhsd(1, 3, 2, 64, 64, 64, 64),
        &MaskSpec::NONE,
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        CudaError::Spec(Error::HeadsNotDivisible {
            q_heads: 3,
            kv_heads: 2
        })
    );
    let e = run(
        &spec.with_scale(f32::NAN),
        &MaskSpec::NONE,
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert!(matches!(e, CudaError::Spec(Error::BadScale(_))));
    let e = run(
        &spec,
        &MaskSpec::NONE.window(-2, 0),
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert_eq!(e, CudaError::Spec(Error::WindowBelowMinusOne(-2)));

    let mut b = bufs();
    b.k = DevicePtr(0x2008);
    assert_eq!(
        invalid_input(run(&spec, &MaskSpec::NONE, &none, Dtype::F16, &b).unwrap_err()),
        "K"
    );
    b = bufs();
    b.y = DevicePtr::NULL;
    let e = run(&spec, &MaskSpec::NONE, &none, Dtype::F16, &b).unwrap_err();
    assert_eq!(e.to_string(), "Y: device pointer is null");
    b = bufs();
    b.lse = Some(DevicePtr(0x5002));
    assert_eq!(
        invalid_input(run(&spec, &MaskSpec::NONE, &none, Dtype::F16, &b).unwrap_err()),
        "softmax_lse"
    );

    let mut odd = spec;
    odd.v.seq = 68; // a padded V row: not 16-byte aligned
    let e = run(&odd, &MaskSpec::NONE, &none, Dtype::F16, &bufs()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("V: seq stride 68 must be a multiple of 8"),
        "{e}"
    );

    let lens = [64usize];
    let e = run(
        &spec,
        &MaskSpec::NONE.kv_lens(&lens, true),
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "nonpad_kv_seqlen");
    let seg = [0i32; 64];
    let e = run(
        &spec,
        &MaskSpec::NONE.segments(&seg, &seg),
        &none,
        Dtype::F16,
        &bufs(),
    )
    .unwrap_err();
    assert!(matches!(e, CudaError::Unsupported(_)));
    let align = DeviceMask {
        align_to_kv_lens: true,
        ..none
    };
    assert_eq!(
        invalid_input(run(&spec, &MaskSpec::NONE, &align, Dtype::F16, &bufs()).unwrap_err()),
        "nonpad_kv_seqlen"
    );

    let wide = AttentionSpec::bhsd(70_000, 4, 2, 1, 64, 64, 64);
    let e = run(&wide, &MaskSpec::NONE, &none, Dtype::F16, &bufs()).unwrap_err();
    assert!(
        e.to_string()
            .contains("batch 70000 exceeds the CUDA grid limit"),
        "{e}"
    );
}

#[test]
fn indexer_plans_follow_the_spec_and_refuse_other_masks() {
    let spec = IndexerSpec {
        batch: 2,
        q_len: 100,
        kv_len: 1000,
        heads: 64,
        dim: 128,
    };
    let b = IndexerBuffers {
        q: DevicePtr(0x100),
        k: DevicePtr(0x200),
        w: DevicePtr(0x300),
        scores: DevicePtr(0x400),
        ..Default::default()
    };
    let l = plan::indexer(
        &spec,
        &MaskSpec::NONE.causal(900),
        &DeviceMask::default(),
        &b,
    )
    .unwrap();
    assert_eq!(l.kernel, "tessera_indexer_e4m3_d128");
    assert_eq!(
        (
            l.params.causal,
            l.params.q_offset,
            l.params.heads,
            l.params.dim
        ),
        (1, 900, 64, 128)
    );
    let g = Geometry {
        threads: 256,
        tile_a: 8,
        tile_b: 64,
        smem: 9216,
    };
    assert_eq!((l.grid)(&l.params, &g), [16, 13, 2]);

    let e = plan::indexer(
        &IndexerSpec { dim: 96, ..spec },
        &MaskSpec::NONE,
        &DeviceMask::default(),
        &b,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CudaError::Invalid { input: "index_q", rule } if rule.contains("index_dim 96")),
        "{e}"
    );
    let e = plan::indexer(
        &spec,
        &MaskSpec::NONE.window(16, 0),
        &DeviceMask::default(),
        &b,
    )
    .unwrap_err();
    assert!(matches!(e, CudaError::Unsupported(_)));
    let e = plan::indexer(
        &IndexerSpec { heads: 0, ..spec },
        &MaskSpec::NONE,
        &DeviceMask::default(),
        &b,
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "index_q");
    let e = plan::indexer(
        &spec,
        &MaskSpec::NONE,
        &DeviceMask::default(),
        &IndexerBuffers {
            k: DevicePtr(0x204),
            ..b
        },
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "index_k");

    // E5M2 and scales pick the E5M2 kernel and pass the scale buffers.
    let scaled = IndexerBuffers {
        q_scale: Some(DevicePtr(0x500)),
        k_scale: Some(DevicePtr(0x600)),
        bad: Some(DevicePtr(0x700)),
        ..b
    };
    let l = plan::indexer_fp8(
        &IndexerSpec { dim: 64, ..spec },
        &MaskSpec::NONE,
        &DeviceMask::default(),
        plan::Fp8Format::E5M2,
        &scaled,
    )
    .unwrap();
    assert_eq!(l.kernel, "tessera_indexer_e5m2_d64");
    assert_eq!(
        (l.params.q_scale, l.params.k_scale, l.params.bad),
        (0x500, 0x600, 0x700)
    );
    let e = plan::indexer_fp8(
        &spec,
        &MaskSpec::NONE,
        &DeviceMask::default(),
        plan::Fp8Format::E4M3,
        &IndexerBuffers {
            bad: Some(DevicePtr(0x704)),
            ..scaled
        },
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "bad");
}

#[test]
fn quantize_and_index_check_plans() {
    let l = plan::quantize(
        "index_k",
        plan::Fp8Format::E5M2,
        Dtype::Bf16,
        1000,
        200,
        DevicePtr(0x100),
        DevicePtr(0x200),
        DevicePtr(0x300),
        DevicePtr(0x400),
    )
    .unwrap();
    assert_eq!(l.kernel, "tessera_quantize_e5m2_bf16");
    let g = Geometry {
        threads: 256,
        tile_a: 8,
        tile_b: 128,
        smem: 0,
    };
    // 1000 rows of 2 groups, 8 per CTA.
    assert_eq!((l.grid)(&l.params, &g), [250, 1, 1]);
    let e = plan::quantize(
        "index_q",
        plan::Fp8Format::E4M3,
        Dtype::F32,
        1,
        0,
        DevicePtr(0x100),
        DevicePtr(0x200),
        DevicePtr(0x300),
        DevicePtr(0x400),
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "index_q");

    let rules = plan::SparseRules {
        causal: true,
        q_offset: 30,
        left_window: Some(8),
        global_tokens: 2,
    };
    let l = plan::index_check(
        600,
        100,
        130,
        16,
        &rules,
        DevicePtr(0x100),
        DevicePtr(0x200),
        Some((DevicePtr(0x300), 27)),
    )
    .unwrap();
    assert_eq!(
        (
            l.params.q_offset,
            l.params.left_window,
            l.params.global_tokens,
            l.params.width,
            l.params.causal
        ),
        (30, 8, 2, 27, 1)
    );
    let e = plan::index_check(
        1,
        1,
        plan::INDEX_CHECK_MAX_KEYS + 1,
        4,
        &rules,
        DevicePtr(0x100),
        DevicePtr(0x200),
        None,
    )
    .unwrap_err();
    assert_eq!(invalid_input(e), "K");
}

#[test]
fn top_k_plans_check_k_and_alignment() {
    let l = plan::top_k(33, 4096, 2048, DevicePtr(0x100), DevicePtr(0x200)).unwrap();
    assert_eq!(
        (l.params.rows, l.params.row_len, l.params.k),
        (33, 4096, 2048)
    );
    assert_eq!((l.grid)(&l.params, &G128), [33, 1, 1]);
    assert_eq!(
        plan::top_k(1, 10, 0, DevicePtr(0x100), DevicePtr(0x200))
            .unwrap_err()
            .to_string(),
        "top_k: top_k must be at least 1"
    );
    assert_eq!(
        invalid_input(plan::top_k(1, 10, 2, DevicePtr(0x100), DevicePtr(0x204)).unwrap_err()),
        "indices"
    );
    assert_eq!(
        invalid_input(plan::top_k(1, 0, 2, DevicePtr(0x100), DevicePtr(0x200)).unwrap_err()),
        "scores"
    );
}

#[test]
fn sparse_and_merge_plans() {
    let spec = AttentionSpec::bhsd(2, 8, 1, 50, 4000, 128, 128);
    let lists = KeyLists::shared(DevicePtr(0x800), 50, 2048);
    let l =
        plan::sparse_attention(&spec, Dtype::F16, &lists, &Default::default(), &bufs()).unwrap();
    assert_eq!(l.kernel, "tessera_sparse_f16_sc0");
    assert_eq!(
        (
            l.params.idx_batch,
            l.params.idx_head,
            l.params.idx_seq,
            l.params.topk
        ),
        (50 * 2048, 0, 2048, 2048)
    );
    assert_eq!((l.grid)(&l.params, &G128), [50, 2, 1]);
    let big = AttentionSpec::bhsd(1, 1, 1, 4, 4, 264, 264);
    assert!(matches!(
        plan::sparse_attention(&big, Dtype::F16, &lists, &Default::default(), &bufs()),
        Err(CudaError::Unsupported(_))
    ));
    let none = KeyLists { top_k: 0, ..lists };
    assert_eq!(
        invalid_input(
            plan::sparse_attention(&spec, Dtype::Bf16, &none, &Default::default(), &bufs())
                .unwrap_err()
        ),
        "top_k"
    );

    let m = MergeBuffers {
        y_a: DevicePtr(0x100),
        lse_a: DevicePtr(0x200),
        y_b: DevicePtr(0x300),
        lse_b: DevicePtr(0x400),
        y: DevicePtr(0x100),
        lse: DevicePtr(0x200),
    };
    let l = plan::merge(1000, 128, Dtype::F32, &m).unwrap();
    assert_eq!(l.kernel, "tessera_merge_f32");
    assert_eq!(
        (l.grid)(
            &l.params,
            &Geometry {
                threads: 256,
                tile_a: 8,
                tile_b: 1,
                smem: 0
            }
        ),
        [125, 1, 1]
    );
    assert_eq!(
        invalid_input(plan::merge(10, 0, Dtype::F16, &m).unwrap_err()),
        "Y"
    );
    let odd = MergeBuffers {
        y_b: DevicePtr(0x302),
        ..m
    };
    assert_eq!(
        invalid_input(plan::merge(10, 8, Dtype::F32, &odd).unwrap_err()),
        "Y_b"
    );
    assert!(plan::merge(10, 8, Dtype::F16, &odd).is_ok());
}

#[test]
fn every_kernel_name_is_instantiated_and_unique() {
    let all = plan::all_kernels();
    // flash, sparse + index check, indexer + quantise + widen, top-k, merge.
    assert_eq!(all.len(), 16 + (4 + 1) + (4 + 6 + 3) + 1 + 3);
    let mut names: Vec<_> = all.iter().map(|k| k.1).collect();
    assert!(!names.contains(&"tessera_not_instantiated"));
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len());
}

#[cfg(feature = "cuda")]
mod embedded {
    use super::*;
    use crate::module::reported_entry;

    #[test]
    fn every_module_is_an_embedded_fatbin() {
        let names: Vec<_> = crate::kernels::FATBINS.iter().map(|f| f.0).collect();
        assert_eq!(names, ["flash", "indexer", "merge", "sparse", "topk"]);
        for (name, image) in crate::kernels::FATBINS {
            assert_eq!(
                &image[..4],
                &[0x50, 0xed, 0x55, 0xba],
                "{name}: fatbin magic"
            );
            assert!(image.len() > 1024, "{name}");
        }
    }

    /// The Rust name table and the .cu instantiation tables agree, for both
    /// architectures, and no kernel spills registers.
    #[test]
    fn the_ptxas_report_lists_exactly_the_host_kernels_and_none_spills() {
        let report = crate::kernels::PTXAS_REPORT;
        let host: std::collections::BTreeSet<_> = plan::all_kernels().iter().map(|k| k.1).collect();
        for arch in ["sm_80", "sm_90"] {
            let compiled: std::collections::BTreeSet<_> = report
                .lines()
                .filter(|l| l.ends_with(&format!("for '{arch}'")))
                .filter_map(reported_entry)
                .collect();
            assert_eq!(compiled, host, "{arch}");
        }
        let lines: Vec<_> = report.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(entry) = reported_entry(l) else {
                continue;
            };
            let props = lines[i + 1..]
                .iter()
                .take(3)
                .find(|l| l.contains("bytes spill stores"))
                .unwrap();
            assert!(props.contains(" 0 bytes spill stores"), "{entry}: {props}");
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_feature_nothing_is_embedded() {
    assert!(crate::kernels::FATBINS.is_empty());
    assert!(crate::kernels::PTXAS_REPORT.is_empty());
}

#[test]
fn without_a_driver_the_module_says_why() {
    match crate::Module::for_current_context() {
        Ok(_) => {} // a GPU machine
        Err(e) => assert!(
            matches!(
                e,
                CudaError::NoDriver { .. }
                    | CudaError::NoContext
                    | CudaError::Driver { .. }
                    | CudaError::NotBuilt
            ),
            "{e}"
        ),
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
