//! Swapping attention sites for `ai.tessera.Attention`.
//!
//! Everything that is not part of a rewritten site stays as it was: other
//! nodes (in order), initializers, external-data references, metadata and
//! opset imports. Nodes that only fed a removed site (a `Transpose` of K, a
//! mask subgraph replaced by attributes) are pruned; nothing else is.
//! Rewriting a rewritten model changes nothing.

use std::collections::{HashMap, HashSet};

use crate::bail;
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::model::Model;
use crate::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto, OperatorSetIdProto};
use crate::sites::{find_sites, Site, SiteKind, TESSERA_DOMAIN};

/// How sites are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Identical semantics; recognised windows become attributes.
    #[default]
    Exact,
    /// Sliding window `(left, right)` on every layer except each `global_every`-th
    /// (layer `i` is global when `i % global_every == 0`), plus `globals` global tokens.
    Window {
        /// Keys before the query.
        left: i64,
        /// Keys after the query.
        right: i64,
        /// Every N-th layer keeps full attention (0 = none).
        global_every: usize,
        /// Global tokens.
        globals: i64,
    },
    /// DSA-like: every eligible site becomes `ai.tessera.TopKAttention` in its
    /// training-free mode (each query tile keeps the `k` keys, in blocks of
    /// 64, whose block summaries bound the scores highest), plus the last
    /// `window` keys before each query and the first `globals` keys.
    TopK {
        /// Keys kept per query.
        k: i64,
        /// Local window always kept (`None` = the op's default).
        window: Option<i64>,
        /// Sink tokens always kept.
        globals: i64,
    },
}

impl Policy {
    /// Parse `exact` or `window=L,R[,global-every=N][,globals=G]`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "exact" {
            return Ok(Self::Exact);
        }
        if let Some(rest) = s.strip_prefix("topk=") {
            let mut parts = rest.split(',');
            let k = parts.next().unwrap_or("");
            let k = match k.trim().parse::<i64>() {
                Ok(k) if k >= 1 => k,
                _ => bail!("--policy '{s}': top_k must be an integer >= 1 (got '{k}')"),
            };
            let (mut window, mut globals) = (None, 0i64);
            for p in parts {
                let num = |v: &str, what: &str| -> Result<i64> {
                    match v.trim().parse::<i64>() {
                        Ok(v) if v >= 0 => Ok(v),
                        _ => bail!("--policy '{s}': {what} must be an integer >= 0 (got '{v}')"),
                    }
                };
                if let Some(w) = p.strip_prefix("window=") {
                    window = Some(num(w, "window")?);
                } else if let Some(g) = p.strip_prefix("globals=") {
                    globals = num(g, "globals")?;
                } else {
                    bail!("--policy '{s}': unknown part '{p}' (expected window=L or globals=G)");
                }
            }
            return Ok(Self::TopK { k, window, globals });
        }
        let Some(rest) = s.strip_prefix("window=") else {
            bail!("--policy '{s}': expected 'exact', 'window=L,R[,global-every=N][,globals=G]' or 'topk=K[,window=L][,globals=G]'");
        };
        let parts: Vec<&str> = rest.split(',').collect();
        let num = |p: &str, what: &str| -> Result<i64> {
            match p.trim().parse::<i64>() {
                Ok(v) if v >= -1 => Ok(v),
                _ => bail!("--policy '{s}': {what} must be an integer >= -1 (got '{p}')"),
            }
        };
        if parts.len() < 2 {
            bail!("--policy '{s}': window needs L,R");
        }
        let (left, right) = (num(parts[0], "L")?, num(parts[1], "R")?);
        let (mut global_every, mut globals) = (0usize, 0i64);
        for p in &parts[2..] {
            if let Some(n) = p.strip_prefix("global-every=") {
                global_every = num(n, "global-every")?.max(0) as usize;
            } else if let Some(g) = p.strip_prefix("globals=") {
                globals = num(g, "globals")?.max(0);
            } else {
                bail!("--policy '{s}': unknown part '{p}' (expected global-every=N or globals=G)");
            }
        }
        Ok(Self::Window {
            left,
            right,
            global_every,
            globals,
        })
    }
}

/// Parse `--layers 0,2,5-7` into a set of site ordinals.
pub fn parse_layers(s: &str) -> Result<HashSet<usize>> {
    let mut out = HashSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || crate::error::Error(format!("--layers '{s}': '{part}' is not N or N-M"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(out)
}

/// What a rewrite did.
#[derive(Debug, Default)]
pub struct Report {
    /// `(layer, anchor, kind, note)` of each rewritten site.
    pub rewritten: Vec<(usize, String, &'static str, String)>,
    /// `(layer, anchor, reason)` of each site left alone.
    pub skipped: Vec<(usize, String, String)>,
    /// Nodes pruned because they only fed rewritten sites.
    pub pruned: usize,
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn set_attr(n: &mut NodeProto, a: AttributeProto) {
    n.attribute.retain(|x| x.name != a.name);
    n.attribute.push(a);
}

/// Window attributes for `site` under `policy`, and the mask input to keep.
fn mask_plan(site: &Site, policy: &Policy) -> (Option<(i64, i64)>, Option<String>, i64) {
    let kept = |s: &Site| {
        if s.mask.fully_recognised() {
            s.mask.padding.as_deref().map(key_padding_name)
        } else {
            s.mask.tensor.clone()
        }
    };
    match policy {
        Policy::Exact => (
            site.mask
                .fully_recognised()
                .then_some(site.mask.window)
                .flatten(),
            kept(site),
            0,
        ),
        Policy::Window {
            left,
            right,
            global_every,
            globals,
        } => {
            let global = *global_every > 0 && site.layer % global_every == 0;
            let win = if global {
                site.mask
                    .fully_recognised()
                    .then_some(site.mask.window)
                    .flatten()
            } else {
                Some((*left, *right))
            };
            (win, kept(site), *globals)
        }
        Policy::TopK { .. } => (None, None, 0),
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

/// `ai.tessera.TopKAttention` (training-free block selection) for a site.
fn build_topk(
    ix: &GraphIndex,
    site: &Site,
    k: i64,
    window: Option<i64>,
    globals: i64,
) -> Vec<NodeProto> {
    let mut out = build_decomposed(site, &Policy::Exact);
    let node = out
        .last_mut()
        .expect("build_decomposed emits the attention node");
    node.op_type = Some("TopKAttention".into());
    node.input.truncate(3);
    node.attribute
        .retain(|a| matches!(a.name(), "scale" | "is_causal"));
    if site.kind == SiteKind::OnnxAttention {
        // 3-D Q/K/V carry their head counts as attributes.
        let n = ix.node(site.nodes[0]);
        for name in ["q_num_heads", "kv_num_heads"] {
            if let Some(v) = crate::graph::attr_i(n, name) {
                node.attribute.push(int_attr(name, v));
            }
        }
        if crate::graph::attr_i(n, "is_causal") == Some(1) {
            set_attr(node, int_attr("is_causal", 1));
        }
    }
    node.name = Some(format!("{}.tessera_topk_attention", site.anchor));
    node.attribute.push(int_attr("top_k", k));
    if let Some(w) = window {
        node.attribute.push(int_attr("left_window_size", w));
    }
    if globals > 0 {
        node.attribute.push(int_attr("num_global_tokens", globals));
    }
    out
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
    let mut report = Report::default();
    let mut removed: HashSet<usize> = HashSet::new();
    let mut inserts: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    for site in &sites {
        if site.kind == SiteKind::Tessera {
            continue;
        }
        if layers.is_some_and(|l| !l.contains(&site.layer)) {
            report
                .skipped
                .push((site.layer, site.anchor.clone(), "not in --layers".into()));
            continue;
        }
        let note = match &site.exact {
            Ok(n) => n.clone(),
            Err(why) => {
                report
                    .skipped
                    .push((site.layer, site.anchor.clone(), why.clone()));
                continue;
            }
        };
        let mut note = note;
        if let Policy::TopK { k, .. } = policy {
            if let Err(why) = topk_eligible(&ix, site) {
                report.skipped.push((site.layer, site.anchor.clone(), why));
                continue;
            }
            note = format!(
                "TopKAttention top_k={k}: approximate (exact where a query sees at most {k} keys)"
            );
        }
        let at = *site.nodes.iter().max().expect("a site has nodes");
        let new = match (site.kind, policy) {
            (_, Policy::TopK { k, window, globals }) => {
                build_topk(&ix, site, *k, *window, *globals)
            }
            _ => match site.kind {
                SiteKind::OnnxAttention => {
                    swap_onnx_attention(ix.node(site.nodes[0]), site, policy)
                }
                SiteKind::MicrosoftMultiHeadAttention => build_mha(site, policy),
                _ => build_decomposed(site, policy),
            },
        };
        removed.extend(site.nodes.iter().copied());
        inserts.insert(at, new);
        report
            .rewritten
            .push((site.layer, site.anchor.clone(), site.kind.name(), note));
    }
    if report.rewritten.is_empty() {
        return Ok(report);
    }
    let mut nodes = Vec::with_capacity(graph.node.len());
    // The shared key-padding tensors the new nodes read.
    let padded: std::collections::BTreeSet<&str> = sites
        .iter()
        .filter_map(|s| s.mask.padding.as_deref())
        .filter(|p| {
            let name = key_padding_name(p);
            inserts.values().flatten().any(|n| n.input.contains(&name))
        })
        .collect();
    let unsqueeze_axes_as_input = model.opset("").unwrap_or(13) >= 13;
    for input in padded {
        if graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| *o == key_padding_name(input)))
        {
            continue;
        }
        nodes.extend(key_padding_nodes(input, unsqueeze_axes_as_input));
    }
    for (i, n) in graph.node.iter().enumerate() {
        if let Some(new) = inserts.remove(&i) {
            nodes.extend(new);
        } else if !removed.contains(&i) {
            nodes.push(n.clone());
        }
    }
    // Prune nodes that only fed removed ones.
    let mut candidates: HashSet<String> = removed
        .iter()
        .flat_map(|&i| graph.node[i].input.iter().cloned())
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    loop {
        let mut used: HashSet<&str> = HashSet::new();
        for n in &nodes {
            reads(n, &mut used);
        }
        let dead: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.output.iter().any(|o| candidates.contains(o))
                    && n.output.iter().all(|o| {
                        o.is_empty()
                            || (!used.contains(o.as_str()) && !outputs.contains(o.as_str()))
                    })
                    && n.attribute
                        .iter()
                        .all(|a| a.g.is_none() && a.graphs.is_empty())
            })
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        let dead_set: HashSet<usize> = dead.iter().copied().collect();
        candidates = dead
            .iter()
            .flat_map(|&i| nodes[i].input.iter().cloned())
            .collect();
        report.pruned += dead.len();
        nodes = nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !dead_set.contains(i))
            .map(|(_, n)| n)
            .collect();
    }
    let g = model.graph_mut();
    g.node = nodes;
    let live: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    g.value_info.retain(|v| live.contains(v.name()));
    if model.opset(TESSERA_DOMAIN).is_none() {
        model.proto.opset_import.push(OperatorSetIdProto {
            domain: Some(TESSERA_DOMAIN.into()),
            version: Some(1),
        });
    }
    Ok(report)
}

/// Every tensor `n` reads, including those its subgraphs (If/Loop/Scan
/// bodies) read from the outer scope.
fn reads<'n>(n: &'n NodeProto, used: &mut HashSet<&'n str>) {
    used.extend(n.input.iter().map(String::as_str));
    for a in &n.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for sub in &g.node {
                reads(sub, used);
            }
        }
    }
}

/// ONNX `Attention` → `ai.tessera.Attention`: same inputs and attributes;
/// ONNX output 3 (`qk_matmul_output`) moves to slot 4.
fn swap_onnx_attention(n: &NodeProto, site: &Site, policy: &Policy) -> Vec<NodeProto> {
    let mut t = n.clone();
    t.domain = Some(TESSERA_DOMAIN.into());
    t.input[1].clone_from(&site.k.0);
    t.input[2].clone_from(&site.v);
    if t.output.len() > 3 {
        let qk = t.output.remove(3);
        t.output.push(String::new());
        t.output.push(qk);
    }
    let (win, mask, globals) = mask_plan(site, policy);
    if let Some((l, r)) = win {
        set_attr(&mut t, int_attr("left_window_size", l));
        set_attr(&mut t, int_attr("right_window_size", r));
    }
    if site.mask.fully_recognised() && site.mask.causal {
        set_attr(&mut t, int_attr("is_causal", 1));
    }
    if t.input.len() > 3 {
        t.input[3] = mask.unwrap_or_default();
    }
    if globals > 0 {
        set_attr(&mut t, int_attr("num_global_tokens", globals));
    }
    while t.input.last().is_some_and(String::is_empty) {
        t.input.pop();
    }
    vec![t]
}

/// The tensor that carries a `(batch, sequence)` padding input as the
/// bool `(batch, 1, 1, sequence)` key mask Tessera reads.
fn key_padding_name(input: &str) -> String {
    format!("{input}.tessera_key_padding")
}

/// `Unsqueeze(Cast(input, bool), [1, 2])`, shared by every site that needs it.
fn key_padding_nodes(input: &str, axes_as_input: bool) -> Vec<NodeProto> {
    let cast = format!("{input}.tessera_bool");
    let axes = format!("{input}.tessera_axes");
    let mut out = vec![NodeProto {
        name: Some(format!("{input}.tessera_cast")),
        op_type: Some("Cast".into()),
        input: vec![input.into()],
        output: vec![cast.clone()],
        attribute: vec![int_attr(
            "to",
            crate::proto::tensor_proto::DataType::Bool as i64,
        )],
        ..Default::default()
    }];
    let mut unsqueeze = NodeProto {
        name: Some(format!("{input}.tessera_unsqueeze")),
        op_type: Some("Unsqueeze".into()),
        input: vec![cast],
        output: vec![key_padding_name(input)],
        ..Default::default()
    };
    if axes_as_input {
        out.push(NodeProto {
            name: Some(format!("{input}.tessera_axes")),
            op_type: Some("Constant".into()),
            output: vec![axes.clone()],
            attribute: vec![AttributeProto {
                name: Some("value_ints".into()),
                r#type: Some(AttributeType::Ints as i32),
                ints: vec![1, 2],
                ..Default::default()
            }],
            ..Default::default()
        });
        unsqueeze.input.push(axes);
    } else {
        unsqueeze.attribute.push(AttributeProto {
            name: Some("axes".into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![1, 2],
            ..Default::default()
        });
    }
    out.push(unsqueeze);
    out
}

/// `com.microsoft.MultiHeadAttention` (3-D Q/K/V, checked by the matcher)
/// → `ai.tessera.Attention` with the head counts as attributes.
fn build_mha(site: &Site, policy: &Policy) -> Vec<NodeProto> {
    let mut out = build_decomposed(site, policy);
    let node = out
        .last_mut()
        .expect("build_decomposed emits the attention node");
    let heads = site.q_heads.unwrap_or(1);
    node.attribute.push(int_attr("q_num_heads", heads));
    node.attribute.push(int_attr("kv_num_heads", heads));
    if site.causal {
        set_attr(node, int_attr("is_causal", 1));
    }
    out
}

/// The decomposed chain → (optional K transpose) + `ai.tessera.Attention`.
fn build_decomposed(site: &Site, policy: &Policy) -> Vec<NodeProto> {
    let prefix = if site.anchor.is_empty() {
        format!("tessera_site{}", site.layer)
    } else {
        site.anchor.clone()
    };
    let mut out = Vec::new();
    let k = match &site.k {
        (k, None) => k.clone(),
        (k, Some(perm)) => {
            let name = format!("{prefix}.tessera_k");
            let attr = AttributeProto {
                name: Some("perm".into()),
                r#type: Some(AttributeType::Ints as i32),
                ints: perm.clone(),
                ..Default::default()
            };
            out.push(NodeProto {
                name: Some(format!("{prefix}.k_transpose")),
                op_type: Some("Transpose".into()),
                input: vec![k.clone()],
                output: vec![name.clone()],
                attribute: vec![attr],
                ..Default::default()
            });
            name
        }
    };
    let (win, mask, globals) = mask_plan(site, policy);
    let mut node = NodeProto {
        name: Some(format!("{prefix}.tessera_attention")),
        op_type: Some("Attention".into()),
        domain: Some(TESSERA_DOMAIN.into()),
        input: vec![site.q.clone(), k, site.v.clone()],
        output: vec![site.y.clone()],
        ..Default::default()
    };
    if let Some(m) = mask {
        node.input.push(m);
    }
    if let Some(s) = site.scale {
        node.attribute.push(float_attr("scale", s as f32));
    }
    if site.mask.fully_recognised() && site.mask.causal {
        node.attribute.push(int_attr("is_causal", 1));
    }
    if let Some((l, r)) = win {
        node.attribute.push(int_attr("left_window_size", l));
        node.attribute.push(int_attr("right_window_size", r));
    }
    if globals > 0 {
        node.attribute.push(int_attr("num_global_tokens", globals));
    }
    out.push(node);
    out
}
