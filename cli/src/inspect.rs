//! The `inspect` report: one row per attention site.

use serde_json::{json, Value};

use crate::graph::GraphIndex;
use crate::model::Model;
use crate::sites::{find_sites, Site};

/// The sites of `model`.
pub fn sites(model: &Model) -> Vec<Site> {
    find_sites(&GraphIndex::new(model.graph()))
}

fn opt(v: Option<i64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// A plain-text table.
pub fn table(model: &Model, sites: &[Site]) -> String {
    let mut s = format!(
        "{}: {} nodes, {} attention site(s), opsets {}\n",
        model.path.display(),
        model.graph().node.len(),
        sites.len(),
        model
            .proto
            .opset_import
            .iter()
            .map(|o| format!(
                "{}:{}",
                if o.domain().is_empty() {
                    "ai.onnx"
                } else {
                    o.domain()
                },
                o.version()
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    s += &format!(
        "{:>5}  {:<30} {:<28} {:>5} {:>5} {:>5} {:>9}  {:<40} {}\n",
        "layer", "anchor", "kind", "heads", "kv", "dim", "scale", "mask", "rewrite"
    );
    for t in sites {
        s += &format!(
            "{:>5}  {:<30} {:<28} {:>5} {:>5} {:>5} {:>9}  {:<40} {}\n",
            t.layer,
            t.anchor,
            t.kind.name(),
            opt(t.q_heads),
            opt(t.kv_heads),
            opt(t.head_dim),
            t.scale.map_or("default".into(), |v| format!("{v:.6}")),
            format!(
                "{}{}",
                if t.causal { "causal, " } else { "" },
                t.mask.describe()
            ),
            match (&t.exact, crate::sites::kv_cache::describe(t)) {
                (Ok(n), Some(c)) => format!("exact ({n}; {c})"),
                (Ok(n), None) => format!("exact ({n})"),
                (Err(e), _) => format!("no: {e}"),
            }
        );
    }
    s
}

/// The same as JSON.
pub fn json(model: &Model, sites: &[Site]) -> Value {
    json!({
        "model": model.path.display().to_string(),
        "nodes": model.graph().node.len(),
        "sites": sites.iter().map(|t| json!({
            "layer": t.layer,
            "anchor": t.anchor,
            "kind": t.kind.name(),
            "q_heads": t.q_heads,
            "kv_heads": t.kv_heads,
            "head_dim": t.head_dim,
            "scale": t.scale,
            "causal": t.causal,
            "mask": {
                "form": t.mask.form,
                "tensor": t.mask.tensor,
                "padding": t.mask.padding.is_some(),
                "causal": t.mask.causal,
                "window": t.mask.window.map(|(l, r)| json!([l, r])),
                "opaque": t.mask.opaque,
            },
            "exact_rewrite": t.exact.is_ok(),
            "note": match &t.exact { Ok(n) | Err(n) => n },
            "kv_cache": t.cache.as_ref().map(|c| json!({
                "past_key": c.past_key, "past_value": c.past_value,
                "present_key": c.present_key, "present_value": c.present_value,
            })),
        })).collect::<Vec<_>>(),
    })
}
