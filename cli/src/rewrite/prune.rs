//! Step 3 of a rewrite: drop the nodes that only fed the removed sites (a
//! `Transpose` of K, a mask subgraph now carried by attributes), and
//! transitively what only fed those. Nodes with subgraphs are never pruned.

use std::collections::HashSet;

use crate::proto::{GraphProto, NodeProto};

/// `nodes` without the dead producers of the inputs of `graph`'s `removed`
/// nodes, and how many were dropped. Each round costs one pass over `nodes`.
pub(super) fn prune(
    graph: &GraphProto,
    removed: &HashSet<usize>,
    mut nodes: Vec<NodeProto>,
) -> (Vec<NodeProto>, usize) {
    let mut candidates: HashSet<String> = removed
        .iter()
        .flat_map(|&i| graph.node[i].input.iter().cloned())
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let mut pruned = 0;
    loop {
        let dead = dead_nodes(&nodes, &candidates, &outputs);
        if dead.is_empty() {
            return (nodes, pruned);
        }
        candidates = dead
            .iter()
            .flat_map(|&i| nodes[i].input.iter().cloned())
            .collect();
        pruned += dead.len();
        nodes = nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !dead.contains(i))
            .map(|(_, n)| n)
            .collect();
    }
}

/// The nodes that produce a candidate tensor and whose outputs nothing
/// reads (no node, no graph output), and that hold no subgraph.
fn dead_nodes(
    nodes: &[NodeProto],
    candidates: &HashSet<String>,
    outputs: &HashSet<&str>,
) -> HashSet<usize> {
    let mut used: HashSet<&str> = HashSet::new();
    for n in nodes {
        reads(n, &mut used);
    }
    let unread =
        |o: &String| o.is_empty() || (!used.contains(o.as_str()) && !outputs.contains(o.as_str()));
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.output.iter().any(|o| candidates.contains(o))
                && n.output.iter().all(unread)
                && n.attribute
                    .iter()
                    .all(|a| a.g.is_none() && a.graphs.is_empty())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Every tensor `n` reads, including those its subgraphs (If/Loop/Scan
/// bodies) read from the outer scope.
fn reads<'n>(n: &'n NodeProto, used: &mut HashSet<&'n str>) {
    used.extend(n.input.iter().map(String::as_str));
    for a in &n.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for sub in &g.node {
                reads(sub, used);
            }
        }
    }
}
