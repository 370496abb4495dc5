//! The fused attention ops, one matcher each: ONNX `Attention` (opset
//! 23/24), `com.microsoft` `Attention`/`MultiHeadAttention`/
//! `GroupQueryAttention`, and `ai.tessera.Attention` (already rewritten).

use tessera_schema::attention::attr::{IS_CAUSAL, KV_NUM_HEADS, Q_NUM_HEADS, SCALE};

use super::kv_cache::fold_cache;
use super::{fold_repeat_kv, heads_from_reshape, heads_from_shape, Site, SiteKind};
use crate::graph::{attr_f, attr_i, GraphIndex};
use crate::mask::{analyse_additive, analyse_bool, is_bool, MaskInfo};
use crate::names::{ADD, ATTENTION, GEMM, MATMUL, MULTI_HEAD_ATTENTION};
use crate::proto::NodeProto;

/// `com.microsoft` ops: the head count.
const NUM_HEADS: &str = "num_heads";

/// ONNX `Attention` (opset 23/24): a domain swap, exact unless it uses
/// inputs or attributes Tessera lacks.
pub(super) fn match_onnx_attention(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
    let n = ix.node(i);
    let input = |k: usize| n.input.get(k).filter(|s| !s.is_empty()).cloned();
    let q = input(0)?;
    let (hq, hkv, d) = onnx_attention_heads(ix, n, &q, &input(1).unwrap_or_default());
    let mask = match input(3) {
        Some(m) if is_bool(ix, &m) => analyse_bool(ix, &m),
        Some(m) => analyse_additive(ix, &m),
        None => MaskInfo::default(),
    };
    let (k, v, hkv) = unrepeat_kv(ix, &q, input(1)?, input(2)?, hq, hkv);
    // K = Concat(past, new) outside the node (dynamo's sdpa with a cache): the op takes the cache.
    let mut nodes = vec![i];
    let presents_free = n.output.iter().skip(1).all(String::is_empty);
    let folded = (input(4).is_none() && presents_free)
        .then(|| fold_cache(ix, &(k.clone(), None), &v, &mut nodes))
        .flatten();
    let (k, v, cache) = match folded {
        Some((k, v, c)) => (k, v, Some(c)),
        None => (k, v, None),
    };
    let exact = if input(4).is_some() != input(5).is_some() {
        Err("past_key without past_value".into())
    } else {
        Ok("domain swap (identical semantics)".into())
    };
    Some(Site {
        kind: SiteKind::OnnxAttention,
        layer,
        anchor: n.name().to_string(),
        nodes,
        q,
        k: (k, None),
        v,
        y: n.output.first()?.clone(),
        scale: attr_f(n, SCALE.as_str()).map(f64::from),
        q_heads: hq,
        kv_heads: hkv.or(hq),
        head_dim: d,
        mask,
        causal: attr_i(n, IS_CAUSAL.as_str()) == Some(1),
        exact,
        cache,
    })
}

/// Query heads, KV heads and head size of an ONNX `Attention`: its head
/// attributes (3-D inputs) first, then the head-split reshapes and shapes.
fn onnx_attention_heads(
    ix: &GraphIndex,
    n: &NodeProto,
    q: &str,
    k: &str,
) -> (Option<i64>, Option<i64>, Option<i64>) {
    let (hq, d) = heads_from_reshape(ix, q)
        .map(|(h, d)| (Some(h), Some(d)))
        .unwrap_or_else(|| heads_from_shape(ix, q));
    let hkv = attr_i(n, KV_NUM_HEADS.as_str())
        .or(heads_from_reshape(ix, k).map(|(h, _)| h))
        .or(heads_from_shape(ix, k).0);
    let hq = attr_i(n, Q_NUM_HEADS.as_str()).or(hq);
    let d = if d.is_some() && ix.shape(q).is_some_and(|s| s.len() == 3) {
        hq.and_then(|h| d.map(|hd| hd / h))
    } else {
        d
    };
    (hq, hkv, d)
}

/// GQA exported as `repeat_kv` before a plain `Attention`: K and V from
/// before the repeat, and the KV heads they have.
fn unrepeat_kv(
    ix: &GraphIndex,
    q: &str,
    k: String,
    v: String,
    hq: Option<i64>,
    hkv: Option<i64>,
) -> (String, String, Option<i64>) {
    if let (Some((k0, nk)), Some((v0, nv)), Some(h)) =
        (fold_repeat_kv(ix, &k), fold_repeat_kv(ix, &v), hq)
    {
        if nk == nv && ix.shape(q).is_none_or(|s| s.len() == 4) {
            return (k0, v0, Some(h / nk));
        }
    }
    (k, v, hkv)
}

/// `com.microsoft` fused attention: listed, not rewritten yet.
pub(super) fn match_microsoft(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
    let n = ix.node(i);
    let kind = match n.op_type() {
        ATTENTION => SiteKind::MicrosoftAttention,
        MULTI_HEAD_ATTENTION => SiteKind::MicrosoftMultiHeadAttention,
        _ => SiteKind::MicrosoftGroupQueryAttention,
    };
    let heads = attr_i(n, NUM_HEADS);
    let kv = attr_i(n, KV_NUM_HEADS.as_str()).or(heads);
    let q = n.input.first()?.clone();
    Some(Site {
        kind,
        layer,
        anchor: n.name().to_string(),
        nodes: vec![i],
        k: (n.input.get(1).cloned().unwrap_or_default(), None),
        v: n.input.get(2).cloned().unwrap_or_default(),
        y: n.output.first()?.clone(),
        scale: attr_f(n, SCALE.as_str())
            .filter(|&s| s != 0.0)
            .map(f64::from),
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
        cache: None,
        q,
    })
}

/// `com.microsoft.MultiHeadAttention` maps onto Tessera's 3-D form when it
/// has separate `(B, S, H·D)` Q, K, V, no packed bias, no key padding mask,
/// no past, and no used `present_*` output; `attention_bias` becomes `attn_mask`.
fn mha_exact(ix: &GraphIndex, n: &NodeProto, heads: Option<i64>) -> Result<String, String> {
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
            .is_some_and(|p| matches!(ix.node(p).op_type(), MATMUL | ADD | GEMM)),
    };
    if !(rank3(&n.input[0]) && rank3(&n.input[1]) && rank3(&n.input[2])) {
        return why("Q, K and V are not known to be 3-D (B, S, H·D)");
    }
    Ok("3-D Q/K/V with q_num_heads = kv_num_heads = num_heads; attention_bias as attn_mask".into())
}

/// A node already rewritten.
pub(super) fn match_tessera(ix: &GraphIndex, i: usize, layer: usize) -> Option<Site> {
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
        scale: attr_f(n, SCALE.as_str()).map(f64::from),
        q_heads: attr_i(n, Q_NUM_HEADS.as_str()),
        kv_heads: attr_i(n, KV_NUM_HEADS.as_str()),
        head_dim: None,
        mask: MaskInfo::default(),
        causal: attr_i(n, IS_CAUSAL.as_str()) == Some(1),
        exact: Err("already ai.tessera.Attention".into()),
        cache: None,
    })
}
