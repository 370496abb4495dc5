//! Every op's input planning as one pure function, for the fuzzer
//! (`fuzz/fuzz_targets/plan.rs`) and for tests: from the input shapes, the
//! `indices` element type and the attributes of a node to the dims of its
//! outputs, or the error `compute` would return, without ORT and without
//! data. It calls the same checks `compute` calls, in the same order; only
//! the reads of tensor data (non-finite values, index ranges) are left out.

use tessera_core::Keep;
use tessera_schema::lightning_indexer::{attr as ix_attr, output as ix_out};
use tessera_schema::merge_attention::input as merge_in;
use tessera_schema::topk_attention::{attr as topk_attr, input as topk_in, output as topk_out};

use crate::attrs::{attr_at_least, attr_bool, attr_count};
use crate::error::{Error, Result};
use crate::ops::attention::kernel_call;
use crate::ops::lightning_indexer::{indexer_spec, Format};
use crate::ops::merge_attention::{merge_dims, MergeShape};
use crate::ops::topk_attention::cpu::block_width;
use crate::ops::topk_attention::list_shape;
use crate::plan::{Attrs, Plan, RawAttrs, Shapes};
use crate::shape::{causal_offset, fmt_shape, onnx_dims, product};

/// Which op (and, for `TopKAttention`, which mode) a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Attention`: inputs Q, K, V, attn_mask, past_key, past_value, nonpad_kv_seqlen.
    Attention,
    /// `TopKAttention` with an `indices` input (Q, K, V, indices).
    TopKIndex,
    /// `TopKAttention` without one (Q, K, V; `top_k` attribute).
    TopKTrainingFree,
    /// `LightningIndexer`: index_q, index_k, index_w.
    LightningIndexer,
    /// `MergeAttention`: Y_a, lse_a, Y_b, lse_b.
    MergeAttention,
}

/// One node: input dims in schema order (`None` = left out), the element
/// type of `indices`, and the attributes as the node stores them.
#[derive(Clone, Debug, Default)]
pub struct Node<'a> {
    /// Input dims, schema order.
    pub inputs: [Option<&'a [i64]>; 7],
    /// ONNX element type of `TopKAttention`'s `indices`.
    pub indices_elem: Option<i32>,
    /// The attention attributes (also read by `TopKAttention`).
    pub raw: RawAttrs,
    /// `top_k`.
    pub top_k: Option<i64>,
    /// `format` (`LightningIndexer`).
    pub format: Option<&'a str>,
}

/// The dims of each output `op` would allocate for `node`, or the error.
pub fn plan(op: Op, node: &Node<'_>) -> Result<Vec<Vec<i64>>> {
    match op {
        Op::Attention => attention(node),
        Op::TopKIndex | Op::TopKTrainingFree => topk(op, node),
        Op::LightningIndexer => indexer(node),
        Op::MergeAttention => merge(node),
    }
}

fn required<'a>(node: &Node<'a>, i: usize, names: &[tessera_schema::Name]) -> Result<&'a [i64]> {
    node.inputs[i].ok_or_else(|| Error::invalid(format!("{} is required", names[i])))
}

fn attention(node: &Node<'_>) -> Result<Vec<Vec<i64>>> {
    use tessera_schema::attention::input::ALL;
    let attrs = Attrs::parse(&node.raw)?;
    let shapes = Shapes {
        q: required(node, 0, &ALL)?,
        k: required(node, 1, &ALL)?,
        v: required(node, 2, &ALL)?,
        mask: node.inputs[3],
        past_key: node.inputs[4],
        past_value: node.inputs[5],
        nonpad: node.inputs[6],
    };
    let plan = Plan::new(&attrs, &shapes)?;
    let k = plan.strides(plan.kv_heads, plan.kv_total(), plan.head_dim);
    let v = plan.strides(plan.kv_heads, plan.kv_total(), plan.v_head_dim);
    let (spec, mask) = kernel_call(&attrs, &plan, k, v)?;
    spec.validate()?;
    mask.validate(spec.batch, spec.q_heads, spec.q_len, spec.kv_len)?;
    Ok(vec![
        plan.y_dims(),
        plan.present_key_dims(),
        plan.present_value_dims(),
        plan.lse_dims(),
        plan.qk_dims(),
    ])
}

fn topk(op: Op, node: &Node<'_>) -> Result<Vec<Vec<i64>>> {
    let names = topk_in::ALL;
    let raw = RawAttrs {
        is_causal: node.raw.is_causal,
        scale: node.raw.scale,
        q_num_heads: node.raw.q_num_heads,
        kv_num_heads: node.raw.kv_num_heads,
        ..Default::default()
    };
    let window = attr_at_least(
        topk_attr::LEFT_WINDOW_SIZE.as_str(),
        node.raw.left_window_size,
        -1,
    )?;
    let globals = attr_at_least(
        topk_attr::NUM_GLOBAL_TOKENS.as_str(),
        node.raw.num_global_tokens,
        0,
    )?;
    let attrs = Attrs::parse(&raw)?;
    let top_k = attr_count(topk_attr::TOP_K.as_str(), node.top_k)?;
    let keep = Keep {
        local_window: match window {
            None | Some(-1) => None,
            Some(w) => Some(usize::try_from(w).map_err(|_| {
                Error::invalid(format!("{} is too large", topk_attr::LEFT_WINDOW_SIZE))
            })?),
        },
        global_tokens: usize::try_from(globals.unwrap_or(0)).map_err(|_| {
            Error::invalid(format!("{} is too large", topk_attr::NUM_GLOBAL_TOKENS))
        })?,
    };
    let shapes = Shapes::qkv(
        required(node, 0, &names)?,
        required(node, 1, &names)?,
        required(node, 2, &names)?,
    );
    let plan = Plan::new(&attrs, &shapes)?;
    let spec = plan.cacheless_spec(attrs.scale);
    spec.validate()?;
    let (sq, skv) = (spec.q_len, spec.kv_len);
    if attrs.is_causal {
        causal_offset(sq, skv)?;
    }
    let width = match (op, node.inputs[3]) {
        (Op::TopKIndex, Some(dims)) => {
            let shown = fmt_shape(dims);
            let l = list_shape(dims, &shown, node.indices_elem, &plan, top_k)?;
            if keep != Keep::default() {
                causal_offset(sq, plan.kv_new)?;
            }
            l.k
        }
        (Op::TopKIndex, None) => {
            return Err(Error::invalid(format!(
                "{} is required in index mode",
                topk_in::INDICES
            )))
        }
        _ => match top_k {
            Some(k) => block_width(k, skv, keep),
            None => {
                return Err(Error::invalid(format!(
                    "{} is required without an {} input",
                    topk_attr::TOP_K,
                    topk_in::INDICES
                )))
            }
        },
    };
    let sel = [plan.batch, plan.kv_heads, sq, width];
    product(topk_out::SELECTED_INDICES.as_str(), &sel)?;
    Ok(vec![plan.y_dims(), onnx_dims(&sel), plan.lse_dims()])
}

fn indexer(node: &Node<'_>) -> Result<Vec<Vec<i64>>> {
    use tessera_schema::lightning_indexer::input::ALL;
    let top_k = attr_count(ix_attr::TOP_K.as_str(), node.top_k)?
        .ok_or_else(|| Error::invalid(format!("{} is required", ix_attr::TOP_K)))?;
    let causal = attr_bool(ix_attr::IS_CAUSAL.as_str(), node.raw.is_causal)?;
    Format::parse(node.format)?;
    let spec = indexer_spec(
        required(node, 0, &ALL)?,
        required(node, 1, &ALL)?,
        required(node, 2, &ALL)?,
    )?;
    let out = [spec.batch, spec.q_len, top_k];
    product(ix_out::INDICES.as_str(), &out)?;
    if causal {
        causal_offset(spec.q_len, spec.kv_len)?;
    }
    Ok(vec![onnx_dims(&out)])
}

fn merge(node: &Node<'_>) -> Result<Vec<Vec<i64>>> {
    let names = merge_in::ALL;
    let (ya, la) = (required(node, 0, &names)?, required(node, 1, &names)?);
    let (yd, ld) = merge_dims(ya, la)?;
    for (i, want) in [(2, ya), (3, la)] {
        let got = required(node, i, &names)?;
        if got != want {
            return Err(Error::invalid(format!(
                "{}: shape {} must equal {} {}",
                names[i],
                fmt_shape(got),
                names[i - 2],
                fmt_shape(want)
            )));
        }
    }
    let shape = MergeShape::new(&yd, &ld, ya, la)?;
    product(merge_in::Y_A.as_str(), &[shape.rows(), shape.v_head_dim])?;
    Ok(vec![ya.to_vec(), la.to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(inputs: &[Option<&'a [i64]>]) -> Node<'a> {
        let mut n = Node::default();
        for (i, x) in inputs.iter().enumerate() {
            n.inputs[i] = *x;
        }
        n
    }

    #[test]
    fn every_op_plans_its_outputs() {
        let (q, kv): (&[i64], &[i64]) = (&[1, 4, 8, 16], &[1, 2, 9, 16]);
        let att = plan(Op::Attention, &node(&[Some(q), Some(kv), Some(kv)])).unwrap();
        assert_eq!(att[0], vec![1, 4, 8, 16]);
        let idx: &[i64] = &[1, 8, 3];
        let mut n = node(&[Some(q), Some(kv), Some(kv), Some(idx)]);
        n.indices_elem = Some(7);
        assert_eq!(plan(Op::TopKIndex, &n).unwrap()[1], vec![1, 2, 8, 3]);
        let mut n = node(&[Some(q), Some(kv), Some(kv)]);
        n.top_k = Some(64);
        assert!(plan(Op::TopKTrainingFree, &n).is_ok());
        let (iq, ik, iw): (&[i64], &[i64], &[i64]) = (&[1, 5, 2, 8], &[1, 7, 8], &[1, 5, 2]);
        let mut n = node(&[Some(iq), Some(ik), Some(iw)]);
        n.top_k = Some(3);
        assert_eq!(plan(Op::LightningIndexer, &n).unwrap(), vec![vec![1, 5, 3]]);
        let (y, lse): (&[i64], &[i64]) = (&[1, 2, 3, 4], &[1, 2, 3]);
        assert!(plan(
            Op::MergeAttention,
            &node(&[Some(y), Some(lse), Some(y), Some(lse)])
        )
        .is_ok());
    }

    #[test]
    fn hostile_shapes_are_errors_that_name_the_input() {
        let huge: &[i64] = &[1 << 62, 4, 8, 16];
        let e = plan(Op::Attention, &node(&[Some(huge), Some(huge), Some(huge)])).unwrap_err();
        assert!(
            e.message.contains('Q') || e.message.contains('K'),
            "{}",
            e.message
        );
        let neg: &[i64] = &[1, -2, 3];
        let e = plan(
            Op::MergeAttention,
            &node(&[Some(neg), Some(neg), Some(neg), Some(neg)]),
        )
        .unwrap_err();
        assert!(e.message.contains("Y_a"), "{}", e.message);
        let e = plan(
            Op::TopKTrainingFree,
            &node(&[
                Some(&[1, 1, 1, 1]),
                Some(&[1, 1, 1, 1]),
                Some(&[1, 1, 1, 1]),
            ]),
        )
        .unwrap_err();
        assert!(e.message.contains("top_k"), "{}", e.message);
    }
}
