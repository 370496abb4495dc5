//! Structural checks run on every model [`load`](crate::model::load) reads,
//! so a hostile file ends in an error that names the tensor or node and the
//! rule, before any pass walks the graph:
//!
//! - every declared dim is `>= 0` and a shape's element count fits in
//!   `i64` (graph inputs, outputs, `value_info`, initializers, tensor
//!   attributes), and a tensor's embedded `raw_data` holds exactly that
//!   many elements;
//! - every node input names a graph input, an initializer, a node output
//!   (of this graph or, in a subgraph, of an enclosing one), or is `""`;
//! - the main graph has no cycle.
//!
//! Cost: one pass over the nodes and tensors, plus one topological sort of
//! the main graph (O(nodes + edges)); no tensor data is read.

use std::collections::{HashMap, HashSet};

use crate::bail;
use crate::error::Result;
use crate::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue, GraphProto,
    TensorProto, ValueInfoProto,
};

/// Check `graph` (the main graph of `model`, a path used in messages).
pub fn graph(model: &str, graph: &GraphProto) -> Result<()> {
    check_graph(model, graph, &HashSet::new())?;
    acyclic(model, graph)
}

/// Bytes per element of the fixed-size ONNX element types.
fn elem_size(data_type: i32) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 | 14 => 8,
        15 => 16,
        _ => return None,
    })
}

/// The element count of `dims`, or the rule it breaks.
fn count(what: &dyn Fn() -> String, dims: impl Iterator<Item = i64>) -> Result<u64> {
    let mut n: i64 = 1;
    for (i, d) in dims.enumerate() {
        if d < 0 {
            bail!("{}: dim {i} is {d}; dims must be >= 0", what());
        }
        n = match n.checked_mul(d) {
            Some(n) => n,
            None => bail!(
                "{}: the dims declare more than 2^63 elements (dim {i} = {d})",
                what()
            ),
        };
    }
    Ok(n as u64)
}

fn check_tensor(model: &str, owner: &str, t: &TensorProto) -> Result<()> {
    let what = || format!("{model}: {owner} '{}' {:?}", t.name(), t.dims);
    let n = count(&what, t.dims.iter().copied())?;
    if let (Some(raw), Some(size)) = (t.raw_data.as_deref(), elem_size(t.data_type())) {
        if !raw.is_empty() && n.checked_mul(size) != Some(raw.len() as u64) {
            bail!(
                "{}: raw_data holds {} bytes, but {n} elements of {size} bytes need {}",
                what(),
                raw.len(),
                n.saturating_mul(size)
            );
        }
    }
    Ok(())
}

fn check_value_info(model: &str, kind: &str, v: &ValueInfoProto) -> Result<()> {
    let Some(TypeValue::TensorType(tt)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(());
    };
    let Some(shape) = &tt.shape else {
        return Ok(());
    };
    let dims = shape.dim.iter().map(|d| match &d.value {
        Some(DimValue::DimValue(x)) => *x,
        _ => 1,
    });
    count(&|| format!("{model}: {kind} '{}'", v.name()), dims).map(|_| ())
}

/// Shapes, tensors and names of `graph`; `outer` holds the names an
/// enclosing graph defines (a subgraph may read them).
fn check_graph(model: &str, graph: &GraphProto, outer: &HashSet<&str>) -> Result<()> {
    for (kind, list) in [
        ("graph input", &graph.input),
        ("graph output", &graph.output),
        ("value_info", &graph.value_info),
    ] {
        for v in list {
            check_value_info(model, kind, v)?;
        }
    }
    for t in &graph.initializer {
        check_tensor(model, "initializer", t)?;
    }
    let mut known: HashSet<&str> = outer.clone();
    known.extend(graph.input.iter().map(|v| v.name()));
    known.extend(graph.initializer.iter().map(|t| t.name()));
    known.extend(
        graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !known.contains(i.as_str()) {
                bail!(
                    "{model}: node '{}' ({}) reads '{i}', which is not a graph input, an initializer or any node's output",
                    n.name(),
                    n.op_type()
                );
            }
        }
        for a in &n.attribute {
            let owner = format!(
                "node '{}' ({}) attribute '{}'",
                n.name(),
                n.op_type(),
                a.name()
            );
            for t in a.t.iter().chain(&a.tensors) {
                check_tensor(model, &owner, t)?;
            }
            for g in a.g.iter().chain(&a.graphs) {
                check_graph(model, g, &known)?;
            }
        }
    }
    Ok(())
}

/// Refuse a cycle in the main graph (Kahn's algorithm over producer edges),
/// naming a node on it.
fn acyclic(model: &str, graph: &GraphProto) -> Result<()> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.entry(o.as_str()).or_insert(i);
        }
    }
    let preds = |i: usize| -> Vec<usize> {
        graph.node[i]
            .input
            .iter()
            .filter_map(|x| producer.get(x.as_str()).copied())
            .collect()
    };
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); graph.node.len()];
    let mut waiting: Vec<usize> = vec![0; graph.node.len()];
    for (i, w) in waiting.iter_mut().enumerate() {
        for p in preds(i) {
            users[p].push(i);
            *w += 1;
        }
    }
    let mut ready: Vec<usize> = (0..graph.node.len()).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &u in &users[i] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready.push(u);
            }
        }
    }
    if done == graph.node.len() {
        return Ok(());
    }
    // Walk back from a node that never became ready until a node repeats:
    // that node lies on a cycle.
    let mut at = (0..graph.node.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
    let mut seen = HashSet::new();
    while seen.insert(at) {
        match preds(at).into_iter().find(|&p| waiting[p] > 0) {
            Some(p) => at = p,
            None => break,
        }
    }
    let n = &graph.node[at];
    bail!(
        "{model}: the graph has a cycle through node '{}' ({}): a node depends on its own output",
        n.name(),
        n.op_type()
    )
}
