//! The decomposed chain, anchored on its `Softmax`:
//! `MatMul(Q,Kᵀ) → Mul|Div(scale) → [Add(mask)|Where] → Softmax → [IsNaN/Where guard] → MatMul(V)`.
//!
//! [`match_decomposed`] walks the chain stage by stage; each exporter's
//! spelling of a stage is one small named matcher:
//!
//! | stage | legacy eager (opset 17) | dynamo eager (opset 20) | dynamo sdpa (opsets 18/20) |
//! | --- | --- | --- | --- |
//! | after `Softmax` | — | — | [`nan_guard`] |
//! | mask | [`mask_add`] | [`mask_add`] | [`mask_add`] or [`mask_where`] |
//! | scale | [`scale_after_matmul`] | [`scale_after_matmul`] | [`scale_split`] (`√scale` on Q and Kᵀ) |
//! | Kᵀ | [`key_transpose_4d`] | [`key_transpose_4d`] | [`key_transpose_3d`] |
//!
//! Any form may also put a [`pass_through`] (`Dropout`, `Identity`, `Cast`)
//! after the `Softmax`, or hand over Kᵀ with no `Transpose` at all.
//! Then the operands are checked and their heads read ([`operand_dims`]),
//! and [`verdict`] says whether the swap is exact.

use super::kv_cache::fold_cache;
use super::{fold_repeat_kv, heads_from_reshape, heads_from_shape, rank4, Site, SiteKind, PROBE_S};
use crate::eval::probe_shape;
use crate::graph::{attr_i, attr_ints, is_onnx, GraphIndex};
use crate::mask::{analyse_additive, analyse_bool, MaskInfo};
use crate::names::{
    ADD, AXIS, CAST, DIV, DROPOUT, IDENTITY, IS_NAN, MATMUL, MUL, PERM, RESHAPE, TRANSPOSE, WHERE,
};
use crate::proto::NodeProto;

/// A key source: a tensor and the permutation that gives `(B, Hkv, Skv, D)`
/// from it (`None` = it already is).
type Key = (String, Option<Vec<i64>>);

/// The decomposed pattern, anchored on its `Softmax`.
pub(super) fn match_decomposed(ix: &GraphIndex, softmax: usize, layer: usize) -> Option<Site> {
    let sm = ix.node(softmax);
    let mut nodes = vec![softmax];
    let pv = probs_to_pv(ix, sm.output.first()?.clone(), &mut nodes)?;
    let pvn = ix.node(pv);
    let (scores, mask) = mask_stage(ix, sm.input.first()?.clone(), &mut nodes)?;
    let (s, mut scale) = scale_after_matmul(ix, scores, &mut nodes)?;
    let qk = ix.producer_op(&s, MATMUL)?;
    nodes.push(qk);
    let qkn = ix.node(qk);
    let (q, kt, split) = scale_split(ix, qkn, &mut scale, &mut nodes);
    let k = key_source(ix, &kt, &mut nodes)?;
    let (k, v, n_rep) = fold_gqa(ix, k, pvn.input[1].clone());
    let (k, v, cache) = match fold_cache(ix, &k, &v, &mut nodes) {
        Some((k_new, v_new, c)) => ((k_new, None), v_new, Some(c)),
        None => (k, v, None),
    };
    let dims = operand_dims(ix, &q, &k, &v, n_rep);
    let exact = verdict(ix, sm, qkn, &dims, &q, &v, &mask);
    Some(Site {
        kind: if split {
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
        q_heads: dims.hq,
        kv_heads: dims.hkv.or(dims.hq),
        head_dim: dims.d,
        mask,
        causal: false,
        exact,
        cache,
    })
}

/// Forward from the probabilities `p`: pass-throughs and NaN guards, then
/// `MatMul(P, V)`. Returns the `MatMul`; pushes it and what it crossed.
fn probs_to_pv(ix: &GraphIndex, mut p: String, nodes: &mut Vec<usize>) -> Option<usize> {
    let pv = loop {
        // A cycle of pass-throughs would loop (and grow `nodes`) forever
        // (found by fuzzing): no walk visits more nodes than the graph has.
        if nodes.len() > ix.graph.node.len() {
            return None;
        }
        let cs = ix.consumers(&p);
        let &[c] = cs else {
            p = nan_guard(ix, &p, cs, nodes)?;
            continue;
        };
        let n = ix.node(c);
        if n.op_type() == MATMUL && n.input.first() == Some(&p) {
            break c;
        }
        p = pass_through(n)?;
        nodes.push(c);
    };
    nodes.push(pv);
    Some(pv)
}

/// Dynamo sdpa's guard: `IsNaN(P)` and `Where(IsNaN(P), 0, P)` both read
/// `P`. Returns the `Where`'s output; pushes the two nodes.
fn nan_guard(ix: &GraphIndex, p: &str, cs: &[usize], nodes: &mut Vec<usize>) -> Option<String> {
    let isnan = cs
        .iter()
        .copied()
        .find(|&c| ix.node(c).op_type() == IS_NAN)?;
    let wh = cs
        .iter()
        .copied()
        .find(|&c| ix.node(c).op_type() == WHERE)?;
    let w = ix.node(wh);
    if cs.len() != 2
        || w.input[0] != ix.node(isnan).output[0]
        || w.input[2] != p
        || ix.scalar(&w.input[1]) != Some(0.0)
    {
        return None;
    }
    nodes.extend([isnan, wh]);
    Some(w.output[0].clone())
}

/// `Dropout` (inference), `Identity` or `Cast` between `Softmax` and the
/// `MatMul`: returns what it passes on.
fn pass_through(n: &NodeProto) -> Option<String> {
    let op = n.op_type();
    let passes = op == DROPOUT || (matches!(op, IDENTITY | CAST) && n.output.len() == 1);
    passes.then(|| n.output[0].clone())
}

/// Back from the scores `s` through the mask, if any ([`mask_add`],
/// [`mask_where`]). Returns the unmasked scores and the mask; `None` for a
/// `Where` that is not a mask.
fn mask_stage(ix: &GraphIndex, s: String, nodes: &mut Vec<usize>) -> Option<(String, MaskInfo)> {
    if let Some(a) = ix.producer_op(&s, ADD) {
        return Some(mask_add(ix, a, nodes));
    }
    if let Some(w) = ix.producer_op(&s, WHERE) {
        return mask_where(ix, w, nodes);
    }
    Some((s, MaskInfo::default()))
}

/// `Add(scores, mask)` in either order: the additive mask of every exporter.
fn mask_add(ix: &GraphIndex, a: usize, nodes: &mut Vec<usize>) -> (String, MaskInfo) {
    let n = ix.node(a);
    let (scores, bias) = if leads_to_matmul(ix, &n.input[0]) {
        (&n.input[0], &n.input[1])
    } else {
        (&n.input[1], &n.input[0])
    };
    nodes.push(a);
    (scores.clone(), analyse_additive(ix, bias))
}

/// `Where(mask, scores, -big)`: sdpa's bool mask.
fn mask_where(ix: &GraphIndex, w: usize, nodes: &mut Vec<usize>) -> Option<(String, MaskInfo)> {
    let n = ix.node(w);
    if !ix.scalar(&n.input[2]).is_some_and(|v| v <= -1e30) {
        return None;
    }
    nodes.push(w);
    Some((n.input[1].clone(), analyse_bool(ix, &n.input[0])))
}

/// Eager: `Mul|Div(QKᵀ, c)` after the `MatMul`. Returns the unscaled
/// scores and the scale (1 when there is no such node).
fn scale_after_matmul(ix: &GraphIndex, s: String, nodes: &mut Vec<usize>) -> Option<(String, f64)> {
    let Some(m) = ix
        .producer(&s)
        .filter(|&m| matches!(ix.node(m).op_type(), MUL | DIV) && is_onnx(ix.node(m)))
    else {
        return Some((s, 1.0));
    };
    let n = ix.node(m);
    let (x, c) = if ix.scalar(&n.input[1]).is_some() {
        (&n.input[0], ix.scalar(&n.input[1])?)
    } else {
        (&n.input[1], ix.scalar(&n.input[0])?)
    };
    nodes.push(m);
    Some((x.clone(), if n.op_type() == DIV { 1.0 / c } else { c }))
}

/// Sdpa's split scale: `Mul(Q, √s)` and `Mul(Kᵀ, √s)` feeding the `MatMul`.
/// Returns Q, Kᵀ (before their `Mul`s) and whether either was split;
/// multiplies `scale` by what it found.
fn scale_split(
    ix: &GraphIndex,
    qk: &NodeProto,
    scale: &mut f64,
    nodes: &mut Vec<usize>,
) -> (String, String, bool) {
    let (mut q, mut kt) = (qk.input[0].clone(), qk.input[1].clone());
    let mut split = false;
    for t in [&mut q, &mut kt] {
        if let Some(m) = ix.producer_op(t, MUL) {
            let n = ix.node(m);
            if let Some(c) = ix.scalar(&n.input[1]) {
                if ix.consumers(t).len() == 1 {
                    *scale *= c;
                    split = true;
                    nodes.push(m);
                    *t = n.input[0].clone();
                }
            }
        }
    }
    (q, kt, split)
}

/// K from Kᵀ: [`key_transpose_3d`], else [`key_transpose_4d`], else
/// transpose Kᵀ back.
fn key_source(ix: &GraphIndex, kt: &str, nodes: &mut Vec<usize>) -> Option<Key> {
    if let Some(k) = key_transpose_3d(ix, kt, nodes) {
        return Some(k);
    }
    match ix.producer_op(kt, TRANSPOSE) {
        Some(tr) => key_transpose_4d(ix, kt, tr, nodes),
        None => Some((kt.to_string(), Some(vec![0, 1, 3, 2]))),
    }
}

/// The dynamo exporter's Kᵀ through 3-D (`Reshape → Transpose → Reshape`);
/// its nodes go with the site when nothing else reads them.
fn key_transpose_3d(ix: &GraphIndex, kt: &str, nodes: &mut Vec<usize>) -> Option<Key> {
    let (k4, via) = unflatten_transpose(ix, kt)?;
    if via
        .iter()
        .all(|&n| ix.node(n).output.iter().all(|o| ix.consumers(o).len() <= 1))
    {
        nodes.extend(via);
    }
    Some((k4, None))
}

/// A 4-D `Transpose` to Kᵀ: K is its input, under the permutation that
/// undoes it (none when it only swapped the last two axes).
fn key_transpose_4d(ix: &GraphIndex, kt: &str, tr: usize, nodes: &mut Vec<usize>) -> Option<Key> {
    let n = ix.node(tr);
    let mut perm = attr_ints(n, PERM)?.to_vec();
    if perm.len() != 4 {
        return None;
    }
    perm.swap(2, 3);
    if ix.consumers(kt).len() == 1 {
        nodes.push(tr);
    }
    let perm = (perm != [0, 1, 2, 3]).then_some(perm);
    Some((n.input[0].clone(), perm))
}

/// GQA: fold the exporter's `repeat_kv` on K and V back to the KV heads.
/// Returns K, V and the repeat count (`None` when not folded).
fn fold_gqa(ix: &GraphIndex, mut k: Key, mut v: String) -> (Key, String, Option<i64>) {
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
    (k, v, n_rep)
}

/// What is known of the operands: heads and head size, and their shapes
/// probed at `S = PROBE_S` with whether those are attention operands.
struct OperandDims {
    hq: Option<i64>,
    hkv: Option<i64>,
    d: Option<i64>,
    shapes: [Option<Vec<usize>>; 3],
    /// `Some(true)`: probed, and `(B,H,S,D)` operands; `None`: not probed.
    consistent: Option<bool>,
}

/// Heads and head size from the declared shapes and the head-split
/// reshapes, then from the graph itself at one small sequence: that fills
/// what the declared shapes lack (legacy exports carry none) and checks the
/// rest.
fn operand_dims(ix: &GraphIndex, q: &str, k: &Key, v: &str, n_rep: Option<i64>) -> OperandDims {
    let (hq, d) = heads_from_reshape(ix, q)
        .map(|(h, d)| (Some(h), Some(d)))
        .unwrap_or_else(|| heads_from_shape(ix, q));
    let hkv = match n_rep {
        Some(n) => hq.map(|h| h / n),
        None => heads_from_reshape(ix, v)
            .map(|(h, _)| h)
            .or(heads_from_shape(ix, v).0),
    };
    let probe = |t: &str| probe_shape(ix, t, PROBE_S);
    let (pq, pv) = (probe(q), probe(v));
    let pk = match k {
        (t, None) => probe(t),
        (t, Some(perm)) => probe(t)
            .filter(|s| s.len() == perm.len())
            .map(|s| perm.iter().map(|&p| s[p as usize]).collect()),
    };
    let mut dims = OperandDims {
        hq,
        hkv,
        d,
        consistent: None,
        shapes: [None, None, None],
    };
    if let (Some(q4), Some(k4), Some(v4)) = (&pq, &pk, &pv) {
        if q4.len() == 4 && k4.len() == 4 && v4.len() == 4 {
            let consistent = q4[0] == k4[0]
                && k4[..3] == v4[..3]
                && q4[3] == k4[3]
                && k4[1] > 0
                && q4[1] % k4[1] == 0
                && q4[2] == PROBE_S
                && k4[2] == PROBE_S;
            if consistent {
                (dims.hq, dims.hkv, dims.d) =
                    (Some(q4[1] as i64), Some(k4[1] as i64), Some(q4[3] as i64));
            }
            dims.consistent = Some(consistent);
        }
    }
    dims.shapes = [pq, pk, pv];
    dims
}

/// `Ok(note)` when the chain can become `ai.tessera.Attention` exactly:
/// the softmax runs over the keys and Q, K, V are `(B,H,S,D)`.
fn verdict(
    ix: &GraphIndex,
    sm: &NodeProto,
    qkn: &NodeProto,
    dims: &OperandDims,
    q: &str,
    v: &str,
    mask: &MaskInfo,
) -> Result<String, String> {
    let axis = attr_i(sm, AXIS).unwrap_or(-1);
    let [pq, pk, pv] = &dims.shapes;
    if !(axis == -1 || axis == 3) {
        Err(format!(
            "Softmax '{}' axis {axis} is not the key axis",
            sm.name()
        ))
    } else if dims.consistent == Some(false) {
        Err(format!(
            "MatMul '{}': Q {pq:?}, K {pk:?}, V {pv:?} (at S = {PROBE_S}) are not (B,H,S,D) attention operands",
            qkn.name()
        ))
    } else if dims.consistent.is_none() && (!rank4(ix, q) || !rank4(ix, v)) {
        Err(format!(
            "MatMul '{}': Q/V are not known to be 4-D (B,H,S,D); run shape inference first",
            qkn.name()
        ))
    } else if mask.form.is_some() {
        Ok("exact; a fully masked row gives 0, not the graph's mean of V".into())
    } else {
        Ok("exact".into())
    }
}

/// Whether `t` is a MatMul output, possibly through a scale Mul/Div.
fn leads_to_matmul(ix: &GraphIndex, t: &str) -> bool {
    if ix.producer_op(t, MATMUL).is_some() {
        return true;
    }
    ix.producer(t).map(|p| ix.node(p)).is_some_and(|n| {
        matches!(n.op_type(), MUL | DIV) && ix.producer_op(&n.input[0], MATMUL).is_some()
    })
}

/// `Reshape(Transpose(Reshape(K, [-1, S, D]), [0, 2, 1]), [B, H, D, S])`:
/// the dynamo exporter's Kᵀ through 3-D. Returns K and the three nodes.
fn unflatten_transpose(ix: &GraphIndex, kt: &str) -> Option<(String, Vec<usize>)> {
    let outer = ix.producer_op(kt, RESHAPE)?;
    let tr = ix.producer_op(&ix.node(outer).input[0], TRANSPOSE)?;
    if attr_ints(ix.node(tr), PERM)? != [0, 2, 1] {
        return None;
    }
    let inner = ix.producer_op(&ix.node(tr).input[0], RESHAPE)?;
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
