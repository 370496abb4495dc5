//! `ai.tessera.Attention` through ONNX Runtime (the `ort` crate, loading
//! `libonnxruntime` from `ORT_DYLIB_PATH`) and the built plugin: numbers
//! against the f64 ONNX oracle, a table of bad inputs with the message each
//! must give, and threads over several sessions.
//!
//! One module per job: `case` builds a one-node model from a numeric case
//! and checks its outputs, `numeric` holds the fixed and random cases,
//! `bad_inputs` the refusals, `threads` the sessions on many threads.

#[path = "../shared/mod.rs"]
mod shared;

mod bad_inputs;
mod case;
mod numeric;
mod threads;

use shared::{env, session};
