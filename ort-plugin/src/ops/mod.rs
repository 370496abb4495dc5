//! The ops of the `ai.tessera` domain, one folder each: the op's schema in
//! its `mod.rs`, its CPU kernel in `cpu.rs` and its CUDA-EP kernel in
//! `cuda.rs` (feature `cuda`).
//!
//! - [`attention`]: ONNX `Attention` with windows, global tokens and the
//!   log-sum-exp output;
//! - [`lightning_indexer`]: FP8 index scores and the top-k keys per query;
//! - [`topk_attention`]: attention over selected keys only;
//! - [`merge_attention`]: the exact LSE merge of two partial results.
//!
//! The math lives in `tessera-core`; the ops check shapes and attributes,
//! turn every refusal into an error naming the input and the rule, and
//! spread the work over ORT's intra-op pool.
//!
//! **Causal alignment of the DSA ops.** `LightningIndexer` and
//! `TopKAttention` have no cache inputs: K holds every key and the queries
//! are the *last* `Sq` positions, so query `i` sees key `j` iff
//! `j <= i + Skv - Sq` (bottom-right; the same as `ai.tessera.Attention`
//! with `nonpad_kv_seqlen = Skv`, and as plain causal when `Sq = Skv`).

pub mod attention;
pub mod lightning_indexer;
pub mod merge_attention;
pub mod topk_attention;

use tessera_schema::attention::input::Q;
use tessera_schema::Name;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, InputTensor};

/// Input `name` as `&[T]`, or the rule that it must have Q's element type.
pub(crate) fn like_q<T: Dtype>(t: &InputTensor, name: Name) -> Result<&[T]> {
    t.slice::<T>(name.as_str(), T::ONNX)
        .map_err(|_| unlike_q(name, t.ts.elem, T::ONNX))
}

/// The rule input `name` (of element type `found`) breaks when Q's is `q`.
pub(crate) fn unlike_q(name: Name, found: i32, q: i32) -> Error {
    Error::invalid(format!(
        "{name}: element type {} must equal {Q}'s {}",
        elem::name(found),
        elem::name(q)
    ))
}
