//! The closing summary of `tessera rewrite`: what was replaced, grouped by
//! exporter form, new op and the policy as applied to the site; what was
//! kept, grouped by reason; and how to load the result, with the error
//! ONNX Runtime gives a session that did not register the library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use tessera_schema::DOMAIN;

use super::Report;

/// What ONNX Runtime 1.32 says when a session loads a model with `op` of
/// our domain without the library registered (after `Load model from
/// {path} failed:`).
pub fn missing_registration(op: &str) -> String {
    format!("Fatal error: {DOMAIN}:{op}(-1) is not a registered function/op")
}

/// The one-line fix, in Python, through the `tessera_ort` package.
pub const FIX_PACKAGE: &str =
    "sess_options.register_custom_ops_library(tessera_ort.get_library_path())";

/// Where the message and the fix are written up.
pub const DOC: &str = "docs/missing-registration.md";

/// The fix with a path to the library.
pub fn fix_with_path(library: &str) -> String {
    format!("sess_options.register_custom_ops_library(\"{library}\")")
}

/// The summary, one line per group; `output` is the written model,
/// `library` the plugin the tool found (if any).
pub fn summary(report: &Report, output: &str, library: Option<&Path>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "summary (policy {}):", report.policy);
    let replaced = by_group(report.rewritten.iter().map(|r| {
        let applied = report.policy.as_applied(r.site.layer);
        ((r.kind.name(), r.op, applied), r.site.layer)
    }));
    let _ = writeln!(s, "  replaced {} site(s)", report.rewritten.len());
    for ((kind, op, applied), layers) in &replaced {
        let n = layers.len();
        let _ = writeln!(
            s,
            "    {n} x {kind} -> {DOMAIN}.{op} [{applied}] (layers {})",
            ranges(layers)
        );
    }
    let kept = by_group(report.kept.iter().map(|k| (k.why.as_str(), k.site.layer)));
    let _ = writeln!(s, "  kept {} site(s)", report.kept.len());
    for (why, layers) in &kept {
        let _ = writeln!(
            s,
            "    {} x {why} (layers {})",
            layers.len(),
            ranges(layers)
        );
    }
    let _ = writeln!(
        s,
        "  pruned {} node(s) that only fed replaced sites",
        report.pruned
    );
    if let Some(first) = report.rewritten.first() {
        s.push_str(&how_to_load(output, library, first.op));
    }
    s
}

/// The layers of each group, groups in key order.
fn by_group<K: Ord>(items: impl Iterator<Item = (K, usize)>) -> BTreeMap<K, Vec<usize>> {
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (key, layer) in items {
        groups.entry(key).or_default().push(layer);
    }
    groups
}

/// The fix (package and path forms) and the error ORT gives without it
/// for a model of `op` nodes written to `output`.
fn how_to_load(output: &str, library: Option<&Path>, op: &str) -> String {
    let path = library.map_or_else(
        || "/path/to/libtessera_ort.so".to_string(),
        |p| p.display().to_string(),
    );
    format!(
        "{output} needs the Tessera library registered in every session that loads it:\n  \
         {FIX_PACKAGE}\n  or {}\nwithout it ONNX Runtime refuses the model with:\n  \
         [ONNXRuntimeError] : 1 : FAIL : Load model from {output} failed:{}\n(see {DOC})\n",
        fix_with_path(&path),
        missing_registration(op)
    )
}

/// `0-3,5,7-8` for sorted layer numbers.
fn ranges(layers: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", layers[i], layers[j])
        } else {
            layers[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_collapse_into_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[]), "");
    }
}
