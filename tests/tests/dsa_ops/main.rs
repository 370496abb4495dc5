//! `ai.tessera.LightningIndexer`, `TopKAttention` and `MergeAttention`
//! through ONNX Runtime (the `ort` crate, loading `libonnxruntime` from
//! `ORT_DYLIB_PATH`) and the built plugin: numbers against f64 references
//! written here, dense equivalence, an exact merge of two key halves, a
//! table of bad inputs with the message each must give, and threads sharing
//! one session.
//!
//! One module per job: `node` builds and runs one-node models, `reference`
//! holds the f64 references, then one module per op's tests, `bfloat16`
//! for bfloat16 inputs, and `bad_inputs` for the refusals.

#[path = "../shared/mod.rs"]
mod shared;

mod bad_inputs;
mod bfloat16;
mod indexer;
mod merge;
mod node;
mod reference;
mod topk;

use shared::env;
