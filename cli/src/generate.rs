//! `generate`: greedy decoding with a decoder exported with a KV cache, in
//! ONNX Runtime, original against rewritten: a prefill of the prompt, then
//! steps that feed each `present.N.*` output back as `past_key_values.N.*`.
//! It compares the tokens and the logits and reports prefill time, time per
//! token and peak RSS. The Rust side finds the roles of the graph's inputs
//! and outputs and writes a JSON spec; the loop runs in `py/generate.py`
//! (embedded), one child process per model, as `verify` does.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::bail;
use crate::error::{Error, Result};
use crate::graph::{Dim, GraphIndex};
use crate::model::Model;
use crate::verify::{input_specs, plugin, run_python};

/// The embedded driver script.
pub const DRIVER: &str = include_str!("../py/generate.py");

/// Where the prompt comes from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Token ids as given.
    Ids(Vec<i64>),
    /// A text file, read with a `tokenizer.json`, cut to at most `max` tokens (0 = all).
    Text {
        /// The text file.
        file: PathBuf,
        /// The tokenizer (`tokenizers` JSON).
        tokenizer: PathBuf,
        /// Most prompt tokens (0 = no limit).
        max: usize,
    },
}

/// Options of one `generate` run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The prompt.
    pub prompt: Prompt,
    /// Greedy tokens per row (the prefill chooses the first).
    pub tokens: usize,
    /// Rows; row `b` drops the first `b·S/(2B)` prompt tokens and is left-padded.
    pub batch: usize,
    /// Max abs logit difference allowed.
    pub tol: f64,
    /// ORT intra-op threads (0 = ORT's default).
    pub threads: usize,
    /// JSON output.
    pub json: bool,
}

/// Whether `model` takes a KV cache: a rank-4 graph input named `*past*`.
pub fn has_cache(model: &Model) -> bool {
    !past_inputs(model).is_empty()
}

/// The rank-4 `*past*` graph inputs with their `(heads, head_dim)`, when fixed.
fn past_inputs(model: &Model) -> Vec<(String, Option<i64>, Option<i64>)> {
    let g = model.graph();
    let ix = GraphIndex::new(g);
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name()) && i.name().to_ascii_lowercase().contains("past"))
        .filter_map(|i| match ix.shape(i.name()).as_deref() {
            Some([_, h, _, d]) => {
                let fixed = |x: &Dim| match x {
                    Dim::Fixed(v) => Some(*v),
                    _ => None,
                };
                Some((i.name().to_string(), fixed(h), fixed(d)))
            }
            _ => None,
        })
        .collect()
}

/// The output that holds a past input's next value: `past_key_values.N.key`
/// → `present.N.key` (optimum and torch), else `past_*` → `present_*`.
fn present_for(past: &str, outputs: &[&str]) -> Option<String> {
    let candidates = [
        past.replacen("past_key_values", "present", 1),
        past.replacen("past", "present", 1),
    ];
    candidates
        .into_iter()
        .find(|c| c != past && outputs.contains(&c.as_str()))
}

/// The JSON spec for the driver: inputs with roles (`past` with heads and
/// head size), `present_of` (past input → present output) and the logits.
pub fn spec(model: &Model, original: &str, rewritten: &str, opts: &Options) -> Result<Value> {
    let g = model.graph();
    let outputs: Vec<&str> = g.output.iter().map(|o| o.name()).collect();
    let pasts = past_inputs(model);
    if pasts.is_empty() {
        bail!(
            "{}: no KV cache (no rank-4 graph input named like past_key_values.N.key); generate needs a decoder exported with past and present",
            model.path.display()
        );
    }
    let mut present_of = serde_json::Map::new();
    for (p, _, _) in &pasts {
        let present = present_for(p, &outputs).ok_or_else(|| {
            Error(format!(
                "past input '{p}' has no matching present output (looked for '{}'); outputs are {outputs:?}",
                p.replacen("past_key_values", "present", 1)
            ))
        })?;
        present_of.insert(p.clone(), json!(present));
    }
    let logits = outputs
        .iter()
        .find(|o| o.to_ascii_lowercase().contains("logits"))
        .or(outputs.first())
        .map(|s| s.to_string())
        .ok_or_else(|| Error("the model has no outputs".into()))?;
    let mut inputs = input_specs(model);
    for inp in &mut inputs {
        let name = inp["name"].as_str().unwrap_or_default().to_string();
        if let Some((_, h, d)) = pasts.iter().find(|(p, _, _)| *p == name) {
            let (Some(h), Some(d)) = (h, d) else {
                bail!("past input '{name}': heads and head size must be fixed dims (B, H, P, D)");
            };
            inp["role"] = json!("past");
            inp["heads"] = json!(h);
            inp["head_dim"] = json!(d);
        }
    }
    let (prompt, prompt_file, tokenizer, max) = match &opts.prompt {
        Prompt::Ids(ids) => (json!(ids), Value::Null, Value::Null, 0),
        Prompt::Text {
            file,
            tokenizer,
            max,
        } => (
            Value::Null,
            json!(file.display().to_string()),
            json!(tokenizer.display().to_string()),
            *max,
        ),
    };
    Ok(json!({
        "original": original,
        "rewritten": rewritten,
        "plugin": plugin()?.display().to_string(),
        "inputs": inputs,
        "present_of": present_of,
        "logits": logits,
        "prompt": prompt,
        "prompt_file": prompt_file,
        "tokenizer": tokenizer,
        "max_prompt": max,
        "steps": opts.tokens,
        "batch": opts.batch,
        "tol": opts.tol,
        "threads": opts.threads,
        "json": opts.json,
    }))
}

/// Run the comparison; returns the driver's exit status (0 = tokens
/// identical and logits within tolerance).
pub fn generate(
    original: &std::path::Path,
    rewritten: &std::path::Path,
    model: &Model,
    opts: &Options,
) -> Result<i32> {
    if opts.tokens == 0 || opts.batch == 0 {
        bail!("generate: --tokens and --batch must be at least 1");
    }
    if let Prompt::Ids(ids) = &opts.prompt {
        if ids.is_empty() {
            bail!("generate: the prompt has no tokens");
        }
    }
    if let Prompt::Text {
        file, tokenizer, ..
    } = &opts.prompt
    {
        for (what, p) in [("--prompt", file), ("--tokenizer", tokenizer)] {
            if !p.is_file() {
                bail!("generate: {what} {}: no such file", p.display());
            }
        }
    }
    let spec = spec(
        model,
        &original.display().to_string(),
        &rewritten.display().to_string(),
        opts,
    )?;
    run_python("generate.py", DRIVER, &spec)
}

/// Greedy tokens `verify` generates after each prompt of a cache model.
pub const VERIFY_TOKENS: usize = 8;

/// `verify` on a decoder with a KV cache: for each `--seq` length, a prompt
/// of that many deterministic token ids, prefilled and then decoded for
/// [`VERIFY_TOKENS`] steps through the cache (so both the prefill and the
/// cached steps are checked). The worst exit status.
pub fn verify_with_cache(
    original: &std::path::Path,
    rewritten: &std::path::Path,
    model: &Model,
    opts: &crate::verify::Options,
) -> Result<i32> {
    if !opts.given.is_empty() {
        bail!(
            "verify: --input is not supported for a model with a KV cache; use `tessera generate`"
        );
    }
    let vocab = input_specs(model)
        .iter()
        .find_map(|i| {
            (i["role"] == "token_ids")
                .then(|| i["vocab"].as_i64())
                .flatten()
        })
        .unwrap_or(2)
        .max(2);
    let mut worst = 0;
    for &s in &opts.seqs {
        let mut rng = crate::eval::Lcg(0x9e9e + s as u64);
        let ids = (0..s).map(|_| (rng.draw() % vocab as u64) as i64).collect();
        let g = Options {
            prompt: Prompt::Ids(ids),
            tokens: VERIFY_TOKENS,
            batch: opts.batch,
            tol: opts.tol,
            threads: opts.threads,
            json: opts.json,
        };
        worst = worst.max(generate(original, rewritten, model, &g)?);
    }
    Ok(worst)
}

/// The tokenizer next to a model: `tokenizer.json` in its folder, if any.
pub fn tokenizer_next_to(model: &std::path::Path) -> Option<PathBuf> {
    let p = model.parent()?.join("tokenizer.json");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presents_are_found_by_the_exporters_names() {
        let outs = [
            "logits",
            "present.0.key",
            "present.0.value",
            "present_1_key",
        ];
        assert_eq!(
            present_for("past_key_values.0.value", &outs).as_deref(),
            Some("present.0.value")
        );
        assert_eq!(
            present_for("past_1_key", &outs).as_deref(),
            Some("present_1_key")
        );
        assert_eq!(present_for("past_key_values.1.key", &outs), None);
    }
}
