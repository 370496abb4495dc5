//! The graph inputs a mask or a shape is computed from, fed with
//! deterministic values, and [`probe_shape`]: a tensor's shape at one
//! sequence length from the graph alone.

use std::collections::HashMap;

use super::tensor::{Tensor, INT64};
use super::Evaluator;
use crate::graph::{Dim, GraphIndex};
use crate::names::GATHER;

/// The graph inputs a mask or a shape may be computed from: token ids (with
/// their vocabulary size), the `(batch, sequence)` attention mask and, in a
/// decoder exported with a KV cache, the position ids and the past keys and
/// values (`past_key_values.N.key`, `(batch, heads, past, head_dim)`).
#[derive(Debug, Default)]
pub struct Roles {
    /// Token-id inputs and their vocabulary sizes.
    pub tokens: Vec<(String, usize)>,
    /// The attention-mask input (over past and new tokens when there is a cache).
    pub mask: Option<String>,
    /// Rank-2 position-id inputs.
    pub positions: Vec<String>,
    /// Rank-4 past key/value inputs and their `(heads, head_dim)`.
    pub past: Vec<(String, [usize; 2])>,
}

impl Roles {
    /// Find the roles by name and use: token ids feed a `Gather` of an
    /// initializer; the mask is a rank-2 input named like `*mask*`.
    pub fn of(ix: &GraphIndex) -> Self {
        let g = ix.graph;
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name()).collect();
        let mut r = Self::default();
        for i in g.input.iter().filter(|i| !inits.contains(i.name())) {
            let name = i.name();
            let rank2 = ix.shape(name).is_none_or(|s| s.len() == 2);
            let vocab = ix.consumers(name).iter().find_map(|&c| {
                let n = ix.node(c);
                (n.op_type() == GATHER && n.input.get(1).map(String::as_str) == Some(name))
                    .then(|| g.initializer.iter().find(|t| t.name() == n.input[0]))
                    .flatten()
                    .and_then(|t| t.dims.first().copied())
            });
            let lower = name.to_ascii_lowercase();
            if let Some(v) =
                vocab.filter(|_| !lower.contains("position") && !lower.contains("type"))
            {
                r.tokens.push((name.to_string(), v.max(1) as usize));
            } else if lower.contains("mask") && rank2 && r.mask.is_none() {
                r.mask = Some(name.to_string());
            } else if lower.contains("position") && rank2 {
                r.positions.push(name.to_string());
            } else if lower.contains("past") {
                if let Some([_, h, _, d]) = ix.shape(name).as_deref() {
                    let fixed = |x: &Dim| match x {
                        Dim::Fixed(v) if *v > 0 => *v as usize,
                        _ => 1,
                    };
                    r.past.push((name.to_string(), [fixed(h), fixed(d)]));
                }
            }
        }
        r
    }

    /// Feeds for a batch of `rows.len()` sequences of `rows[0].len()` tokens:
    /// deterministic token ids in range, and `rows` as the attention mask.
    pub fn feeds(&self, ix: &GraphIndex, rows: &[Vec<bool>]) -> HashMap<String, Tensor> {
        self.feeds_with_past(ix, rows, 0)
    }

    /// [`Self::feeds`] for a decoder with a KV cache: `past` of the
    /// `rows[0].len()` positions are cached (zero past keys and values of that
    /// length), the rest are new tokens at positions `past..`.
    pub fn feeds_with_past(
        &self,
        ix: &GraphIndex,
        rows: &[Vec<bool>],
        past: usize,
    ) -> HashMap<String, Tensor> {
        let (b, total) = (rows.len(), rows.first().map_or(0, Vec::len));
        let s = total.saturating_sub(past);
        let mut rng = Lcg(0x5eed);
        let mut feeds = HashMap::new();
        for (name, vocab) in &self.tokens {
            let data = (0..b * s)
                .map(|_| (rng.draw() % *vocab as u64) as f64)
                .collect();
            let dt = ix.elem_type(name).unwrap_or(INT64);
            feeds.insert(name.clone(), Tensor::new(vec![b, s], data, dt));
        }
        if let Some(m) = &self.mask {
            let data = rows
                .iter()
                .flatten()
                .map(|&v| f64::from(u8::from(v)))
                .collect();
            let dt = ix.elem_type(m).unwrap_or(INT64);
            feeds.insert(m.clone(), Tensor::new(vec![b, total], data, dt));
        }
        for name in &self.positions {
            let data = (0..b)
                .flat_map(|_| (past..total).map(|p| p as f64))
                .collect();
            let dt = ix.elem_type(name).unwrap_or(INT64);
            feeds.insert(name.clone(), Tensor::new(vec![b, s], data, dt));
        }
        for (name, [h, d]) in &self.past {
            let dt = ix.elem_type(name).unwrap_or(super::tensor::FLOAT);
            let shape = vec![b, *h, past, *d];
            feeds.insert(
                name.clone(),
                Tensor::new(shape, vec![0.0; b * h * past * d], dt),
            );
        }
        feeds
    }
}

/// The shape `tensor` has for one sequence of `s` tokens, from the graph
/// alone (no ONNX shape inference needed); `None` when it cannot be told.
///
/// A decoder with a KV cache is probed with [`crate::mask::PAST`] cached
/// positions, so a K or V that still includes the past is told from the new
/// one by its length.
pub fn probe_shape(ix: &GraphIndex, tensor: &str, s: usize) -> Option<Vec<usize>> {
    let roles = Roles::of(ix);
    let past = if roles.past.is_empty() {
        0
    } else {
        crate::mask::PAST
    };
    let mut ev = Evaluator::new(ix, roles.feeds_with_past(ix, &[vec![true; s + past]], past));
    ev.shape_only(tensor).ok()
}

/// A small deterministic generator (feeds and mask classification must
/// not depend on the run).
#[derive(Debug)]
pub struct Lcg(pub u64);
impl Lcg {
    /// The next 31-bit value.
    pub fn draw(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}
