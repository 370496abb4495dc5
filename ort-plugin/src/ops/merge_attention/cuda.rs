//! The CUDA-EP kernel of `ai.tessera.MergeAttention`: the op's schema and
//! shape rules ([`super`]), run by `tessera-cuda`'s merge kernel.
//!
//! The kernel pairs row `r` of Y with element `r` of the lse, so it serves
//! 4-D `(B, H, S, Dv)` inputs and 3-D `(B, S, H·Dv)` ones where `H = 1` or
//! `S = 1` (the row orders agree); other 3-D inputs are refused with
//! `ORT_INVALID_ARGUMENT`. When the node leaves out the `lse` output the
//! kernel writes it to scratch. Not checked here, unlike on the CPU: NaN or
//! `+inf` in the lse inputs (the host cannot read them).
//!
//! # Cost
//! One launch, `O(B·H·S·Dv)`; `4·B·H·S` bytes of scratch without `lse`.

use tessera_cuda::{MergeBuffers, Module};
use tessera_schema::merge_attention::{input, output};

use super::{merge_dims, MergeAttentionOp, MergeShape};
use crate::dtype::Dtype;
use crate::error::{ensure, from_cuda, Error, Result};
use crate::ffi::device::{DeviceContext, DeviceTensor};
use crate::ffi::elem;
use crate::op::{required, CudaKernel};
use crate::shape::fmt_shape;

/// `(rows, Dv)` of a merge whose Y rows pair with the lse rows, or the rule
/// the shapes break.
pub fn rows_and_width(y: &[i64], lse: &[i64]) -> Result<(usize, usize)> {
    let (yd, ld) = merge_dims(y, lse)?;
    let shape = MergeShape::new(&yd, &ld, y, lse)?;
    let (h, s) = (shape.heads, shape.seq);
    ensure!(
        !shape.three_d || h == 1 || s == 1,
        "{}: 3-D inputs with more than one head and one position ({h} heads, {s} positions) are not supported by the CUDA merge (use 4-D (batch, heads, seq, v_head_size))",
        input::Y_A
    );
    Ok((shape.rows(), shape.v_head_dim))
}

impl<T: Dtype> CudaKernel for MergeAttentionOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let inputs = ctx.inputs::<4>()?;
        let req = |i: usize| required(&inputs, &input::ALL, i);
        let (ya, la, yb, lb) = (req(0)?, req(1)?, req(2)?, req(3)?);
        check_sides::<T>([ya, la, yb, lb])?;
        let (rows, dv) = rows_and_width(&ya.ts.dims, &la.ts.dims)?;
        let stream = ctx.stream()?;
        let y = ctx
            .output(0, &ya.ts.dims)?
            .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::Y)))?;
        let lse_out = ctx.output(1, &la.ts.dims)?;
        if rows == 0 || dv == 0 {
            return Ok(());
        }
        // After ORT's allocations, so the EP's context is current here.
        let module = Module::for_current_context().map_err(from_cuda)?;
        let scratch = match lse_out {
            Some(_) => None,
            None => Some(ctx.scratch(la, rows * 4)?),
        };
        let lse = match (&lse_out, &scratch) {
            (Some(p), _) => *p,
            (None, Some(s)) => s.ptr(),
            (None, None) => return Err(Error::fail("internal: no lse buffer")),
        };
        let bufs = MergeBuffers {
            y_a: ya.ptr,
            lse_a: la.ptr,
            y_b: yb.ptr,
            lse_b: lb.ptr,
            y,
            lse,
        };
        module
            .merge(stream, rows, dv, T::CUDA, &bufs)
            .map_err(from_cuda)?;
        // The scratch lse is freed after the launch is queued.
        drop(scratch);
        Ok(())
    }
}

/// `Y_b` and `lse_b` have the shapes of `Y_a` and `lse_a`; Y is T and the
/// lse float.
fn check_sides<T: Dtype>(sides: [&DeviceTensor; 4]) -> Result<()> {
    for i in [2, 3] {
        let (t, like) = (sides[i], sides[i - 2]);
        ensure!(
            t.ts.dims == like.ts.dims,
            "{}: shape {} must equal {}'s {}",
            input::ALL[i],
            fmt_shape(&t.ts.dims),
            input::ALL[i - 2],
            fmt_shape(&like.ts.dims)
        );
    }
    for (i, want) in [T::ONNX, elem::FLOAT, T::ONNX, elem::FLOAT]
        .into_iter()
        .enumerate()
    {
        let t = sides[i];
        ensure!(
            t.ts.elem == want,
            "{}: element type {} must be {}",
            input::ALL[i],
            elem::name(t.ts.elem),
            elem::name(want)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pair_with_lse_rows_or_the_rule_is_named() {
        assert_eq!(
            rows_and_width(&[2, 3, 5, 64], &[2, 3, 5]).unwrap(),
            (30, 64)
        );
        assert_eq!(rows_and_width(&[2, 5, 64], &[2, 1, 5]).unwrap(), (10, 64));
        assert_eq!(rows_and_width(&[2, 1, 192], &[2, 3, 1]).unwrap(), (6, 64));
        let e = rows_and_width(&[2, 5, 192], &[2, 3, 5]).unwrap_err();
        assert!(
            e.message.contains("not supported by the CUDA merge"),
            "{}",
            e.message
        );
        let e = rows_and_width(&[2, 3, 4, 64], &[2, 3, 5]).unwrap_err();
        assert!(
            e.message.contains("lse_a: shape (2, 3, 5)"),
            "{}",
            e.message
        );
        let e = rows_and_width(&[2, 64], &[2, 3, 5]).unwrap_err();
        assert!(e.message.contains("Y_a: rank"), "{}", e.message);
    }
}
