//! `ai.tessera.MergeAttention` v1: the exact merge of two attention results
//! over disjoint key sets (split-KV, context-parallel pieces, or sparse +
//! window branches), by their log-sum-exp.
//!
//! | # | input | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Y_a` | T | `(B, H, S, Dv)` or `(B, S, H·Dv)` |
//! | 1 | `lse_a` | float | `(B, H, S)` |
//! | 2 | `Y_b` | T | like `Y_a` |
//! | 3 | `lse_b` | float | like `lse_a` |
//!
//! | # | output | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Y` | T | like `Y_a` |
//! | 1 | `lse` (opt.) | float | like `lse_a` |
//!
//! `Y = (e^{lse_a}·Y_a + e^{lse_b}·Y_b) / (e^{lse_a} + e^{lse_b})` and
//! `lse = ln(e^{lse_a} + e^{lse_b})`, computed relative to the larger lse
//! ([`tessera_core::merge`]); a side with `lse = -inf` has weight 0, and two
//! such sides give `Y = 0`, `lse = -inf`. For 3-D `Y` the head count comes
//! from `lse_a.shape[1]`. T is float, float16 or bfloat16; math is f32.
//!
//! # Cost
//! `O(B·H·S·Dv)`, split over row ranges of the intra-op pool; 3-D inputs
//! also transpose the lse to `(B, S, H)` (`3·B·H·S` f32s).

use core::ffi::CStr;
use core::marker::PhantomData;

use tessera_core::{bf16, f16, merge};

use super::{chunks, dims, fmt_shape, Disjoint};
use crate::attention::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, Dim, InputTensor, KernelContext, KernelInfo, ShapeInference};
use crate::op::{CustomOp, Port, PortType};

/// Port tables of the op for one element type.
pub trait MergeDtype: Dtype {
    /// Inputs.
    const MERGE_INPUTS: &'static [Port];
    /// Outputs.
    const MERGE_OUTPUTS: &'static [Port];
}

macro_rules! merge_dtype {
    ($t:ty, $code:expr) => {
        impl MergeDtype for $t {
            const MERGE_INPUTS: &'static [Port] = &[
                Port::required("Y_a", PortType::Fixed($code)),
                Port::required("lse_a", PortType::Any),
                Port::required("Y_b", PortType::Any),
                Port::required("lse_b", PortType::Any),
            ];
            const MERGE_OUTPUTS: &'static [Port] = &[
                Port::required("Y", PortType::Fixed($code)),
                Port::optional("lse", PortType::Fixed(elem::FLOAT)),
            ];
        }
    };
}
merge_dtype!(f32, elem::FLOAT);
merge_dtype!(f16, elem::FLOAT16);
merge_dtype!(bf16, elem::BFLOAT16);

const NAMES: [&str; 4] = ["Y_a", "lse_a", "Y_b", "lse_b"];

/// Rows merged per task at least (below this the pool costs more than it saves).
const MIN_ROWS_PER_TASK: usize = 256;

/// The op, for element type `T`.
#[derive(Debug)]
pub struct MergeAttentionOp<T> {
    _t: PhantomData<fn() -> T>,
}

/// `(B, H, S, Dv)` and the layout of Y.
fn shape_of(
    y: &[usize],
    lse: &[usize],
    y_shape: &[i64],
    lse_shape: &[i64],
) -> Result<(usize, usize, usize, usize, bool)> {
    let (b, h, s) = (lse[0], lse[1], lse[2]);
    let bad = || {
        Error::invalid(format!(
            "lse_a: shape {} must be (batch, heads, seq) of Y_a {}",
            fmt_shape(lse_shape),
            fmt_shape(y_shape)
        ))
    };
    if y.len() == 4 {
        if y[..3] != [b, h, s] {
            return Err(bad());
        }
        Ok((b, h, s, y[3], false))
    } else {
        if y[0] != b || y[1] != s || h == 0 || y[2] % h != 0 {
            return Err(bad());
        }
        Ok((b, h, s, y[2] / h, true))
    }
}

impl<T: MergeDtype> CustomOp for MergeAttentionOp<T> {
    const NAME: &'static CStr = c"MergeAttention";

    fn inputs() -> &'static [Port] {
        T::MERGE_INPUTS
    }

    fn outputs() -> &'static [Port] {
        T::MERGE_OUTPUTS
    }

    fn attach(_info: &KernelInfo) -> Result<Self> {
        Ok(Self { _t: PhantomData })
    }

    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let mut inputs: [Option<InputTensor>; 4] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let req = |i: usize| {
            inputs[i]
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("{} is required", NAMES[i])))
        };
        let y_layout = "3 (batch, seq, heads*v_head_size) or 4 (batch, heads, seq, v_head_size)";
        let ya_dims = dims("Y_a", &req(0)?.ts.dims, &[3, 4], y_layout)?;
        let la_dims = dims("lse_a", &req(1)?.ts.dims, &[3], "3 (batch, heads, seq)")?;
        for (i, want, got) in [
            (2, &ya_dims, &req(2)?.ts.dims),
            (3, &la_dims, &req(3)?.ts.dims),
        ] {
            if got.len() != want.len()
                || got
                    .iter()
                    .zip(want.iter())
                    .any(|(&g, &w)| usize::try_from(g).ok() != Some(w))
            {
                return Err(Error::invalid(format!(
                    "{}: shape {} must equal {}'s {:?}",
                    NAMES[i],
                    fmt_shape(got),
                    NAMES[i - 2],
                    want
                )));
            }
        }
        let (b, h, s, dv, three_d) =
            shape_of(&ya_dims, &la_dims, &req(0)?.ts.dims, &req(1)?.ts.dims)?;
        let ya = req(0)?.slice::<T>("Y_a", T::ONNX)?;
        let yb = req(2)?.slice::<T>("Y_b", T::ONNX).map_err(|_| {
            Error::invalid(format!(
                "Y_b: element type {} must equal Y_a's {}",
                elem::name(inputs[2].as_ref().map_or(0, |t| t.ts.elem)),
                elem::name(T::ONNX)
            ))
        })?;
        let la = req(1)?.slice::<f32>("lse_a", elem::FLOAT)?;
        let lb = req(3)?.slice::<f32>("lse_b", elem::FLOAT)?;
        if let Some((name, at)) = [("lse_a", la), ("lse_b", lb)].iter().find_map(|(n, l)| {
            l.iter()
                .position(|x| x.is_nan() || *x == f32::INFINITY)
                .map(|at| (*n, at))
        }) {
            return Err(Error::invalid(format!(
                "{name}: element {at} is NaN or +inf (an lse is finite or -inf)"
            )));
        }

        let mut y_out = ctx
            .output(0, &req(0)?.ts.dims.clone())?
            .ok_or_else(|| Error::fail("Y could not be allocated"))?;
        let mut lse_out = ctx.output(1, &req(1)?.ts.dims.clone())?;
        // SAFETY: output 0 is declared T and output 1 float.
        let (y, lse) = unsafe {
            (
                y_out.slice_mut::<T>(),
                lse_out.as_mut().map(|o| o.slice_mut::<f32>()),
            )
        };
        let rows = b * h * s;
        if rows == 0 || dv == 0 {
            return Ok(());
        }
        // Row r of Y (in Y's own order) pairs with lse row `order(r)`.
        let (la, lb): (std::borrow::Cow<'_, [f32]>, std::borrow::Cow<'_, [f32]>) = if three_d {
            (to_bsh(la, b, h, s).into(), to_bsh(lb, b, h, s).into())
        } else {
            (la.into(), lb.into())
        };
        let mut own_lse = vec![0.0f32; rows];
        let (tasks, per_task) = chunks(rows.div_ceil(MIN_ROWS_PER_TASK));
        let per_task = per_task * MIN_ROWS_PER_TASK;
        {
            let y_d = Disjoint::new(y);
            let l_d = Disjoint::new(&mut own_lse);
            ctx.parallel_for(tasks, &|task| {
                let (r0, r1) = (task * per_task, ((task + 1) * per_task).min(rows));
                if r0 >= r1 {
                    return Ok(());
                }
                let n = r1 - r0;
                // SAFETY: task `task` alone owns rows [r0, r1).
                let (yo, lo) = unsafe { (y_d.range(r0 * dv, n * dv)?, l_d.range(r0, n)?) };
                merge(
                    &ya[r0 * dv..][..n * dv],
                    &la[r0..r1],
                    &yb[r0 * dv..][..n * dv],
                    &lb[r0..r1],
                    yo,
                    lo,
                    dv,
                )?;
                Ok(())
            })?;
        }
        if let Some(lse) = lse {
            if three_d {
                // Back from (B, S, H) to (B, H, S).
                for bi in 0..b {
                    for si in 0..s {
                        for hi in 0..h {
                            lse[(bi * h + hi) * s + si] = own_lse[(bi * s + si) * h + hi];
                        }
                    }
                }
            } else {
                lse.copy_from_slice(&own_lse);
            }
        }
        Ok(())
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        let Some(y) = ctx.input(0)? else {
            return Ok(());
        };
        let dims: Vec<Dim> = (0..y.dims.len()).map(|i| Dim::of(&y, i)).collect();
        ctx.set_output(0, y.elem, &dims)
    }
}

/// `(B, H, S)` → `(B, S, H)`, the row order of a 3-D `Y`.
fn to_bsh(x: &[f32], b: usize, h: usize, s: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                out[(bi * s + si) * h + hi] = x[(bi * h + hi) * s + si];
            }
        }
    }
    out
}
