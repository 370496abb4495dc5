//! `ai.tessera.Attention` v1: ONNX `Attention`-23/24 semantics (with the
//! ONNX-main window attributes) on Tessera's tiled kernel.
//!
//! | # | input | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Q` | T | `(B, Hq, Sq, D)` or `(B, Sq, Hq·D)` |
//! | 1 | `K` | T | `(B, Hkv, Skv, D)` or `(B, Skv, Hkv·D)` |
//! | 2 | `V` | T | `(B, Hkv, Skv, Dv)` or `(B, Skv, Hkv·Dv)` |
//! | 3 | `attn_mask` (opt.) | bool or float | broadcast to `(B, Hq, Sq, P+Skv)`; a shorter last axis is padded as masked |
//! | 4 | `past_key` (opt.) | T | `(B, Hkv, P, D)` |
//! | 5 | `past_value` (opt.) | T | `(B, Hkv, P, Dv)` |
//! | 6 | `nonpad_kv_seqlen` (opt.) | int64 | `(B,)` |
//!
//! | # | output | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Y` | T | like Q with `Dv` |
//! | 1 | `present_key` (opt.) | T | `(B, Hkv, P+Skv, D)` |
//! | 2 | `present_value` (opt.) | T | `(B, Hkv, P+Skv, Dv)` |
//! | 3 | `qk_matmul_output` (opt.) | T | `(B, Hq, Sq, P+Skv)`, see [`scores`] |
//! | 4 | `softmax_lse` (opt.) | float | `(B, Hq, Sq)`, natural log, `-inf` for a fully masked row |
//!
//! T is float, float16 or bfloat16 (one kernel each); arithmetic is f32.
//! Outputs 0-3 are ONNX's, in ONNX's order (`output::ALL`), so changing
//! only an ONNX `Attention` node's domain to `ai.tessera` is exact;
//! `softmax_lse` comes after them.
//!
//! This module is the op's schema, shared by its kernels: the ports,
//! the attributes (read once, at attach), the planning of one call and
//! shape inference. [`cpu`] runs it on the tiled CPU kernel, `cuda` (feature
//! `cuda`) on `tessera-cuda`'s flash kernel.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod exec;
mod mask;
pub mod scores;

use core::marker::PhantomData;

use tessera_core::{default_scale, AttentionSpec, MaskSpec, Strides};
use tessera_schema::attention::{attr, input, output, OP};
use tessera_schema::Name;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, AllocOutput, Described, Dim, KernelInfo, ShapeInference};
use crate::op::{Port, PortType, Schema};
use crate::plan::{Attrs, Plan, RawAttrs, Shapes};

/// Output slots, in the order the op registers them (the schema's
/// `output::ALL`): ONNX's `Y`, `present_key`, `present_value`,
/// `qk_matmul_output`, then `softmax_lse`.
pub(crate) mod slot {
    /// `Y`
    pub const Y: usize = 0;
    /// `present_key`
    pub const PRESENT_KEY: usize = 1;
    /// `present_value`
    pub const PRESENT_VALUE: usize = 2;
    /// `qk_matmul_output`
    pub const QK_MATMUL_OUTPUT: usize = 3;
    /// `softmax_lse`
    pub const SOFTMAX_LSE: usize = 4;
}

/// Y, present_key, present_value and softmax_lse of one call, allocated
/// in slot order (host tensors or device addresses).
pub(crate) struct Outputs<B> {
    /// `Y`
    pub y: B,
    /// `present_key`, when requested.
    pub present_k: Option<B>,
    /// `present_value`, when requested.
    pub present_v: Option<B>,
    /// `softmax_lse`, when requested.
    pub lse: Option<B>,
}

impl<B> Outputs<B> {
    /// Allocate the outputs of `plan` in `ctx`.
    pub(crate) fn alloc(ctx: &mut impl AllocOutput<Buffer = B>, plan: &Plan) -> Result<Self> {
        Ok(Self {
            y: ctx
                .alloc_output(slot::Y, &plan.y_dims())?
                .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::Y)))?,
            present_k: ctx.alloc_output(slot::PRESENT_KEY, &plan.present_key_dims())?,
            present_v: ctx.alloc_output(slot::PRESENT_VALUE, &plan.present_value_dims())?,
            lse: ctx.alloc_output(slot::SOFTMAX_LSE, &plan.lse_dims())?,
        })
    }
}

/// The op, for element type `T`: the node's attributes, read once.
#[derive(Debug)]
pub struct AttentionOp<T> {
    pub(crate) attrs: Attrs,
    _t: PhantomData<fn() -> T>,
}

impl<T: Dtype> Schema for AttentionOp<T> {
    const NAME: Name = OP;

    const INPUTS: &'static [Port] = &[
        Port::required(input::Q, PortType::Fixed(T::ONNX)),
        Port::required(input::K, PortType::Any),
        Port::required(input::V, PortType::Any),
        Port::optional(input::ATTN_MASK, PortType::Any),
        Port::optional(input::PAST_KEY, PortType::Any),
        Port::optional(input::PAST_VALUE, PortType::Any),
        Port::optional(input::NONPAD_KV_SEQLEN, PortType::Any),
    ];

    const OUTPUTS: &'static [Port] = &[
        Port::required(output::ALL[slot::Y], PortType::Fixed(T::ONNX)),
        Port::optional(output::ALL[slot::PRESENT_KEY], PortType::Fixed(T::ONNX)),
        Port::optional(output::ALL[slot::PRESENT_VALUE], PortType::Fixed(T::ONNX)),
        Port::optional(
            output::ALL[slot::QK_MATMUL_OUTPUT],
            PortType::Fixed(T::ONNX),
        ),
        Port::optional(output::ALL[slot::SOFTMAX_LSE], PortType::Fixed(elem::FLOAT)),
    ];

    fn attach(info: &KernelInfo) -> Result<Self> {
        Ok(Self {
            attrs: read_attrs(info)?,
            _t: PhantomData,
        })
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        infer_y(ctx)
    }
}

/// Read and check the node's attributes.
fn read_attrs(info: &KernelInfo) -> Result<Attrs> {
    let raw = RawAttrs {
        is_causal: info.attr_i64(attr::IS_CAUSAL.c()),
        scale: info.attr_f32(attr::SCALE.c()),
        softcap: info.attr_f32(attr::SOFTCAP.c()),
        q_num_heads: info.attr_i64(attr::Q_NUM_HEADS.c()),
        kv_num_heads: info.attr_i64(attr::KV_NUM_HEADS.c()),
        left_window_size: info.attr_i64(attr::LEFT_WINDOW_SIZE.c()),
        right_window_size: info.attr_i64(attr::RIGHT_WINDOW_SIZE.c()),
        num_global_tokens: info.attr_i64(attr::NUM_GLOBAL_TOKENS.c()),
        qk_matmul_output_mode: info.attr_i64(attr::QK_MATMUL_OUTPUT_MODE.c()),
        softmax_precision: info.attr_i64(attr::SOFTMAX_PRECISION.c()),
    };
    Attrs::parse(&raw)
}

/// Plan one call from the inputs in schema order (`None` = left out); Q,
/// K and V are required.
pub(crate) fn plan_inputs<X: Described>(attrs: &Attrs, inputs: &[Option<X>; 7]) -> Result<Plan> {
    let required = |i: usize| {
        inputs[i]
            .as_ref()
            .map(|t| t.type_shape())
            .ok_or_else(|| Error::invalid(format!("{} is required", input::ALL[i])))
    };
    let dims = |i: usize| inputs[i].as_ref().map(|t| t.type_shape().dims.as_slice());
    Plan::new(
        attrs,
        &Shapes {
            q: &required(0)?.dims,
            k: &required(1)?.dims,
            v: &required(2)?.dims,
            mask: dims(3),
            past_key: dims(4),
            past_value: dims(5),
            nonpad: dims(6),
        },
    )
}

/// The spec and structural mask of one call: Q and Y in the node's layout,
/// K and V with `k`/`v` strides (in place, or the BHSD concatenation with
/// the cache), positions offset by the cache length. The kernels add the
/// key lengths and the dense mask.
pub(crate) fn kernel_call(
    attrs: &Attrs,
    plan: &Plan,
    k: Strides,
    v: Strides,
) -> Result<(AttentionSpec, MaskSpec<'static>)> {
    let (d, dv) = (plan.head_dim, plan.v_head_dim);
    let spec = AttentionSpec {
        batch: plan.batch,
        q_heads: plan.q_heads,
        kv_heads: plan.kv_heads,
        q_len: plan.q_len,
        kv_len: plan.kv_total(),
        head_dim: d,
        v_head_dim: dv,
        scale: attrs.scale.unwrap_or_else(|| default_scale(d)),
        softcap: attrs.softcap,
        q: plan.strides(plan.q_heads, plan.q_len, d),
        k,
        v,
        out: plan.strides(plan.q_heads, plan.q_len, dv),
    };
    let offset = isize::try_from(plan.past)
        .map_err(|_| Error::invalid(format!("{}: past length too large", input::PAST_KEY)))?;
    let mask = if attrs.is_causal {
        MaskSpec::NONE.causal(offset)
    } else {
        MaskSpec::NONE.offset(offset)
    }
    .window(attrs.left_window, attrs.right_window)
    .globals(attrs.global_tokens);
    Ok((spec, mask))
}

/// Infer Y (always present) from Q, K, V and the head attributes; shared
/// with `TopKAttention`, whose Y follows the same rule.
pub(crate) fn infer_y(ctx: &ShapeInference) -> Result<()> {
    let (Some(q), Some(k), Some(v)) = (ctx.input(0)?, ctx.input(1)?, ctx.input(2)?) else {
        return Ok(());
    };
    let rank = q.dims.len();
    if k.dims.len() != rank || v.dims.len() != rank {
        return Ok(());
    }
    let b = Dim::of(&q, 0);
    let y = match rank {
        4 => vec![b, Dim::of(&q, 1), Dim::of(&q, 2), Dim::of(&v, 3)],
        3 => {
            let (Some(hq), Some(hkv)) = (
                ctx.attr_i64(attr::Q_NUM_HEADS.c()),
                ctx.attr_i64(attr::KV_NUM_HEADS.c()),
            ) else {
                return Ok(());
            };
            if hq < 1 || hkv < 1 {
                return Ok(());
            }
            let hidden = if hq == hkv {
                Dim::of(&v, 2)
            } else {
                Dim::of(&v, 2).div(hkv).times(hq)
            };
            vec![b, Dim::of(&q, 1), hidden]
        }
        _ => return Ok(()),
    };
    // The C API gives no output count at inference time and ORT does
    // not bounds-check the index, so only Y (always present) is set;
    // present, lse and qk shapes are set when the kernel runs.
    // ORT builds one schema per op name from the first table (the f32
    // one), so this function serves every T: Y takes Q's element type.
    ctx.set_output(slot::Y, q.elem, &y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registered outputs are the schema's, in its order: ONNX's four
    /// then `softmax_lse`, so a domain swap of an ONNX node is exact.
    #[test]
    fn outputs_follow_the_schema_order() {
        let ports: Vec<Name> = AttentionOp::<f32>::OUTPUTS.iter().map(|p| p.name).collect();
        assert_eq!(ports, output::ALL);
        assert_eq!(
            output::ALL[slot::QK_MATMUL_OUTPUT],
            output::QK_MATMUL_OUTPUT
        );
        assert_eq!(output::ALL[slot::SOFTMAX_LSE], output::SOFTMAX_LSE);
    }
}
