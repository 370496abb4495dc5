//! Bad inputs: each case builds a one-node model that ORT or the plugin
//! must refuse, with a message naming the op, the input and the rule.

use half::f16;
use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor};
use tessera_tests::onnx::{self, elem, Attr, Node};

use crate::{env, session};

/// A bad-input case: the model, its feeds, and the text the error must hold.
struct Bad {
    name: &'static str,
    attrs: Vec<(&'static str, Attr)>,
    /// (name, element type, shape) for Q, K, V and extras, in node order.
    inputs: Vec<(&'static str, i32, Vec<i64>)>,
    want: &'static str,
}

fn zeros(dt: i32, shape: &[i64]) -> DynValue {
    let n: i64 = shape.iter().product();
    let n = n as usize;
    let shape = shape.to_vec();
    match dt {
        elem::FLOAT => Tensor::from_array((shape, vec![0.5f32; n]))
            .unwrap()
            .into_dyn(),
        elem::FLOAT16 => Tensor::from_array((shape, vec![f16::from_f32(0.5); n]))
            .unwrap()
            .into_dyn(),
        elem::INT32 => Tensor::from_array((shape, vec![1i32; n]))
            .unwrap()
            .into_dyn(),
        elem::INT64 => Tensor::from_array((shape, vec![9i64; n]))
            .unwrap()
            .into_dyn(),
        elem::DOUBLE => Tensor::from_array((shape, vec![0.5f64; n]))
            .unwrap()
            .into_dyn(),
        elem::BOOL => Tensor::from_array((shape, vec![true; n]))
            .unwrap()
            .into_dyn(),
        other => panic!("no test tensor for element type {other}"),
    }
}

fn run_bad(env: &Environment, bad: &Bad) -> String {
    let slots = [
        "Q",
        "K",
        "V",
        "attn_mask",
        "past_key",
        "past_value",
        "nonpad_kv_seqlen",
    ];
    let mut node_in = vec![String::new(); 7];
    for (name, _, _) in &bad.inputs {
        let i = slots.iter().position(|s| s == name).unwrap();
        node_in[i] = name.to_string();
    }
    while node_in.last().is_some_and(|s| s.is_empty()) {
        node_in.pop();
    }
    let attrs = bad
        .attrs
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: node_in,
        outputs: vec!["Y".into()],
        attrs,
    };
    let graph_in: Vec<(&str, i32)> = bad.inputs.iter().map(|(n, t, _)| (*n, *t)).collect();
    let y_type = bad.inputs[0].1;
    let model = onnx::model(
        &node,
        &graph_in,
        &[("Y", y_type)],
        &[("", 21), ("ai.tessera", 1)],
    );
    let mut sess = match session(env, &model, 1) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let feeds: Vec<(String, SessionInputValue<'_>)> = bad
        .inputs
        .iter()
        .map(|(n, t, s)| (n.to_string(), zeros(*t, s).into()))
        .collect();
    let msg = match sess.run(feeds) {
        Ok(_) => String::from("no error"),
        Err(e) => e.to_string(),
    };
    msg
}

const F: i32 = elem::FLOAT;

/// The inputs of one case: (name, element type, shape), in node order.
type Inputs = Vec<(&'static str, i32, Vec<i64>)>;

fn qkv(q: Vec<i64>, k: Vec<i64>, v: Vec<i64>) -> Inputs {
    vec![("Q", F, q), ("K", F, k), ("V", F, v)]
}

/// A valid 4-D f32 Q, K, V.
fn ok() -> Inputs {
    qkv(vec![1, 2, 4, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8])
}

/// [`ok`] plus one optional input.
fn ok_with(extra: (&'static str, i32, Vec<i64>)) -> Inputs {
    let mut v = ok();
    v.push(extra);
    v
}

/// Ranks, head counts, head dims and sizes that do not fit together.
fn shape_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "wrong rank",
            attrs: vec![],
            inputs: qkv(vec![2, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8]),
            want: "Q: rank must be 3",
        },
        Bad {
            name: "K rank differs",
            attrs: vec![],
            inputs: qkv(vec![1, 2, 4, 8], vec![1, 5, 16], vec![1, 2, 5, 8]),
            want: "K: rank 3 must equal Q's rank 4",
        },
        Bad {
            name: "heads do not divide",
            attrs: vec![],
            inputs: qkv(vec![1, 3, 4, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8]),
            want: "q_num_heads (3) must be a positive multiple of kv_num_heads (2)",
        },
        Bad {
            name: "3-D heads do not divide",
            attrs: vec![
                ("q_num_heads", Attr::Int(3)),
                ("kv_num_heads", Attr::Int(3)),
            ],
            inputs: qkv(vec![1, 4, 16], vec![1, 5, 15], vec![1, 5, 15]),
            want: "Q: hidden size 16 is not a multiple of q_num_heads 3",
        },
        Bad {
            name: "D mismatch",
            attrs: vec![],
            inputs: qkv(vec![1, 2, 4, 8], vec![1, 2, 5, 7], vec![1, 2, 5, 8]),
            want: "D mismatch",
        },
        Bad {
            name: "size overflow",
            attrs: vec![],
            inputs: qkv(
                vec![0, 1 << 40, 1 << 30, 8],
                vec![0, 1, 1, 8],
                vec![0, 1, 1, 8],
            ),
            want: "overflows the address space",
        },
        Bad {
            name: "3-D without head counts",
            attrs: vec![],
            inputs: qkv(vec![1, 4, 16], vec![1, 5, 16], vec![1, 5, 16]),
            want: "3-D inputs need the q_num_heads and kv_num_heads",
        },
    ]
}

/// Masks of the wrong shape or element type.
fn mask_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "bad mask shape",
            attrs: vec![],
            inputs: ok_with(("attn_mask", F, vec![3, 5])),
            want: "attn_mask: shape (3, 5) does not broadcast",
        },
        Bad {
            name: "mask longer than keys",
            attrs: vec![],
            inputs: ok_with(("attn_mask", F, vec![4, 6])),
            want: "attn_mask: last axis 6",
        },
        Bad {
            name: "mask dtype",
            attrs: vec![],
            inputs: ok_with(("attn_mask", elem::INT32, vec![4, 5])),
            want: "attn_mask: element type int32 is not supported",
        },
    ]
}

/// Element types that differ or that the op does not take.
fn type_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "K dtype differs from Q",
            attrs: vec![],
            inputs: vec![
                ("Q", F, vec![1, 2, 4, 8]),
                ("K", elem::FLOAT16, vec![1, 2, 5, 8]),
                ("V", F, vec![1, 2, 5, 8]),
            ],
            want: "K: element type float16 must equal Q's float",
        },
        Bad {
            name: "Q dtype unsupported",
            attrs: vec![],
            inputs: vec![
                ("Q", elem::DOUBLE, vec![1, 2, 4, 8]),
                ("K", elem::DOUBLE, vec![1, 2, 5, 8]),
                ("V", elem::DOUBLE, vec![1, 2, 5, 8]),
            ],
            want: "tensor(double)",
        },
    ]
}

/// Bad attributes, cache inputs and kv lengths.
fn attribute_and_cache_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "window below -1",
            attrs: vec![("left_window_size", Attr::Int(-2))],
            inputs: ok(),
            want: "left_window_size must be >= -1",
        },
        Bad {
            name: "nonpad out of range",
            attrs: vec![],
            inputs: ok_with(("nonpad_kv_seqlen", elem::INT64, vec![1])),
            want: "nonpad_kv_seqlen[0] = 9 must be within [0, 5]",
        },
        Bad {
            name: "past without past_value",
            attrs: vec![],
            inputs: ok_with(("past_key", F, vec![1, 2, 3, 8])),
            want: "past_key and past_value must be given together",
        },
        Bad {
            name: "bad qk mode",
            attrs: vec![("qk_matmul_output_mode", Attr::Int(7))],
            inputs: ok(),
            want: "qk_matmul_output_mode must be 0, 1, 2 or 3",
        },
    ]
}

/// Why `msg` is the wrong refusal of `bad`, if it is.
fn wrong_message(bad: &Bad, msg: &str) -> Option<String> {
    if !msg.contains(bad.want) {
        Some(format!(
            "{}: got {msg:?}, want it to contain {:?}",
            bad.name, bad.want
        ))
    } else if !msg.contains("Attention") && !msg.contains("Type") {
        Some(format!(
            "{}: message does not name the op: {msg:?}",
            bad.name
        ))
    } else {
        None
    }
}

#[test]
fn bad_inputs_fail_with_a_message_naming_input_and_rule() {
    let Some(env) = env() else { return };
    let table: Vec<Bad> = [
        shape_cases(),
        mask_cases(),
        type_cases(),
        attribute_and_cache_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(table.len(), 16);
    let failures: Vec<String> = table
        .iter()
        .filter_map(|bad| wrong_message(bad, &run_bad(env, bad)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases wrong:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    )
}
