//! A minimal ONNX protobuf writer: one node, typed graph inputs and outputs
//! (shapes left unknown), opset imports. Field numbers are from `onnx.proto`
//! (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto,
//! TypeProto, OperatorSetIdProto).

/// An attribute value.
#[derive(Clone, Debug)]
pub enum Attr {
    /// `AttributeProto.i` (type INT = 2).
    Int(i64),
    /// `AttributeProto.f` (type FLOAT = 1).
    Float(f32),
}

/// ONNX element type codes.
pub mod elem {
    /// float32
    pub const FLOAT: i32 = 1;
    /// int32
    pub const INT32: i32 = 6;
    /// int64
    pub const INT64: i32 = 7;
    /// bool
    pub const BOOL: i32 = 9;
    /// float16
    pub const FLOAT16: i32 = 10;
    /// float64
    pub const DOUBLE: i32 = 11;
    /// bfloat16
    pub const BFLOAT16: i32 = 16;
}

/// One node and its graph.
#[derive(Clone, Debug, Default)]
pub struct Node {
    /// Op type.
    pub op_type: String,
    /// Op domain (`""` = ONNX).
    pub domain: String,
    /// Input names (`""` = left out).
    pub inputs: Vec<String>,
    /// Output names (`""` = left out).
    pub outputs: Vec<String>,
    /// Attributes.
    pub attrs: Vec<(String, Attr)>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn value_info(name: &str, elem_type: i32) -> Vec<u8> {
    let mut tensor = Vec::new();
    int_field(&mut tensor, 1, elem_type as i64);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor);
    let mut vi = Vec::new();
    bytes_field(&mut vi, 1, name.as_bytes());
    bytes_field(&mut vi, 2, &ty);
    vi
}

/// Serialise a model with `node` as its only node. `inputs`/`outputs` are
/// the graph's (name, element type); `opsets` are (domain, version).
pub fn model(
    node: &Node,
    inputs: &[(&str, i32)],
    outputs: &[(&str, i32)],
    opsets: &[(&str, i64)],
) -> Vec<u8> {
    let mut n = Vec::new();
    for i in &node.inputs {
        bytes_field(&mut n, 1, i.as_bytes());
    }
    for o in &node.outputs {
        bytes_field(&mut n, 2, o.as_bytes());
    }
    bytes_field(&mut n, 3, b"node0");
    bytes_field(&mut n, 4, node.op_type.as_bytes());
    for (name, a) in &node.attrs {
        let mut at = Vec::new();
        bytes_field(&mut at, 1, name.as_bytes());
        match a {
            Attr::Float(f) => {
                key(&mut at, 2, 5);
                at.extend_from_slice(&f.to_le_bytes());
                int_field(&mut at, 20, 1);
            }
            Attr::Int(i) => {
                int_field(&mut at, 3, *i);
                int_field(&mut at, 20, 2);
            }
        }
        bytes_field(&mut n, 5, &at);
    }
    bytes_field(&mut n, 7, node.domain.as_bytes());

    let mut g = Vec::new();
    bytes_field(&mut g, 1, &n);
    bytes_field(&mut g, 2, b"tessera_test");
    for (name, t) in inputs {
        bytes_field(&mut g, 11, &value_info(name, *t));
    }
    for (name, t) in outputs {
        bytes_field(&mut g, 12, &value_info(name, *t));
    }

    let mut m = Vec::new();
    int_field(&mut m, 1, 9); // ir_version 9
    for (domain, version) in opsets {
        let mut op = Vec::new();
        bytes_field(&mut op, 1, domain.as_bytes());
        int_field(&mut op, 2, *version);
        bytes_field(&mut m, 8, &op);
    }
    bytes_field(&mut m, 7, &g);
    m
}
