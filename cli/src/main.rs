//! `tessera`: inspect, rewrite and verify attention in ONNX models.
//! See the README section "The tessera graph tool".

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tessera_cli::error::{Error, Result};
use tessera_cli::progress::Progress;
use tessera_cli::rewrite::{parse_layers, rewrite, summary, Policy, EXACT};
use tessera_cli::{bail, generate, inspect, model, verify};

/// Command-line words: positional arguments and `--flag [value]` pairs.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(words: &[String], with_value: &[&str], switches: &[&str]) -> Result<Self> {
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
                            .ok_or_else(|| Error(format!("{k} needs a value\n{}", usage())))?,
                    };
                    flags.push((k, Some(v)));
                } else if v.is_none() && switches.contains(&k.as_str()) {
                    flags.push((k, None));
                } else {
                    bail!("unknown option '{w}'\n{}", usage());
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
    /// `--tol X` (max abs), `default` when absent.
    fn tol(&self, default: &str) -> Result<f64> {
        self.get("--tol")
            .unwrap_or(default)
            .parse()
            .map_err(|_| Error("--tol must be a number".into()))
    }
    /// `ORIGINAL.onnx REWRITTEN.onnx`: both paths (both must load) and the original.
    fn two_models(&self, cmd: &str) -> Result<(PathBuf, PathBuf, model::Model)> {
        let [orig, new] = self.positional.as_slice() else {
            bail!("{cmd} needs ORIGINAL.onnx REWRITTEN.onnx\n{}", usage());
        };
        let (orig, new) = (PathBuf::from(orig), PathBuf::from(new));
        let m = model::load(&orig)?;
        model::load(&new)?;
        Ok((orig, new, m))
    }
    fn one(&self, n: usize, what: &str) -> Result<PathBuf> {
        if self.positional.len() != n {
            bail!("expected {what}\n{}", usage());
        }
        Ok(PathBuf::from(&self.positional[0]))
    }
}

/// One subcommand: its name, its one-line usage (the help), the flags
/// that take a value, the switches it accepts besides `--json`, `-h` and
/// `--help`, and its handler.
struct Command {
    name: &'static str,
    usage: &'static str,
    flags: &'static [&'static str],
    switches: &'static [&'static str],
    run: fn(&Args) -> Result<i32>,
}

/// Switches every command accepts.
const COMMON_SWITCHES: &[&str] = &["--json", "-h", "--help"];

/// The subcommands, in the order the usage lists them.
const COMMANDS: &[Command] = &[
    Command {
        name: "inspect",
        usage: "MODEL.onnx [--json]",
        flags: &[],
        switches: &[],
        run: inspect_cmd,
    },
    Command {
        name: "rewrite",
        usage: "IN.onnx -o OUT.onnx [--policy exact|window=L,R[,global-every=N][,globals=G]|topk=K[,window=L][,globals=G]] [--layers LIST] [--logits all|last] [--force]",
        flags: &["-o", "--output", "--policy", "--layers", "--logits"],
        switches: &["--force"],
        run: rewrite_cmd,
    },
    Command {
        name: "verify",
        usage: "ORIGINAL.onnx REWRITTEN.onnx [--seq N,...] [--batch B] [--tol X] [--threads T] [--input name=file.npy]... [--json]",
        flags: &["--seq", "--batch", "--tol", "--input", "--threads"],
        switches: &[],
        run: verify_cmd,
    },
    Command {
        name: "generate",
        usage: "ORIGINAL.onnx REWRITTEN.onnx [--prompt FILE.txt [--tokenizer tokenizer.json] [--max-prompt N] | --prompt-ids ID,...] [--tokens N] [--batch B] [--tol X] [--threads T] [--json]",
        flags: &["--prompt", "--tokenizer", "--max-prompt", "--prompt-ids", "--tokens", "--batch", "--tol", "--threads"],
        switches: &[],
        run: generate_cmd,
    },
    Command {
        name: "demo",
        usage: "[--seq 512,2048,8192] [--threads T]",
        flags: &["--seq", "--threads"],
        switches: &[],
        run: demo_cmd,
    },
    Command {
        name: "bench",
        usage: "MODEL.onnx [--seq N,...] [--policy P]... [--batch B] [--threads T] [--plot FILE.png] [--json]",
        flags: &["--seq", "--batch", "--policy", "--threads", "--plot"],
        switches: &[],
        run: bench_cmd,
    },
];

/// The words that print the usage.
const HELP: &[&str] = &["-h", "--help", "help"];

/// The words that print the version.
const VERSION: &[&str] = &["-V", "--version"];

/// `tessera X.Y.Z`, as `--version` prints it.
fn version() -> String {
    format!("tessera {}", env!("CARGO_PKG_VERSION"))
}

/// Why a command found no attention (inspect's warning, rewrite's error).
const NO_ATTENTION: &str =
    "no attention found (no Attention node and no MatMul→Softmax→MatMul chain)";

/// `usage:`, one line per command, then the version flag.
fn usage() -> String {
    let mut s = String::from("usage:");
    for c in COMMANDS {
        s.push_str(&format!("\n  tessera {} {}", c.name, c.usage));
    }
    s.push_str(&format!("\n  tessera {}", VERSION.join(" | ")));
    s
}

/// Look the first word up in [`COMMANDS`] and run it on the rest.
fn run(words: &[String]) -> Result<i32> {
    let Some(cmd) = words.first() else {
        bail!("{}", usage())
    };
    if HELP.contains(&cmd.as_str()) {
        println!("{}", usage());
        return Ok(0);
    }
    if VERSION.contains(&cmd.as_str()) {
        println!("{}", version());
        return Ok(0);
    }
    let Some(c) = COMMANDS.iter().find(|c| c.name == cmd) else {
        bail!("unknown command '{cmd}'\n{}", usage())
    };
    let switches: Vec<&str> = COMMON_SWITCHES.iter().chain(c.switches).copied().collect();
    (c.run)(&Args::parse(&words[1..], c.flags, &switches)?)
}

/// `tessera inspect`: the site table (or JSON); exit 3 when there is none.
fn inspect_cmd(a: &Args) -> Result<i32> {
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
        eprintln!("{}: {NO_ATTENTION}", path.display());
        return Ok(3);
    }
    Ok(0)
}

/// `tessera rewrite`: rewrite, report each site, save, summarise.
fn rewrite_cmd(a: &Args) -> Result<i32> {
    let input = a.one(1, "one input model and -o OUT.onnx")?;
    let out = a
        .get("-o")
        .or(a.get("--output"))
        .ok_or_else(|| Error(format!("rewrite needs -o OUT.onnx\n{}", usage())))?;
    if !a.has("--force") && same_file(&input, Path::new(out)) {
        bail!(
            "rewrite: -o {out} is the input model {} (the same file); refusing to overwrite it. \
             Write to another path, or pass --force to replace the input",
            input.display()
        );
    }
    let policy = Policy::parse(a.get("--policy").unwrap_or(EXACT))?;
    let layers = a.get("--layers").map(parse_layers).transpose()?;
    let progress = Progress::start();
    progress.step(format!("loading {}", input.display()));
    let mut m = model::load(&input)?;
    // Before the attention rewrite: the head's input shape is probed through the original graph.
    let logits_note = match a.get("--logits").unwrap_or("all") {
        "all" => None,
        tessera_cli::logits::LAST => Some(tessera_cli::logits::last_position_logits(&mut m)?),
        other => {
            bail!("--logits '{other}': expected 'all' (every position, the default) or 'last'")
        }
    };
    progress.step(format!("rewriting (policy {policy})"));
    let report = rewrite(&mut m, &policy, layers.as_ref())?;
    for r in &report.rewritten {
        eprintln!(
            "rewrote site {} '{}' ({}): {}",
            r.site.layer,
            r.site.anchor,
            r.kind.name(),
            r.note
        );
    }
    for k in &report.kept {
        eprintln!("kept site {} '{}': {}", k.site.layer, k.site.anchor, k.why);
    }
    if report.rewritten.is_empty() && report.kept.is_empty() && inspect::sites(&m).is_empty() {
        bail!("{}: {NO_ATTENTION}", input.display());
    }
    if let Some(note) = logits_note {
        eprintln!("logits: {note}");
    }
    progress.step(format!("writing {out}"));
    model::save(&m, Path::new(out))?;
    eprintln!(
        "wrote {out}: {} site(s) rewritten, {} kept, {} node(s) pruned",
        report.rewritten.len(),
        report.kept.len(),
        report.pruned
    );
    eprint!(
        "{}",
        summary(&report, out, verify::plugin().ok().as_deref())
    );
    Ok(0)
}

/// Whether `out` names the file `input` is (through a symlink, a relative
/// path or a hard link): same device and inode. A path that does not exist
/// yet is never the input.
fn same_file(input: &Path, out: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(input), std::fs::metadata(out)) {
        (Ok(i), Ok(o)) => i.dev() == o.dev() && i.ino() == o.ino(),
        _ => false,
    }
}

/// `tessera verify`: both models in ONNX Runtime, compared.
fn verify_cmd(a: &Args) -> Result<i32> {
    let progress = Progress::start();
    progress.step(format!("loading {}", a.positional.join(" and ")));
    let (orig, new, m) = a.two_models("verify")?;
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
        tol: a.tol("1e-4")?,
        json: a.has("--json"),
        given,
        threads: a.count("--threads", "0")?,
        plot: None,
    };
    if generate::has_cache(&m) {
        return generate::verify_with_cache(&orig, &new, &m, &opts);
    }
    verify::verify(&orig, &new, &m, &opts)
}

/// `tessera generate`: greedy decoding through the KV cache, both models.
fn generate_cmd(a: &Args) -> Result<i32> {
    let (orig, new, m) = a.two_models("generate")?;
    let prompt = match (a.get("--prompt"), a.get("--prompt-ids")) {
        (Some(_), Some(_)) => bail!("generate: give --prompt or --prompt-ids, not both"),
        (None, None) => bail!(
            "generate needs --prompt FILE.txt or --prompt-ids ID,...\n{}",
            usage()
        ),
        (None, Some(ids)) => generate::Prompt::Ids(
            ids.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|_| Error(format!("--prompt-ids '{s}' is not a token id")))
                })
                .collect::<Result<_>>()?,
        ),
        (Some(file), None) => {
            let tokenizer = match a.get("--tokenizer") {
                Some(t) => PathBuf::from(t),
                None => generate::tokenizer_next_to(&orig).ok_or_else(|| {
                    Error(format!(
                        "generate: no tokenizer.json next to {}; pass --tokenizer FILE",
                        orig.display()
                    ))
                })?,
            };
            generate::Prompt::Text {
                file: PathBuf::from(file),
                tokenizer,
                max: a.count("--max-prompt", "0")?,
            }
        }
    };
    let opts = generate::Options {
        prompt,
        tokens: a.count("--tokens", "16")?,
        batch: a.count("--batch", "1")?,
        tol: a.tol("1e-3")?,
        threads: a.count("--threads", "0")?,
        json: a.has("--json"),
    };
    generate::generate(&orig, &new, &m, &opts)
}

/// `tessera bench`: the exact rewrite and each `--policy`, timed against the original.
fn bench_cmd(a: &Args) -> Result<i32> {
    let path = a.one(1, "one model file")?;
    let progress = Progress::start();
    progress.step(format!("loading {}", path.display()));
    let m = model::load(&path)?;
    let seqs = a.seqs("512,2048")?;
    let mut policies: Vec<&str> = vec![EXACT];
    policies.extend(a.all("--policy").filter(|p| *p != EXACT));
    let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    let rewrites = bench_rewrites(&path, &m, &policies, &dir, &progress)?;
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

/// One rewritten copy of `m` per policy under `dir`, labelled for the bench.
fn bench_rewrites(
    path: &std::path::Path,
    m: &model::Model,
    policies: &[&str],
    dir: &std::path::Path,
    progress: &Progress,
) -> Result<Vec<(String, PathBuf)>> {
    let mut rewrites = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let policy = Policy::parse(p)?;
        progress.step(format!("rewriting with policy {policy}"));
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
    Ok(rewrites)
}

/// `tessera demo`: the whole path on the bundled model.
fn demo_cmd(a: &Args) -> Result<i32> {
    if !a.positional.is_empty() {
        bail!("demo takes no files\n{}", usage());
    }
    let seqs = a.seqs("512,2048,8192")?;
    tessera_cli::demo::demo(&seqs, a.count("--threads", "0")?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_lists_every_command_once_in_table_order() {
        let u = usage();
        let lines: Vec<&str> = u.lines().collect();
        assert_eq!(lines[0], "usage:");
        assert_eq!(lines.len(), COMMANDS.len() + 2);
        for (c, line) in COMMANDS.iter().zip(&lines[1..]) {
            assert!(
                line.starts_with(&format!("  tessera {} ", c.name)),
                "{line}"
            );
        }
        assert!(COMMANDS.iter().all(|c| !HELP.contains(&c.name)));
    }

    #[test]
    fn version_flags_print_the_crate_version() {
        for w in VERSION {
            assert_eq!(run(&[w.to_string()]).unwrap(), 0);
        }
        assert_eq!(version(), format!("tessera {}", env!("CARGO_PKG_VERSION")));
        assert!(usage().ends_with("tessera -V | --version"), "{}", usage());
    }

    #[test]
    fn force_is_a_rewrite_switch_only() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let e = run(&words("inspect --force m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown option '--force'"), "{e}");
    }

    #[test]
    fn unknown_commands_and_options_are_refused_with_the_usage() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let e = run(&words("frobnicate")).unwrap_err().to_string();
        assert!(e.starts_with("unknown command 'frobnicate'\nusage:"), "{e}");
        let e = run(&words("inspect --nope m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown option '--nope'\nusage:"), "{e}");
    }
}
