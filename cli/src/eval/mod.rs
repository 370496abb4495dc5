//! A small ONNX interpreter for the integer/bool subgraphs that build
//! attention masks (positions, comparisons, padding gathers), so a mask can
//! be recognised by what it computes rather than by how an exporter spelled
//! it.
//!
//! Values are held as `f64` with their ONNX element type (exact for the
//! int64 indices and bools of mask subgraphs). Only the nodes in the cone of
//! the requested tensor are run. Cost: one pass over that cone; each tensor
//! is at most [`MAX_ELEMENTS`] elements, and at most [`MAX_NODES`] nodes run.
//!
//! One job per module: `tensor` (values, element types, broadcasting),
//! `layout` (reshapes, slices, gathers), `ops` (the op table: op type →
//! handler), `shape` (shape rules, so a `Shape` need not compute values),
//! `roles` (which graph inputs to feed, and [`probe_shape`]). This module
//! holds the [`Evaluator`]: memoised values and the node budget.

mod layout;
mod ops;
mod roles;
mod shape;
mod tensor;

use std::collections::HashMap;
use std::rc::Rc;

use crate::graph::{attr_ints, is_onnx, Constant, GraphIndex};
use crate::names::AXES;

pub use roles::{probe_shape, Lcg, Roles};
pub use tensor::{Tensor, MAX_ELEMENTS};

use tensor::from_constant;

/// Most nodes one evaluation runs.
pub const MAX_NODES: usize = 20_000;

/// Deepest chain of producers one evaluation follows (the evaluator
/// recurses once per node; a deeper chain, or a cycle, is an error rather
/// than a stack overflow, found by fuzzing).
pub const MAX_DEPTH: usize = 1_000;

/// Evaluation of one graph with fixed graph inputs.
pub struct Evaluator<'a, 'g> {
    ix: &'a GraphIndex<'g>,
    feeds: HashMap<String, Rc<Tensor>>,
    memo: HashMap<String, Rc<Tensor>>,
    shapes: HashMap<String, Vec<usize>>,
    nodes_run: usize,
    /// Tensors being computed, innermost last (cycle and depth guard).
    active: Vec<String>,
    /// Graph inputs the evaluation needed but was not given.
    pub missing: Vec<String>,
}

type R<T> = Result<T, String>;

/// Marks an error already attributed to a node.
const NESTED: char = '\u{1}';

impl std::fmt::Debug for Evaluator<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("feeds", &self.feeds.keys().collect::<Vec<_>>())
            .field("nodes_run", &self.nodes_run)
            .finish_non_exhaustive()
    }
}

impl<'a, 'g> Evaluator<'a, 'g> {
    /// An evaluator with the given graph inputs.
    pub fn new(ix: &'a GraphIndex<'g>, feeds: HashMap<String, Tensor>) -> Self {
        Self {
            ix,
            feeds: feeds.into_iter().map(|(k, v)| (k, Rc::new(v))).collect(),
            memo: HashMap::new(),
            shapes: HashMap::new(),
            nodes_run: 0,
            active: Vec::new(),
            missing: Vec::new(),
        }
    }

    /// The value of `name`, running its producers as needed. An error names
    /// the innermost node that could not be run and why.
    pub fn eval(&mut self, name: &str) -> R<Rc<Tensor>> {
        self.value(name)
            .map_err(|e| e.trim_start_matches(NESTED).to_string())
    }

    fn value(&mut self, name: &str) -> R<Rc<Tensor>> {
        if let Some(t) = self.memo.get(name).or_else(|| self.feeds.get(name)) {
            return Ok(t.clone());
        }
        if let Some(init) = self.ix.graph.initializer.iter().find(|t| t.name() == name) {
            let c = Constant::from_tensor_up_to(init, MAX_ELEMENTS)
                .ok_or_else(|| format!("initializer '{name}' cannot be read"))?;
            return Ok(self.keep(name, from_constant(&c, init.data_type())));
        }
        let Some(p) = self.ix.producer(name) else {
            self.missing.push(name.to_string());
            return Err(format!("graph input '{name}' has no value"));
        };
        self.nodes_run += 1;
        if self.nodes_run > MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes"));
        }
        let n = self.ix.node(p);
        if !is_onnx(n) {
            return Err(format!("{}::{} '{}'", n.domain(), n.op_type(), n.name()));
        }
        if self.active.iter().any(|a| a == name) {
            return Err(format!(
                "'{name}' depends on itself (the graph has a cycle)"
            ));
        }
        if self.active.len() >= MAX_DEPTH {
            return Err(format!("more than {MAX_DEPTH} producers deep"));
        }
        self.active.push(name.to_string());
        let outs = self.run(p);
        self.active.pop();
        let outs = outs.map_err(|e| {
            if e.starts_with(NESTED) {
                e
            } else {
                format!("{NESTED}{} '{}': {e}", n.op_type(), n.name())
            }
        })?;
        for (o, t) in n.output.iter().zip(outs) {
            if t.data.len() > MAX_ELEMENTS {
                return Err(format!("'{o}' has more than {MAX_ELEMENTS} elements"));
            }
            self.keep(o, t);
        }
        self.memo
            .get(name)
            .cloned()
            .ok_or_else(|| format!("'{name}' was not produced"))
    }

    fn keep(&mut self, name: &str, t: Tensor) -> Rc<Tensor> {
        let t = Rc::new(t);
        self.memo.insert(name.to_string(), t.clone());
        t
    }

    fn input(&mut self, p: usize, k: usize) -> R<Option<Rc<Tensor>>> {
        match self.ix.node(p).input.get(k).filter(|s| !s.is_empty()) {
            Some(name) => Ok(Some(self.value(&name.clone())?)),
            None => Ok(None),
        }
    }

    fn need(&mut self, p: usize, k: usize) -> R<Rc<Tensor>> {
        self.input(p, k)?
            .ok_or_else(|| format!("input {k} is missing"))
    }

    /// Every input of node `p`, in order.
    fn all_inputs(&mut self, p: usize) -> R<Vec<Rc<Tensor>>> {
        let mut xs = Vec::new();
        for k in 0..self.ix.node(p).input.len() {
            xs.push(self.need(p, k)?);
        }
        Ok(xs)
    }

    /// `Slice`'s starts, ends, axes and steps (the last two defaulted).
    fn slice_args(&mut self, p: usize) -> R<[Vec<i64>; 4]> {
        let starts = self.need(p, 1)?.ints();
        let ends = self.need(p, 2)?.ints();
        let axes = self
            .input(p, 3)?
            .map_or_else(|| (0..starts.len() as i64).collect(), |t| t.ints());
        let steps = self
            .input(p, 4)?
            .map_or_else(|| vec![1; starts.len()], |t| t.ints());
        Ok([starts, ends, axes, steps])
    }

    /// Input `k` read as a shape (`Expand`, `ConstantOfShape`).
    fn dims_arg(&mut self, p: usize, k: usize) -> R<Vec<usize>> {
        Ok(self
            .need(p, k)?
            .ints()
            .iter()
            .map(|&v| v.max(0) as usize)
            .collect())
    }

    /// `Unsqueeze`/`Squeeze` axes: input 1 (opset 13+) or the attribute.
    fn axes_arg(&mut self, p: usize) -> R<Option<Vec<i64>>> {
        Ok(match self.input(p, 1)? {
            Some(a) => Some(a.ints()),
            None => attr_ints(self.ix.node(p), AXES).map(<[i64]>::to_vec),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{IDENTITY, NEG, SHAPE};
    use crate::proto::{GraphProto, NodeProto};

    fn node(op: &str, name: &str, input: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_op_table_runs_known_ops_and_names_the_node_of_an_unknown_one() {
        let graph = GraphProto {
            node: vec![
                node(IDENTITY, "id", &["x"], "y"),
                node(NEG, "neg", &["y"], "z"),
                node("Einsum", "mystery", &["z"], "w"),
                node(SHAPE, "shape", &["w"], "s"),
            ],
            ..Default::default()
        };
        let ix = GraphIndex::new(&graph);
        let x = Tensor::new(vec![2], vec![1.0, -2.0], tensor::INT64);
        let mut ev = Evaluator::new(&ix, HashMap::from([("x".to_string(), x)]));
        assert_eq!(ev.eval("z").unwrap().data, vec![-1.0, 2.0]);
        assert_eq!(ev.shape_only("z").unwrap(), vec![2]);
        let err = ev.eval("s").unwrap_err();
        assert_eq!(
            err,
            "Einsum 'mystery': op Einsum is not supported by the mask interpreter"
        );
    }
}
