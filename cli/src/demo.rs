//! `tessera demo`: the whole path on the bundled ModernBERT-style model —
//! build the plugin if missing, get ONNX Runtime into `./.venv` if missing,
//! inspect, rewrite, verify (batch 2, padded) and bench S = 512, 2K, 8K.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::error::{Error, Result};
use crate::rewrite::{rewrite, Policy};
use crate::{inspect, model, verify};

/// The bundled model the demo uses.
pub const MODEL: &str = "models/modernbert_sdpa_opset20.onnx";

/// The workspace root: the folder holding `models/`, from the current
/// folder or from the executable's place in `target/<profile>/`.
pub fn workspace_root() -> Result<PathBuf> {
    let mut tried =
        vec![std::env::current_dir().map_err(|e| Error(format!("current folder: {e}")))?];
    if let Ok(exe) = std::env::current_exe() {
        tried.extend(exe.ancestors().nth(3).map(Path::to_path_buf));
    }
    tried
        .iter()
        .find(|d| d.join(MODEL).exists())
        .cloned()
        .ok_or_else(|| {
            Error(format!(
                "{MODEL} not found under {tried:?}; run the demo from the repository"
            ))
        })
}

fn step(n: usize, what: &str) {
    eprintln!("\n[{n}/5] {what}");
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| Error(format!("{what}: cannot start: {e}")))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Run the demo; returns verify's exit status.
pub fn demo(seqs: &[usize], threads: usize) -> Result<i32> {
    let root = workspace_root()?;
    step(1, "plugin and ONNX Runtime");
    prepare(&root)?;
    let src = root.join(MODEL);
    let m = model::load(&src)?;
    step(2, &format!("inspect {}", src.display()));
    print!("{}", inspect::table(&m, &inspect::sites(&m)));
    step(3, "rewrite --policy exact");
    let out = rewrite_exact(&root, &m)?;
    step(
        4,
        "verify at S = 128, 512, batch 2, right-padded (tolerance 1e-4)",
    );
    let opts = verify::Options {
        seqs: vec![128, 512],
        batch: 2,
        tol: 1e-4,
        json: false,
        given: Vec::new(),
        threads,
        plot: None,
    };
    let code = verify::verify(&src, &out, &m, &opts)?;
    if code != 0 {
        bail!("verify failed: the rewrite changed the results");
    }
    step(
        5,
        &format!("bench at S = {seqs:?}, batch 1 (each model in its own process)"),
    );
    let plot = root.join("target/demo/bench.png");
    let opts = verify::Options {
        seqs: seqs.to_vec(),
        batch: 1,
        plot: Some(plot),
        ..opts
    };
    verify::bench(&m, &[("tessera exact".into(), out)], &opts)
}

/// Step 1: build the plugin and make the Python venv if missing, and point
/// `TESSERA_PYTHON` at it.
fn prepare(root: &Path) -> Result<()> {
    if verify::plugin().is_err() {
        eprintln!("building libtessera_ort.so (cargo build --release -p tessera-ort)");
        run(
            Command::new("cargo")
                .args(["build", "--release", "-p", "tessera-ort"])
                .current_dir(root),
            "cargo build",
        )?;
    }
    if std::env::var_os("TESSERA_PYTHON").is_none() {
        // Creates ./.venv on first use; later only checks the pinned
        // requirements' stamp (and installs what a newer checkout added).
        eprintln!(
            "python: {}/.venv with python/requirements.txt (onnxruntime, matplotlib, …)",
            root.display()
        );
        run(
            Command::new("bash")
                .args(["-c", "source scripts/lib.sh && need_venv"])
                .current_dir(root),
            "need_venv",
        )?;
        std::env::set_var("TESSERA_PYTHON", root.join(".venv/bin/python"));
    }
    Ok(())
}

/// Step 3: the exact rewrite of `m`, saved under `target/demo/`.
fn rewrite_exact(root: &Path, m: &model::Model) -> Result<PathBuf> {
    let mut r = m.clone();
    let report = rewrite(&mut r, &Policy::Exact, None)?;
    let out = root.join("target/demo/modernbert.tessera.onnx");
    model::save(&r, &out)?;
    eprintln!(
        "{} site(s) rewritten, {} node(s) pruned -> {}",
        report.rewritten.len(),
        report.pruned,
        out.display()
    );
    Ok(out)
}
