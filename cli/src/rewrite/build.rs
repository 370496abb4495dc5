//! The nodes that replace one site: `ai.tessera.Attention` (from ONNX
//! `Attention`, `com.microsoft.MultiHeadAttention` or the decomposed chain)
//! or `ai.tessera.TopKAttention`, plus the shared key-padding nodes.
//!
//! Every `ai.tessera` op, attribute and domain name comes from
//! [`tessera_schema`]; new nodes are named `{anchor}.{step}`.

use tessera_schema::{attention, topk_attention, DOMAIN};

use super::policy::Policy;
use crate::graph::{attr_i, GraphIndex};
use crate::names::{AXES, CAST, CONSTANT, PERM, TO, TRANSPOSE, UNSQUEEZE, VALUE_INTS};
use crate::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use crate::sites::{Site, SiteKind};

use attention::attr::{
    IS_CAUSAL, KV_NUM_HEADS, LEFT_WINDOW_SIZE, NUM_GLOBAL_TOKENS, Q_NUM_HEADS, RIGHT_WINDOW_SIZE,
    SCALE,
};

/// The nodes that replace `site` under `policy`; the last one produces the
/// site's output.
pub(super) fn replacement(ix: &GraphIndex, site: &Site, policy: &Policy) -> Vec<NodeProto> {
    match (site.kind, policy) {
        (_, Policy::TopK { k, window, globals }) => build_topk(ix, site, *k, *window, *globals),
        (SiteKind::OnnxAttention, _) => swap_onnx_attention(ix.node(site.nodes[0]), site, policy),
        (SiteKind::MicrosoftMultiHeadAttention, _) => build_mha(site, policy),
        _ => build_decomposed(site, policy),
    }
}

/// The op type `policy` turns a site into.
pub(super) fn op_for(policy: &Policy) -> &'static str {
    match policy {
        Policy::TopK { .. } => topk_attention::OP.as_str(),
        _ => attention::OP.as_str(),
    }
}

/// An attribute with its name and type set and no value yet.
fn typed_attr(name: &str, t: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(t as i32),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..typed_attr(name, AttributeType::Int)
    }
}

fn ints_attr(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints: v,
        ..typed_attr(name, AttributeType::Ints)
    }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..typed_attr(name, AttributeType::Float)
    }
}

fn set_attr(n: &mut NodeProto, a: AttributeProto) {
    n.attribute.retain(|x| x.name != a.name);
    n.attribute.push(a);
}

/// What the site's mask becomes: the window attributes, the mask input to
/// keep, and the number of global tokens.
struct MaskPlan {
    window: Option<(i64, i64)>,
    input: Option<String>,
    globals: i64,
}

/// Window attributes for `site` under `policy`, and the mask input to keep.
fn mask_plan(site: &Site, policy: &Policy) -> MaskPlan {
    let recognised_window = site
        .mask
        .fully_recognised()
        .then_some(site.mask.window)
        .flatten();
    let input = if site.mask.fully_recognised() {
        site.mask.padding.as_deref().map(key_padding_name)
    } else {
        site.mask.tensor.clone()
    };
    match policy {
        Policy::Exact => MaskPlan {
            window: recognised_window,
            input,
            globals: 0,
        },
        Policy::Window {
            left,
            right,
            globals,
            ..
        } => MaskPlan {
            window: if policy.is_global_layer(site.layer) {
                recognised_window
            } else {
                Some((*left, *right))
            },
            input,
            globals: *globals,
        },
        Policy::TopK { .. } => MaskPlan {
            window: None,
            input: None,
            globals: 0,
        },
    }
}

/// Set the window attributes `plan` calls for.
fn set_window(node: &mut NodeProto, plan: &MaskPlan) {
    if let Some((l, r)) = plan.window {
        set_attr(node, int_attr(LEFT_WINDOW_SIZE.as_str(), l));
        set_attr(node, int_attr(RIGHT_WINDOW_SIZE.as_str(), r));
    }
}

/// Set `is_causal` when the site's mask was recognised whole as causal.
fn set_causal(node: &mut NodeProto, site: &Site) {
    if site.mask.fully_recognised() && site.mask.causal {
        set_attr(node, int_attr(IS_CAUSAL.as_str(), 1));
    }
}

/// Set the global-token count `plan` calls for.
fn set_globals(node: &mut NodeProto, plan: &MaskPlan) {
    if plan.globals > 0 {
        set_attr(node, int_attr(NUM_GLOBAL_TOKENS.as_str(), plan.globals));
    }
}

/// `ai.tessera.TopKAttention` (training-free block selection) for a site.
fn build_topk(
    ix: &GraphIndex,
    site: &Site,
    k: i64,
    window: Option<i64>,
    globals: i64,
) -> Vec<NodeProto> {
    use topk_attention::attr as a;
    let mut out = build_decomposed(site, &Policy::Exact);
    let node = out
        .last_mut()
        .expect("build_decomposed emits the attention node");
    node.op_type = Some(topk_attention::OP.as_str().into());
    node.input.truncate(3);
    node.attribute
        .retain(|x| x.name() == a::SCALE.as_str() || x.name() == a::IS_CAUSAL.as_str());
    if site.kind == SiteKind::OnnxAttention {
        // 3-D Q/K/V carry their head counts as attributes.
        let n = ix.node(site.nodes[0]);
        for name in [a::Q_NUM_HEADS, a::KV_NUM_HEADS] {
            if let Some(v) = attr_i(n, name.as_str()) {
                node.attribute.push(int_attr(name.as_str(), v));
            }
        }
        if attr_i(n, IS_CAUSAL.as_str()) == Some(1) {
            set_attr(node, int_attr(a::IS_CAUSAL.as_str(), 1));
        }
    }
    node.name = Some(format!("{}.tessera_topk_attention", site.anchor));
    node.attribute.push(int_attr(a::TOP_K.as_str(), k));
    if let Some(w) = window {
        node.attribute
            .push(int_attr(a::LEFT_WINDOW_SIZE.as_str(), w));
    }
    if globals > 0 {
        node.attribute
            .push(int_attr(a::NUM_GLOBAL_TOKENS.as_str(), globals));
    }
    out
}

/// ONNX `Attention` → `ai.tessera.Attention`: same inputs, attributes and
/// outputs (outputs 0-3 are ONNX's, in ONNX's order; `softmax_lse` is
/// output 4, which an ONNX node never asks for).
fn swap_onnx_attention(n: &NodeProto, site: &Site, policy: &Policy) -> Vec<NodeProto> {
    let mut t = n.clone();
    t.domain = Some(DOMAIN.as_str().into());
    t.input[1].clone_from(&site.k.0);
    t.input[2].clone_from(&site.v);
    let plan = mask_plan(site, policy);
    set_window(&mut t, &plan);
    set_causal(&mut t, site);
    if t.input.len() > 3 {
        t.input[3] = plan.input.clone().unwrap_or_default();
    }
    if let Some(c) = &site.cache {
        // The Concats outside the node become the op's own cache (inputs 4, 5; outputs 1, 2).
        t.input.resize(4, String::new());
        t.input.extend([c.past_key.clone(), c.past_value.clone()]);
        t.output.resize(3, String::new());
        t.output[1].clone_from(&c.present_key);
        t.output[2].clone_from(&c.present_value);
    }
    set_globals(&mut t, &plan);
    while t.input.last().is_some_and(String::is_empty) {
        t.input.pop();
    }
    vec![t]
}

/// The tensor that carries a `(batch, sequence)` padding input as the
/// bool `(batch, 1, 1, sequence)` key mask Tessera reads.
pub(super) fn key_padding_name(input: &str) -> String {
    format!("{input}.tessera_key_padding")
}

/// `Unsqueeze(Cast(input, bool), [1, 2])`, shared by every site that needs it.
pub(super) fn key_padding_nodes(input: &str, axes_as_input: bool) -> Vec<NodeProto> {
    let cast = format!("{input}.tessera_bool");
    let axes = format!("{input}.tessera_axes");
    let mut out = vec![NodeProto {
        name: Some(format!("{input}.tessera_cast")),
        op_type: Some(CAST.into()),
        input: vec![input.into()],
        output: vec![cast.clone()],
        attribute: vec![int_attr(
            TO,
            crate::proto::tensor_proto::DataType::Bool as i64,
        )],
        ..Default::default()
    }];
    let mut unsqueeze = NodeProto {
        name: Some(format!("{input}.tessera_unsqueeze")),
        op_type: Some(UNSQUEEZE.into()),
        input: vec![cast],
        output: vec![key_padding_name(input)],
        ..Default::default()
    };
    if axes_as_input {
        out.push(NodeProto {
            name: Some(axes.clone()),
            op_type: Some(CONSTANT.into()),
            output: vec![axes.clone()],
            attribute: vec![ints_attr(VALUE_INTS, vec![1, 2])],
            ..Default::default()
        });
        unsqueeze.input.push(axes);
    } else {
        unsqueeze.attribute.push(ints_attr(AXES, vec![1, 2]));
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
    node.attribute.push(int_attr(Q_NUM_HEADS.as_str(), heads));
    node.attribute.push(int_attr(KV_NUM_HEADS.as_str(), heads));
    if site.causal {
        set_attr(node, int_attr(IS_CAUSAL.as_str(), 1));
    }
    out
}

/// `Transpose(k, perm)` named after the site, and the tensor it produces.
fn transpose_k(prefix: &str, k: &str, perm: &[i64]) -> (NodeProto, String) {
    let name = format!("{prefix}.tessera_k");
    let node = NodeProto {
        name: Some(format!("{prefix}.k_transpose")),
        op_type: Some(TRANSPOSE.into()),
        input: vec![k.to_string()],
        output: vec![name.clone()],
        attribute: vec![ints_attr(PERM, perm.to_vec())],
        ..Default::default()
    };
    (node, name)
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
            let (node, name) = transpose_k(&prefix, k, perm);
            out.push(node);
            name
        }
    };
    let plan = mask_plan(site, policy);
    let mut node = NodeProto {
        name: Some(format!("{prefix}.tessera_attention")),
        op_type: Some(attention::OP.as_str().into()),
        domain: Some(DOMAIN.as_str().into()),
        input: vec![site.q.clone(), k, site.v.clone()],
        output: vec![site.y.clone()],
        ..Default::default()
    };
    if let Some(m) = plan.input.clone() {
        node.input.push(m);
    }
    if let Some(c) = &site.cache {
        // ONNX slots: attn_mask (3, empty when none), past_key (4), past_value (5);
        // present_key and present_value are outputs 1 and 2.
        node.input.resize(3 + 1, String::new());
        node.input
            .extend([c.past_key.clone(), c.past_value.clone()]);
        node.output
            .extend([c.present_key.clone(), c.present_value.clone()]);
    }
    if let Some(s) = site.scale {
        node.attribute.push(float_attr(SCALE.as_str(), s as f32));
    }
    set_causal(&mut node, site);
    set_window(&mut node, &plan);
    set_globals(&mut node, &plan);
    out.push(node);
    out
}
