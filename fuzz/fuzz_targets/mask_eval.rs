//! The mask interpreter (`tessera_cli::eval`) and mask recognition on
//! fuzzed small graphs: up to 24 nodes drawn from the interpreter's op
//! table (and a few it does not support), inputs naming earlier outputs,
//! graph inputs, initializers, later outputs (cycles) or nothing at all,
//! integer attributes from small to hostile, and constants with arbitrary
//! dims. Then every output is evaluated, the last is analysed as a bool and
//! an additive mask, and the site finder runs over the graph.
//!
//! Invariants: no panic, no stack overflow, and no tensor above
//! `MAX_ELEMENTS` comes back.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tessera_cli::eval::{Evaluator, Tensor, MAX_ELEMENTS};
use tessera_cli::graph::GraphIndex;
use tessera_cli::proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto,
};
use tessera_cli::{mask, sites};
use tessera_fuzz::Bytes;

const OPS: &[&str] = &[
    "Constant",
    "Identity",
    "Shape",
    "Size",
    "ConstantOfShape",
    "Cast",
    "Range",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Expand",
    "Concat",
    "Transpose",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Where",
    "Not",
    "Abs",
    "Neg",
    "Sign",
    "Sqrt",
    "Reciprocal",
    "IsNaN",
    "IsInf",
    "Floor",
    "Ceil",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Pow",
    "Max",
    "Min",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "BitwiseAnd",
    "BitwiseOr",
    "Softmax",
    "MatMul",
    "If",
];

const ATTRS: &[&str] = &[
    "axis",
    "to",
    "start",
    "end",
    "batch_dims",
    "keepdims",
    "fmod",
];
const LIST_ATTRS: &[&str] = &["axes", "perm", "value_ints"];

fn tensor(r: &mut Bytes, name: &str) -> TensorProto {
    let rank = r.below(4);
    let dims: Vec<i64> = (0..rank).map(|_| r.dim()).collect();
    let n = dims
        .iter()
        .try_fold(1i64, |n, &d| n.checked_mul(d))
        .unwrap_or(0)
        .clamp(0, 64) as usize;
    let data_type = [7, 1, 9, 6, 11, 2][r.below(6)];
    let mut t = TensorProto {
        name: Some(name.to_string()),
        dims,
        data_type: Some(data_type),
        ..Default::default()
    };
    // Sometimes short or long data, sometimes raw bytes.
    let count = if r.below(4) == 0 { r.below(8) } else { n };
    if r.bool() {
        t.raw_data = Some((0..count * 8).map(|_| r.u8()).collect());
    } else {
        t.int64_data = (0..count).map(|_| r.below(16) as i64 - 4).collect();
        t.float_data = (0..count).map(|_| r.f32()).collect();
        t.int32_data = (0..count).map(|_| r.below(3) as i32).collect();
    }
    t
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let mut names = vec!["x".to_string(), "m".to_string(), "w".to_string()];
    let mut graph = GraphProto::default();
    graph.initializer.push(tensor(&mut r, "w"));
    let count = 1 + r.below(24);
    for i in 0..count {
        let op = OPS[r.below(OPS.len())];
        let inputs: Vec<String> = (0..r.below(4))
            .map(|_| match r.below(12) {
                0 => "ghost".to_string(),
                1 => format!("t{}", r.below(count)), // maybe later: a cycle
                2 => String::new(),                  // an omitted optional input
                _ => names[r.below(names.len())].clone(),
            })
            .collect();
        let mut attribute = Vec::new();
        for _ in 0..r.below(3) {
            let a = match r.below(3) {
                0 => AttributeProto {
                    name: Some(LIST_ATTRS[r.below(LIST_ATTRS.len())].to_string()),
                    r#type: Some(AttributeType::Ints as i32),
                    ints: (0..r.below(5))
                        .map(|_| {
                            if r.bool() {
                                r.dim()
                            } else {
                                r.below(5) as i64 - 2
                            }
                        })
                        .collect(),
                    ..Default::default()
                },
                1 => AttributeProto {
                    name: Some("value".to_string()),
                    r#type: Some(AttributeType::Tensor as i32),
                    t: Some(tensor(&mut r, "")),
                    ..Default::default()
                },
                _ => AttributeProto {
                    name: Some(ATTRS[r.below(ATTRS.len())].to_string()),
                    r#type: Some(AttributeType::Int as i32),
                    i: Some(if r.bool() {
                        r.dim()
                    } else {
                        r.below(14) as i64 - 2
                    }),
                    ..Default::default()
                },
            };
            attribute.push(a);
        }
        let out = if r.below(16) == 0 {
            names[r.below(names.len())].clone() // a second producer
        } else {
            format!("t{i}")
        };
        graph.node.push(NodeProto {
            name: Some(format!("n{i}")),
            op_type: Some(op.to_string()),
            input: inputs,
            output: vec![out.clone()],
            attribute,
            ..Default::default()
        });
        names.push(out);
    }
    let ix = GraphIndex::new(&graph);
    // Graph inputs: x an int64 vector, m a bool matrix.
    let xlen = r.below(9);
    let (mr, mc) = (r.below(5), r.below(5));
    let feeds = || {
        HashMap::from([
            (
                "x".to_string(),
                Tensor::new(vec![xlen], (0..xlen).map(|i| i as f64).collect(), 7),
            ),
            (
                "m".to_string(),
                Tensor::new(
                    vec![mr, mc],
                    (0..mr * mc).map(|i| (i % 2) as f64).collect(),
                    9,
                ),
            ),
        ])
    };
    let mut ev = Evaluator::new(&ix, feeds());
    for name in names.iter().skip(3) {
        if let Ok(t) = ev.eval(name) {
            assert!(
                t.data.len() <= MAX_ELEMENTS,
                "'{name}' has {} elements",
                t.data.len()
            );
            // A zero dim empties a tensor whatever its other dims are.
            let count = if t.shape.contains(&0) {
                Some(0)
            } else {
                t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
            };
            assert_eq!(
                count,
                Some(t.data.len()),
                "'{name}': shape and data disagree"
            );
        }
    }
    let last = names.last().unwrap();
    let _ = mask::analyse_bool(&ix, last);
    let _ = mask::analyse_additive(&ix, last);
    let _ = sites::find_sites(&ix);
});
