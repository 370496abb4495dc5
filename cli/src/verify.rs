//! `verify`: run the original and the rewritten model in ONNX Runtime and
//! compare. The Rust side reads the graph (input names, types, the
//! embedding table's size for token ids, which input is the attention mask)
//! and writes a JSON spec; ONNX Runtime is driven through its Python API
//! (`py/verify.py`, embedded) with the venv's interpreter, one child process
//! per model so each peak RSS is measured alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::{Dim, GraphIndex};
use crate::model::Model;

/// The embedded driver script.
pub const DRIVER: &str = include_str!("../py/verify.py");

/// Options of one `verify` run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sequence lengths to try.
    pub seqs: Vec<usize>,
    /// Batch size.
    pub batch: usize,
    /// Max abs error allowed.
    pub tol: f64,
    /// JSON output.
    pub json: bool,
    /// `name=file.npy` inputs.
    pub given: Vec<(String, PathBuf)>,
    /// ORT intra-op threads (0 = ORT's default).
    pub threads: usize,
    /// `bench` only: where to write the PNG plot (`None` = no plot).
    pub plot: Option<PathBuf>,
}

/// Describe each graph input: name, element type, dims, and its role
/// (`token_ids` with the vocabulary size, `attention_mask`, `position_ids`,
/// `token_type_ids`, or `data`).
pub fn input_specs(model: &Model) -> Vec<Value> {
    let g = model.graph();
    let ix = GraphIndex::new(g);
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name()))
        .map(|i| {
            let name = i.name();
            let dims: Vec<Value> = ix
                .shape(name)
                .unwrap_or_default()
                .into_iter()
                .map(|d| match d {
                    Dim::Fixed(v) => json!(v),
                    Dim::Named(s) => json!(s),
                    Dim::Unknown => Value::Null,
                })
                .collect();
            let vocab = ix.consumers(name).iter().find_map(|&c| {
                let n = ix.node(c);
                (n.op_type() == crate::names::GATHER && n.input.get(1).map(String::as_str) == Some(name))
                    .then(|| g.initializer.iter().find(|t| t.name() == n.input[0]).and_then(|t| t.dims.first().copied()))
                    .flatten()
            });
            let lower = name.to_ascii_lowercase();
            let role = if vocab.is_some() && !lower.contains("position") && !lower.contains("type") {
                "token_ids"
            } else if lower.contains("mask") {
                "attention_mask"
            } else if lower.contains("position") {
                "position_ids"
            } else if lower.contains("type") {
                "token_type_ids"
            } else {
                "data"
            };
            json!({"name": name, "elem_type": ix.elem_type(name).unwrap_or(1), "dims": dims, "role": role, "vocab": vocab})
        })
        .collect()
}

/// The Python with onnxruntime: `$TESSERA_PYTHON`, else `./.venv`, else the
/// workspace's `.venv` next to the executable's `target/`.
pub fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_PYTHON") {
        return Ok(p.into());
    }
    let mut tried = vec![PathBuf::from(".venv/bin/python")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(3) {
            tried.push(root.join(".venv/bin/python"));
        }
    }
    tried.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        Error(format!(
            "no Python with onnxruntime found (tried $TESSERA_PYTHON, {}); run `eval \"$(scripts/venv.sh --env)\"` or set TESSERA_PYTHON",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// `libtessera_ort.so`: `$TESSERA_PLUGIN`, else next to the executable.
pub fn plugin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_PLUGIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error(format!("cannot locate the tessera executable: {e}")))?;
    let p = exe.with_file_name("libtessera_ort.so");
    if !p.exists() {
        bail!("{} not found; build it with `cargo build --release -p tessera-ort` or set TESSERA_PLUGIN", p.display());
    }
    Ok(p)
}

/// Run the comparison; returns the driver's exit status (0 = within tolerance).
pub fn verify(original: &Path, rewritten: &Path, model: &Model, opts: &Options) -> Result<i32> {
    let spec = json!({
        "original": original.display().to_string(),
        "rewritten": rewritten.display().to_string(),
        "plugin": plugin()?.display().to_string(),
        "inputs": input_specs(model),
        "seqs": opts.seqs,
        "batch": opts.batch,
        "tol": opts.tol,
        "json": opts.json,
        "threads": opts.threads,
        "given": opts.given.iter().map(|(n, p)| (n.clone(), json!(p.display().to_string()))).collect::<serde_json::Map<_, _>>(),
    });
    run_driver(&spec)
}

/// Time the original and each `(label, path)` rewrite side by side
/// (`opts.tol` and `opts.given` are not used).
pub fn bench(model: &Model, rewrites: &[(String, PathBuf)], opts: &Options) -> Result<i32> {
    let mut models = vec![json!(["original", model.path.display().to_string()])];
    models.extend(
        rewrites
            .iter()
            .map(|(l, p)| json!([l, p.display().to_string()])),
    );
    let spec = json!({
        "bench": true,
        "models": models,
        "plot": opts.plot.as_ref().map(|p| p.display().to_string()),
        "title": format!("tessera bench: {}", model.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())),
        "plugin": plugin()?.display().to_string(),
        "inputs": input_specs(model),
        "seqs": opts.seqs,
        "batch": opts.batch,
        "json": opts.json,
        "threads": opts.threads,
    });
    run_driver(&spec)
}

/// Write the driver and its spec to a temporary folder and run it.
fn run_driver(spec: &Value) -> Result<i32> {
    run_python("verify.py", DRIVER, spec)
}

/// Write the Python script `source` (as `file_name`) and `spec` to a
/// temporary folder and run it with the venv's Python; its exit status.
pub fn run_python(file_name: &str, source: &str, spec: &Value) -> Result<i32> {
    let tmp = std::env::temp_dir().join(format!("tessera-verify-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error(format!("{}: {e}", tmp.display())))?;
    let driver = tmp.join(file_name);
    let spec_path = tmp.join("spec.json");
    std::fs::write(&driver, source).map_err(|e| Error(format!("{}: {e}", driver.display())))?;
    // Other drivers import their shared helpers (element types, peak RSS) from verify.py.
    let shared = tmp.join("verify.py");
    std::fs::write(&shared, DRIVER).map_err(|e| Error(format!("{}: {e}", shared.display())))?;
    std::fs::write(&spec_path, spec.to_string())
        .map_err(|e| Error(format!("{}: {e}", spec_path.display())))?;
    let py = python()?;
    let progress = crate::progress::Progress::start().on();
    let status = Command::new(&py)
        .arg(&driver)
        .arg(&spec_path)
        .env(crate::progress::ENV, if progress { "1" } else { "0" })
        .status()
        .map_err(|e| Error(format!("cannot run {}: {e}", py.display())));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(status?.code().unwrap_or(1))
}
