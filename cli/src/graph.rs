//! Read-only index over one graph: who produces and who consumes each
//! tensor, constant values, and declared shapes. Building it costs one pass
//! over nodes, initializers and value infos.

use std::collections::HashMap;

use crate::names::{CONSTANT, VALUE, VALUE_FLOAT, VALUE_FLOATS, VALUE_INTS};

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto,
};

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named (symbolic) size such as `batch`.
    Named(String),
    /// Unknown.
    Unknown,
}

/// The default ONNX domain as nodes and opset imports spell it.
pub const ONNX_DOMAIN: &str = "";

/// Producers, consumers, constants and shapes of one graph.
#[derive(Debug)]
pub struct GraphIndex<'g> {
    /// The graph.
    pub graph: &'g GraphProto,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    infos: HashMap<&'g str, &'g ValueInfoProto>,
}

impl<'g> GraphIndex<'g> {
    /// Index `graph`.
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
            for inp in n.input.iter().filter(|o| !o.is_empty()) {
                consumers.entry(inp.as_str()).or_default().push(i);
            }
            // Subgraphs (If/Loop/Scan) may read outer tensors implicitly.
            for a in &n.attribute {
                for g in a.g.iter().chain(a.graphs.iter()) {
                    for sn in &g.node {
                        for inp in &sn.input {
                            consumers.entry(inp.as_str()).or_default().push(i);
                        }
                    }
                }
            }
        }
        let initializers = graph.initializer.iter().map(|t| (t.name(), t)).collect();
        let infos = graph
            .input
            .iter()
            .chain(&graph.value_info)
            .chain(&graph.output)
            .map(|v| (v.name(), v))
            .collect();
        Self {
            graph,
            producer,
            consumers,
            initializers,
            infos,
        }
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    /// The node producing `tensor`, if a node does.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// The producer of `tensor` if its op type is `op` (ONNX domain).
    pub fn producer_op(&self, tensor: &str, op: &str) -> Option<usize> {
        self.producer(tensor)
            .filter(|&i| is_onnx(self.node(i)) && self.node(i).op_type() == op)
    }

    /// Nodes reading `tensor`.
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map_or(&[], Vec::as_slice)
    }

    /// Whether `tensor` is a graph output.
    pub fn is_graph_output(&self, tensor: &str) -> bool {
        self.graph.output.iter().any(|o| o.name() == tensor)
    }

    /// The constant tensor named `tensor`: an initializer or a `Constant` node's value.
    pub fn constant(&self, tensor: &str) -> Option<Constant> {
        if let Some(t) = self.initializers.get(tensor) {
            return Constant::from_tensor(t);
        }
        let n = self.node(self.producer_op(tensor, CONSTANT)?);
        let a = n.attribute.first()?;
        match a.name() {
            VALUE => Constant::from_tensor(a.t.as_ref()?),
            VALUE_FLOAT => Some(Constant {
                dims: vec![],
                values: vec![f64::from(a.f())],
            }),
            "value_int" => Some(Constant {
                dims: vec![],
                values: vec![a.i() as f64],
            }),
            VALUE_FLOATS => Some(Constant {
                dims: vec![a.floats.len() as i64],
                values: a.floats.iter().map(|&f| f64::from(f)).collect(),
            }),
            VALUE_INTS => Some(Constant {
                dims: vec![a.ints.len() as i64],
                values: a.ints.iter().map(|&f| f as f64).collect(),
            }),
            _ => None,
        }
    }

    /// A constant holding one value (any rank with one element).
    pub fn scalar(&self, tensor: &str) -> Option<f64> {
        let c = self.constant(tensor)?;
        (c.values.len() == 1).then(|| c.values[0])
    }

    /// The declared shape of `tensor` (graph inputs, outputs, value_info).
    pub fn shape(&self, tensor: &str) -> Option<Vec<Dim>> {
        let v = self.infos.get(tensor)?;
        let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
            return None;
        };
        let dims = t.shape.as_ref()?.dim.iter().map(|d| match &d.value {
            Some(dimension::Value::DimValue(v)) => Dim::Fixed(*v),
            Some(dimension::Value::DimParam(p)) => Dim::Named(p.clone()),
            None => Dim::Unknown,
        });
        Some(dims.collect())
    }

    /// The declared element type of `tensor` (ONNX `DataType` code).
    pub fn elem_type(&self, tensor: &str) -> Option<i32> {
        if let Some(t) = self.initializers.get(tensor) {
            return t.data_type;
        }
        let v = self.infos.get(tensor)?;
        match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.elem_type,
            _ => None,
        }
    }
}

/// Whether `n` is in the default ONNX domain.
pub fn is_onnx(n: &NodeProto) -> bool {
    matches!(n.domain(), ONNX_DOMAIN | "ai.onnx")
}

/// Attribute `name` of `n`.
pub fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}

/// Integer attribute `name` of `n`.
pub fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name)
        .filter(|a| a.r#type() == AttributeType::Int || a.i.is_some())
        .map(|a| a.i())
}

/// Float attribute `name` of `n`.
pub fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    attr(n, name)
        .filter(|a| a.r#type() == AttributeType::Float || a.f.is_some())
        .map(|a| a.f())
}

/// Integer-list attribute `name` of `n`.
pub fn attr_ints<'n>(n: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
    attr(n, name).map(|a| a.ints.as_slice())
}

/// A small constant, converted to f64 (used for scales, fills and shapes).
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// Its shape.
    pub dims: Vec<i64>,
    /// Its values, row-major.
    pub values: Vec<f64>,
}

impl Constant {
    /// Decode an inline tensor of a numeric type; `None` for external data,
    /// strings, or more than 4096 elements (constants we read are small).
    pub fn from_tensor(t: &TensorProto) -> Option<Self> {
        Self::from_tensor_up_to(t, 4096)
    }

    /// [`Constant::from_tensor`] with another element limit.
    pub fn from_tensor_up_to(t: &TensorProto, max: usize) -> Option<Self> {
        // Checked: hostile dims (2^62 · 4) must not overflow (found by fuzzing).
        let count = t.dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d))?;
        if !(0..=max as i64).contains(&count) || t.data_location == Some(1) {
            return None;
        }
        let raw = t.raw_data.as_deref().unwrap_or(&[]);
        let dt = DataType::try_from(t.data_type()).ok()?;
        let values: Vec<f64> = match dt {
            DataType::Float if !raw.is_empty() => raw
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            DataType::Float => t.float_data.iter().map(|&v| f64::from(v)).collect(),
            DataType::Double if !raw.is_empty() => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DataType::Double => t.double_data.clone(),
            DataType::Int64 if !raw.is_empty() => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            DataType::Int64 => t.int64_data.iter().map(|&v| v as f64).collect(),
            DataType::Int32 if !raw.is_empty() => raw
                .chunks_exact(4)
                .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            DataType::Int32 | DataType::Bool | DataType::Int8 | DataType::Uint8
                if raw.is_empty() =>
            {
                t.int32_data.iter().map(|&v| f64::from(v)).collect()
            }
            DataType::Bool | DataType::Uint8 => raw.iter().map(|&b| f64::from(b)).collect(),
            DataType::Float16 if !raw.is_empty() => raw
                .chunks_exact(2)
                .map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DataType::Float16 => t.int32_data.iter().map(|&v| f16_to_f64(v as u16)).collect(),
            _ => return None,
        };
        (values.len() as i64 == count).then(|| Self {
            dims: t.dims.clone(),
            values,
        })
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}
