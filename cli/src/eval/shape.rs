//! Shape probing: the shape of a tensor without its values where that is
//! cheap, from a table of shape rules (op type → rule). A rule may decline
//! (`Ok(None)`); the tensor is then evaluated and its shape read.

use super::layout::{reshaped, slice_ranges, squeezed};
use super::tensor::{broadcast_shape, norm_axis};
use super::{Evaluator, MAX_NODES, R};
use crate::graph::{attr_i, attr_ints, is_onnx};
use crate::names::*;

/// A rule: the shape of the first output of node `p`, or `None` to evaluate it.
type ShapeRule = fn(&mut Evaluator, usize) -> R<Option<Vec<usize>>>;

/// The flat table of ops with their own rule.
const SHAPE_RULES: &[(&str, ShapeRule)] = &[
    (GATHER, gather_from_initializer),
    (MATMUL, matmul),
    (GATHER_ELEMENTS, gather_elements),
    (EXPAND, expand),
    (GEMM, gemm),
    (RESHAPE, reshape),
    (UNSQUEEZE, squeeze),
    (SQUEEZE, squeeze),
    (CONCAT, concat),
    (SLICE, slice),
    (TRANSPOSE, transpose),
];

/// Ops whose output has their first input's shape.
const SHAPE_PRESERVING: &[&str] = &[
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    SOFTMAX,
    "LogSoftmax",
    CAST,
    "CastLike",
    IDENTITY,
    "Relu",
    "Gelu",
    "FastGelu",
    "Erf",
    "Tanh",
    "Sigmoid",
    SQRT,
    NEG,
    DROPOUT,
    "Exp",
    "Log",
    RECIPROCAL,
    ABS,
    "Sin",
    "Cos",
    IS_NAN,
    IS_INF,
    NOT,
    "Softplus",
    "Elu",
    "LeakyRelu",
    "HardSigmoid",
    "Clip",
    FLOOR,
    CEIL,
    "Round",
    SIGN,
    "Trilu",
];

/// Elementwise ops with broadcasting.
const BROADCASTING: &[&str] = &[
    ADD,
    SUB,
    MUL,
    DIV,
    POW,
    WHERE,
    MAX,
    MIN,
    MOD,
    EQUAL,
    LESS,
    LESS_OR_EQUAL,
    GREATER,
    GREATER_OR_EQUAL,
    AND,
    OR,
    XOR,
];

/// The rule for `op`: its own row, the shape-preserving or broadcasting
/// families, or the `Reduce*` family.
fn rule_for(op: &str) -> Option<ShapeRule> {
    if let Some((_, rule)) = SHAPE_RULES.iter().find(|(name, _)| *name == op) {
        return Some(*rule);
    }
    if SHAPE_PRESERVING.contains(&op) {
        return Some(first_input);
    }
    if BROADCASTING.contains(&op) {
        return Some(broadcast_inputs);
    }
    op.starts_with("Reduce").then_some(reduce as ShapeRule)
}

impl Evaluator<'_, '_> {
    /// Shape of input `k` of node `p`; see [`Evaluator::shape_only`].
    pub(super) fn shape_of(&mut self, p: usize, k: usize) -> R<Vec<usize>> {
        // A node with fewer inputs than its op needs is an error, not a
        // panic (found by fuzzing).
        let name = self.ix.node(p).input.get(k).cloned();
        self.shape_only(&name.ok_or_else(|| format!("input {k} is missing"))?)
    }

    /// The shape of `name` without its values where that is cheap: through
    /// shape-preserving and broadcasting ops, `MatMul`, `Transpose`, and a
    /// `Gather` from an initializer (the embedding table under a `Shape`).
    /// Anything else is evaluated.
    pub fn shape_only(&mut self, name: &str) -> R<Vec<usize>> {
        if let Some(s) = self.shapes.get(name) {
            return Ok(s.clone());
        }
        self.nodes_run += 1;
        if self.nodes_run > MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes"));
        }
        // The same cycle and depth guard as `value` (shape rules recurse too).
        let key = format!("shape of {name}");
        if self.active.contains(&key) {
            return Err(format!(
                "the shape of '{name}' depends on itself (the graph has a cycle)"
            ));
        }
        if self.active.len() >= super::MAX_DEPTH {
            return Err(format!("more than {} producers deep", super::MAX_DEPTH));
        }
        self.active.push(key);
        let s = self.shape_uncached(name);
        self.active.pop();
        let s = s?;
        self.shapes.insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn shape_uncached(&mut self, name: &str) -> R<Vec<usize>> {
        if let Some(t) = self.memo.get(name).or_else(|| self.feeds.get(name)) {
            return Ok(t.shape.clone());
        }
        if let Some(init) = self.ix.graph.initializer.iter().find(|t| t.name() == name) {
            return init
                .dims
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| format!("initializer '{name}' has dim {d}"))
                })
                .collect();
        }
        let Some(p) = self.ix.producer(name) else {
            return self.evaluated_shape(name);
        };
        let n = self.ix.node(p);
        if n.op_type() == SPLIT && is_onnx(n) {
            return self.split(p, name);
        }
        let first = n.output.first().map(String::as_str) == Some(name);
        if is_onnx(n) && first {
            if let Some(rule) = rule_for(n.op_type()) {
                if let Some(s) = rule(self, p)? {
                    return Ok(s);
                }
            }
        }
        self.evaluated_shape(name)
    }

    fn evaluated_shape(&mut self, name: &str) -> R<Vec<usize>> {
        Ok(self.value(name)?.shape.clone())
    }

    /// `Split`: the input's shape with the split axis cut to output `name`'s part.
    fn split(&mut self, p: usize, name: &str) -> R<Vec<usize>> {
        let n = self.ix.node(p);
        let mut x = self.shape_of(p, 0)?;
        let a = norm_axis(attr_i(n, AXIS).unwrap_or(0), x.len());
        let parts = n.output.len();
        let sizes: Vec<usize> = match self.input(p, 1)? {
            Some(t) => t.ints().iter().map(|&v| v as usize).collect(),
            None => match attr_ints(n, SPLIT_ATTR) {
                Some(v) => v.iter().map(|&v| v as usize).collect(),
                None => {
                    let d = x.get(a).copied().ok_or("bad axis")?;
                    let each = d.div_ceil(parts.max(1));
                    (0..parts)
                        .map(|i| each.min(d.saturating_sub(i * each)))
                        .collect()
                }
            },
        };
        let i = n
            .output
            .iter()
            .position(|o| o == name)
            .ok_or("no such output")?;
        x[a] = *sizes.get(i).ok_or("split sizes")?;
        Ok(x)
    }
}

fn gather_from_initializer(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let n = ev.ix.node(p);
    if attr_i(n, AXIS).unwrap_or(0) != 0 {
        return Ok(None);
    }
    let Some(init) = ev
        .ix
        .graph
        .initializer
        .iter()
        .find(|t| n.input.first().is_some_and(|i| t.name() == i))
    else {
        return Ok(None);
    };
    let mut s = ev.need(p, 1)?.shape.clone();
    s.extend(init.dims.iter().skip(1).map(|&d| d as usize));
    Ok(Some(s))
}

fn first_input(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    ev.shape_of(p, 0).map(Some)
}

fn broadcast_inputs(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let mut shapes = Vec::new();
    for k in 0..ev.ix.node(p).input.len() {
        shapes.push(ev.shape_of(p, k)?);
    }
    broadcast_shape(&shapes.iter().collect::<Vec<_>>()).map(Some)
}

fn matmul(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let (a, b) = (ev.shape_of(p, 0)?, ev.shape_of(p, 1)?);
    if a.len() < 2 || b.len() < 2 {
        return Ok(None);
    }
    let batch = broadcast_shape(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()])?;
    Ok(Some([batch, vec![a[a.len() - 2], b[b.len() - 1]]].concat()))
}

fn gather_elements(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    ev.shape_of(p, 1).map(Some)
}

/// `Reduce*`: the reduced axes dropped, or kept as 1 with `keepdims`.
fn reduce(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let n = ev.ix.node(p);
    let mut x = ev.shape_of(p, 0)?;
    let r = x.len() as i64;
    let axes: Vec<i64> = match ev.input(p, 1)? {
        Some(a) => a.ints(),
        None => attr_ints(n, AXES).map_or_else(|| (0..r).collect(), <[i64]>::to_vec),
    };
    let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, x.len())).collect();
    if attr_i(n, "keepdims").unwrap_or(1) == 1 {
        for &a in &axes {
            if let Some(d) = x.get_mut(a) {
                *d = 1;
            }
        }
        return Ok(Some(x));
    }
    Ok(Some(
        (0..x.len())
            .filter(|i| !axes.contains(i))
            .map(|i| x[i])
            .collect(),
    ))
}

fn expand(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let x = ev.shape_of(p, 0)?;
    let target = ev.dims_arg(p, 1)?;
    broadcast_shape(&[&x, &target]).map(Some)
}

fn gemm(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let n = ev.ix.node(p);
    let (a, b) = (ev.shape_of(p, 0)?, ev.shape_of(p, 1)?);
    if a.len() != 2 || b.len() != 2 {
        return Ok(None);
    }
    let m = if attr_i(n, "transA") == Some(1) {
        a[1]
    } else {
        a[0]
    };
    let o = if attr_i(n, "transB") == Some(1) {
        b[0]
    } else {
        b[1]
    };
    Ok(Some(vec![m, o]))
}

fn reshape(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let x = ev.shape_of(p, 0)?;
    let spec = ev.need(p, 1)?.ints();
    let allowzero = attr_i(ev.ix.node(p), ALLOWZERO).unwrap_or(0) == 1;
    reshaped(&x, &spec, allowzero).map(Some)
}

fn squeeze(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let x = ev.shape_of(p, 0)?;
    let axes = ev.axes_arg(p)?;
    squeezed(x, axes, ev.ix.node(p).op_type() == UNSQUEEZE).map(Some)
}

fn concat(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let n = ev.ix.node(p);
    let a = attr_i(n, AXIS).ok_or("no axis")?;
    let mut out = ev.shape_of(p, 0)?;
    let a = norm_axis(a, out.len());
    for k in 1..n.input.len() {
        out[a] += ev.shape_of(p, k)?.get(a).copied().unwrap_or(0);
    }
    Ok(Some(out))
}

fn slice(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let x = ev.shape_of(p, 0)?;
    let args = ev.slice_args(p)?;
    Ok(Some(
        slice_ranges(&x, &args)?.iter().map(Vec::len).collect(),
    ))
}

fn transpose(ev: &mut Evaluator, p: usize) -> R<Option<Vec<usize>>> {
    let x = ev.shape_of(p, 0)?;
    Ok(Some(match attr_ints(ev.ix.node(p), PERM) {
        Some(perm) => perm.iter().map(|&i| x[i as usize]).collect(),
        None => x.iter().rev().copied().collect(),
    }))
}
