//! The `tessera` graph tool: read ONNX models, find attention sites, swap
//! them for `ai.tessera.Attention`, and check that the swap changed nothing.
//!
//! Modules, one job each: [`proto`] (the ONNX schema), [`model`] (files and
//! external data), [`graph`] (an index over one graph), [`eval`] (a small
//! interpreter for mask subgraphs), [`mask`] (mask recognition), [`sites`] (matchers), [`rewrite`] (the swap),
//! [`inspect`] (the report), [`verify`] (running both models in ONNX Runtime).

pub mod demo;
pub mod error;
pub mod eval;
pub mod graph;
pub mod inspect;
pub mod mask;
pub mod model;
pub mod names;
pub mod proto;
pub mod rewrite;
pub mod sites;
pub mod verify;
