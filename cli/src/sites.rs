//! Finding attention sites: one small named matcher per exporter form,
//! dispatched from a flat op-type table.
//!
//! | anchor op | domain | matcher |
//! | --- | --- | --- |
//! | `Attention` | ONNX (opset ≥ 23) | [`match_onnx_attention`] |
//! | `Attention`, `MultiHeadAttention`, `GroupQueryAttention` | `com.microsoft` | [`match_microsoft`] |
//! | `Softmax` | ONNX | [`match_decomposed`]: `MatMul(Q,Kᵀ) → Mul\|Div(scale) → [Add(mask)\|Where] → Softmax → [IsNaN/Where guard] → MatMul(V)`, with the scale either after the `MatMul` (eager) or split as `√scale` on Q and Kᵀ (dynamo + sdpa, opsets 18/20) |
//! | `Attention` | `ai.tessera` | already rewritten |
//!
//! Cost: one pass over the nodes; each matcher walks a bounded chain.

use crate::eval::probe_shape;
use crate::graph::{attr_f, attr_i, attr_ints, is_onnx, Dim, GraphIndex};
use crate::mask::{analyse_additive, analyse_bool, is_bool, MaskInfo};

/// Sequence length at which operand shapes are probed (odd, unlike any
/// head count or head size).
const PROBE_S: usize = 7;

/// The domain of Tessera's ops.
pub const TESSERA_DOMAIN: &str = "ai.tessera";

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
}

type Matcher = fn(&GraphIndex, usize, usize) -> Option<Site>;

/// The flat table: (domain, op type, matcher).
const MATCHERS: &[(&str, &str, Matcher)] = &[
    ("", "Attention", match_onnx_attention),
    ("com.microsoft", "Attention", match_microsoft),
    ("com.microsoft", "MultiHeadAttention", match_microsoft),
    ("com.microsoft", "GroupQueryAttention", match_microsoft),
    ("", "Softmax", match_decomposed),
    (TESSERA_DOMAIN, "Attention", match_tessera),
];

/// Every attention site of the graph, in node order.
pub fn find_sites(ix: &GraphIndex) -> Vec<Site> {
    let mut sites = Vec::new();
    for (i, n) in ix.graph.node.iter().enumerate() {
        let domain = if is_onnx(n) { "" } else { n.domain() };
        for (d, op, m) in MATCHERS {
            if *d == domain && *op == n.op_type() {
                if let Some(s) = m(ix, i, sites.len()) {
                    sites.push(s);
                }
            }
        }
    }
    sites
}

/// Heads and head size from a declared `(B, H, S, D)` shape.
fn heads_from_shape(ix: &GraphIndex, t: &str) -> (Option<i64>, Option<i64>) {
    match ix.shape(t).as_deref() {
        Some([_, Dim::Fixed(h), _, Dim::Fixed(d)]) => (Some(*h), Some(*d)),
        Some([_, _, Dim::Fixed(hd)]) => (None, Some(*hd)),
        _ => (None, None),
    }
}

/// Heads and head size of a 4-D `(B, H, S, D)` tensor built as
/// `Transpose(Reshape(x, [.., .., H, D]), perm)`, the exporters' head split.
fn heads_from_reshape(ix: &GraphIndex, t: &str) -> Option<(i64, i64)> {
    let tr = ix.node(ix.producer_op(t, "Transpose")?);
    let perm = attr_ints(tr, "perm")?;
    let rs = ix.node(ix.producer_op(&tr.input[0], "Reshape")?);
    let shape = ix.constant(&rs.input[1])?.values;
    if perm.len() != 4 || shape.len() != 4 {
        return None;
    }
    let dims: Vec<f64> = perm.iter().map(|&p| shape[p as usize]).collect();
    (dims[1] > 0.0 && dims[3] > 0.0).then(|| (dims[1] as i64, dims[3] as i64))
}

/// Whether `t` is known to be rank 4.
fn rank4(ix: &GraphIndex, t: &str) -> bool {
    if let Some(s) = ix.shape(t) {
        return s.len() == 4;
    }
    let mut cur = t.to_string();
    // Look through the scale multiplications exporters put on Q and Kᵀ.
    for _ in 0..3 {
        if let Some(tr) = ix.producer_op(&cur, "Transpose") {
            return attr_ints(ix.node(tr), "perm").is_some_and(|p| p.len() == 4);
        }
        match ix.producer(&cur).map(|p| ix.node(p)) {
            Some(n) if is_onnx(n) && matches!(n.op_type(), "Mul" | "Div" | "Reshape") => {
                if n.op_type() == "Reshape" {
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

/// ONNX `Attention` (opset 23/24): a domain swap, exact unless it uses
/// inputs or attributes Tessera lacks.
fn match_onnx_attention(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
    let n = ix.node(i);
    let input = |k: usize| n.input.get(k).filter(|s| !s.is_empty()).cloned();
    let q = input(0)?;
    let (mut hq, mut d) = heads_from_reshape(ix, &q)
        .map(|(h, d)| (Some(h), Some(d)))
        .unwrap_or_else(|| heads_from_shape(ix, &q));
    let k_name = input(1).unwrap_or_default();
    let hkv = attr_i(n, "kv_num_heads")
        .or(heads_from_reshape(ix, &k_name).map(|(h, _)| h))
        .or(heads_from_shape(ix, &k_name).0);
    hq = attr_i(n, "q_num_heads").or(hq);
    if d.is_some() && ix.shape(&q).is_some_and(|s| s.len() == 3) {
        d = hq.and_then(|h| d.map(|hd| hd / h));
    }
    let mask = match input(3) {
        Some(m) if is_bool(ix, &m) => analyse_bool(ix, &m),
        Some(m) => analyse_additive(ix, &m),
        None => MaskInfo::default(),
    };
    // GQA exported as repeat_kv before a plain Attention: read the KV heads directly.
    let (mut k, mut v, mut hkv) = (input(1)?, input(2)?, hkv);
    if let (Some((k0, nk)), Some((v0, nv)), Some(h)) =
        (fold_repeat_kv(ix, &k), fold_repeat_kv(ix, &v), hq)
    {
        if nk == nv && ix.shape(&q).is_none_or(|s| s.len() == 4) {
            (k, v, hkv) = (k0, v0, Some(h / nk));
        }
    }
    let exact = if input(4).is_some() != input(5).is_some() {
        Err("past_key without past_value".into())
    } else {
        Ok("domain swap (identical semantics)".into())
    };
    Some(Site {
        kind: SiteKind::OnnxAttention,
        layer,
        anchor: n.name().to_string(),
        nodes: vec![i],
        q,
        k: (k, None),
        v,
        y: n.output.first()?.clone(),
        scale: attr_f(n, "scale").map(f64::from),
        q_heads: hq,
        kv_heads: hkv.or(hq),
        head_dim: d,
        mask,
        causal: attr_i(n, "is_causal") == Some(1),
        exact,
    })
}

/// `com.microsoft` fused attention: listed, not rewritten yet.
fn match_microsoft(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
    let n = ix.node(i);
    let kind = match n.op_type() {
        "Attention" => SiteKind::MicrosoftAttention,
        "MultiHeadAttention" => SiteKind::MicrosoftMultiHeadAttention,
        _ => SiteKind::MicrosoftGroupQueryAttention,
    };
    let heads = attr_i(n, "num_heads");
    let kv = attr_i(n, "kv_num_heads").or(heads);
    let q = n.input.first()?.clone();
    Some(Site {
        kind,
        layer,
        anchor: n.name().to_string(),
        nodes: vec![i],
        k: (n.input.get(1).cloned().unwrap_or_default(), None),
        v: n.input.get(2).cloned().unwrap_or_default(),
        y: n.output.first()?.clone(),
        scale: attr_f(n, "scale").filter(|&s| s != 0.0).map(f64::from),
        q_heads: heads,
        kv_heads: kv,
        head_dim: None,
        causal: attr_i(n, "unidirectional") == Some(1)
            || kind == SiteKind::MicrosoftGroupQueryAttention,
        exact: if kind == SiteKind::MicrosoftMultiHeadAttention {
            mha_exact(ix, n, heads)
        } else {
            Err(format!(
                "{}: rewriting this com.microsoft op is not implemented yet (listed only)",
                n.op_type()
            ))
        },
        mask: match n.input.get(5).filter(|s| !s.is_empty()) {
            Some(b) => analyse_additive(ix, b),
            None => MaskInfo::default(),
        },
        q,
    })
}

/// `com.microsoft.MultiHeadAttention` maps onto Tessera's 3-D form when it
/// has separate `(B, S, H·D)` Q, K, V, no packed bias, no key padding mask,
/// no past, and no used `present_*` output; `attention_bias` becomes `attn_mask`.
fn mha_exact(
    ix: &GraphIndex,
    n: &crate::proto::NodeProto,
    heads: Option<i64>,
) -> Result<String, String> {
    let has = |k: usize| n.input.get(k).is_some_and(|s| !s.is_empty());
    let why = |w: &str| Err(format!("MultiHeadAttention '{}': {w}", n.name()));
    if heads.is_none() {
        return why("no num_heads");
    }
    if !(has(1) && has(2)) {
        return why("packed QKV or KV (key/value inputs empty)");
    }
    if has(3) || has(4) || has(6) || has(7) || n.input.len() > 8 {
        return why("bias, key_padding_mask or past inputs are not supported");
    }
    let used = |o: &String| !o.is_empty() && (!ix.consumers(o).is_empty() || ix.is_graph_output(o));
    if n.output.iter().skip(1).any(used) {
        return why("present_key/present_value outputs are used");
    }
    let rank3 = |t: &str| match ix.shape(t) {
        Some(s) => s.len() == 3,
        None => ix
            .producer(t)
            .is_some_and(|p| matches!(ix.node(p).op_type(), "MatMul" | "Add" | "Gemm")),
    };
    if !(rank3(&n.input[0]) && rank3(&n.input[1]) && rank3(&n.input[2])) {
        return why("Q, K and V are not known to be 3-D (B, S, H·D)");
    }
    Ok("3-D Q/K/V with q_num_heads = kv_num_heads = num_heads; attention_bias as attn_mask".into())
}

/// A node already rewritten.
fn match_tessera(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
    let n = ix.node(i);
    Some(Site {
        kind: SiteKind::Tessera,
        layer,
        anchor: n.name().to_string(),
        nodes: vec![i],
        q: n.input.first()?.clone(),
        k: (n.input.get(1).cloned().unwrap_or_default(), None),
        v: n.input.get(2).cloned().unwrap_or_default(),
        y: n.output.first()?.clone(),
        scale: attr_f(n, "scale").map(f64::from),
        q_heads: attr_i(n, "q_num_heads"),
        kv_heads: attr_i(n, "kv_num_heads"),
        head_dim: None,
        mask: MaskInfo::default(),
        causal: attr_i(n, "is_causal") == Some(1),
        exact: Err("already ai.tessera.Attention".into()),
    })
}

/// The decomposed pattern, anchored on its `Softmax`.
fn match_decomposed(ix: &GraphIndex, softmax: usize, layer: usize) -> Option<Site> {
    let sm = ix.node(softmax);
    let axis = attr_i(sm, "axis").unwrap_or(-1);
    let mut nodes = vec![softmax];

    // Forward: optional NaN guard or pass-through, then MatMul(P, V).
    let mut p = sm.output.first()?.clone();
    let pv = loop {
        let cs = ix.consumers(&p);
        let &[c] = cs else {
            // IsNaN guard: IsNaN(P) and Where(IsNaN(P), 0, P) both read P.
            let isnan = cs
                .iter()
                .copied()
                .find(|&c| ix.node(c).op_type() == "IsNaN")?;
            let wh = cs
                .iter()
                .copied()
                .find(|&c| ix.node(c).op_type() == "Where")?;
            let w = ix.node(wh);
            if cs.len() != 2
                || w.input[0] != ix.node(isnan).output[0]
                || w.input[2] != p
                || ix.scalar(&w.input[1]) != Some(0.0)
            {
                return None;
            }
            nodes.extend([isnan, wh]);
            p = w.output[0].clone();
            continue;
        };
        let n = ix.node(c);
        match n.op_type() {
            "MatMul" if n.input[0] == p => break c,
            "Dropout" | "Identity" | "Cast" if n.output.len() == 1 || n.op_type() == "Dropout" => {
                nodes.push(c);
                p = n.output[0].clone();
            }
            _ => return None,
        }
    };
    nodes.push(pv);
    let pvn = ix.node(pv);

    // Backward: [Add(mask) | Where(mask, s, -big)] then Mul|Div(scale) then MatMul(Q, Kᵀ).
    let mut s = sm.input.first()?.clone();
    let mut mask = MaskInfo::default();
    if let Some(a) = ix.producer_op(&s, "Add") {
        let n = ix.node(a);
        let (scores, bias) = if leads_to_matmul(ix, &n.input[0]) {
            (&n.input[0], &n.input[1])
        } else {
            (&n.input[1], &n.input[0])
        };
        mask = analyse_additive(ix, bias);
        nodes.push(a);
        s = scores.clone();
    } else if let Some(w) = ix.producer_op(&s, "Where") {
        let n = ix.node(w);
        if ix.scalar(&n.input[2]).is_some_and(|v| v <= -1e30) {
            mask = analyse_bool(ix, &n.input[0]);
            nodes.push(w);
            s = n.input[1].clone();
        } else {
            return None;
        }
    }
    let mut scale = 1.0f64;
    let mut split_scale = false;
    if let Some(m) = ix
        .producer(&s)
        .filter(|&m| matches!(ix.node(m).op_type(), "Mul" | "Div") && is_onnx(ix.node(m)))
    {
        let n = ix.node(m);
        let (x, c) = if ix.scalar(&n.input[1]).is_some() {
            (&n.input[0], ix.scalar(&n.input[1])?)
        } else {
            (&n.input[1], ix.scalar(&n.input[0])?)
        };
        scale = if n.op_type() == "Div" { 1.0 / c } else { c };
        nodes.push(m);
        s = x.clone();
    }
    let qk = ix.producer_op(&s, "MatMul")?;
    nodes.push(qk);
    let qkn = ix.node(qk);
    let (mut q, mut kt) = (qkn.input[0].clone(), qkn.input[1].clone());
    // The split form: Mul(Q, √s) and Mul(Kᵀ, √s) feeding the MatMul.
    for t in [&mut q, &mut kt] {
        if let Some(m) = ix.producer_op(t, "Mul") {
            let n = ix.node(m);
            if let Some(c) = ix.scalar(&n.input[1]) {
                if ix.consumers(t).len() == 1 {
                    scale *= c;
                    split_scale = true;
                    nodes.push(m);
                    *t = n.input[0].clone();
                }
            }
        }
    }
    // Kᵀ from K: undo a Transpose (4-D, or the dynamo exporter's 3-D
    // Reshape → Transpose → Reshape), or transpose back.
    let unflattened = unflatten_transpose(ix, &kt);
    let k = if let Some((k4, via)) = unflattened {
        if via
            .iter()
            .all(|&n| ix.node(n).output.iter().all(|o| ix.consumers(o).len() <= 1))
        {
            nodes.extend(via);
        }
        (k4, None)
    } else {
        match ix.producer_op(&kt, "Transpose") {
            Some(tr) => {
                let n = ix.node(tr);
                let mut perm = attr_ints(n, "perm")?.to_vec();
                if perm.len() != 4 {
                    return None;
                }
                perm.swap(2, 3);
                if ix.consumers(&kt).len() == 1 {
                    nodes.push(tr);
                }
                if perm == [0, 1, 2, 3] {
                    (n.input[0].clone(), None)
                } else {
                    (n.input[0].clone(), Some(perm))
                }
            }
            None => (kt.clone(), Some(vec![0, 1, 3, 2])),
        }
    };
    // GQA: fold the exporter's repeat_kv back to the KV heads.
    let mut k = k;
    let mut v = pvn.input[1].clone();
    let mut n_rep = None;
    if k.1.is_none() {
        if let (Some((k0, nk)), Some((v0, nv))) = (fold_repeat_kv(ix, &k.0), fold_repeat_kv(ix, &v))
        {
            if nk == nv {
                k.0 = k0;
                v = v0;
                n_rep = Some(nk);
            }
        }
    }
    let (mut hq, mut d) = heads_from_reshape(ix, &q)
        .map(|(h, d)| (Some(h), Some(d)))
        .unwrap_or_else(|| heads_from_shape(ix, &q));
    let mut hkv = match n_rep {
        Some(n) => hq.map(|h| h / n),
        None => heads_from_reshape(ix, &v)
            .map(|(h, _)| h)
            .or(heads_from_shape(ix, &v).0),
    };
    // Shapes from the graph itself at one small sequence: fills what the
    // declared shapes lack (legacy exports carry none) and checks the rest.
    let probe = |t: &str| probe_shape(ix, t, PROBE_S);
    let (pq, pv) = (probe(&q), probe(&v));
    let pk = match &k {
        (t, None) => probe(t),
        (t, Some(perm)) => probe(t)
            .filter(|s| s.len() == perm.len())
            .map(|s| perm.iter().map(|&p| s[p as usize]).collect()),
    };
    let probed = match (&pq, &pk, &pv) {
        (Some(q4), Some(k4), Some(v4)) if q4.len() == 4 && k4.len() == 4 && v4.len() == 4 => {
            let consistent = q4[0] == k4[0]
                && k4[..3] == v4[..3]
                && q4[3] == k4[3]
                && k4[1] > 0
                && q4[1] % k4[1] == 0
                && q4[2] == PROBE_S
                && k4[2] == PROBE_S;
            if consistent {
                hq = Some(q4[1] as i64);
                hkv = Some(k4[1] as i64);
                d = Some(q4[3] as i64);
            }
            Some(consistent)
        }
        _ => None,
    };

    let exact = if !(axis == -1 || axis == 3) {
        Err(format!(
            "Softmax '{}' axis {axis} is not the key axis",
            sm.name()
        ))
    } else if probed == Some(false) {
        Err(format!(
            "MatMul '{}': Q {pq:?}, K {pk:?}, V {pv:?} (at S = {PROBE_S}) are not (B,H,S,D) attention operands",
            qkn.name()
        ))
    } else if probed.is_none() && (!rank4(ix, &q) || !rank4(ix, &v)) {
        Err(format!(
            "MatMul '{}': Q/V are not known to be 4-D (B,H,S,D); run shape inference first",
            qkn.name()
        ))
    } else {
        Ok(if mask.form.is_some() {
            "exact; a fully masked row gives 0, not the graph's mean of V".into()
        } else {
            "exact".into()
        })
    };
    Some(Site {
        kind: if split_scale {
            SiteKind::DecomposedSplitScale
        } else {
            SiteKind::DecomposedEager
        },
        layer,
        anchor: sm.name().to_string(),
        nodes,
        q,
        k,
        v,
        y: pvn.output.first()?.clone(),
        scale: Some(scale),
        q_heads: hq,
        kv_heads: hkv.or(hq),
        head_dim: d,
        mask,
        causal: false,
        exact,
    })
}

/// `Reshape(Expand(Unsqueeze(x, axes=[2]), [.., .., n, .., ..]), ..)`: Llama's
/// `repeat_kv`. Returns `x` (the KV heads) and `n`.
fn fold_repeat_kv(ix: &GraphIndex, t: &str) -> Option<(String, i64)> {
    let rs = ix.node(ix.producer_op(t, "Reshape")?);
    let ex = ix.node(ix.producer_op(&rs.input[0], "Expand")?);
    let un = ix.node(ix.producer_op(&ex.input[0], "Unsqueeze")?);
    let axes = match un.input.get(1) {
        Some(a) => ix.constant(a)?.values,
        None => attr_ints(un, "axes")?.iter().map(|&a| a as f64).collect(),
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
            let cat = ix.node(ix.producer_op(&ex.input[1], "Concat")?);
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

/// Whether `t` is a MatMul output, possibly through a scale Mul/Div.
fn leads_to_matmul(ix: &GraphIndex, t: &str) -> bool {
    if ix.producer_op(t, "MatMul").is_some() {
        return true;
    }
    ix.producer(t).map(|p| ix.node(p)).is_some_and(|n| {
        matches!(n.op_type(), "Mul" | "Div") && ix.producer_op(&n.input[0], "MatMul").is_some()
    })
}

/// `Reshape(Transpose(Reshape(K, [-1, S, D]), [0, 2, 1]), [B, H, D, S])`:
/// the dynamo exporter's Kᵀ through 3-D. Returns K and the three nodes.
fn unflatten_transpose(ix: &GraphIndex, kt: &str) -> Option<(String, Vec<usize>)> {
    let outer = ix.producer_op(kt, "Reshape")?;
    let tr = ix.producer_op(&ix.node(outer).input[0], "Transpose")?;
    if attr_ints(ix.node(tr), "perm")? != [0, 2, 1] {
        return None;
    }
    let inner = ix.producer_op(&ix.node(tr).input[0], "Reshape")?;
    let k = ix.node(inner).input[0].clone();
    let ks = probe_shape(ix, &k, PROBE_S)?;
    let kts = probe_shape(ix, kt, PROBE_S)?;
    let swapped = ks.len() == 4
        && kts.len() == 4
        && ks[..2] == kts[..2]
        && ks[2] == kts[3]
        && ks[3] == kts[2];
    swapped.then_some((k, vec![outer, tr, inner]))
}
