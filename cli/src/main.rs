//! `tessera`: inspect, rewrite and verify attention in ONNX models.
//! See the README section "The tessera graph tool".

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_cli::error::{Error, Result};
use tessera_cli::rewrite::{parse_layers, rewrite, Policy};
use tessera_cli::{bail, inspect, model, verify};

const USAGE: &str = "usage:
  tessera inspect MODEL.onnx [--json]
  tessera rewrite IN.onnx -o OUT.onnx [--policy exact|window=L,R[,global-every=N][,globals=G]|topk=K[,window=L][,globals=G]] [--layers LIST]
  tessera verify ORIGINAL.onnx REWRITTEN.onnx [--seq N,...] [--batch B] [--tol X] [--threads T] [--input name=file.npy]... [--json]
  tessera demo [--seq 512,2048,8192] [--threads T]
  tessera bench MODEL.onnx [--seq N,...] [--policy P]... [--batch B] [--threads T] [--plot FILE.png] [--json]";

/// Command-line words: positional arguments and `--flag [value]` pairs.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(words: &[String], with_value: &[&str]) -> Result<Self> {
        let (mut positional, mut flags) = (Vec::new(), Vec::new());
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if w.starts_with('-') && w.len() > 1 {
                let (k, v) = match w.split_once('=') {
                    Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
                    _ => (w.clone(), None),
                };
                if with_value.contains(&k.as_str()) {
                    let v = match v {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| Error(format!("{k} needs a value\n{USAGE}")))?,
                    };
                    flags.push((k, Some(v)));
                } else if v.is_none() && matches!(k.as_str(), "--json" | "-h" | "--help") {
                    flags.push((k, None));
                } else {
                    bail!("unknown option '{w}'\n{USAGE}");
                }
            } else {
                positional.push(w.clone());
            }
        }
        Ok(Self { positional, flags })
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, k: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == k)
    }
    fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.flags
            .iter()
            .filter(move |(f, _)| f == k)
            .filter_map(|(_, v)| v.as_deref())
    }
    /// A non-negative integer flag, `default` when absent.
    fn count(&self, k: &str, default: &str) -> Result<usize> {
        let s = self.get(k).unwrap_or(default);
        s.trim()
            .parse()
            .map_err(|_| Error(format!("{k} '{s}' is not a positive integer")))
    }
    /// `--seq N,...`, `default` when absent.
    fn seqs(&self, default: &str) -> Result<Vec<usize>> {
        let list = self.get("--seq").unwrap_or(default);
        list.split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| Error(format!("--seq '{s}' is not a positive integer")))
            })
            .collect()
    }
    fn one(&self, n: usize, what: &str) -> Result<PathBuf> {
        if self.positional.len() != n {
            bail!("expected {what}\n{USAGE}");
        }
        Ok(PathBuf::from(&self.positional[0]))
    }
}

fn run(words: &[String]) -> Result<i32> {
    let Some(cmd) = words.first() else {
        bail!("{USAGE}")
    };
    let rest = &words[1..];
    match cmd.as_str() {
        "inspect" => {
            let a = Args::parse(rest, &[])?;
            let path = a.one(1, "one model file")?;
            let m = model::load(&path)?;
            let sites = inspect::sites(&m);
            if a.has("--json") {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&inspect::json(&m, &sites))
                        .expect("JSON values serialise")
                );
            } else {
                print!("{}", inspect::table(&m, &sites));
            }
            if sites.is_empty() {
                eprintln!(
                    "{}: no attention found (no Attention node and no MatMul→Softmax→MatMul chain)",
                    path.display()
                );
                return Ok(3);
            }
            Ok(0)
        }
        "rewrite" => {
            let a = Args::parse(rest, &["-o", "--output", "--policy", "--layers"])?;
            let input = a.one(1, "one input model and -o OUT.onnx")?;
            let out = a
                .get("-o")
                .or(a.get("--output"))
                .ok_or_else(|| Error(format!("rewrite needs -o OUT.onnx\n{USAGE}")))?;
            let policy = Policy::parse(a.get("--policy").unwrap_or("exact"))?;
            let layers = a.get("--layers").map(parse_layers).transpose()?;
            let mut m = model::load(&input)?;
            let report = rewrite(&mut m, &policy, layers.as_ref())?;
            for (layer, anchor, kind, note) in &report.rewritten {
                eprintln!("rewrote site {layer} '{anchor}' ({kind}): {note}");
            }
            for (layer, anchor, why) in &report.skipped {
                eprintln!("kept site {layer} '{anchor}': {why}");
            }
            if report.rewritten.is_empty()
                && report.skipped.is_empty()
                && inspect::sites(&m).is_empty()
            {
                bail!(
                    "{}: no attention found (no Attention node and no MatMul→Softmax→MatMul chain)",
                    input.display()
                );
            }
            model::save(&m, std::path::Path::new(out))?;
            eprintln!(
                "wrote {out}: {} site(s) rewritten, {} kept, {} node(s) pruned",
                report.rewritten.len(),
                report.skipped.len(),
                report.pruned
            );
            Ok(0)
        }
        "verify" => {
            let a = Args::parse(rest, &["--seq", "--batch", "--tol", "--input", "--threads"])?;
            if a.positional.len() != 2 {
                bail!("verify needs ORIGINAL.onnx REWRITTEN.onnx\n{USAGE}");
            }
            let (orig, new) = (
                PathBuf::from(&a.positional[0]),
                PathBuf::from(&a.positional[1]),
            );
            let m = model::load(&orig)?;
            model::load(&new)?;
            let seqs = a.seqs("128")?;
            let given = a
                .all("--input")
                .map(|s| {
                    s.split_once('=')
                        .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                        .ok_or_else(|| Error(format!("--input '{s}': expected name=file.npy")))
                })
                .collect::<Result<Vec<_>>>()?;
            let opts = verify::Options {
                seqs,
                batch: a.count("--batch", "2")?,
                tol: a
                    .get("--tol")
                    .unwrap_or("1e-4")
                    .parse()
                    .map_err(|_| Error("--tol must be a number".into()))?,
                json: a.has("--json"),
                given,
                threads: a.count("--threads", "0")?,
                plot: None,
            };
            verify::verify(&orig, &new, &m, &opts)
        }
        "bench" => {
            let a = Args::parse(
                rest,
                &["--seq", "--batch", "--policy", "--threads", "--plot"],
            )?;
            let path = a.one(1, "one model file")?;
            let m = model::load(&path)?;
            let seqs = a.seqs("512,2048")?;
            let mut policies: Vec<&str> = vec!["exact"];
            policies.extend(a.all("--policy").filter(|p| *p != "exact"));
            let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
            let mut rewrites = Vec::new();
            for (i, p) in policies.iter().enumerate() {
                let policy = Policy::parse(p)?;
                let mut r = m.clone();
                let report = rewrite(&mut r, &policy, None)?;
                if report.rewritten.is_empty() {
                    bail!(
                        "{}: no site could be rewritten with policy '{p}'",
                        path.display()
                    );
                }
                let out = dir.join(format!("p{i}")).join("model.onnx");
                model::save(&r, &out)?;
                rewrites.push((format!("tessera {p}"), out));
            }
            let opts = verify::Options {
                seqs,
                batch: a.count("--batch", "1")?,
                tol: 0.0,
                json: a.has("--json"),
                given: Vec::new(),
                threads: a.count("--threads", "0")?,
                plot: Some(PathBuf::from(
                    a.get("--plot").unwrap_or("tessera-bench.png"),
                )),
            };
            let code = verify::bench(&m, &rewrites, &opts);
            let _ = std::fs::remove_dir_all(&dir);
            code
        }
        "demo" => {
            let a = Args::parse(rest, &["--seq", "--threads"])?;
            if !a.positional.is_empty() {
                bail!("demo takes no files\n{USAGE}");
            }
            let seqs = a.seqs("512,2048,8192")?;
            tessera_cli::demo::demo(&seqs, a.count("--threads", "0")?)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => bail!("unknown command '{other}'\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    match run(&words) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("tessera: {e}");
            ExitCode::from(2)
        }
    }
}
