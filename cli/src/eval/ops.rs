//! The op table: ONNX op type → the handler that computes its (single)
//! output from its inputs, tract-style. An op missing from the table is an
//! error that [`Evaluator::value`](super::Evaluator) attributes to the node.

use super::layout::{
    concat, gather, gather_elements, gather_nd, reshaped, slice, squeezed, transpose,
};
use super::tensor::{
    binary, broadcast_shape, cast, element_count, from_constant, is_int, map_n, norm_axis,
    round_to, Tensor, BOOL, FLOAT, INT64, MAX_ELEMENTS,
};
use super::{Evaluator, R};
use crate::graph::{attr, attr_i, attr_ints, Constant};
use crate::names::*;

/// A handler: the output of node `p`.
type Op = fn(&mut Evaluator, usize) -> R<Tensor>;

/// The flat table, one row per supported op type.
const OPS: &[(&str, Op)] = &[
    (CONSTANT, constant),
    (IDENTITY, identity),
    (SHAPE, shape),
    ("Size", size),
    ("ConstantOfShape", constant_of_shape),
    (CAST, cast_op),
    ("Range", range),
    (UNSQUEEZE, squeeze),
    (SQUEEZE, squeeze),
    (RESHAPE, reshape),
    ("Flatten", flatten),
    (EXPAND, expand),
    (CONCAT, concat_op),
    (TRANSPOSE, transpose_op),
    (SLICE, slice_op),
    (GATHER, gather_op),
    (GATHER_ELEMENTS, gather_elements_op),
    ("GatherND", gather_nd_op),
    (WHERE, where_op),
    (NOT, unary),
    (ABS, unary),
    (NEG, unary),
    (SIGN, unary),
    (SQRT, unary),
    (RECIPROCAL, unary),
    (IS_NAN, unary),
    (IS_INF, unary),
    (FLOOR, unary),
    (CEIL, unary),
    (ADD, elementwise),
    (SUB, elementwise),
    (MUL, elementwise),
    (DIV, elementwise),
    (MOD, elementwise),
    (POW, elementwise),
    (MAX, elementwise),
    (MIN, elementwise),
    (EQUAL, elementwise),
    (LESS, elementwise),
    (LESS_OR_EQUAL, elementwise),
    (GREATER, elementwise),
    (GREATER_OR_EQUAL, elementwise),
    (AND, elementwise),
    (OR, elementwise),
    (XOR, elementwise),
    (BITWISE_AND, elementwise),
    (BITWISE_OR, elementwise),
];

impl Evaluator<'_, '_> {
    /// Run node `p` through its row of [`OPS`].
    pub(super) fn run(&mut self, p: usize) -> R<Vec<Tensor>> {
        let op = self.ix.node(p).op_type();
        match OPS.iter().find(|(name, _)| *name == op) {
            Some((_, handler)) => Ok(vec![handler(self, p)?]),
            None => Err(format!("op {op} is not supported by the mask interpreter")),
        }
    }
}

fn constant(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let n = ev.ix.node(p);
    let c = ev.ix.constant(&n.output[0]).ok_or("unsupported constant")?;
    let dt = attr(n, VALUE).and_then(|a| a.t.as_ref()).map_or_else(
        || {
            if attr(n, VALUE_FLOAT).is_some() || attr(n, VALUE_FLOATS).is_some() {
                FLOAT
            } else {
                INT64
            }
        },
        |t| t.data_type(),
    );
    Ok(from_constant(&c, dt))
}

fn identity(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    Ok((*ev.need(p, 0)?).clone())
}

fn shape(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let n = ev.ix.node(p);
    let s = ev.shape_of(p, 0)?;
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(attr_i(n, "start").unwrap_or(0));
    let end = clamp(attr_i(n, "end").unwrap_or(r));
    let d: Vec<f64> = s[start..end.max(start)].iter().map(|&v| v as f64).collect();
    Ok(Tensor::new(vec![d.len()], d, INT64))
}

fn size(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let s = ev.shape_of(p, 0)?;
    // Checked: hostile dims overflowed the product (found by fuzzing).
    let n = s
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("the element count of {s:?} overflows"))?;
    Ok(Tensor::new(vec![], vec![n as f64], INT64))
}

fn constant_of_shape(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let n = ev.ix.node(p);
    let shape = ev.dims_arg(p, 0)?;
    let (v, dt) = match attr(n, VALUE).and_then(|a| a.t.as_ref()) {
        Some(t) => (
            Constant::from_tensor(t)
                .and_then(|c| c.values.first().copied())
                .ok_or("bad value")?,
            t.data_type(),
        ),
        None => (0.0, FLOAT),
    };
    let count = element_count(&shape)?;
    Ok(Tensor::new(shape, vec![v; count], dt))
}

fn cast_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let to = attr_i(ev.ix.node(p), TO).ok_or("no 'to'")? as i32;
    Ok(Tensor::new(
        x.shape.clone(),
        x.data.iter().map(|&v| cast(v, to)).collect(),
        to,
    ))
}

fn range(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let (s, l, d) = (ev.need(p, 0)?, ev.need(p, 1)?, ev.need(p, 2)?);
    let (s0, l0, d0) = (s.scalar()?, l.scalar()?, d.scalar()?);
    if d0 == 0.0 {
        return Err("delta 0".into());
    }
    let count = ((l0 - s0) / d0).ceil().max(0.0) as usize;
    if count > MAX_ELEMENTS {
        return Err("too large".into());
    }
    let data = (0..count).map(|i| s0 + i as f64 * d0).collect::<Vec<_>>();
    Ok(Tensor::new(vec![count], data, s.dtype))
}

/// `Unsqueeze` and `Squeeze`: the same values under a new shape.
fn squeeze(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let axes = ev.axes_arg(p)?;
    let insert = ev.ix.node(p).op_type() == UNSQUEEZE;
    let shape = squeezed(x.shape.clone(), axes, insert)?;
    Ok(Tensor::new(shape, x.data.clone(), x.dtype))
}

fn reshape(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let spec = ev.need(p, 1)?.ints();
    let allowzero = attr_i(ev.ix.node(p), ALLOWZERO).unwrap_or(0) == 1;
    let shape = reshaped(&x.shape, &spec, allowzero)?;
    Ok(Tensor::new(shape, x.data.clone(), x.dtype))
}

fn flatten(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let a = norm_axis(attr_i(ev.ix.node(p), AXIS).unwrap_or(1), x.shape.len());
    // An axis past the rank indexed out of bounds (found by fuzzing).
    let Some(head) = x.shape.get(..a) else {
        return Err(format!(
            "axis {a} is out of range for rank {}",
            x.shape.len()
        ));
    };
    let outer: usize = head.iter().product();
    Ok(Tensor::new(
        vec![outer, x.data.len() / outer.max(1)],
        x.data.clone(),
        x.dtype,
    ))
}

fn expand(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let target = ev.dims_arg(p, 1)?;
    let shape = broadcast_shape(&[&x.shape, &target])?;
    Ok(map_n(&[&x], &shape, x.dtype, |v| v[0]))
}

fn concat_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let parts = ev.all_inputs(p)?;
    let a = attr_i(ev.ix.node(p), AXIS).ok_or("no axis")?;
    // A Concat with no inputs is invalid ONNX (found by fuzzing).
    let first = parts.first().ok_or("Concat needs at least one input")?;
    concat(&parts, norm_axis(a, first.shape.len()))
}

fn transpose_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let perm: Vec<usize> = match attr_ints(ev.ix.node(p), PERM) {
        Some(p) => p.iter().map(|&v| v as usize).collect(),
        None => (0..x.shape.len()).rev().collect(),
    };
    // `perm` must be a permutation of the axes (found by fuzzing: -1 and
    // out-of-range entries indexed past the shape).
    let mut seen = vec![false; x.shape.len()];
    for &a in &perm {
        match seen.get_mut(a) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(format!(
                    "perm {perm:?} is not a permutation of {} axes",
                    x.shape.len()
                ))
            }
        }
    }
    if perm.len() != x.shape.len() {
        return Err(format!(
            "perm {perm:?} is not a permutation of {} axes",
            x.shape.len()
        ));
    }
    Ok(transpose(&x, &perm))
}

fn slice_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let x = ev.need(p, 0)?;
    let args = ev.slice_args(p)?;
    slice(&x, &args)
}

fn gather_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let (x, idx) = (ev.need(p, 0)?, ev.need(p, 1)?);
    let a = attr_i(ev.ix.node(p), AXIS).unwrap_or(0);
    gather(&x, &idx, norm_axis(a, x.shape.len()))
}

fn gather_elements_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let (x, idx) = (ev.need(p, 0)?, ev.need(p, 1)?);
    let a = attr_i(ev.ix.node(p), AXIS).unwrap_or(0);
    gather_elements(&x, &idx, norm_axis(a, x.shape.len()))
}

fn gather_nd_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    if attr_i(ev.ix.node(p), "batch_dims").unwrap_or(0) != 0 {
        return Err("batch_dims != 0".into());
    }
    let (x, idx) = (ev.need(p, 0)?, ev.need(p, 1)?);
    gather_nd(&x, &idx)
}

fn where_op(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let (c, a, b) = (ev.need(p, 0)?, ev.need(p, 1)?, ev.need(p, 2)?);
    let shape = broadcast_shape(&[&c.shape, &a.shape, &b.shape])?;
    Ok(map_n(&[&c, &a, &b], &shape, a.dtype, |v| {
        if v[0] != 0.0 {
            v[1]
        } else {
            v[2]
        }
    }))
}

/// The one-input elementwise ops; `IsNaN`/`IsInf` give bools.
fn unary(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let op = ev.ix.node(p).op_type();
    let x = ev.need(p, 0)?;
    let dt = if matches!(op, IS_NAN | IS_INF) {
        BOOL
    } else {
        x.dtype
    };
    let f: fn(f64) -> f64 = match op {
        NOT => |v| f64::from(u8::from(v == 0.0)),
        ABS => f64::abs,
        NEG => |v| -v,
        SIGN => |v| if v == 0.0 { 0.0 } else { v.signum() },
        SQRT => f64::sqrt,
        RECIPROCAL => |v| 1.0 / v,
        IS_NAN => |v| f64::from(u8::from(v.is_nan())),
        IS_INF => |v| f64::from(u8::from(v.is_infinite())),
        FLOOR => f64::floor,
        _ => f64::ceil,
    };
    Ok(Tensor::new(
        x.shape.clone(),
        x.data.iter().map(|&v| round_to(f(v), dt)).collect(),
        dt,
    ))
}

/// The broadcasting two-input ops (and variadic `Max`/`Min`); comparisons
/// and logic give bools.
fn elementwise(ev: &mut Evaluator, p: usize) -> R<Tensor> {
    let op = ev.ix.node(p).op_type();
    let xs = ev.all_inputs(p)?;
    if xs.len() != 2 && !matches!(op, MAX | MIN) || xs.is_empty() {
        return Err(format!("{} inputs", xs.len()));
    }
    let shapes: Vec<&Vec<usize>> = xs.iter().map(|x| &x.shape).collect();
    let shape = broadcast_shape(&shapes)?;
    let logical = matches!(
        op,
        EQUAL | LESS | LESS_OR_EQUAL | GREATER | GREATER_OR_EQUAL | AND | OR | XOR
    );
    let dt = if logical { BOOL } else { xs[0].dtype };
    let refs: Vec<&Tensor> = xs.iter().map(|x| x.as_ref()).collect();
    let f = binary(op, is_int(dt));
    let mut t = map_n(&refs, &shape, dt, |v| {
        v[1..].iter().fold(v[0], |a, &b| f(a, b))
    });
    t.data.iter_mut().for_each(|v| *v = round_to(*v, dt));
    Ok(t)
}
