//! Swapping attention sites for `ai.tessera.Attention`.
//!
//! Everything that is not part of a rewritten site stays as it was: other
//! nodes (in order), initializers, external-data references, metadata and
//! opset imports. Nodes that only fed a removed site (a `Transpose` of K, a
//! mask subgraph replaced by attributes) are pruned; nothing else is.
//! Rewriting a rewritten model changes nothing.
//!
//! [`rewrite`] runs four steps: choose the sites (`plan`), splice the new
//! nodes in (`splice`), prune what only fed the old ones (`prune`), and
//! commit the nodes and the `ai.tessera` opset import to the model.
//! `policy` parses the policies, `build` makes the new nodes, `summary`
//! writes the closing summary.

mod build;
mod policy;
mod prune;
mod summary;

use std::collections::{HashMap, HashSet};

use tessera_schema::{DOMAIN, VERSION};

use crate::error::Result;
use crate::graph::{GraphIndex, ONNX_DOMAIN};
use crate::model::Model;
use crate::proto::{GraphProto, NodeProto, OperatorSetIdProto};
use crate::sites::{find_sites, Site, SiteKind};

pub use policy::{parse_layers, Policy, EXACT};
pub use summary::{fix_with_path, missing_registration, summary, DOC, FIX_PACKAGE};

/// A site named in a report: its ordinal (the `--layers` number) and the
/// node it is anchored on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRef {
    /// Ordinal among the sites.
    pub layer: usize,
    /// Name of the anchor node (Softmax or Attention).
    pub anchor: String,
}

impl SiteRef {
    fn of(site: &Site) -> Self {
        Self {
            layer: site.layer,
            anchor: site.anchor.clone(),
        }
    }
}

/// A site the rewrite replaced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// Which site.
    pub site: SiteRef,
    /// The exporter form it was matched as.
    pub kind: SiteKind,
    /// The `ai.tessera` op type it became.
    pub op: &'static str,
    /// How many of the graph's nodes it replaced.
    pub replaced: usize,
    /// What the replacement preserves (exactness, caveats).
    pub note: String,
}

/// A site the rewrite left as it was.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Which site.
    pub site: SiteRef,
    /// Why it was kept.
    pub why: String,
}

/// What a rewrite did.
#[derive(Debug, Default)]
pub struct Report {
    /// The policy the rewrite ran under.
    pub policy: Policy,
    /// Each rewritten site, in site order.
    pub rewritten: Vec<Rewritten>,
    /// Each site left alone, in site order.
    pub kept: Vec<Kept>,
    /// Nodes pruned because they only fed rewritten sites.
    pub pruned: usize,
}

/// Rewrite the sites of `model` chosen by `layers` (all when `None`).
pub fn rewrite(
    model: &mut Model,
    policy: &Policy,
    layers: Option<&HashSet<usize>>,
) -> Result<Report> {
    let graph = model.graph().clone();
    let ix = GraphIndex::new(&graph);
    let sites = find_sites(&ix);
    let (mut report, plan) = plan(&ix, &sites, policy, layers);
    if report.rewritten.is_empty() {
        return Ok(report);
    }
    let axes_as_input = model.opset(ONNX_DOMAIN).unwrap_or(13) >= 13;
    let Plan { removed, inserts } = plan;
    let nodes = splice(&graph, &sites, &removed, inserts, axes_as_input);
    let (nodes, pruned) = prune::prune(&graph, &removed, nodes);
    report.pruned = pruned;
    commit(model, nodes);
    Ok(report)
}

/// Which nodes go, and what replaces them (keyed by the index of the last
/// node of each site, where the new nodes are spliced in).
#[derive(Debug, Default)]
struct Plan {
    removed: HashSet<usize>,
    inserts: HashMap<usize, Vec<NodeProto>>,
}

/// Step 1: decide each site under `policy` and build its replacement.
fn plan(
    ix: &GraphIndex,
    sites: &[Site],
    policy: &Policy,
    layers: Option<&HashSet<usize>>,
) -> (Report, Plan) {
    let mut report = Report {
        policy: policy.clone(),
        ..Report::default()
    };
    let mut plan = Plan::default();
    for site in sites.iter().filter(|s| s.kind != SiteKind::Tessera) {
        let note = match verdict(ix, site, policy, layers) {
            Ok(note) => note,
            Err(why) => {
                report.kept.push(Kept {
                    site: SiteRef::of(site),
                    why,
                });
                continue;
            }
        };
        let at = *site.nodes.iter().max().expect("a site has nodes");
        plan.removed.extend(site.nodes.iter().copied());
        plan.inserts
            .insert(at, build::replacement(ix, site, policy));
        report.rewritten.push(Rewritten {
            site: SiteRef::of(site),
            kind: site.kind,
            op: build::op_for(policy),
            replaced: site.nodes.len(),
            note,
        });
    }
    (report, plan)
}

/// `Ok(note)` when `site` is rewritten under `policy`, `Err(why)` when kept.
fn verdict(
    ix: &GraphIndex,
    site: &Site,
    policy: &Policy,
    layers: Option<&HashSet<usize>>,
) -> std::result::Result<String, String> {
    if layers.is_some_and(|l| !l.contains(&site.layer)) {
        return Err("not in --layers".into());
    }
    let note = site.exact.clone()?;
    match policy {
        Policy::TopK { k, .. } => {
            topk_eligible(ix, site)?;
            Ok(format!(
                "TopKAttention top_k={k}: approximate (exact where a query sees at most {k} keys)"
            ))
        }
        _ => Ok(note),
    }
}

/// Whether a site can become `TopKAttention` without changing what the
/// unpadded positions see beyond the selection itself: the op has no mask
/// input, so the mask must be recognised whole and be causal (with right
/// padding a query then never sees a padded key), or absent.
fn topk_eligible(ix: &GraphIndex, site: &Site) -> std::result::Result<(), String> {
    let m = &site.mask;
    if site.kind == SiteKind::OnnxAttention {
        let n = ix.node(site.nodes[0]);
        let used =
            |o: &String| !o.is_empty() && (!ix.consumers(o).is_empty() || ix.is_graph_output(o));
        if n.output.iter().skip(1).any(used) {
            return Err(
                "topk: the Attention node's present_key/present_value/qk outputs are used; kept"
                    .into(),
            );
        }
    }
    if m.form.is_some() && !m.fully_recognised() {
        return Err(format!(
            "topk: the mask is not recognised ({}); kept",
            m.describe()
        ));
    }
    if m.window.is_some() {
        return Err("topk: the site already has a sliding window; kept".into());
    }
    if m.padding.is_some() && !m.causal {
        return Err(
            "topk: TopKAttention has no padding input and this bidirectional site pads keys; kept"
                .into(),
        );
    }
    if site.kind == SiteKind::MicrosoftMultiHeadAttention {
        return Err(
            "topk: com.microsoft.MultiHeadAttention is rewritten by the exact policy only".into(),
        );
    }
    Ok(())
}

/// Step 2: the graph's nodes with each site's nodes replaced by its new
/// ones, after the key-padding nodes the new ones read (made once each).
fn splice(
    graph: &GraphProto,
    sites: &[Site],
    removed: &HashSet<usize>,
    mut inserts: HashMap<usize, Vec<NodeProto>>,
    axes_as_input: bool,
) -> Vec<NodeProto> {
    let mut nodes = Vec::with_capacity(graph.node.len());
    // The shared key-padding tensors the new nodes read.
    let padded: std::collections::BTreeSet<&str> = sites
        .iter()
        .filter_map(|s| s.mask.padding.as_deref())
        .filter(|p| {
            let name = build::key_padding_name(p);
            inserts.values().flatten().any(|n| n.input.contains(&name))
        })
        .collect();
    for input in padded {
        let name = build::key_padding_name(input);
        if !graph.node.iter().any(|n| n.output.contains(&name)) {
            nodes.extend(build::key_padding_nodes(input, axes_as_input));
        }
    }
    for (i, n) in graph.node.iter().enumerate() {
        if let Some(new) = inserts.remove(&i) {
            nodes.extend(new);
        } else if !removed.contains(&i) {
            nodes.push(n.clone());
        }
    }
    nodes
}

/// Step 4: the new nodes into the model, value infos of tensors no node
/// produces any more dropped, and the `ai.tessera` opset imported.
fn commit(model: &mut Model, nodes: Vec<NodeProto>) {
    let g = model.graph_mut();
    g.node = nodes;
    let live: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    g.value_info.retain(|v| live.contains(v.name()));
    if model.opset(DOMAIN.as_str()).is_none() {
        model.proto.opset_import.push(OperatorSetIdProto {
            domain: Some(DOMAIN.as_str().into()),
            version: Some(VERSION),
        });
    }
}
