//! Validation and parameter blocks, without a GPU: each function checks a
//! call against the rules of the CUDA kernels and returns the [`Launch`] --
//! the kernel's name, its parameter block and how its grid follows from the
//! kernel's geometry. [`Module`](crate::Module) only looks the kernel up and
//! launches it, so every rule here is unit-tested on machines without CUDA.
//!
//! One module per kernel family, mirroring `kernels/*.cu`: `flash`,
//! `indexer` (with the quantiser and the widening), `topk`, `sparse` (with
//! the index-list check) and `merge`; what they share lives once in
//! `common`. Every item is re-exported here, at the path callers use.

// Kernel names, the Rust side of the instantiation tables: each family's
// module lists its own with this macro.

macro_rules! names {
    ($name:ident($($arg:ident: $t:ty),*) { $($pat:pat => $s:literal,)* }) => {
        /// The entry point (a name in the instantiation table of the `.cu` file).
        pub fn $name($($arg: $t),*) -> &'static str {
            match ($($arg),*) {
                $($pat => $s,)*
                #[allow(unreachable_patterns)]
                _ => "tessera_not_instantiated",
            }
        }
    };
}

mod common;
mod flash;
mod indexer;
mod merge;
mod sparse;
mod topk;

pub use common::{
    AttentionBuffers, DeviceDenseMask, DeviceMask, DevicePtr, Dtype, Geometry, Launch, HALF_DTYPES,
};
pub use flash::{attention, flash_geometry, flash_kernel, FLASH_HEAD_DIMS};
pub use indexer::{
    indexer, indexer_fp8, indexer_geometry, indexer_kernel, quantize, quantize_kernel, widen,
    widen_kernel, Fp8Format, IndexerBuffers, INDEXER_HEAD_DIMS, SCALE_GROUP,
};
pub use merge::{merge, merge_kernel, MergeBuffers};
pub use sparse::{
    index_check, sparse_attention, sparse_kernel, KeyLists, SparseRules, INDEX_CHECK_MAX_KEYS,
    SPARSE_MAX_DIM,
};
pub use topk::top_k;

/// Every (module, entry point, geometry symbol) the host can launch.
pub fn all_kernels() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = Vec::new();
    for dt in HALF_DTYPES {
        for d in FLASH_HEAD_DIMS {
            for sc in [false, true] {
                for dm in [false, true] {
                    v.push(("flash", flash_kernel(dt, d, sc, dm), flash_geometry(dt, d)));
                }
            }
        }
        for sc in [false, true] {
            v.push(("sparse", sparse_kernel(dt, sc), "tessera_sparse_geom"));
        }
    }
    for f in [Fp8Format::E4M3, Fp8Format::E5M2] {
        for d in INDEXER_HEAD_DIMS {
            v.push(("indexer", indexer_kernel(f, d), indexer_geometry(f, d)));
        }
        for src in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            v.push(("indexer", quantize_kernel(f, src), "tessera_quantize_geom"));
        }
    }
    for src in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        v.push(("indexer", widen_kernel(src), "tessera_widen_geom"));
    }
    v.push(("sparse", "tessera_index_check", "tessera_index_check_geom"));
    v.push(("topk", "tessera_topk_f32", "tessera_topk_f32_geom"));
    for dt in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        v.push(("merge", merge_kernel(dt), "tessera_merge_geom"));
    }
    v
}
