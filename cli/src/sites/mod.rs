//! Finding attention sites: one small named matcher per exporter form,
//! dispatched from a flat op-type table.
//!
//! | anchor op | domain | matcher |
//! | --- | --- | --- |
//! | `Attention` | ONNX (opset ≥ 23) | [`match_onnx_attention`] ([`fused`]) |
//! | `Attention`, `MultiHeadAttention`, `GroupQueryAttention` | `com.microsoft` | [`match_microsoft`] |
//! | `Softmax` | ONNX | [`match_decomposed`]: `MatMul(Q,Kᵀ) → Mul\|Div(scale) → [Add(mask)\|Where] → Softmax → [IsNaN/Where guard] → MatMul(V)`, one stage matcher per exporter form ([`decomposed`]) |
//! | `Attention` | `ai.tessera` | already rewritten |
//!
//! Cost: one pass over the nodes; each matcher walks a bounded chain.

mod decomposed;
mod fused;
pub mod kv_cache;

use tessera_schema::{attention, DOMAIN};

use crate::eval::probe_shape;
use crate::graph::{attr_ints, is_onnx, Dim, GraphIndex, ONNX_DOMAIN};
use crate::mask::MaskInfo;
use crate::names::{
    ATTENTION, AXES, CONCAT, DIV, EXPAND, GROUP_QUERY_ATTENTION, MS_DOMAIN, MUL,
    MULTI_HEAD_ATTENTION, PERM, RESHAPE, SOFTMAX, TRANSPOSE, UNSQUEEZE,
};

use decomposed::match_decomposed;
use fused::{match_microsoft, match_onnx_attention, match_tessera};

/// Sequence length at which operand shapes are probed (odd, unlike any
/// head count or head size).
const PROBE_S: usize = 7;

/// Which exporter form a site came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// ONNX `Attention` (opset 23+).
    OnnxAttention,
    /// `com.microsoft.Attention` (packed QKV weights).
    MicrosoftAttention,
    /// `com.microsoft.MultiHeadAttention`.
    MicrosoftMultiHeadAttention,
    /// `com.microsoft.GroupQueryAttention`.
    MicrosoftGroupQueryAttention,
    /// The decomposed MatMul/Softmax/MatMul chain, scale after the QK MatMul.
    DecomposedEager,
    /// The decomposed chain with `√scale` applied to Q and Kᵀ (dynamo sdpa).
    DecomposedSplitScale,
    /// Already `ai.tessera.Attention`.
    Tessera,
}

impl SiteKind {
    /// Short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::OnnxAttention => "onnx.Attention",
            Self::MicrosoftAttention => "com.microsoft.Attention",
            Self::MicrosoftMultiHeadAttention => "com.microsoft.MultiHeadAttention",
            Self::MicrosoftGroupQueryAttention => "com.microsoft.GroupQueryAttention",
            Self::DecomposedEager => "decomposed(eager)",
            Self::DecomposedSplitScale => "decomposed(sdpa-split-scale)",
            Self::Tessera => "ai.tessera.Attention",
        }
    }
}

/// One attention site.
#[derive(Debug, Clone)]
pub struct Site {
    /// Form.
    pub kind: SiteKind,
    /// Ordinal among the sites (the "layer" for `--layers`).
    pub layer: usize,
    /// Name of the node the site is anchored on (Softmax or Attention).
    pub anchor: String,
    /// Indices of the nodes that make up the site (removed by a rewrite).
    pub nodes: Vec<usize>,
    /// Query tensor, `(B, Hq, Sq, D)` for decomposed sites.
    pub q: String,
    /// Key source: a tensor and the permutation that gives `(B, Hkv, Skv, D)` from it
    /// (`None` = it already is).
    pub k: (String, Option<Vec<i64>>),
    /// Value tensor.
    pub v: String,
    /// The output tensor the site produces.
    pub y: String,
    /// Softmax scale (`None` = the op's default `1/√D`).
    pub scale: Option<f64>,
    /// Query heads, if known.
    pub q_heads: Option<i64>,
    /// Key/value heads, if known.
    pub kv_heads: Option<i64>,
    /// Head dimension, if known.
    pub head_dim: Option<i64>,
    /// The mask and what it was recognised as.
    pub mask: MaskInfo,
    /// Causal flag found on the node (`is_causal`, `unidirectional`, …).
    pub causal: bool,
    /// `Ok(note)` when an exact rewrite is possible, `Err(reason)` when not.
    pub exact: Result<String, String>,
    /// The KV cache the site's K and V were concatenated from, if any.
    pub cache: Option<kv_cache::Cache>,
}

type Matcher = fn(&GraphIndex, usize, usize) -> Option<Site>;

/// The flat table: (domain, op type, matcher).
const MATCHERS: &[(&str, &str, Matcher)] = &[
    (ONNX_DOMAIN, ATTENTION, match_onnx_attention),
    (MS_DOMAIN, ATTENTION, match_microsoft),
    (MS_DOMAIN, MULTI_HEAD_ATTENTION, match_microsoft),
    (MS_DOMAIN, GROUP_QUERY_ATTENTION, match_microsoft),
    (ONNX_DOMAIN, SOFTMAX, match_decomposed),
    (DOMAIN.as_str(), attention::OP.as_str(), match_tessera),
];

/// Every attention site of the graph, in node order.
pub fn find_sites(ix: &GraphIndex) -> Vec<Site> {
    let mut sites = Vec::new();
    for (i, n) in ix.graph.node.iter().enumerate() {
        let domain = if is_onnx(n) { ONNX_DOMAIN } else { n.domain() };
        for (d, op, m) in MATCHERS {
            if *d == domain && *op == n.op_type() {
                if let Some(mut s) = m(ix, i, sites.len()) {
                    kv_cache::guard_offset(ix, &mut s);
                    sites.push(s);
                }
            }
        }
    }
    sites
}

/// Heads and head size from a declared `(B, H, S, D)` shape.
pub(super) fn heads_from_shape(ix: &GraphIndex, t: &str) -> (Option<i64>, Option<i64>) {
    match ix.shape(t).as_deref() {
        Some([_, Dim::Fixed(h), _, Dim::Fixed(d)]) => (Some(*h), Some(*d)),
        Some([_, _, Dim::Fixed(hd)]) => (None, Some(*hd)),
        _ => (None, None),
    }
}

/// Heads and head size of a 4-D `(B, H, S, D)` tensor built as
/// `Transpose(Reshape(x, [.., .., H, D]), perm)`, the exporters' head split.
pub(super) fn heads_from_reshape(ix: &GraphIndex, t: &str) -> Option<(i64, i64)> {
    let tr = ix.node(ix.producer_op(t, TRANSPOSE)?);
    let perm = attr_ints(tr, PERM)?;
    let rs = ix.node(ix.producer_op(&tr.input[0], RESHAPE)?);
    let shape = ix.constant(&rs.input[1])?.values;
    if perm.len() != 4 || shape.len() != 4 {
        return None;
    }
    let dims: Vec<f64> = perm.iter().map(|&p| shape[p as usize]).collect();
    (dims[1] > 0.0 && dims[3] > 0.0).then(|| (dims[1] as i64, dims[3] as i64))
}

/// Whether `t` is known to be rank 4.
pub(super) fn rank4(ix: &GraphIndex, t: &str) -> bool {
    if let Some(s) = ix.shape(t) {
        return s.len() == 4;
    }
    let mut cur = t.to_string();
    // Look through the scale multiplications exporters put on Q and Kᵀ.
    for _ in 0..3 {
        if let Some(tr) = ix.producer_op(&cur, TRANSPOSE) {
            return attr_ints(ix.node(tr), PERM).is_some_and(|p| p.len() == 4);
        }
        match ix.producer(&cur).map(|p| ix.node(p)) {
            Some(n) if is_onnx(n) && matches!(n.op_type(), MUL | DIV | RESHAPE) => {
                if n.op_type() == RESHAPE {
                    return ix
                        .constant(&n.input[1])
                        .is_some_and(|c| c.values.len() == 4);
                }
                cur = n.input[0].clone();
            }
            _ => return false,
        }
    }
    false
}

/// `Reshape(Expand(Unsqueeze(x, axes=[2]), [.., .., n, .., ..]), ..)`: Llama's
/// `repeat_kv`. Returns `x` (the KV heads) and `n`.
pub(super) fn fold_repeat_kv(ix: &GraphIndex, t: &str) -> Option<(String, i64)> {
    let rs = ix.node(ix.producer_op(t, RESHAPE)?);
    let ex = ix.node(ix.producer_op(&rs.input[0], EXPAND)?);
    let un = ix.node(ix.producer_op(&ex.input[0], UNSQUEEZE)?);
    let axes = match un.input.get(1) {
        Some(a) => ix.constant(a)?.values,
        None => attr_ints(un, AXES)?.iter().map(|&a| a as f64).collect(),
    };
    if axes != [2.0] {
        return None;
    }
    // The shapes the graph computes at a probe length say it directly.
    let probe = |x: &str| probe_shape(ix, x, PROBE_S);
    if let (Some(x), Some(e), Some(r)) = (probe(&un.input[0]), probe(&ex.output[0]), probe(t)) {
        if x.len() == 4 && e.len() == 5 && r.len() == 4 {
            let n = e[2];
            let ok = e == [x[0], x[1], n, x[2], x[3]] && r == [x[0], x[1] * n, x[2], x[3]];
            return (ok && n >= 1).then(|| (un.input[0].clone(), n as i64));
        }
    }
    let n = match ix.constant(&ex.input[1]) {
        Some(c) if c.values.len() == 5 => c.values[2],
        _ => {
            // One input per dimension (n at index 2), or slices of a Shape around one constant n.
            let cat = ix.node(ix.producer_op(&ex.input[1], CONCAT)?);
            if cat.input.len() == 5 {
                ix.scalar(&cat.input[2])?
            } else {
                let consts: Vec<f64> = cat.input.iter().filter_map(|i| ix.scalar(i)).collect();
                match consts.as_slice() {
                    [n] => *n,
                    _ => return None,
                }
            }
        }
    };
    (n >= 1.0 && n.fract() == 0.0).then(|| (un.input[0].clone(), n as i64))
}
