//! Decoders exported with a KV cache, as torch's exporters and optimum write
//! them: graph inputs `past_key_values.N.key/value` `(B, Hkv, P, D)`, and
//! `K = Concat(past_key, k_new, axis=2)` (likewise V), whose outputs are the
//! graph outputs `present.N.key/value`.
//!
//! [`fold_cache`] takes the two `Concat`s into the site: the rewrite then
//! feeds the past to `ai.tessera.Attention`'s own `past_key`/`past_value`
//! inputs and takes `present_key`/`present_value` from it under the
//! `Concat`s' output names. The op's causal offset is the past length, which
//! is what the mask analysis checks ([`crate::mask`] runs the mask with
//! cached positions).

use super::{Site, PROBE_S};
use crate::eval::probe_shape;
use crate::graph::{attr_i, is_onnx, GraphIndex};
use crate::names::{AXIS, CONCAT, IDENTITY};

/// The cache tensors of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// The graph input holding the cached keys, `(B, Hkv, P, D)`.
    pub past_key: String,
    /// The graph input holding the cached values.
    pub past_value: String,
    /// `Concat(past_key, k_new)`'s output: the keys after this step.
    pub present_key: String,
    /// `Concat(past_value, v_new)`'s output.
    pub present_value: String,
}

/// `Concat(past, new, axis=2)` with `past` a graph input: the `Concat`, the
/// past input and the new tensor.
fn past_concat<'g>(ix: &GraphIndex<'g>, t: &str) -> Option<(usize, &'g str, &'g str)> {
    let c = ix.producer_op(t, CONCAT)?;
    let n = ix.node(c);
    let axis = attr_i(n, AXIS)?;
    let ok = is_onnx(n) && (axis == 2 || axis == -2) && n.input.len() == 2;
    ok.then_some(())?;
    Some((
        c,
        graph_input_through(ix, &n.input[0])?,
        n.input[1].as_str(),
    ))
}

/// The graph input `t` is, looking through the one-input `Concat` and
/// `Identity` copies the legacy exporter puts on a cache tensor.
fn graph_input_through<'g>(ix: &GraphIndex<'g>, t: &'g str) -> Option<&'g str> {
    let mut t = t;
    for _ in 0..4 {
        if ix.graph.input.iter().any(|i| i.name() == t)
            && !ix.graph.initializer.iter().any(|i| i.name() == t)
        {
            return Some(t);
        }
        let n = ix.node(ix.producer(t)?);
        let copy = is_onnx(n) && n.input.len() == 1 && matches!(n.op_type(), CONCAT | IDENTITY);
        if !copy {
            return None;
        }
        t = n.input[0].as_str();
    }
    None
}

/// When K and V (after folding GQA) are both `Concat(past, new)` on the
/// sequence axis, with the pasts graph inputs: the new K and V, and the
/// cache. The two `Concat`s join `nodes`.
pub(super) fn fold_cache(
    ix: &GraphIndex,
    k: &(String, Option<Vec<i64>>),
    v: &str,
    nodes: &mut Vec<usize>,
) -> Option<(String, String, Cache)> {
    if k.1.is_some() {
        return None;
    }
    let (kc, past_k, new_k) = past_concat(ix, &k.0)?;
    let (vc, past_v, new_v) = past_concat(ix, v)?;
    if past_k == past_v || kc == vc {
        return None;
    }
    nodes.extend([kc, vc]);
    let cache = Cache {
        past_key: past_k.into(),
        past_value: past_v.into(),
        present_key: k.0.clone(),
        present_value: v.into(),
    };
    Some((new_k.into(), new_v.into(), cache))
}

/// A short note for `inspect` and `rewrite`: where the cache comes from.
pub fn describe(site: &Site) -> Option<String> {
    site.cache
        .as_ref()
        .map(|c| format!("KV cache {} -> {}", c.past_key, c.present_key))
}

/// A site whose keys still include the cached past (no cache folded into
/// it) keeps its mask dense: the mask was recognised relative to `q + past`,
/// but the op's causal offset without a cache input is 0. Sequence lengths
/// are probed with the past (see [`crate::eval::probe_shape`]).
pub(super) fn guard_offset(ix: &GraphIndex, site: &mut Site) {
    let m = &site.mask;
    let banded = m.causal || m.window.is_some();
    if site.cache.is_some() || !m.fully_recognised() || !banded || !has_past_inputs(ix) {
        return;
    }
    let seq = |t: &str, perm: Option<&[i64]>| {
        let s = probe_shape(ix, t, PROBE_S)?;
        let s: Vec<usize> = match perm {
            Some(p) if p.len() == s.len() => p.iter().map(|&i| s[i as usize]).collect(),
            _ => s,
        };
        match s.len() {
            4 => Some(s[2]),
            3 => Some(s[1]),
            _ => None,
        }
    };
    let (sq, sk) = (seq(&site.q, None), seq(&site.k.0, site.k.1.as_deref()));
    if sq.is_none() || sq != sk {
        site.mask.opaque.push(format!(
            "the keys ({sk:?} at S = {PROBE_S}) include the cached past, which is not folded into the op"
        ));
    }
}

/// Whether the graph has a rank-4 `*past*` input (a KV cache).
fn has_past_inputs(ix: &GraphIndex) -> bool {
    !crate::eval::Roles::of(ix).past.is_empty()
}
