//! The CPU kernel of `ai.tessera.MergeAttention`: both sides checked and
//! read from host buffers, then row ranges merged over ORT's pool
//! ([`tessera_core::merge()`]); 3-D inputs pair Y's `(B, S, H)` rows with a
//! transposed lse.

use std::borrow::Cow;

use tessera_core::merge;
use tessera_schema::merge_attention::{input, output};

use super::{merge_dims, MergeAttentionOp, MergeShape};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, InputTensor, KernelContext};
use crate::op::{required, CpuKernel};
use crate::parallel::{chunks, Disjoint};
use crate::shape::fmt_shape;

/// Rows merged per task at least (below this the pool costs more than it saves).
const MIN_ROWS_PER_TASK: usize = 256;

impl<T: Dtype> CpuKernel for MergeAttentionOp<T> {
    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let inputs = ctx.inputs::<4>()?;
        let (shape, sides) = Sides::<T>::read(&inputs)?;
        let (y_dims, lse_dims) = (sides.y_dims.to_vec(), sides.lse_dims.to_vec());
        let mut y_out = ctx
            .output(0, &y_dims)?
            .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::Y)))?;
        let mut lse_out = ctx.output(1, &lse_dims)?;
        // SAFETY: output 0 is declared T and output 1 float.
        let (y, lse) = unsafe {
            (
                y_out.slice_mut::<T>(),
                lse_out.as_mut().map(|o| o.slice_mut::<f32>()),
            )
        };
        if shape.rows() == 0 || shape.v_head_dim == 0 {
            return Ok(());
        }
        let own_lse = merge_rows(ctx, &shape, &sides, y)?;
        if let Some(lse) = lse {
            write_lse(&shape, &own_lse, lse);
        }
        Ok(())
    }
}

/// The two sides of a merge, checked: `Y_b` like `Y_a`, `lse_b` like
/// `lse_a`, Y of type T, lse float and finite or `-inf`.
struct Sides<'a, T> {
    ya: &'a [T],
    la: &'a [f32],
    yb: &'a [T],
    lb: &'a [f32],
    y_dims: &'a [i64],
    lse_dims: &'a [i64],
}

impl<'a, T: Dtype> Sides<'a, T> {
    fn read(inputs: &'a [Option<InputTensor>; 4]) -> Result<(MergeShape, Self)> {
        let req = |i: usize| required(inputs, &input::ALL, i);
        let (ya_dims, la_dims) = merge_dims(&req(0)?.ts.dims, &req(1)?.ts.dims)?;
        same_shape(2, &ya_dims, &req(2)?.ts.dims)?;
        same_shape(3, &la_dims, &req(3)?.ts.dims)?;
        let shape = MergeShape::new(&ya_dims, &la_dims, &req(0)?.ts.dims, &req(1)?.ts.dims)?;
        let ya = req(0)?.slice::<T>(input::Y_A.as_str(), T::ONNX)?;
        let yb = req(2)?
            .slice::<T>(input::Y_B.as_str(), T::ONNX)
            .map_err(|_| {
                Error::invalid(format!(
                    "{}: element type {} must equal {}'s {}",
                    input::Y_B,
                    elem::name(inputs[2].as_ref().map_or(0, |t| t.ts.elem)),
                    input::Y_A,
                    elem::name(T::ONNX)
                ))
            })?;
        let la = req(1)?.slice::<f32>(input::LSE_A.as_str(), elem::FLOAT)?;
        let lb = req(3)?.slice::<f32>(input::LSE_B.as_str(), elem::FLOAT)?;
        finite_or_minus_inf(&[(input::LSE_A.as_str(), la), (input::LSE_B.as_str(), lb)])?;
        let sides = Self {
            ya,
            la,
            yb,
            lb,
            y_dims: &req(0)?.ts.dims,
            lse_dims: &req(1)?.ts.dims,
        };
        Ok((shape, sides))
    }
}

/// Input `i` has the dims `want` of input `i - 2`.
fn same_shape(i: usize, want: &[usize], got: &[i64]) -> Result<()> {
    if got.len() != want.len()
        || got
            .iter()
            .zip(want.iter())
            .any(|(&g, &w)| usize::try_from(g).ok() != Some(w))
    {
        return Err(Error::invalid(format!(
            "{}: shape {} must equal {}'s {:?}",
            input::ALL[i],
            fmt_shape(got),
            input::ALL[i - 2],
            want
        )));
    }
    Ok(())
}

/// Every lse element is finite or `-inf`.
fn finite_or_minus_inf(lses: &[(&str, &[f32])]) -> Result<()> {
    if let Some((name, at)) = lses.iter().find_map(|(n, l)| {
        l.iter()
            .position(|x| x.is_nan() || *x == f32::INFINITY)
            .map(|at| (*n, at))
    }) {
        return Err(Error::invalid(format!(
            "{name}: element {at} is NaN or +inf (an lse is finite or -inf)"
        )));
    }
    Ok(())
}

/// Merge every row into `y` over the pool; the merged lse in Y's row order.
fn merge_rows<T: Dtype>(
    ctx: &KernelContext,
    shape: &MergeShape,
    sides: &Sides<'_, T>,
    y: &mut [T],
) -> Result<Vec<f32>> {
    let (b, h, s, dv) = (shape.batch, shape.heads, shape.seq, shape.v_head_dim);
    let rows = shape.rows();
    // Row r of Y (in Y's own order) pairs with lse row `order(r)`.
    let (la, lb): (Cow<'_, [f32]>, Cow<'_, [f32]>) = if shape.three_d {
        (
            to_bsh(sides.la, b, h, s).into(),
            to_bsh(sides.lb, b, h, s).into(),
        )
    } else {
        (sides.la.into(), sides.lb.into())
    };
    let (ya, yb) = (sides.ya, sides.yb);
    let mut own_lse = vec![0.0f32; rows];
    let (tasks, per_task) = chunks(rows.div_ceil(MIN_ROWS_PER_TASK));
    let per_task = per_task * MIN_ROWS_PER_TASK;
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
    Ok(own_lse)
}

/// The merged lse, in Y's row order, into the `(B, H, S)` output.
fn write_lse(shape: &MergeShape, own_lse: &[f32], lse: &mut [f32]) {
    let (b, h, s) = (shape.batch, shape.heads, shape.seq);
    if shape.three_d {
        // Back from (B, S, H) to (B, H, S).
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    lse[(bi * h + hi) * s + si] = own_lse[(bi * s + si) * h + hi];
                }
            }
        }
    } else {
        lse.copy_from_slice(own_lse);
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
