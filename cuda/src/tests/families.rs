//! The plans of the indexer, quantiser, index-list check, top-k, sparse
//! and merge families.

use tessera_core::mask::MaskSpec;
use tessera_core::spec::AttentionSpec;
use tessera_core::IndexerSpec;

use super::{bufs, invalid_input, G128};
use crate::error::CudaError;
use crate::plan::{self, *};

/// 100 queries of 64 heads of dim 128 against 1000 keys, twice.
const INDEXER_SPEC: IndexerSpec = IndexerSpec {
    batch: 2,
    q_len: 100,
    kv_len: 1000,
    heads: 64,
    dim: 128,
};

fn indexer_bufs() -> IndexerBuffers {
    IndexerBuffers {
        q: DevicePtr(0x100),
        k: DevicePtr(0x200),
        w: DevicePtr(0x300),
        scores: DevicePtr(0x400),
        ..Default::default()
    }
}

#[test]
fn indexer_plans_follow_the_spec_and_refuse_other_masks() {
    let (spec, b) = (INDEXER_SPEC, indexer_bufs());
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

    #[allow(clippy::type_complexity)]
    let refusals: [(
        &str,
        IndexerSpec,
        MaskSpec<'_>,
        IndexerBuffers,
        fn(&CudaError) -> bool,
    ); 4] = [
        (
            "dim 96",
            IndexerSpec { dim: 96, ..spec },
            MaskSpec::NONE,
            b,
            |e| matches!(e, CudaError::Invalid { input: "index_q", rule } if rule.contains("index_dim 96")),
        ),
        ("window", spec, MaskSpec::NONE.window(16, 0), b, |e| {
            matches!(e, CudaError::Unsupported(_))
        }),
        (
            "no heads",
            IndexerSpec { heads: 0, ..spec },
            MaskSpec::NONE,
            b,
            |e| {
                matches!(
                    e,
                    CudaError::Invalid {
                        input: "index_q",
                        ..
                    }
                )
            },
        ),
        (
            "K misaligned",
            spec,
            MaskSpec::NONE,
            IndexerBuffers {
                k: DevicePtr(0x204),
                ..b
            },
            |e| {
                matches!(
                    e,
                    CudaError::Invalid {
                        input: "index_k",
                        ..
                    }
                )
            },
        ),
    ];
    for (what, spec, mask, bufs, want) in refusals {
        let e = plan::indexer(&spec, &mask, &DeviceMask::default(), &bufs).unwrap_err();
        assert!(want(&e), "{what}: {e}");
    }
}

/// E5M2 and scales pick the E5M2 kernel and pass the scale buffers.
#[test]
fn the_e5m2_plan_passes_the_scale_buffers() {
    let (spec, b) = (INDEXER_SPEC, indexer_bufs());
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
