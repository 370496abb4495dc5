//! Unit tests that need no GPU: the validation rules of every plan, the
//! grids, the kernel-name tables against the compiled report, and the
//! embedded fatbins.
//!
//! `flash` and `families` test the plans of each kernel family; this
//! module holds their fixtures and the tests of the kernel table, the
//! embedded fatbins and the driver.

use crate::error::CudaError;
use crate::plan::{self, *};

mod families;
mod flash;

pub(super) const G128: Geometry = Geometry {
    threads: 256,
    tile_a: 128,
    tile_b: 64,
    smem: 98304,
};

pub(super) fn bufs() -> AttentionBuffers {
    AttentionBuffers {
        q: DevicePtr(0x1000),
        k: DevicePtr(0x2000),
        v: DevicePtr(0x3000),
        y: DevicePtr(0x4000),
        lse: Some(DevicePtr(0x5000)),
    }
}

pub(super) fn invalid_input(e: CudaError) -> &'static str {
    match e {
        CudaError::Invalid { input, .. } => input,
        other => panic!("expected Invalid, got {other:?}"),
    }
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
