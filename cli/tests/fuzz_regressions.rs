//! Each crash the fuzzers found (fuzz/, RELIABILITY.md), kept as a test of
//! the library call that crashed; the inputs themselves are replayed by
//! scripts/test.d/60-fuzz.sh from fuzz/regressions/.

use std::collections::HashMap;

use tessera_cli::eval::Evaluator;
use tessera_cli::graph::{Constant, GraphIndex};
use tessera_cli::proto::{GraphProto, NodeProto, TensorProto};
use tessera_cli::sites::find_sites;

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// Evaluate `output` of the one node `n` reading the int64 initializer
/// `c` = [1, 2, 3].
fn eval_on_c(n: NodeProto, output: &str) -> Result<(), String> {
    let g = GraphProto {
        initializer: vec![TensorProto {
            name: Some("c".into()),
            dims: vec![3],
            data_type: Some(7),
            int64_data: vec![1, 2, 3],
            ..Default::default()
        }],
        node: vec![n],
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    let mut ev = Evaluator::new(&ix, HashMap::new());
    ev.eval(output).map(|_| ())
}

fn with_ints(
    mut n: NodeProto,
    name: &str,
    r#type: i32,
    ints: Vec<i64>,
    i: Option<i64>,
) -> NodeProto {
    n.attribute.push(tessera_cli::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(r#type),
        ints,
        i,
        ..Default::default()
    });
    n
}

/// mask_eval: dims (2^62, 4) overflowed the element count (a panic with
/// overflow checks, a wrong count without).
#[test]
fn a_constant_whose_dims_overflow_is_not_read() {
    let t = TensorProto {
        dims: vec![1 << 62, 4],
        data_type: Some(7),
        ..Default::default()
    };
    assert!(Constant::from_tensor_up_to(&t, 1 << 20).is_none());
}

/// mask_eval: a cycle made the evaluator recurse until the stack overflowed
/// (an abort, not an error).
#[test]
fn a_cycle_is_an_evaluation_error_not_a_stack_overflow() {
    let g = GraphProto {
        node: vec![node("Add", &["t1", "x"], "t0"), node("Neg", &["t0"], "t1")],
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    let mut ev = Evaluator::new(&ix, HashMap::new());
    let e = ev.eval("t0").unwrap_err();
    assert!(e.contains("cycle"), "{e}");
}

/// mask_eval: a chain deeper than the stack allows is refused by depth.
#[test]
fn a_very_deep_chain_is_an_evaluation_error() {
    let mut nodes = vec![node("Neg", &["x"], "t0")];
    for i in 1..50_000 {
        nodes.push(node("Neg", &[&format!("t{}", i - 1)], &format!("t{i}")));
    }
    let g = GraphProto {
        node: nodes,
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    let mut ev = Evaluator::new(&ix, HashMap::new());
    let e = ev.eval("t49999").unwrap_err();
    assert!(e.contains("deep"), "{e}");
}

/// mask_eval: a shape-preserving op without inputs: the shape rules indexed
/// its first input.
#[test]
fn an_op_missing_an_input_is_an_error() {
    let g = GraphProto {
        node: vec![
            node("Shape", &["x"], "s"),
            node("Identity", &[], "a"),
            node("Shape", &["a"], "sa"),
        ],
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    let mut ev = Evaluator::new(&ix, HashMap::new());
    assert!(ev.eval("sa").is_err());
}

/// mask_eval (out of memory): a cycle of pass-throughs after a Softmax made
/// the site finder loop forever, growing its node list.
#[test]
fn a_cycle_after_a_softmax_ends_the_site_search() {
    let g = GraphProto {
        node: vec![
            node("Softmax", &["x"], "p"),
            node("Identity", &["q"], "r"),
            node("Cast", &["p"], "q"),
            node("Identity", &["r"], "p"),
        ],
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    assert!(find_sites(&ix).is_empty());
}

/// mask_eval: `Squeeze` of an axis whose size is not 1 made a tensor whose
/// shape and data disagreed (a debug assertion; wrong reads without).
#[test]
fn squeezing_an_axis_that_is_not_1_is_an_error() {
    let n = with_ints(node("Squeeze", &["c"], "s"), "axes", 7, vec![0], None);
    let e = eval_on_c(n, "s").unwrap_err();
    assert!(e.contains("not of size 1"), "{e}");
}

/// mask_eval: `Flatten` with an axis past the rank sliced out of bounds.
#[test]
fn flatten_with_an_axis_past_the_rank_is_an_error() {
    let n = with_ints(node("Flatten", &["c"], "f"), "axis", 2, vec![], Some(5));
    let e = eval_on_c(n, "f").unwrap_err();
    assert!(e.contains("out of range"), "{e}");
}

/// mask_eval: `Transpose` with `perm` entries out of range (-1) indexed
/// past the shape.
#[test]
fn transpose_with_a_bad_perm_is_an_error() {
    let n = with_ints(node("Transpose", &["c"], "t"), "perm", 7, vec![-1], None);
    let e = eval_on_c(n, "t").unwrap_err();
    assert!(e.contains("permutation"), "{e}");
}

/// mask_eval: `Size` of an initializer with dims (2^62, 4) overflowed.
#[test]
fn size_of_overflowing_dims_is_an_error() {
    let g = GraphProto {
        initializer: vec![TensorProto {
            name: Some("c".into()),
            dims: vec![1 << 62, 4],
            data_type: Some(7),
            ..Default::default()
        }],
        node: vec![node("Size", &["c"], "n")],
        ..Default::default()
    };
    let ix = GraphIndex::new(&g);
    let mut ev = Evaluator::new(&ix, HashMap::new());
    assert!(ev.eval("n").unwrap_err().contains("overflows"));
}
