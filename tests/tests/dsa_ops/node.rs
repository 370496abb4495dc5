//! One-node models: typed inputs, the model, a session with the plugin,
//! and the outputs read back.

use half::bf16;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use tessera_tests::onnx::{self, elem, Attr, Node};

use crate::shared::{env, session};

/// An input: name, element type, value.
pub type In = (&'static str, i32, DynValue);

pub fn f32_in(name: &'static str, shape: &[usize], x: Vec<f32>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::FLOAT,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

pub fn i64_in(name: &'static str, shape: &[usize], x: Vec<i64>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::INT64,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

pub fn i32_in(name: &'static str, shape: &[usize], x: Vec<i32>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::INT32,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

/// An output read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    F(Vec<i64>, Vec<f32>),
    I(Vec<i64>, Vec<i64>),
}

impl Out {
    pub fn f(&self) -> &[f32] {
        match self {
            Out::F(_, x) => x,
            Out::I(..) => panic!("not a float output"),
        }
    }

    pub fn i(&self) -> (&[i64], &[i64]) {
        match self {
            Out::I(s, x) => (s, x),
            Out::F(..) => panic!("not an int64 output"),
        }
    }
}

/// A one-node model: `op` with `attrs` on `inputs`, producing `outputs`
/// (`("", 0)` leaves a slot out).
pub fn model(
    op: &str,
    attrs: &[(&str, i64)],
    inputs: &[(&str, i32)],
    outputs: &[(&str, i32)],
) -> Vec<u8> {
    let node = Node {
        op_type: op.into(),
        domain: "ai.tessera".into(),
        inputs: inputs.iter().map(|(n, _)| n.to_string()).collect(),
        outputs: outputs.iter().map(|(n, _)| n.to_string()).collect(),
        attrs: attrs
            .iter()
            .map(|(n, v)| (n.to_string(), Attr::Int(*v)))
            .collect(),
    };
    let outs: Vec<(&str, i32)> = outputs
        .iter()
        .copied()
        .filter(|(n, _)| !n.is_empty())
        .collect();
    onnx::model(&node, inputs, &outs, &[("", 21), ("ai.tessera", 1)])
}

pub fn run_in(
    sess: &mut Session,
    inputs: Vec<In>,
    outputs: &[(&str, i32)],
) -> Result<Vec<Out>, String> {
    let feeds: Vec<(String, SessionInputValue<'_>)> = inputs
        .into_iter()
        .map(|(n, _, v)| (n.to_string(), v.into()))
        .collect();
    let out = sess.run(feeds).map_err(|e| e.to_string())?;
    Ok(outputs
        .iter()
        .filter(|(n, _)| !n.is_empty())
        .map(|&(n, t)| {
            if t == elem::INT64 {
                let (s, d) = out[n].try_extract_tensor::<i64>().unwrap();
                Out::I(s.to_vec(), d.to_vec())
            } else {
                let (s, d) = out[n].try_extract_tensor::<f32>().unwrap();
                Out::F(s.to_vec(), d.to_vec())
            }
        })
        .collect())
}

/// Build, load and run one node.
pub fn run(
    op: &str,
    attrs: &[(&str, i64)],
    inputs: Vec<In>,
    outputs: &[(&str, i32)],
    threads: usize,
) -> Result<Vec<Out>, String> {
    let env = env().expect("checked by the caller");
    let decl: Vec<(&str, i32)> = inputs.iter().map(|(n, t, _)| (*n, *t)).collect();
    let mut sess = session(env, &model(op, attrs, &decl, outputs), threads)?;
    run_in(&mut sess, inputs, outputs)
}

/// A bfloat16 input holding `x` rounded to bfloat16.
pub fn bf16_in(name: &'static str, shape: &[usize], x: &[f32]) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let x: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    (
        name,
        elem::BFLOAT16,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}
