//! `rewrite --logits last`: compute a causal LM's head at the last position
//! only. Generation reads nothing else, and at long prompts the full
//! `(B, S, vocab)` logits are the largest tensor of the model (20 GB at 32K
//! tokens for a 152K vocabulary).
//!
//! From the `logits` graph output back through position-wise ops with
//! constant operands (`Mul`/`Div`/`Add`/`Sub` by a constant, `Tanh`, `Cast`,
//! `Identity`: a final softcap) to the LM head `MatMul(hidden, W)`, whose `W`
//! is a weight (an initializer, or a `Transpose` of one). The hidden state is
//! then sliced to its last position first: `Slice(hidden, [-1], [MAX],
//! axes=[1])`, so the output becomes `(B, 1, vocab)`. Every position of the
//! layers before is still computed (the KV cache needs them); only the head
//! shrinks. The last position is the sequence's last: pad on the left.

use crate::bail;
use crate::error::Result;
use crate::eval::probe_shape;
use crate::graph::GraphIndex;
use crate::model::Model;
use crate::names::{ADD, CAST, DIV, IDENTITY, MATMUL, MUL, SLICE, SUB, TANH, TRANSPOSE};
use crate::proto::{tensor_proto::DataType, tensor_shape_proto, NodeProto, TensorProto};

/// The `--logits` value that slices the head to the last position.
pub const LAST: &str = "last";

/// Suffix of the sliced hidden state (also how a second run knows it is done).
const SUFFIX: &str = ".tessera_last";

/// Slice the LM head of `model` to the last position. Returns what was
/// done, for the rewrite report.
pub fn last_position_logits(model: &mut Model) -> Result<String> {
    let g = model.graph().clone();
    let ix = GraphIndex::new(&g);
    let Some(out) = g
        .output
        .iter()
        .map(|o| o.name())
        .find(|o| o.to_ascii_lowercase().contains("logits"))
    else {
        bail!("--logits last: no graph output named like 'logits'");
    };
    let head = lm_head(&ix, out)?;
    let hidden = ix.node(head).input[0].clone();
    if hidden.ends_with(SUFFIX) {
        return Ok(format!(
            "'{out}' is already computed at the last position only"
        ));
    }
    // (B, S, H) at S = 7; where the graph cannot be probed (e.g. it already
    // holds ai.tessera ops), a declared rank-3 output of a MatMul by a 2-D weight.
    let probe = probe_shape(&ix, &hidden, 7);
    let declared = ix.shape(out).is_some_and(|s| s.len() == 3);
    let sequence_axis_1 = match probe.as_deref() {
        Some(p) => matches!(p, [_, 7, _]),
        None => declared,
    };
    if !sequence_axis_1 {
        bail!(
            "--logits last: the LM head MatMul '{}' reads '{hidden}' of shape {probe:?} at S = 7, not (batch, sequence, hidden)",
            ix.node(head).name()
        );
    }
    let sliced = format!("{hidden}{SUFFIX}");
    let consts = [("starts", -1), ("ends", i64::MAX), ("axes", 1)];
    let names: Vec<String> = consts
        .iter()
        .map(|(n, _)| format!("{sliced}_{n}"))
        .collect();
    let gm = model.graph_mut();
    for ((_, v), name) in consts.iter().zip(&names) {
        gm.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![1],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![*v],
            ..Default::default()
        });
    }
    let slice = NodeProto {
        name: Some(format!("{hidden}.tessera_last_slice")),
        op_type: Some(SLICE.into()),
        input: [vec![hidden.clone()], names].concat(),
        output: vec![sliced.clone()],
        ..Default::default()
    };
    gm.node[head].input[0] = sliced;
    gm.node.insert(head, slice);
    // The output's sequence axis is now 1.
    if let Some(o) = gm.output.iter_mut().find(|o| o.name() == out) {
        let dims = o
            .r#type
            .as_mut()
            .and_then(|t| t.value.as_mut())
            .and_then(|v| match v {
                crate::proto::type_proto::Value::TensorType(t) => t.shape.as_mut(),
                _ => None,
            })
            .map(|s| &mut s.dim);
        if let Some(d) = dims.and_then(|d| d.get_mut(1)) {
            d.value = Some(tensor_shape_proto::dimension::Value::DimValue(1));
        }
    }
    Ok(format!(
        "'{out}' computed at the last position only: (batch, 1, vocab) (head MatMul '{}')",
        ix.node(head).name()
    ))
}

/// The LM head: back from `out` through position-wise ops with constant
/// operands to a `MatMul` by a weight.
fn lm_head(ix: &GraphIndex, out: &str) -> Result<usize> {
    let mut t = out.to_string();
    for _ in 0..8 {
        let Some(p) = ix.producer(&t) else {
            bail!("--logits last: '{t}' is not computed by a node");
        };
        let n = ix.node(p);
        match n.op_type() {
            MATMUL if is_weight(ix, &n.input[1]) => return Ok(p),
            MUL | DIV | ADD | SUB => {
                let var: Vec<&String> = n
                    .input
                    .iter()
                    .filter(|i| ix.constant(i).is_none())
                    .collect();
                let [v] = var.as_slice() else {
                    bail!("--logits last: '{}' ({}) between the LM head and '{out}' is not by a constant", n.name(), n.op_type());
                };
                t = (*v).clone();
            }
            TANH | CAST | IDENTITY => t = n.input[0].clone(),
            op => bail!(
                "--logits last: '{}' ({op}) between '{out}' and the LM head is not a position-wise op the rule knows (Mul/Div/Add/Sub by a constant, Tanh, Cast, Identity, then MatMul by a weight)",
                n.name()
            ),
        }
    }
    bail!("--logits last: no LM head MatMul within 8 nodes of '{out}'")
}

/// An initializer, or a `Transpose` of one.
fn is_weight(ix: &GraphIndex, t: &str) -> bool {
    let init = |x: &str| ix.graph.initializer.iter().any(|i| i.name() == x);
    init(t)
        || ix
            .producer_op(t, TRANSPOSE)
            .is_some_and(|p| init(&ix.node(p).input[0]))
}
