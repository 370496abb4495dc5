//! What the ORT test targets share (each includes this file with `#[path]`):
//! the one ORT environment of the process and a session with the plugin.

use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use tessera_tests::{ort_dylib, plugin_path};

/// The process's ORT environment, or `None` (the test skips) where
/// `ORT_DYLIB_PATH` or the plugin is missing.
pub fn env() -> Option<&'static Environment> {
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

/// A session of `model` with the plugin loaded and `threads` intra-op
/// threads; the error as text.
pub fn session(env: &Environment, model: &[u8], threads: usize) -> Result<Session, String> {
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_operator_library(plugin_path())
        .map_err(|e| e.to_string())?
        .commit_from_memory(model)
        .map_err(|e| e.to_string())
}
