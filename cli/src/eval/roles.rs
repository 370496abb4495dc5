//! The graph inputs a mask or a shape is computed from, fed with
//! deterministic values, and [`probe_shape`]: a tensor's shape at one
//! sequence length from the graph alone.

use std::collections::HashMap;

use super::tensor::{Tensor, INT64};
use super::Evaluator;
use crate::graph::GraphIndex;
use crate::names::GATHER;

/// The graph inputs a mask or a shape may be computed from: token ids (with
/// their vocabulary size) and the `(batch, sequence)` attention mask.
#[derive(Debug, Default)]
pub struct Roles {
    /// Token-id inputs and their vocabulary sizes.
    pub tokens: Vec<(String, usize)>,
    /// The attention-mask input.
    pub mask: Option<String>,
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
            }
        }
        r
    }

    /// Feeds for a batch of `rows.len()` sequences of `rows[0].len()` tokens:
    /// deterministic token ids in range, and `rows` as the attention mask.
    pub fn feeds(&self, ix: &GraphIndex, rows: &[Vec<bool>]) -> HashMap<String, Tensor> {
        let (b, s) = (rows.len(), rows.first().map_or(0, Vec::len));
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
            feeds.insert(m.clone(), Tensor::new(vec![b, s], data, dt));
        }
        feeds
    }
}

/// The shape `tensor` has for one sequence of `s` tokens, from the graph
/// alone (no ONNX shape inference needed); `None` when it cannot be told.
pub fn probe_shape(ix: &GraphIndex, tensor: &str, s: usize) -> Option<Vec<usize>> {
    let roles = Roles::of(ix);
    let mut ev = Evaluator::new(ix, roles.feeds(ix, &[vec![true; s]]));
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
