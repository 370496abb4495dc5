//! The `tessera` graph tool: read ONNX models, find attention sites, swap
//! them for `ai.tessera.Attention`, and check that the swap changed nothing.
//!
//! Modules, one job each: [`proto`] (the ONNX schema), [`model`] (files and
//! external data), [`graph`] (an index over one graph), [`names`] (ONNX op
//! and attribute names; Tessera's come from [`tessera_schema`]), [`eval`] (a
//! small interpreter for mask subgraphs, op table by op table), [`mask`]
//! (mask recognition), [`sites`] (one matcher per exporter form),
//! [`rewrite`] (the swap, step by step), [`inspect`] (the report),
//! [`verify`] (running both models in ONNX Runtime), [`generate`] (greedy
//! decoding with a KV cache, both models), [`demo`] (the whole path on the
//! bundled model), [`progress`] (a line per long step).

pub mod demo;
pub mod error;
pub mod eval;
pub mod generate;
pub mod graph;
pub mod inspect;
pub mod logits;
pub mod mask;
pub mod model;
pub mod names;
pub mod progress;
pub mod proto;
pub mod rewrite;
pub mod sites;
pub mod validate;
pub mod verify;
