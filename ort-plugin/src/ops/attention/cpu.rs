//! The CPU kernel of `ai.tessera.Attention`: the planned call read from
//! host buffers, keys and values gathered with the cache when there is one,
//! then the tiled kernel over ORT's pool ([`super::exec`]) and, when the
//! node asks for it, the score matrix ([`super::scores`]).

use std::borrow::Cow;

use tessera_core::{Attention, Element, Strides};
use tessera_schema::attention::input;

use super::mask::KeyMasks;
use super::{exec, kernel_call, plan_inputs, scores, slot, AttentionOp, Outputs};
use crate::dtype::Dtype;
use crate::error::Result;
use crate::ffi::{InputTensor, KernelContext, OutputTensor};
use crate::op::CpuKernel;
use crate::ops::like_q;
use crate::plan::Plan;

impl<T: Dtype> CpuKernel for AttentionOp<T> {
    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let inputs = ctx.inputs::<7>()?;
        let plan = plan_inputs(&self.attrs, &inputs)?;
        let data = Data::<T>::read(&inputs)?;
        let masks = KeyMasks::read(&self.attrs, &plan, inputs[3].as_ref(), inputs[6].as_ref())?;
        let mut outs = Outputs::alloc(ctx, &plan)?;
        let mut qk = ctx.output(slot::QK_MATMUL_OUTPUT, &plan.qk_dims())?;
        // SAFETY: outputs 0-3 are declared with element type T and output 4
        // (softmax_lse) as float (see `AttentionOp::OUTPUTS`).
        let (y, present_k, present_v, lse, qk) = unsafe { slices::<T>(&mut outs, &mut qk) };

        // Keys and values: read in place, or gathered into present (BHSD)
        // when there is a cache or the node asks for present.
        let (k_all, k_strides) = keys_values(&plan, data.past_k, data.k, present_k, plan.head_dim);
        let (v_all, v_strides) =
            keys_values(&plan, data.past_v, data.v, present_v, plan.v_head_dim);
        let (spec, base) = kernel_call(&self.attrs, &plan, k_strides, v_strides)?;
        let mask = masks.apply(base);
        let att = Attention::new(&spec, &mask, data.q, &k_all, &v_all)?;
        if !y.is_empty() {
            exec::run(ctx, &att, y, lse)?;
        }
        if let Some(out) = qk {
            if !out.is_empty() {
                scores::materialise(&spec, &mask, data.q, &k_all, self.attrs.qk_mode, out);
            }
        }
        Ok(())
    }
}

/// The element-type-T inputs of one call, checked to be T.
struct Data<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    past_k: Option<&'a [T]>,
    past_v: Option<&'a [T]>,
}

impl<'a, T: Dtype> Data<'a, T> {
    fn read(inputs: &'a [Option<InputTensor>; 7]) -> Result<Self> {
        let typed = |i: usize| -> Result<Option<&'a [T]>> {
            inputs[i]
                .as_ref()
                .map(|t| like_q(t, input::ALL[i]))
                .transpose()
        };
        Ok(Self {
            q: typed(0)?.unwrap_or(&[]),
            k: typed(1)?.unwrap_or(&[]),
            v: typed(2)?.unwrap_or(&[]),
            past_k: typed(4)?,
            past_v: typed(5)?,
        })
    }
}

/// Host views of Y, present_key, present_value, softmax_lse and
/// qk_matmul_output.
type OutputSlices<'a, T> = (
    &'a mut [T],
    Option<&'a mut [T]>,
    Option<&'a mut [T]>,
    Option<&'a mut [f32]>,
    Option<&'a mut [T]>,
);

/// # Safety
/// `T` is the element type the op's data outputs were declared with.
unsafe fn slices<'a, T>(
    outs: &'a mut Outputs<OutputTensor>,
    qk: &'a mut Option<OutputTensor>,
) -> OutputSlices<'a, T> {
    // SAFETY: the caller's contract; softmax_lse is declared float.
    unsafe {
        (
            outs.y.slice_mut::<T>(),
            outs.present_k.as_mut().map(|o| o.slice_mut::<T>()),
            outs.present_v.as_mut().map(|o| o.slice_mut::<T>()),
            outs.lse.as_mut().map(|o| o.slice_mut::<f32>()),
            qk.as_mut().map(|o| o.slice_mut::<T>()),
        )
    }
}

/// Keys (or values) of `dim` per head as the kernel reads them: `new` in
/// place without a cache and without `present`, else the BHSD
/// concatenation of `past` and `new`, in `present` when the node asks for
/// it and in a buffer of our own otherwise.
fn keys_values<'a, T: Element>(
    plan: &Plan,
    past: Option<&[T]>,
    new: &'a [T],
    present: Option<&'a mut [T]>,
    dim: usize,
) -> (Cow<'a, [T]>, Strides) {
    let hkv = plan.kv_heads;
    let new_strides = plan.strides(hkv, plan.kv_new, dim);
    let bhsd = Strides::bhsd(hkv, plan.kv_total(), dim);
    match present {
        Some(dst) => {
            gather(plan, past, new, new_strides, dim, dst);
            (Cow::Borrowed(dst), bhsd)
        }
        None if plan.has_past => {
            let mut own = vec![T::from_f32(0.0); plan.batch * hkv * plan.kv_total() * dim];
            gather(plan, past, new, new_strides, dim, &mut own);
            (Cow::Owned(own), bhsd)
        }
        None => (Cow::Borrowed(new), new_strides),
    }
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
