//! Recognising attention masks by what they compute.
//!
//! Exporters spell the same mask in many ways (position `Range`s with
//! `Unsqueeze` chains, `GatherND` or flattened `Gather` of the padding
//! input, `Where(bool, 0, -big)`, `(1 − m)·min`, constant `True`s …). Instead
//! of matching each spelling, the mask's subgraph is *run* by the small
//! interpreter in [`crate::eval`] on generated inputs and the result is
//! classified:
//!
//! 1. with an all-ones attention mask at S = [`S_BAND`], the allowed set must
//!    be one band `−left ≤ k − q ≤ right` (either side may be unbounded),
//!    the same for every batch row: that gives `causal` (right = 0, left
//!    unbounded) or a window;
//! 2. with a random attention mask (holes, left and right padding) at
//!    S = [`S_PAD`], the allowed set must be exactly `band ∧ mask[b, k]`:
//!    key padding. Anything else (query-side padding, per-head masks, chunks,
//!    biases other than 0 / −∞) is reported as opaque and stays a dense
//!    `attn_mask`, which is always exact.
//!
//! In a decoder with a KV cache (graph inputs `past_key_values.*`) both runs
//! have [`PAST`] cached positions: query `q` sits at position `q + PAST`, the
//! band is measured from there (the op's causal offset is the past length)
//! and the attention mask covers all `PAST + S` keys.
//!
//! A band wider than the band run's length on a side looks unbounded; so a
//! side is only called unbounded when no constant of the subgraph could be
//! such a width. A model whose position table is shorter than `S_BAND` is
//! run at the longest of 509, 251 or 97 tokens that it accepts.
//!
//! Cost: two or three interpreter runs over the mask's cone, each with
//! tensors of at most `S_BAND²` elements.

use std::collections::HashSet;

use crate::eval::{Evaluator, Lcg, Roles};
use crate::graph::GraphIndex;
use crate::names::{
    AND, CAST, EQUAL, EXPAND, GREATER, GREATER_OR_EQUAL, IDENTITY, IS_INF, IS_NAN, LESS,
    LESS_OR_EQUAL, NOT, OR, RESHAPE, SHAPE, SQUEEZE, TO, TRANSPOSE, UNSQUEEZE, XOR,
};
use crate::proto::tensor_proto::DataType;

/// Sequence length of the band run (odd, so no tile or chunk size divides it).
pub const S_BAND: usize = 1031;
/// Sequence length of the padding runs.
pub const S_PAD: usize = 97;
/// Cached positions in the runs of a decoder with a KV cache (odd, and
/// neither run's length), so the mask's offset by the past length is seen.
pub const PAST: usize = 13;
/// Additive values at or below this are "blocked".
const BLOCKED: f64 = -1e30;

/// What a site's mask was recognised as.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaskInfo {
    /// The mask tensor the site reads, if any.
    pub tensor: Option<String>,
    /// `bool` (true = attend) or `additive` (added to the scores).
    pub form: Option<&'static str>,
    /// Key padding from this `(batch, sequence)` graph input (1 = token).
    pub padding: Option<String>,
    /// A window `(left, right)`, inclusive, −1 = unbounded on that side.
    pub window: Option<(i64, i64)>,
    /// Causal: keys `k ≤ q`.
    pub causal: bool,
    /// Why (part of) the mask was not recognised; kept as a dense mask.
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
            parts.push("all keys".into());
        }
        format!("{form}: {}", parts.join(" & "))
    }

    /// Whether the mask was recognised whole, so it can be replaced by the
    /// padding input plus `is_causal`/window attributes.
    pub fn fully_recognised(&self) -> bool {
        self.form.is_some() && self.opaque.is_empty()
    }
}

/// The form of a bool mask (true = attend); the other form is `additive`.
const BOOL_FORM: &str = "bool";

/// Analyse a bool mask tensor (true = attend).
pub fn analyse_bool(ix: &GraphIndex, tensor: &str) -> MaskInfo {
    classify(ix, tensor, BOOL_FORM)
}

/// Analyse an additive float mask.
pub fn analyse_additive(ix: &GraphIndex, tensor: &str) -> MaskInfo {
    classify(ix, tensor, "additive")
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
        AND | OR | NOT | XOR | LESS_OR_EQUAL | LESS | GREATER | GREATER_OR_EQUAL | EQUAL
        | IS_NAN | IS_INF => true,
        CAST => crate::graph::attr_i(n, TO) == Some(DataType::Bool as i64),
        EXPAND | UNSQUEEZE | SQUEEZE | RESHAPE | TRANSPOSE | IDENTITY => is_bool(ix, &n.input[0]),
        _ => false,
    }
}

/// Key-padding rows for the padding run: right padding, left padding,
/// random holes, and a full row.
fn padding_rows(s: usize) -> Vec<Vec<bool>> {
    let mut rng = Lcg(0x7e55e7a);
    let right: Vec<bool> = (0..s).map(|k| k < s * 2 / 3).collect();
    let left: Vec<bool> = (0..s).map(|k| k >= s / 4).collect();
    let mut holes: Vec<bool> = (0..s).map(|_| rng.draw() % 10 < 7).collect();
    holes[0] = true;
    vec![right, left, holes, vec![true; s]]
}

/// Run the mask's subgraph with `rows` as the attention mask; the allowed
/// set as `[batch][q][k]` (q axis of length 1 when the mask has none).
fn allowed(
    ix: &GraphIndex,
    roles: &Roles,
    tensor: &str,
    form: &str,
    rows: &[Vec<bool>],
    past: usize,
) -> Result<Vec<Vec<Vec<bool>>>, String> {
    let (b, s) = (rows.len(), rows[0].len());
    let sq = s - past;
    let feeds = roles.feeds_with_past(ix, rows, past);
    let mut ev = Evaluator::new(ix, feeds);
    let t = ev.eval(tensor).map_err(|e| match ev.missing.first() {
        Some(input) => format!("depends on graph input '{input}'"),
        None => e,
    })?;
    // Right-align to (batch, heads, q, k).
    if t.shape.len() > 4 {
        return Err(format!("rank {} mask", t.shape.len()));
    }
    let mut shape = vec![1usize; 4 - t.shape.len()];
    shape.extend(&t.shape);
    let [tb, th, tq, tk] = [shape[0], shape[1], shape[2], shape[3]];
    if th != 1 {
        return Err("per-head mask".into());
    }
    if tk != s || !(tq == 1 || tq == sq) || !(tb == 1 || tb == b) {
        let cached = if past > 0 {
            format!(" with {past} cached")
        } else {
            String::new()
        };
        return Err(format!(
            "mask shape {:?} at batch {b}, S {s}{cached}",
            t.shape
        ));
    }
    let mut out = vec![vec![vec![false; s]; tq]; b];
    for (bi, rows) in out.iter_mut().enumerate() {
        for (q, row) in rows.iter_mut().enumerate() {
            for (k, cell) in row.iter_mut().enumerate() {
                let v = t.data[((bi % tb) * tq + q) * tk + k];
                *cell = if form == BOOL_FORM {
                    v != 0.0
                } else if v == 0.0 {
                    true
                } else if v <= BLOCKED {
                    false
                } else {
                    return Err(format!("additive value {v} is neither 0 nor blocked"));
                };
            }
        }
    }
    Ok(out)
}

/// The band `(left, right)` (−1 = unbounded) that `a[q][k]` is, if it is
/// one; query `q` sits at position `q + past` among the keys.
fn band(a: &[Vec<bool>], past: usize) -> Option<(i64, i64)> {
    let s = a.first()?.len() as i64;
    let past = past as i64;
    if a.len() == 1 {
        // No query axis: only "every key" is a band.
        return a[0].iter().all(|&v| v).then_some((-1, -1));
    }
    let (mut left, mut right) = (i64::MIN, i64::MIN);
    for (q, row) in a.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            if v {
                left = left.max(q as i64 + past - k as i64);
                right = right.max(k as i64 - q as i64 - past);
            }
        }
    }
    if left == i64::MIN {
        return None;
    }
    let ok = a.iter().enumerate().all(|(q, row)| {
        row.iter().enumerate().all(|(k, &v)| {
            let d = k as i64 - q as i64 - past;
            v == (-left <= d && d <= right)
        })
    });
    let unbounded = |w: i64| if w >= s - 1 { -1 } else { w };
    ok.then(|| (unbounded(left), unbounded(right)))
}

fn in_band(q: usize, k: usize, past: usize, (left, right): (i64, i64)) -> bool {
    let d = k as i64 - (q + past) as i64;
    (left < 0 || -left <= d) && (right < 0 || d <= right)
}

/// Constants in the cone of `tensor` that could be a window wider than
/// the `s_band` positions the band run used (ignoring int64 sentinels such as `i64::MAX` slice ends).
fn wide_constant(ix: &GraphIndex, tensor: &str, s_band: usize) -> Option<f64> {
    let mut stack = vec![tensor.to_string()];
    let mut seen = HashSet::new();
    while let Some(t) = stack.pop() {
        if !seen.insert(t.clone()) || seen.len() > 20_000 {
            continue;
        }
        if let Some(c) = ix.constant(&t) {
            if let Some(&v) = c
                .values
                .iter()
                .find(|v| v.abs() >= (s_band - 1) as f64 && v.abs() < 1e9)
            {
                return Some(v);
            }
        }
        if let Some(p) = ix.producer(&t) {
            let n = ix.node(p);
            if n.op_type() != SHAPE {
                stack.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
            }
        }
    }
    None
}

/// What `tensor` computes, found by running it: a band of keys around each
/// query (causal, windowed or full), possibly with key padding; or why not.
fn classify(ix: &GraphIndex, tensor: &str, form: &'static str) -> MaskInfo {
    let mut info = MaskInfo {
        tensor: Some(tensor.into()),
        form: Some(form),
        ..Default::default()
    };
    let roles = Roles::of(ix);
    let past = if roles.past.is_empty() { 0 } else { PAST };
    let result = band_of_keys(ix, &roles, tensor, form, past)
        .and_then(|bnd| Ok((bnd, key_padding(ix, &roles, tensor, form, bnd, past)?)));
    match result {
        Ok((bnd, padding)) => {
            info.causal = bnd == (-1, 0);
            info.window = (bnd != (-1, -1) && !info.causal).then_some(bnd);
            if padding {
                info.padding.clone_from(&roles.mask);
            }
        }
        Err(why) => info.opaque.push(why),
    }
    info
}

/// Step 1: the band, with every key present. A model with a short position
/// table cannot run `S_BAND`: the longest length that runs is used instead.
fn band_of_keys(
    ix: &GraphIndex,
    roles: &Roles,
    tensor: &str,
    form: &'static str,
    past: usize,
) -> Result<(i64, i64), String> {
    let mut tried = Err(String::new());
    let mut s_band = S_BAND;
    for s in [S_BAND, 509, 251, S_PAD] {
        tried = allowed(ix, roles, tensor, form, &[vec![true; s + past]], past);
        if tried.is_ok() {
            s_band = s;
            break;
        }
    }
    let ones = tried?;
    let bnd = band(&ones[0], past)
        .ok_or("not a band of keys around the query (e.g. chunked or arbitrary)")?;
    if bnd.0 < 0 || bnd.1 < 0 {
        if let Some(c) = wide_constant(ix, tensor, s_band) {
            return Err(format!(
                "the constant {c} could be a window wider than the {s_band} positions checked"
            ));
        }
    }
    Ok(bnd)
}

/// Step 2: whether the mask input acts on `tensor` exactly as key padding
/// within the band `bnd` (`Ok(false)` when it does not act at all).
fn key_padding(
    ix: &GraphIndex,
    roles: &Roles,
    tensor: &str,
    form: &'static str,
    bnd: (i64, i64),
    past: usize,
) -> Result<bool, String> {
    let rows = padding_rows(S_PAD + past);
    let got = allowed(ix, roles, tensor, form, &rows, past)?;
    let (mut uses_padding, mut matches) = (false, true);
    for (b, row_mask) in rows.iter().enumerate() {
        for (q, row) in got[b].iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                let band_ok = got[b].len() == 1 || in_band(q, k, past, bnd);
                let padded = band_ok && row_mask[k];
                matches &= v == padded;
                uses_padding |= band_ok && !row_mask[k];
            }
        }
    }
    if matches {
        return Ok(uses_padding);
    }
    let unpadded = got.iter().all(|rows| {
        rows.iter().enumerate().all(|(q, row)| {
            row.iter()
                .enumerate()
                .all(|(k, &v)| v == (rows.len() == 1 || in_band(q, k, past, bnd)))
        })
    });
    if !unpadded {
        return Err("depends on the attention mask other than as key padding".into());
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[q][k]` for `sq` queries after `past` cached keys: `k` allowed iff `f(q + past, k)`.
    fn grid(sq: usize, past: usize, f: impl Fn(i64, i64) -> bool) -> Vec<Vec<bool>> {
        (0..sq)
            .map(|q| {
                (0..sq + past)
                    .map(|k| f((q + past) as i64, k as i64))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_band_is_measured_from_the_query_position_after_the_past() {
        let causal = grid(4, 3, |p, k| k <= p);
        assert_eq!(band(&causal, 3), Some((-1, 0)));
        // Read without the past, the same mask looks like a window of 3 keys on each side.
        assert_eq!(band(&causal, 0), Some((3, 3)));
        let window = grid(4, 3, |p, k| p - 2 <= k && k <= p);
        assert_eq!(band(&window, 3), Some((2, 0)));
        assert!(in_band(0, 1, 3, (2, 0)) && !in_band(0, 0, 3, (2, 0)) && !in_band(0, 4, 3, (2, 0)));
    }
}
