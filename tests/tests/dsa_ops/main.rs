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

use std::sync::OnceLock;

use ort::environment::Environment;
use tessera_tests::ort_dylib;

mod bad_inputs;
mod bfloat16;
mod indexer;
mod merge;
mod node;
mod reference;
mod topk;

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
