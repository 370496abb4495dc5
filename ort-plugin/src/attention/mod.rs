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
//! | 3 | `softmax_lse` (opt.) | float | `(B, Hq, Sq)`, natural log, `-inf` for a fully masked row |
//! | 4 | `qk_matmul_output` (opt.) | T | `(B, Hq, Sq, P+Skv)`, see [`scores`] |
//!
//! T is float, float16 or bfloat16 (one kernel each); arithmetic is f32.
//! Output 4 is ONNX's output 3: a rewrite moves it one slot to make room
//! for `softmax_lse`.

pub mod exec;
pub mod plan;
pub mod scores;

use core::ffi::CStr;
use core::marker::PhantomData;
use std::borrow::Cow;

use tessera_core::{
    bf16, default_scale, f16, Attention, AttentionSpec, DenseMask, Element, MaskSpec, MaskStrides,
    Strides,
};

use crate::error::{Error, Result};
use crate::ffi::{elem, Dim, InputTensor, KernelContext, KernelInfo, ShapeInference, TypeShape};
use crate::op::{CustomOp, Port, PortType};
use plan::{Attrs, Layout, Plan, RawAttrs, Shapes};

/// An element type the op runs on.
pub trait Dtype: Element {
    /// ONNX element type code.
    const ONNX: i32;
    /// The op's port table for this type.
    const INPUTS: &'static [Port];
    /// The op's outputs for this type.
    const OUTPUTS: &'static [Port];
}

macro_rules! dtype {
    ($t:ty, $code:expr) => {
        impl Dtype for $t {
            const ONNX: i32 = $code;
            const INPUTS: &'static [Port] = &[
                Port::required("Q", PortType::Fixed($code)),
                Port::required("K", PortType::Any),
                Port::required("V", PortType::Any),
                Port::optional("attn_mask", PortType::Any),
                Port::optional("past_key", PortType::Any),
                Port::optional("past_value", PortType::Any),
                Port::optional("nonpad_kv_seqlen", PortType::Any),
            ];
            const OUTPUTS: &'static [Port] = &[
                Port::required("Y", PortType::Fixed($code)),
                Port::optional("present_key", PortType::Fixed($code)),
                Port::optional("present_value", PortType::Fixed($code)),
                Port::optional("softmax_lse", PortType::Fixed(elem::FLOAT)),
                Port::optional("qk_matmul_output", PortType::Fixed($code)),
            ];
        }
    };
}
dtype!(f32, elem::FLOAT);
dtype!(f16, elem::FLOAT16);
dtype!(bf16, elem::BFLOAT16);

/// The op, for element type `T`.
#[derive(Debug)]
pub struct AttentionOp<T> {
    attrs: Attrs,
    _t: PhantomData<fn() -> T>,
}

/// Read and check the node's attributes once, on attach (shared by the CPU
/// and CUDA kernels of the op).
pub(crate) fn read_attrs(info: &KernelInfo) -> Result<Attrs> {
    let raw = RawAttrs {
        is_causal: info.attr_i64(c"is_causal"),
        scale: info.attr_f32(c"scale"),
        softcap: info.attr_f32(c"softcap"),
        q_num_heads: info.attr_i64(c"q_num_heads"),
        kv_num_heads: info.attr_i64(c"kv_num_heads"),
        left_window_size: info.attr_i64(c"left_window_size"),
        right_window_size: info.attr_i64(c"right_window_size"),
        num_global_tokens: info.attr_i64(c"num_global_tokens"),
        qk_matmul_output_mode: info.attr_i64(c"qk_matmul_output_mode"),
        softmax_precision: info.attr_i64(c"softmax_precision"),
    };
    Attrs::parse(&raw)
}

/// Plan one call from the inputs' types and shapes in schema order (`None` =
/// left out); Q, K and V are required. Shared by the CPU and CUDA kernels.
pub(crate) fn plan_inputs(attrs: &Attrs, inputs: [Option<&TypeShape>; 7]) -> Result<Plan> {
    let required = |i: usize| {
        inputs[i].ok_or_else(|| Error::invalid(format!("{} is required", INPUT_NAMES[i])))
    };
    let dims = |i: usize| inputs[i].map(|t| t.dims.as_slice());
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

/// Input names in schema order, for messages.
pub(crate) const INPUT_NAMES: [&str; 7] = [
    "Q",
    "K",
    "V",
    "attn_mask",
    "past_key",
    "past_value",
    "nonpad_kv_seqlen",
];

impl<T: Dtype> CustomOp for AttentionOp<T> {
    const NAME: &'static CStr = c"Attention";

    fn inputs() -> &'static [Port] {
        T::INPUTS
    }

    fn outputs() -> &'static [Port] {
        T::OUTPUTS
    }

    fn attach(info: &KernelInfo) -> Result<Self> {
        Ok(Self {
            attrs: read_attrs(info)?,
            _t: PhantomData,
        })
    }

    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let mut inputs: [Option<InputTensor>; 7] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let plan = plan_inputs(
            &self.attrs,
            inputs.each_ref().map(|t| t.as_ref().map(|t| &t.ts)),
        )?;
        let typed = |i: usize| -> Result<Option<&[T]>> {
            inputs[i]
                .as_ref()
                .map(|t| {
                    t.slice::<T>(INPUT_NAMES[i], T::ONNX).map_err(|_| {
                        Error::invalid(format!(
                            "{}: element type {} must equal Q's {}",
                            INPUT_NAMES[i],
                            elem::name(t.ts.elem),
                            elem::name(T::ONNX)
                        ))
                    })
                })
                .transpose()
        };
        let (q, k, v) = (
            typed(0)?.unwrap_or(&[]),
            typed(1)?.unwrap_or(&[]),
            typed(2)?.unwrap_or(&[]),
        );
        let (past_k, past_v) = (typed(4)?, typed(5)?);
        let total = plan.kv_total();
        let nonpad = match &inputs[6] {
            None => None,
            Some(t) => Some(kv_lens(t, total)?),
        };
        // A bool key-padding mask whose rows are prefixes (right padding, as
        // the graph tool's key-padding input usually is) becomes key lengths,
        // so padded tiles are skipped instead of tested element by element.
        let prefix_lens = match (&inputs[3], plan.mask, &nonpad) {
            (Some(t), Some(d), None) if self.attrs.global_tokens == 0 => {
                prefix_lengths(t, d, plan.batch)?
            }
            _ => None,
        };
        let mask_data = match (&inputs[3], plan.mask) {
            (Some(t), Some(d)) if prefix_lens.is_none() => Some(MaskData::new(t, d, total)?),
            _ => None,
        };

        let y = ctx
            .output(0, &plan.y_dims())?
            .ok_or_else(|| Error::fail("Y could not be allocated"))?;
        let mut present_k = ctx.output(1, &plan.present_key_dims())?;
        let mut present_v = ctx.output(2, &plan.present_value_dims())?;
        let mut lse_out = ctx.output(3, &plan.lse_dims())?;
        let mut qk_out = ctx.output(4, &plan.qk_dims())?;
        let mut y = y;
        // SAFETY: outputs 0, 1, 2 and 4 are declared with element type T and
        // output 3 as float (see `Dtype::OUTPUTS`).
        let (y, pk_buf, pv_buf, lse, qk) = unsafe {
            (
                y.slice_mut::<T>(),
                present_k.as_mut().map(|o| o.slice_mut::<T>()),
                present_v.as_mut().map(|o| o.slice_mut::<T>()),
                lse_out.as_mut().map(|o| o.slice_mut::<f32>()),
                qk_out.as_mut().map(|o| o.slice_mut::<T>()),
            )
        };

        // Keys and values: read in place, or gathered into present (BHSD)
        // when there is a cache or the node asks for present.
        let in_strides = |heads: usize, seq: usize, dim: usize| match plan.layout {
            Layout::Bhsd => Strides::bhsd(heads, seq, dim),
            Layout::Bshd => Strides::bshd(heads, seq, dim),
        };
        let (hkv, d, dv) = (plan.kv_heads, plan.head_dim, plan.v_head_dim);
        let k_new = in_strides(hkv, plan.kv_new, d);
        let v_new = in_strides(hkv, plan.kv_new, dv);
        let (mut own_k, mut own_v): (Vec<T>, Vec<T>);
        let (k_all, k_strides): (&[T], Strides) = match pk_buf {
            Some(dst) => {
                gather(&plan, past_k, k, k_new, d, dst);
                (&*dst, Strides::bhsd(hkv, total, d))
            }
            None if plan.has_past => {
                own_k = vec![T::from_f32(0.0); plan.batch * hkv * total * d];
                gather(&plan, past_k, k, k_new, d, &mut own_k);
                (&own_k, Strides::bhsd(hkv, total, d))
            }
            None => (k, k_new),
        };
        let (v_all, v_strides): (&[T], Strides) = match pv_buf {
            Some(dst) => {
                gather(&plan, past_v, v, v_new, dv, dst);
                (&*dst, Strides::bhsd(hkv, total, dv))
            }
            None if plan.has_past => {
                own_v = vec![T::from_f32(0.0); plan.batch * hkv * total * dv];
                gather(&plan, past_v, v, v_new, dv, &mut own_v);
                (&own_v, Strides::bhsd(hkv, total, dv))
            }
            None => (v, v_new),
        };

        let spec = AttentionSpec {
            batch: plan.batch,
            q_heads: plan.q_heads,
            kv_heads: hkv,
            q_len: plan.q_len,
            kv_len: total,
            head_dim: d,
            v_head_dim: dv,
            scale: self.attrs.scale.unwrap_or_else(|| default_scale(d)),
            softcap: self.attrs.softcap,
            q: in_strides(plan.q_heads, plan.q_len, d),
            k: k_strides,
            v: v_strides,
            out: in_strides(plan.q_heads, plan.q_len, dv),
        };
        let offset = isize::try_from(plan.past)
            .map_err(|_| Error::invalid("past_key: past length too large"))?;
        let mut mask = if self.attrs.is_causal {
            MaskSpec::NONE.causal(offset)
        } else {
            MaskSpec::NONE.offset(offset)
        };
        mask = mask
            .window(self.attrs.left_window, self.attrs.right_window)
            .globals(self.attrs.global_tokens);
        if let Some(lens) = &nonpad {
            mask = mask.kv_lens(lens, true);
        }
        if let Some(lens) = &prefix_lens {
            mask = mask.kv_lens(lens, false);
        }
        if let Some(m) = &mask_data {
            mask = mask.dense(m.view());
        }
        let att = Attention::new(&spec, &mask, q, k_all, v_all)?;
        if !y.is_empty() {
            exec::run(ctx, &att, y, lse)?;
        }
        if let Some(out) = qk {
            if !out.is_empty() {
                scores::materialise(&spec, &mask, q, k_all, self.attrs.qk_mode, out);
            }
        }
        Ok(())
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
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
                let (Some(hq), Some(hkv)) =
                    (ctx.attr_i64(c"q_num_heads"), ctx.attr_i64(c"kv_num_heads"))
                else {
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
        ctx.set_output(0, q.elem, &y)
    }
}

/// The key lengths of a bool `attn_mask` of shape `(B or 1, 1, 1, width)`
/// whose every row is `true…true false…false` (keys past `width` count as
/// masked), or `None` when it has another shape or a row is not a prefix.
/// Cost: one pass over the mask.
fn prefix_lengths(t: &InputTensor, d: [usize; 4], batch: usize) -> Result<Option<Vec<usize>>> {
    if t.ts.elem != elem::BOOL || d[1] != 1 || d[2] != 1 || !(d[0] == 1 || d[0] == batch) {
        return Ok(None);
    }
    let bytes = t.bytes("attn_mask")?;
    let width = d[3];
    let mut lens = Vec::with_capacity(batch);
    for row in bytes.chunks_exact(width.max(1)).take(d[0]) {
        let len = row.iter().take_while(|&&x| x != 0).count();
        if row[len..].iter().any(|&x| x != 0) {
            return Ok(None);
        }
        lens.push(len);
    }
    if lens.len() != d[0] {
        return Ok(None);
    }
    if d[0] == 1 {
        lens.resize(batch, lens[0]);
    }
    Ok(Some(lens))
}

/// `nonpad_kv_seqlen` as key counts, each within `[0, total]`.
fn kv_lens(t: &InputTensor, total: usize) -> Result<Vec<usize>> {
    let raw = t.slice::<i64>("nonpad_kv_seqlen", elem::INT64)?;
    raw.iter()
        .enumerate()
        .map(|(b, &n)| {
            usize::try_from(n).ok().filter(|&n| n <= total).ok_or_else(|| {
                Error::invalid(format!("nonpad_kv_seqlen[{b}] = {n} must be within [0, {total}] (the key sequence length)"))
            })
        })
        .collect()
}

/// Copy `past` (BHSD) then the new keys (read with `new_strides`) into `dst`,
/// BHSD with `P + Skv` positions.
fn gather<T: Element>(
    plan: &Plan,
    past: Option<&[T]>,
    new: &[T],
    new_strides: Strides,
    dim: usize,
    dst: &mut [T],
) {
    let (p, n) = (plan.past, plan.kv_new);
    let total = p + n;
    for b in 0..plan.batch {
        for h in 0..plan.kv_heads {
            let base = (b * plan.kv_heads + h) * total * dim;
            if let Some(past) = past {
                let src = (b * plan.kv_heads + h) * p * dim;
                dst[base..][..p * dim].copy_from_slice(&past[src..][..p * dim]);
            }
            for s in 0..n {
                dst[base + (p + s) * dim..][..dim]
                    .copy_from_slice(&new[new_strides.offset(b, h, s)..][..dim]);
            }
        }
    }
}

/// A dense mask converted for the kernel: bool stays bool (any nonzero byte
/// is true), float types become f32, and a last axis shorter than the key
/// length is padded as masked (`false` / `-inf`), as the ONNX reference does.
enum MaskData<'a> {
    Bool(Vec<bool>, MaskStrides),
    Float(Cow<'a, [f32]>, MaskStrides),
}

impl<'a> MaskData<'a> {
    fn new(t: &'a InputTensor, d: [usize; 4], total: usize) -> Result<Self> {
        let strides = MaskStrides::broadcast(d[0], d[1], d[2], total);
        let (rows, width) = (d[0] * d[1] * d[2], d[3]);
        fn padded<S: Copy, D: Copy>(
            src: &[S],
            rows: usize,
            width: usize,
            total: usize,
            pad: D,
            f: impl Fn(S) -> D,
        ) -> Vec<D> {
            let mut out = Vec::with_capacity(rows * total);
            for r in 0..rows {
                out.extend(src[r * width..][..width].iter().map(|&x| f(x)));
                out.extend(core::iter::repeat_n(pad, total - width));
            }
            out
        }
        let name = "attn_mask";
        Ok(match t.ts.elem {
            elem::BOOL => MaskData::Bool(
                padded(t.bytes(name)?, rows, width, total, false, |x| x != 0),
                strides,
            ),
            elem::FLOAT if width == total => {
                MaskData::Float(Cow::Borrowed(t.slice::<f32>(name, elem::FLOAT)?), strides)
            }
            elem::FLOAT => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<f32>(name, elem::FLOAT)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    |x| x,
                )),
                strides,
            ),
            elem::FLOAT16 => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<f16>(name, elem::FLOAT16)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    f16::to_f32,
                )),
                strides,
            ),
            elem::BFLOAT16 => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<bf16>(name, elem::BFLOAT16)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    bf16::to_f32,
                )),
                strides,
            ),
            other => {
                return Err(Error::invalid(format!(
                "attn_mask: element type {} is not supported (bool, float, float16 or bfloat16)",
                elem::name(other)
            )))
            }
        })
    }

    fn view(&self) -> DenseMask<'_> {
        match self {
            MaskData::Bool(m, s) => DenseMask::Bool(m, *s),
            MaskData::Float(m, s) => DenseMask::Additive(m, *s),
        }
    }
}
