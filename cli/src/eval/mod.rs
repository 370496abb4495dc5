//! A small ONNX interpreter for the integer/bool subgraphs that build
//! attention masks (positions, comparisons, padding gathers), so a mask can
//! be recognised by what it computes rather than by how an exporter spelled
//! it.
//!
//! Values are held as `f64` with their ONNX element type (exact for the
//! int64 indices and bools of mask subgraphs). Only the nodes in the cone of
//! the requested tensor are run. Cost: one pass over that cone; each tensor
//! is at most [`MAX_ELEMENTS`] elements, and at most [`MAX_NODES`] nodes run.

use std::collections::HashMap;
use std::rc::Rc;

use crate::graph::{attr, attr_i, attr_ints, is_onnx, Constant, GraphIndex};
use crate::proto::tensor_proto::DataType;

/// Largest tensor the interpreter builds.
pub const MAX_ELEMENTS: usize = 1 << 23;
/// Most nodes one evaluation runs.
pub const MAX_NODES: usize = 20_000;

const BOOL: i32 = DataType::Bool as i32;
const INT64: i32 = DataType::Int64 as i32;
const FLOAT: i32 = DataType::Float as i32;

/// A dense tensor: shape, row-major values, ONNX element type.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f64>,
    /// ONNX element type.
    pub dtype: i32,
}

impl Tensor {
    /// A tensor from its parts (`data.len()` must equal the shape's product).
    pub fn new(shape: Vec<usize>, data: Vec<f64>, dtype: i32) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data, dtype }
    }
    fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }
    fn scalar(&self) -> Result<f64, String> {
        match self.data.as_slice() {
            [v] => Ok(*v),
            _ => Err(format!("expected one value, got shape {:?}", self.shape)),
        }
    }
}

/// Evaluation of one graph with fixed graph inputs.
pub struct Evaluator<'a, 'g> {
    ix: &'a GraphIndex<'g>,
    feeds: HashMap<String, Rc<Tensor>>,
    memo: HashMap<String, Rc<Tensor>>,
    shapes: HashMap<String, Vec<usize>>,
    nodes_run: usize,
    /// Graph inputs the evaluation needed but was not given.
    pub missing: Vec<String>,
}

type R<T> = Result<T, String>;

/// Marks an error already attributed to a node.
const NESTED: char = '\u{1}';

/// Ops whose output has their first input's shape.
const SHAPE_PRESERVING: &[&str] = &[
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "LogSoftmax",
    "Cast",
    "CastLike",
    "Identity",
    "Relu",
    "Gelu",
    "FastGelu",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Sqrt",
    "Neg",
    "Dropout",
    "Exp",
    "Log",
    "Reciprocal",
    "Abs",
    "Sin",
    "Cos",
    "IsNaN",
    "IsInf",
    "Not",
    "Softplus",
    "Elu",
    "LeakyRelu",
    "HardSigmoid",
    "Clip",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Trilu",
];
/// Elementwise ops with broadcasting.
const BROADCASTING: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Where",
    "Max",
    "Min",
    "Mod",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
];

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
        let outs = self.run(p).map_err(|e| {
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

    /// Shape of input `k` of node `p`; see [`Evaluator::shape_only`].
    fn shape_of(&mut self, p: usize, k: usize) -> R<Vec<usize>> {
        let name = self.ix.node(p).input[k].clone();
        self.shape_only(&name)
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
        let s = self.shape_uncached(name)?;
        self.shapes.insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn shape_uncached(&mut self, name: &str) -> R<Vec<usize>> {
        if let Some(t) = self.memo.get(name).or_else(|| self.feeds.get(name)) {
            return Ok(t.shape.clone());
        }
        if let Some(init) = self.ix.graph.initializer.iter().find(|t| t.name() == name) {
            return Ok(init.dims.iter().map(|&d| d as usize).collect());
        }
        let Some(p) = self.ix.producer(name) else {
            return Ok(self.value(name)?.shape.clone());
        };
        let n = self.ix.node(p);
        let op = n.op_type();
        if op == "Split" && is_onnx(n) {
            let mut x = self.shape_of(p, 0)?;
            let r = x.len() as i64;
            let a = attr_i(n, "axis").unwrap_or(0);
            let a = if a < 0 { a + r } else { a } as usize;
            let parts = n.output.len();
            let sizes: Vec<usize> = match self.input(p, 1)? {
                Some(t) => t.ints().iter().map(|&v| v as usize).collect(),
                None => match attr_ints(n, "split") {
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
            return Ok(x);
        }
        let first = n.output.first().map(String::as_str) == Some(name);
        if !is_onnx(n) || !first {
            return Ok(self.value(name)?.shape.clone());
        }
        if op == "Gather" && attr_i(n, "axis").unwrap_or(0) == 0 {
            if let Some(init) = self
                .ix
                .graph
                .initializer
                .iter()
                .find(|t| t.name() == n.input[0])
            {
                let mut s = self.need(p, 1)?.shape.clone();
                s.extend(init.dims.iter().skip(1).map(|&d| d as usize));
                return Ok(s);
            }
        }
        if SHAPE_PRESERVING.contains(&op) {
            return self.shape_of(p, 0);
        }
        if BROADCASTING.contains(&op) {
            let mut shapes = Vec::new();
            for k in 0..n.input.len() {
                shapes.push(self.shape_of(p, k)?);
            }
            return broadcast_shape(&shapes.iter().collect::<Vec<_>>());
        }
        if op == "MatMul" {
            let (a, b) = (self.shape_of(p, 0)?, self.shape_of(p, 1)?);
            if a.len() >= 2 && b.len() >= 2 {
                let batch =
                    broadcast_shape(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()])?;
                return Ok([batch, vec![a[a.len() - 2], b[b.len() - 1]]].concat());
            }
        }
        if op == "GatherElements" {
            return self.shape_of(p, 1);
        }
        if op.starts_with("Reduce") {
            let mut x = self.shape_of(p, 0)?;
            let r = x.len() as i64;
            let axes: Vec<i64> = match self.input(p, 1)? {
                Some(a) => a.ints(),
                None => attr_ints(n, "axes").map_or_else(|| (0..r).collect(), <[i64]>::to_vec),
            };
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| if a < 0 { a + r } else { a } as usize)
                .collect();
            if attr_i(n, "keepdims").unwrap_or(1) == 1 {
                for &a in &axes {
                    if let Some(d) = x.get_mut(a) {
                        *d = 1;
                    }
                }
                return Ok(x);
            }
            return Ok((0..x.len())
                .filter(|i| !axes.contains(i))
                .map(|i| x[i])
                .collect());
        }
        if op == "Expand" {
            let x = self.shape_of(p, 0)?;
            let target = self.dims_arg(p, 1)?;
            return broadcast_shape(&[&x, &target]);
        }
        if op == "Gemm" {
            let (a, b) = (self.shape_of(p, 0)?, self.shape_of(p, 1)?);
            if a.len() == 2 && b.len() == 2 {
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
                return Ok(vec![m, o]);
            }
        }
        if op == "Reshape" {
            let x = self.shape_of(p, 0)?;
            let spec = self.need(p, 1)?.ints();
            return reshaped(&x, &spec, attr_i(n, "allowzero").unwrap_or(0) == 1);
        }
        if op == "Unsqueeze" || op == "Squeeze" {
            let x = self.shape_of(p, 0)?;
            let axes = self.axes_arg(p)?;
            return squeezed(x, axes, op == "Unsqueeze");
        }
        if op == "Concat" {
            let a = attr_i(n, "axis").ok_or("no axis")?;
            let mut out = self.shape_of(p, 0)?;
            let r = out.len() as i64;
            let a = if a < 0 { a + r } else { a } as usize;
            for k in 1..n.input.len() {
                out[a] += self.shape_of(p, k)?.get(a).copied().unwrap_or(0);
            }
            return Ok(out);
        }
        if op == "Slice" {
            let x = self.shape_of(p, 0)?;
            let args = self.slice_args(p)?;
            return Ok(slice_ranges(&x, &args)?.iter().map(Vec::len).collect());
        }
        if op == "Transpose" {
            let x = self.shape_of(p, 0)?;
            return Ok(match attr_ints(n, "perm") {
                Some(perm) => perm.iter().map(|&i| x[i as usize]).collect(),
                None => x.iter().rev().copied().collect(),
            });
        }
        Ok(self.value(name)?.shape.clone())
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
            None => attr_ints(self.ix.node(p), "axes").map(<[i64]>::to_vec),
        })
    }

    fn run(&mut self, p: usize) -> R<Vec<Tensor>> {
        let n = self.ix.node(p);
        let op = n.op_type();
        let one = |t: Tensor| Ok(vec![t]);
        match op {
            "Constant" => {
                let c = self
                    .ix
                    .constant(&n.output[0])
                    .ok_or("unsupported constant")?;
                let dt = attr(n, "value").and_then(|a| a.t.as_ref()).map_or_else(
                    || {
                        if attr(n, "value_float").is_some() || attr(n, "value_floats").is_some() {
                            FLOAT
                        } else {
                            INT64
                        }
                    },
                    |t| t.data_type(),
                );
                one(from_constant(&c, dt))
            }
            "Identity" => one((*self.need(p, 0)?).clone()),
            "Shape" => {
                let s = self.shape_of(p, 0)?;
                let r = s.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(attr_i(n, "start").unwrap_or(0));
                let end = clamp(attr_i(n, "end").unwrap_or(r));
                let d: Vec<f64> = s[start..end.max(start)].iter().map(|&v| v as f64).collect();
                one(Tensor::new(vec![d.len()], d, INT64))
            }
            "Size" => {
                let s = self.shape_of(p, 0)?;
                one(Tensor::new(
                    vec![],
                    vec![s.iter().product::<usize>() as f64],
                    INT64,
                ))
            }
            "ConstantOfShape" => {
                let shape = self.dims_arg(p, 0)?;
                let (v, dt) = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => (
                        Constant::from_tensor(t)
                            .and_then(|c| c.values.first().copied())
                            .ok_or("bad value")?,
                        t.data_type(),
                    ),
                    None => (0.0, FLOAT),
                };
                let count: usize = shape.iter().product();
                if count > MAX_ELEMENTS {
                    return Err("too large".into());
                }
                one(Tensor::new(shape, vec![v; count], dt))
            }
            "Cast" => {
                let x = self.need(p, 0)?;
                let to = attr_i(n, "to").ok_or("no 'to'")? as i32;
                one(Tensor::new(
                    x.shape.clone(),
                    x.data.iter().map(|&v| cast(v, to)).collect(),
                    to,
                ))
            }
            "Range" => {
                let (s, l, d) = (self.need(p, 0)?, self.need(p, 1)?, self.need(p, 2)?);
                let (s0, l0, d0) = (s.scalar()?, l.scalar()?, d.scalar()?);
                if d0 == 0.0 {
                    return Err("delta 0".into());
                }
                let count = ((l0 - s0) / d0).ceil().max(0.0) as usize;
                if count > MAX_ELEMENTS {
                    return Err("too large".into());
                }
                let data = (0..count).map(|i| s0 + i as f64 * d0).collect::<Vec<_>>();
                one(Tensor::new(vec![count], data, s.dtype))
            }
            "Unsqueeze" | "Squeeze" => {
                let x = self.need(p, 0)?;
                let axes = self.axes_arg(p)?;
                let shape = squeezed(x.shape.clone(), axes, op == "Unsqueeze")?;
                one(Tensor::new(shape, x.data.clone(), x.dtype))
            }
            "Reshape" => {
                let x = self.need(p, 0)?;
                let spec = self.need(p, 1)?.ints();
                let shape = reshaped(&x.shape, &spec, attr_i(n, "allowzero").unwrap_or(0) == 1)?;
                one(Tensor::new(shape, x.data.clone(), x.dtype))
            }
            "Flatten" => {
                let x = self.need(p, 0)?;
                let r = x.shape.len() as i64;
                let a = attr_i(n, "axis").unwrap_or(1);
                let a = if a < 0 { a + r } else { a } as usize;
                let outer: usize = x.shape[..a].iter().product();
                one(Tensor::new(
                    vec![outer, x.data.len() / outer.max(1)],
                    x.data.clone(),
                    x.dtype,
                ))
            }
            "Expand" => {
                let x = self.need(p, 0)?;
                let target = self.dims_arg(p, 1)?;
                let shape = broadcast_shape(&[&x.shape, &target])?;
                one(map_n(&[&x], &shape, x.dtype, |v| v[0]))
            }
            "Concat" => {
                let mut parts = Vec::new();
                for k in 0..n.input.len() {
                    parts.push(self.need(p, k)?);
                }
                let r = parts[0].shape.len() as i64;
                let a = attr_i(n, "axis").ok_or("no axis")?;
                let a = if a < 0 { a + r } else { a } as usize;
                one(concat(&parts, a)?)
            }
            "Transpose" => {
                let x = self.need(p, 0)?;
                let perm: Vec<usize> = match attr_ints(n, "perm") {
                    Some(p) => p.iter().map(|&v| v as usize).collect(),
                    None => (0..x.shape.len()).rev().collect(),
                };
                one(transpose(&x, &perm))
            }
            "Slice" => {
                let x = self.need(p, 0)?;
                let args = self.slice_args(p)?;
                one(slice(&x, &args)?)
            }
            "Gather" => {
                let (x, idx) = (self.need(p, 0)?, self.need(p, 1)?);
                let r = x.shape.len() as i64;
                let a = attr_i(n, "axis").unwrap_or(0);
                one(gather(&x, &idx, if a < 0 { a + r } else { a } as usize)?)
            }
            "GatherElements" => {
                let (x, idx) = (self.need(p, 0)?, self.need(p, 1)?);
                let r = x.shape.len() as i64;
                let a = attr_i(n, "axis").unwrap_or(0);
                one(gather_elements(
                    &x,
                    &idx,
                    if a < 0 { a + r } else { a } as usize,
                )?)
            }
            "GatherND" => {
                if attr_i(n, "batch_dims").unwrap_or(0) != 0 {
                    return Err("batch_dims != 0".into());
                }
                let (x, idx) = (self.need(p, 0)?, self.need(p, 1)?);
                one(gather_nd(&x, &idx)?)
            }
            "Where" => {
                let (c, a, b) = (self.need(p, 0)?, self.need(p, 1)?, self.need(p, 2)?);
                let shape = broadcast_shape(&[&c.shape, &a.shape, &b.shape])?;
                one(map_n(&[&c, &a, &b], &shape, a.dtype, |v| {
                    if v[0] != 0.0 {
                        v[1]
                    } else {
                        v[2]
                    }
                }))
            }
            "Not" | "Abs" | "Neg" | "Sign" | "Sqrt" | "Reciprocal" | "IsNaN" | "IsInf"
            | "Floor" | "Ceil" => {
                let x = self.need(p, 0)?;
                let dt = if matches!(op, "IsNaN" | "IsInf") {
                    BOOL
                } else {
                    x.dtype
                };
                let f: fn(f64) -> f64 = match op {
                    "Not" => |v| f64::from(u8::from(v == 0.0)),
                    "Abs" => f64::abs,
                    "Neg" => |v| -v,
                    "Sign" => |v| if v == 0.0 { 0.0 } else { v.signum() },
                    "Sqrt" => f64::sqrt,
                    "Reciprocal" => |v| 1.0 / v,
                    "IsNaN" => |v| f64::from(u8::from(v.is_nan())),
                    "IsInf" => |v| f64::from(u8::from(v.is_infinite())),
                    "Floor" => f64::floor,
                    _ => f64::ceil,
                };
                one(Tensor::new(
                    x.shape.clone(),
                    x.data.iter().map(|&v| round_to(f(v), dt)).collect(),
                    dt,
                ))
            }
            "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Pow" | "Max" | "Min" | "Equal" | "Less"
            | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor"
            | "BitwiseAnd" | "BitwiseOr" => {
                let mut xs = Vec::new();
                for k in 0..n.input.len() {
                    xs.push(self.need(p, k)?);
                }
                if xs.len() != 2 && !matches!(op, "Max" | "Min") || xs.is_empty() {
                    return Err(format!("{} inputs", xs.len()));
                }
                let shapes: Vec<&Vec<usize>> = xs.iter().map(|x| &x.shape).collect();
                let shape = broadcast_shape(&shapes)?;
                let logical = matches!(
                    op,
                    "Equal"
                        | "Less"
                        | "LessOrEqual"
                        | "Greater"
                        | "GreaterOrEqual"
                        | "And"
                        | "Or"
                        | "Xor"
                );
                let dt = if logical { BOOL } else { xs[0].dtype };
                let int = is_int(dt);
                let refs: Vec<&Tensor> = xs.iter().map(|x| x.as_ref()).collect();
                let f = binary(op, int);
                let mut t = map_n(&refs, &shape, dt, |v| {
                    v[1..].iter().fold(v[0], |a, &b| f(a, b))
                });
                t.data.iter_mut().for_each(|v| *v = round_to(*v, dt));
                one(t)
            }
            other => Err(format!(
                "op {other} is not supported by the mask interpreter"
            )),
        }
    }
}

/// The shape after `Unsqueeze` (`insert`) or `Squeeze` with `axes`.
fn squeezed(mut shape: Vec<usize>, axes: Option<Vec<i64>>, insert: bool) -> R<Vec<usize>> {
    if insert {
        let axes = axes.ok_or("no axes")?;
        let r = (shape.len() + axes.len()) as i64;
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&a| if a < 0 { a + r } else { a } as usize)
            .collect();
        norm.sort_unstable();
        for a in norm {
            if a > shape.len() {
                return Err("bad axis".into());
            }
            shape.insert(a, 1);
        }
        return Ok(shape);
    }
    let r = shape.len() as i64;
    let keep: Vec<usize> = match axes {
        Some(axes) => {
            let norm: Vec<usize> = axes
                .iter()
                .map(|&a| if a < 0 { a + r } else { a } as usize)
                .collect();
            (0..shape.len()).filter(|i| !norm.contains(i)).collect()
        }
        None => (0..shape.len()).filter(|&i| shape[i] != 1).collect(),
    };
    Ok(keep.iter().map(|&i| shape[i]).collect())
}

/// The shape `Reshape` gives `x` for `spec` (0 = copy unless `allowzero`, −1 = infer).
fn reshaped(x: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let count: usize = x.iter().product();
    let mut shape: Vec<i64> = spec
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 && !allowzero {
                x.get(i).map_or(0, |&v| v as i64)
            } else {
                d
            }
        })
        .collect();
    let known: i64 = shape.iter().filter(|&&d| d >= 0).product();
    if let Some(i) = shape.iter().position(|&d| d == -1) {
        shape[i] = if known == 0 { 0 } else { count as i64 / known };
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if shape.iter().product::<usize>() != count {
        return Err(format!("cannot reshape {x:?} to {spec:?}"));
    }
    Ok(shape)
}

fn is_int(dt: i32) -> bool {
    !matches!(
        DataType::try_from(dt),
        Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
    )
}

fn binary(op: &str, int: bool) -> fn(f64, f64) -> f64 {
    match op {
        "Add" => |a, c| a + c,
        "Sub" => |a, c| a - c,
        "Mul" => |a, c| a * c,
        "Div" if int => |a, c| if c == 0.0 { 0.0 } else { (a / c).trunc() },
        "Div" => |a, c| a / c,
        "Mod" => |a, c| {
            if c == 0.0 {
                0.0
            } else {
                a - c * (a / c).floor()
            }
        },
        "Pow" => f64::powf,
        "Max" => f64::max,
        "Min" => f64::min,
        "Equal" => |a, c| f64::from(u8::from(a == c)),
        "Less" => |a, c| f64::from(u8::from(a < c)),
        "LessOrEqual" => |a, c| f64::from(u8::from(a <= c)),
        "Greater" => |a, c| f64::from(u8::from(a > c)),
        "GreaterOrEqual" => |a, c| f64::from(u8::from(a >= c)),
        "And" | "BitwiseAnd" => |a, c| f64::from(u8::from(a != 0.0 && c != 0.0)),
        "Or" | "BitwiseOr" => |a, c| f64::from(u8::from(a != 0.0 || c != 0.0)),
        _ => |a, c| f64::from(u8::from((a != 0.0) != (c != 0.0))),
    }
}

/// `v` as element type `to` holds it.
fn cast(v: f64, to: i32) -> f64 {
    if to == BOOL {
        return f64::from(u8::from(v != 0.0));
    }
    round_to(v, to)
}

fn round_to(v: f64, dt: i32) -> f64 {
    match DataType::try_from(dt) {
        Ok(DataType::Float) => f64::from(v as f32),
        Ok(DataType::Bool) => f64::from(u8::from(v != 0.0)),
        Ok(DataType::Double | DataType::Float16 | DataType::Bfloat16) => v,
        _ if v.is_finite() => v.trunc(),
        _ => v,
    }
}

fn from_constant(c: &Constant, dtype: i32) -> Tensor {
    Tensor::new(
        c.dims.iter().map(|&d| d as usize).collect(),
        c.values.clone(),
        dtype,
    )
}

fn broadcast_shape(shapes: &[&Vec<usize>]) -> R<Vec<usize>> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[r - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    if out.iter().product::<usize>() > MAX_ELEMENTS {
        return Err("broadcast result too large".into());
    }
    Ok(out)
}

/// Row-major strides of `shape` laid out in rank `r`, 0 on broadcast axes.
fn strides_in(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut st = vec![0usize; r];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let o = r - shape.len() + i;
        st[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { acc };
        acc *= shape[i];
    }
    st
}

/// Elementwise over broadcast inputs.
fn map_n(xs: &[&Tensor], shape: &[usize], dtype: i32, f: impl Fn(&[f64]) -> f64) -> Tensor {
    let count: usize = shape.iter().product();
    let strides: Vec<Vec<usize>> = xs.iter().map(|x| strides_in(&x.shape, shape)).collect();
    let mut idx = vec![0usize; shape.len()];
    let mut offs = vec![0usize; xs.len()];
    let mut vals = vec![0.0; xs.len()];
    let mut data = Vec::with_capacity(count);
    for _ in 0..count {
        for (k, x) in xs.iter().enumerate() {
            vals[k] = x.data[offs[k]];
        }
        data.push(f(&vals));
        // Advance the multi-index and every input's offset.
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            for k in 0..xs.len() {
                offs[k] += strides[k][ax];
            }
            if idx[ax] < shape[ax] {
                break;
            }
            for k in 0..xs.len() {
                offs[k] -= strides[k][ax] * shape[ax];
            }
            idx[ax] = 0;
        }
    }
    Tensor::new(shape.to_vec(), data, dtype)
}

fn concat(parts: &[Rc<Tensor>], a: usize) -> R<Tensor> {
    let mut shape = parts[0].shape.clone();
    if a >= shape.len() {
        return Err("bad axis".into());
    }
    shape[a] = parts
        .iter()
        .map(|p| p.shape.get(a).copied().unwrap_or(0))
        .sum();
    let outer: usize = shape[..a].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for p in parts {
            let inner: usize = p.shape[a..].iter().product();
            data.extend_from_slice(&p.data[o * inner..(o + 1) * inner]);
        }
    }
    if data.len() != shape.iter().product::<usize>() {
        return Err("mismatched shapes".into());
    }
    Ok(Tensor::new(shape, data, parts[0].dtype))
}

fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let src = strides_in(&x.shape, &x.shape);
    let st: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
    let count = x.data.len();
    let mut data = Vec::with_capacity(count);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..count {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        data.push(x.data[off]);
        advance(&mut idx, &shape);
    }
    Tensor::new(shape, data, x.dtype)
}

/// The kept indices per axis of a `Slice` of `shape` with `[starts, ends, axes, steps]`.
fn slice_ranges(
    shape: &[usize],
    [starts, ends, axes, steps]: &[Vec<i64>; 4],
) -> R<Vec<Vec<usize>>> {
    let r = shape.len() as i64;
    let mut ranges: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for (k, &start) in starts.iter().enumerate() {
        let a = *axes.get(k).ok_or("axes shorter than starts")?;
        let a = if a < 0 { a + r } else { a } as usize;
        let d = *shape.get(a).ok_or("bad axis")? as i64;
        let step = *steps.get(k).ok_or("steps shorter than starts")?;
        let end = *ends.get(k).ok_or("ends shorter than starts")?;
        if step == 0 {
            return Err("step 0".into());
        }
        let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
        let mut out = Vec::new();
        if step > 0 {
            let (mut i, e) = (fix(start, 0, d), fix(end, 0, d));
            while i < e {
                out.push(i as usize);
                i += step;
            }
        } else {
            let (mut i, e) = (fix(start, -1, d - 1), fix(end, -1, d - 1));
            while i > e {
                out.push(i as usize);
                i += step;
            }
        }
        ranges[a] = out;
    }
    Ok(ranges)
}

/// Step a row-major multi-index `idx` within `shape` (wrapping to zero).
fn advance(idx: &mut [usize], shape: &[usize]) {
    for ax in (0..shape.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < shape[ax] {
            return;
        }
        idx[ax] = 0;
    }
}

fn slice(x: &Tensor, args: &[Vec<i64>; 4]) -> R<Tensor> {
    let ranges = slice_ranges(&x.shape, args)?;
    let shape: Vec<usize> = ranges.iter().map(Vec::len).collect();
    let st = strides_in(&x.shape, &x.shape);
    let count: usize = shape.iter().product();
    let mut data = Vec::with_capacity(count);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..count {
        let off: usize = idx
            .iter()
            .enumerate()
            .map(|(a, &i)| ranges[a][i] * st[a])
            .sum();
        data.push(x.data[off]);
        advance(&mut idx, &shape);
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

fn gather(x: &Tensor, idx: &Tensor, a: usize) -> R<Tensor> {
    if a >= x.shape.len() {
        return Err("bad axis".into());
    }
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let d = x.shape[a] as i64;
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&x.shape[a + 1..]);
    if shape.iter().product::<usize>() > MAX_ELEMENTS {
        return Err("too large".into());
    }
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for &i in &idx.data {
            let i = i as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(format!("index {i} out of range 0..{d}"));
            }
            let base = (o * x.shape[a] + i as usize) * inner;
            data.extend_from_slice(&x.data[base..base + inner]);
        }
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

fn gather_elements(x: &Tensor, idx: &Tensor, a: usize) -> R<Tensor> {
    if idx.shape.len() != x.shape.len() || a >= x.shape.len() {
        return Err("indices and data differ in rank".into());
    }
    let xs = strides_in(&x.shape, &x.shape);
    let is = strides_in(&idx.shape, &idx.shape);
    let d = x.shape[a] as i64;
    let mut data = Vec::with_capacity(idx.data.len());
    for (flat, &i) in idx.data.iter().enumerate() {
        let i = i as i64;
        let i = if i < 0 { i + d } else { i };
        if !(0..d).contains(&i) {
            return Err(format!("index {i} out of range 0..{d}"));
        }
        let mut off = 0;
        for ax in 0..x.shape.len() {
            let coord = if ax == a {
                i as usize
            } else {
                (flat / is[ax]) % idx.shape[ax]
            };
            if coord >= x.shape[ax] {
                return Err("index shape exceeds data".into());
            }
            off += coord * xs[ax];
        }
        data.push(x.data[off]);
    }
    Ok(Tensor::new(idx.shape.clone(), data, x.dtype))
}

fn gather_nd(x: &Tensor, idx: &Tensor) -> R<Tensor> {
    let k = *idx.shape.last().ok_or("scalar indices")?;
    if k > x.shape.len() {
        return Err("index depth exceeds rank".into());
    }
    let st = strides_in(&x.shape, &x.shape);
    let inner: usize = x.shape[k..].iter().product();
    let mut shape = idx.shape[..idx.shape.len() - 1].to_vec();
    shape.extend(&x.shape[k..]);
    let mut data = Vec::with_capacity(shape.iter().product());
    for tuple in idx.data.chunks(k.max(1)) {
        let mut off = 0usize;
        for (a, &i) in tuple.iter().enumerate() {
            let d = x.shape[a] as i64;
            let i = i as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(format!("index {i} out of range 0..{d}"));
            }
            off += i as usize * st[a];
        }
        data.extend_from_slice(&x.data[off..off + inner]);
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f64]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec(), INT64)
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let a = t(&[2, 1], &[1.0, 2.0]);
        let b = t(&[3], &[10.0, 20.0, 30.0]);
        let shape = broadcast_shape(&[&a.shape, &b.shape]).unwrap();
        let s = map_n(&[&a, &b], &shape, INT64, |v| v[0] + v[1]);
        assert_eq!(s.shape, vec![2, 3]);
        assert_eq!(s.data, vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        assert!(broadcast_shape(&[&vec![2], &vec![3]]).is_err());
    }

    #[test]
    fn gathers_slices_and_transposes_pick_the_right_elements() {
        let x = t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            transpose(&x, &[1, 0]).data,
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(
            gather(&x, &t(&[2], &[2.0, -3.0]), 1).unwrap().data,
            vec![2.0, 0.0, 5.0, 3.0]
        );
        let ge = gather_elements(&x, &t(&[2, 2], &[2.0, 0.0, 1.0, 1.0]), 1).unwrap();
        assert_eq!(ge.data, vec![2.0, 0.0, 4.0, 4.0]);
        let nd = gather_nd(&x, &t(&[2, 2], &[1.0, 2.0, 0.0, 1.0])).unwrap();
        assert_eq!(nd.data, vec![5.0, 1.0]);
        let s = slice(&x, &[vec![-1], vec![-4], vec![1], vec![-1]]).unwrap();
        assert_eq!(s.data, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        let c = concat(&[Rc::new(x.clone()), Rc::new(x)], 1).unwrap();
        assert_eq!(c.shape, vec![2, 6]);
        assert_eq!(c.data[3..6], [0.0, 1.0, 2.0]);
        assert!(gather(&t(&[2], &[1.0, 2.0]), &t(&[1], &[2.0]), 0).is_err());
    }

    #[test]
    fn integer_division_truncates_and_casts_round() {
        assert_eq!(binary("Div", true)(-7.0, 2.0), -3.0);
        assert_eq!(binary("Mod", true)(-7.0, 2.0), 1.0);
        assert_eq!(cast(2.7, INT64), 2.0);
        assert_eq!(cast(-0.5, BOOL), 1.0);
        assert_eq!(cast(0.1, FLOAT), f64::from(0.1f32));
    }
}

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
                (n.op_type() == "Gather" && n.input.get(1).map(String::as_str) == Some(name))
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
        let mut state = 0x5eedu64;
        let mut feeds = HashMap::new();
        for (name, vocab) in &self.tokens {
            let data = (0..b * s)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % *vocab as u64) as f64
                })
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
