//! # tessera-core
//!
//! Exact tiled attention with online softmax, for `no_std` targets and
//! servers alike. No heap, no `alloc`, and no panic on input that passed
//! validation.
//!
//! ## Cost model
//! - **Time**: `4·D` flops per *visible* (query, key) pair, counted per tile:
//!   a (q-tile, kv-tile) pair that the mask classifies as
//!   [`TileClass::Empty`] is never loaded, `Full` tiles do no per-element
//!   test, and `Partial` tiles test each element. A sliding window of width
//!   `w` over `S` tokens therefore costs `O(S·w)`, not `O(S²)`.
//! - **Memory**: the caller passes all of it. One [`Flash`] call needs
//!   [`Flash::scratch_len`]`(D, Dv)` f32s of scratch and a small, fixed
//!   stack frame (no arrays sized by the tiles). Output and lse are written
//!   in place.
//! - **Accuracy**: accumulation is always f32; results hold to ~1e-5
//!   relative of the f64 [`reference`] for f32 inputs.
//!
//! ## Use
//! ```
//! use tessera_core::{Attention, AttentionSpec, Flash, MaskSpec, kernel::Portable};
//! let spec = AttentionSpec::bhsd(1, 2, 1, 5, 7, 4, 4); // B, Hq, Hkv, Sq, Skv, D, Dv
//! let (q, k, v) = ([0.5f32; 40], [0.25f32; 28], [1.0f32; 28]);
//! let mask = MaskSpec::NONE.causal(2).window(3, 0);
//! let att = Attention::new(&spec, &mask, &q, &k, &v).unwrap();
//! type F = Flash<Portable, 8, 16>;
//! let mut scratch = [0.0f32; F::scratch_len(4, 4)];
//! let mut y = [0.0f32; 40];
//! F::new(Portable).run(&att, &mut y, None, &mut scratch).unwrap();
//! assert!((y[0] - 1.0).abs() < 1e-6);
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod blocksel;
pub mod element;
pub mod error;
pub mod flash;
pub mod fp8;
pub mod indexer;
pub mod kernel;
pub mod mask;
pub mod merge;
pub mod reference;
pub mod sparse;
pub mod spec;
pub mod stats;
pub mod topk;

pub use blocksel::{summarize, BlockSelector, BlockSummaries, BoundFormat, Keep};
pub use element::Element;
pub use error::{Error, Size, Tensor};
pub use flash::{Attention, Flash, TileOut, DV_ALIGN};
pub use fp8::{Fp8, Scales, E4M3, E5M2};
pub use half::{bf16, f16};
pub use indexer::{Indexer, IndexerSpec, LightningIndexer};
pub use mask::{DenseMask, MaskSpec, MaskStrides, RowSpan, Segments, TileClass};
pub use merge::{merge, merge_into};
pub use sparse::{GatherAttention, IndexList, SparseAttention};
pub use spec::{default_scale, AttentionSpec, Strides};
pub use stats::Stats;
pub use topk::{top_k, top_k_in_place, KeyIndex};
