//! Recognising the attention masks exporters build inside the graph.
//!
//! A mask reaches an attention site either as a bool tensor (true = attend)
//! or as an additive float bias. Both are traced back through the small
//! subgraphs PyTorch's exporters emit:
//! - bias = `Where(bool, 0, -big)`, or `Mul(Sub(1, Cast(m)), -big)` from a padding input;
//! - bool = `And(a, b)` of parts, each part one of
//!   - a sliding window `LessOrEqual(Abs(Sub(p, q)), w)` (ModernBERT: `|i − j| ≤ w`),
//!   - padding: a subgraph whose only graph input is the attention-mask input
//!     (`Cast`, `Unsqueeze`, `Expand`, `GatherND`, …).
//!
//! Anything else is reported as an opaque mask and stays a dense `attn_mask`.

use crate::graph::{is_onnx, GraphIndex};
use crate::proto::tensor_proto::DataType;

/// What a site's mask was recognised as.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaskInfo {
    /// The mask tensor the site reads, if any.
    pub tensor: Option<String>,
    /// `bool` (true = attend) or `additive` (added to the scores).
    pub form: Option<&'static str>,
    /// A padding part was found, with the bool tensor that carries only it.
    pub padding: Option<String>,
    /// A symmetric or asymmetric window `(left, right)`, inclusive.
    pub window: Option<(i64, i64)>,
    /// A causal part `k_pos <= q_pos` was found.
    pub causal: bool,
    /// Parts that were not recognised (op types), kept as a dense mask.
    pub opaque: Vec<String>,
}

impl MaskInfo {
    /// One-line description for `inspect`.
    pub fn describe(&self) -> String {
        let Some(form) = self.form else {
            return "none".into();
        };
        let mut parts = Vec::new();
        if self.padding.is_some() {
            parts.push("padding".to_string());
        }
        if self.causal {
            parts.push("causal".to_string());
        }
        if let Some((l, r)) = self.window {
            parts.push(format!("window(left={l},right={r})"));
        }
        for o in &self.opaque {
            parts.push(format!("opaque({o})"));
        }
        if parts.is_empty() {
            parts.push("opaque".into());
        }
        format!("{form}: {}", parts.join(" & "))
    }

    /// Whether every part was recognised (so the dense mask can shrink to
    /// the padding part plus window attributes).
    pub fn fully_recognised(&self) -> bool {
        self.form.is_some()
            && self.opaque.is_empty()
            && (self.padding.is_some() || self.window.is_some() || self.causal)
    }
}

/// Analyse a bool mask tensor (true = attend).
pub fn analyse_bool(ix: &GraphIndex, tensor: &str) -> MaskInfo {
    let mut info = MaskInfo {
        tensor: Some(tensor.into()),
        form: Some("bool"),
        ..Default::default()
    };
    bool_parts(ix, tensor, &mut info);
    info
}

/// Analyse an additive float mask.
pub fn analyse_additive(ix: &GraphIndex, tensor: &str) -> MaskInfo {
    let mut info = MaskInfo {
        tensor: Some(tensor.into()),
        form: Some("additive"),
        ..Default::default()
    };
    if let Some(w) = ix.producer_op(tensor, "Where") {
        let n = ix.node(w);
        let zero = ix.scalar(&n.input[1]) == Some(0.0);
        let neg = ix.scalar(&n.input[2]).is_some_and(|v| v <= -1e30);
        if zero && neg {
            bool_parts(ix, &n.input[0], &mut info);
            return info;
        }
    }
    if padding_only(ix, tensor) {
        // e.g. (1 - mask) * finfo.min (BERT's extended mask): padding only,
        // kept as the additive tensor it is.
        info.padding = Some(tensor.to_string());
        return info;
    }
    info.opaque.push(
        ix.producer(tensor)
            .map_or("graph input".into(), |p| ix.node(p).op_type().to_string()),
    );
    info
}

fn bool_parts(ix: &GraphIndex, tensor: &str, info: &mut MaskInfo) {
    let Some(p) = ix.producer(tensor) else {
        info.opaque.push(format!("graph input '{tensor}'"));
        return;
    };
    let n = ix.node(p);
    match (is_onnx(n), n.op_type()) {
        // The op broadcasts the mask itself, so an Expand can be looked through.
        (true, "Expand" | "Identity") => bool_parts(ix, &n.input[0], info),
        (true, "Unsqueeze" | "Reshape") if !padding_only(ix, tensor) => {
            bool_parts(ix, &n.input[0], info);
        }
        (true, "And") => {
            bool_parts(ix, &n.input[0], info);
            bool_parts(ix, &n.input[1], info);
        }
        (true, "LessOrEqual") if window_width(ix, tensor).is_some() => {
            let w = window_width(ix, tensor).unwrap_or(0);
            info.window = Some(match info.window {
                Some((l, r)) => (l.min(w), r.min(w)),
                None => (w, w),
            });
        }
        (true, "LessOrEqual") if is_causal(ix, tensor) => info.causal = true,
        _ if padding_only(ix, tensor) => {
            if info.padding.is_none() {
                info.padding = Some(tensor.to_string());
            } else {
                info.opaque.push("second padding part".into());
            }
        }
        (_, op) => info.opaque.push(format!("{op} '{}'", n.name())),
    }
}

/// Whether `tensor` is bool: declared so, or made by a comparison, a
/// logical op or a `Cast` to bool (through shape-only ops).
pub fn is_bool(ix: &GraphIndex, tensor: &str) -> bool {
    if let Some(t) = ix.elem_type(tensor) {
        return t == DataType::Bool as i32;
    }
    let Some(p) = ix.producer(tensor) else {
        return false;
    };
    let n = ix.node(p);
    match n.op_type() {
        "And" | "Or" | "Not" | "Xor" | "LessOrEqual" | "Less" | "Greater" | "GreaterOrEqual"
        | "Equal" | "IsNaN" | "IsInf" => true,
        "Cast" => crate::graph::attr_i(n, "to") == Some(DataType::Bool as i64),
        "Expand" | "Unsqueeze" | "Squeeze" | "Reshape" | "Transpose" | "Identity" => {
            is_bool(ix, &n.input[0])
        }
        _ => false,
    }
}

/// `LessOrEqual(Unsqueeze(pos, [0]), Unsqueeze(pos, [1]))`: key position
/// (last axis) ≤ query position (second-to-last axis), i.e. causal.
fn is_causal(ix: &GraphIndex, tensor: &str) -> bool {
    let Some(le) = ix.producer_op(tensor, "LessOrEqual") else {
        return false;
    };
    let le = ix.node(le);
    let unsq = |t: &str| -> Option<(String, Vec<f64>)> {
        let u = ix.node(ix.producer_op(t, "Unsqueeze")?);
        let axes = match u.input.get(1) {
            Some(a) => ix.constant(a)?.values,
            None => crate::graph::attr_ints(u, "axes")?
                .iter()
                .map(|&a| a as f64)
                .collect(),
        };
        Some((u.input[0].clone(), axes))
    };
    match (unsq(&le.input[0]), unsq(&le.input[1])) {
        (Some((k, ka)), Some((q, qa))) => k == q && ka == [0.0] && (qa == [1.0] || qa == [-1.0]),
        _ => false,
    }
}

/// `LessOrEqual(Abs(Sub(a, b)), w)` with constant `w`: the keys `|i − j| ≤ w`.
fn window_width(ix: &GraphIndex, tensor: &str) -> Option<i64> {
    let le = ix.node(ix.producer_op(tensor, "LessOrEqual")?);
    let w = ix.scalar(&le.input[1])?;
    let abs = ix.node(ix.producer_op(&le.input[0], "Abs")?);
    ix.producer_op(&abs.input[0], "Sub")?;
    (w >= 0.0 && w.fract() == 0.0).then_some(w as i64)
}

/// Whether `tensor` depends on exactly one graph input, an integer or bool
/// rank-2 `(batch, seq)` mask, and on no comparison of positions.
fn padding_only(ix: &GraphIndex, tensor: &str) -> bool {
    let mut inputs = Vec::new();
    let mut stack = vec![tensor.to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(t) = stack.pop() {
        if !seen.insert(t.clone()) || seen.len() > 256 {
            if seen.len() > 256 {
                return false;
            }
            continue;
        }
        match ix.producer(&t) {
            Some(p) => {
                let n = ix.node(p);
                if matches!(
                    n.op_type(),
                    "Range"
                        | "LessOrEqual"
                        | "Less"
                        | "Greater"
                        | "GreaterOrEqual"
                        | "Abs"
                        | "Trilu"
                ) {
                    return false;
                }
                // Only the shape of what `Shape` reads matters (e.g. Expand to [B,1,S,S]).
                if n.op_type() != "Shape" {
                    stack.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
                }
            }
            None if ix.constant(&t).is_some()
                || ix.graph.initializer.iter().any(|i| i.name() == t) => {}
            None => inputs.push(t),
        }
    }
    let [input] = inputs.as_slice() else {
        return false;
    };
    let int_like = matches!(
        ix.elem_type(input).and_then(|e| DataType::try_from(e).ok()),
        Some(DataType::Int64 | DataType::Int32 | DataType::Bool | DataType::Float)
    );
    int_like && ix.shape(input).is_some_and(|s| s.len() == 2)
}
