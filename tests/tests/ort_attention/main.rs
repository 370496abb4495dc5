//! `ai.tessera.Attention` through ONNX Runtime (the `ort` crate, loading
//! `libonnxruntime` from `ORT_DYLIB_PATH`) and the built plugin: numbers
//! against the f64 ONNX oracle, a table of bad inputs with the message each
//! must give, and threads over several sessions.
//!
//! One module per job: `case` builds a one-node model from a numeric case
//! and checks its outputs, `numeric` holds the fixed and random cases,
//! `bad_inputs` the refusals, `threads` the sessions on many threads.

use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use tessera_tests::{ort_dylib, plugin_path};

mod bad_inputs;
mod case;
mod numeric;
mod threads;

fn env() -> Option<&'static Environment> {
    static ENV: OnceLock<Option<Environment>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = ort_dylib()?;
        Some(
            ort::init_from(path)
                .expect("load libonnxruntime")
                .build()
                .expect("ORT environment"),
        )
    })
    .as_ref()
}

fn session(env: &Environment, model: &[u8], threads: usize) -> Result<Session, String> {
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_operator_library(plugin_path())
        .map_err(|e| e.to_string())?
        .commit_from_memory(model)
        .map_err(|e| e.to_string())
}
