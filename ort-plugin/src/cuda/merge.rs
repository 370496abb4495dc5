//! `ai.tessera.MergeAttention` on the CUDA EP: the schema and shape rules of
//! the CPU op ([`crate::dsa::merge`]), run by `tessera-cuda`'s merge kernel.
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

use core::ffi::CStr;
use core::marker::PhantomData;

use tessera_core::{bf16, f16};
use tessera_cuda::{Dtype, MergeBuffers, Module};

use super::device::{DeviceContext, DeviceTensor};
use super::{from_cuda, host_compute_refused, DeviceKernel};
use crate::dsa::merge::{MergeAttentionOp, MergeDtype};
use crate::dsa::{dims, fmt_shape};
use crate::error::{ensure, Error, Result};
use crate::ffi::{elem, KernelContext, KernelInfo, ShapeInference};
use crate::op::{CustomOp, Port};

/// An element type of the merge kernel.
pub trait MergeKernelDtype: MergeDtype {
    /// The kernel's dtype.
    const CUDA: Dtype;
}

impl MergeKernelDtype for f32 {
    const CUDA: Dtype = Dtype::F32;
}

impl MergeKernelDtype for f16 {
    const CUDA: Dtype = Dtype::F16;
}

impl MergeKernelDtype for bf16 {
    const CUDA: Dtype = Dtype::Bf16;
}

/// The CUDA-EP op, for element type `T`.
#[derive(Debug)]
pub struct CudaMergeOp<T> {
    _t: PhantomData<fn() -> T>,
}

const NAMES: [&str; 4] = ["Y_a", "lse_a", "Y_b", "lse_b"];

/// `(rows, Dv)` of a merge whose Y rows pair with the lse rows, or the rule
/// the shapes break.
pub fn rows_and_width(y: &[i64], lse: &[i64]) -> Result<(usize, usize)> {
    let y_layout = "3 (batch, seq, heads*v_head_size) or 4 (batch, heads, seq, v_head_size)";
    let yd = dims("Y_a", y, &[3, 4], y_layout)?;
    let ld = dims("lse_a", lse, &[3], "3 (batch, heads, seq)")?;
    let (b, h, s) = (ld[0], ld[1], ld[2]);
    let bad = || {
        Error::invalid(format!(
            "lse_a: shape {} must be (batch, heads, seq) of Y_a {}",
            fmt_shape(lse),
            fmt_shape(y)
        ))
    };
    let dv = if yd.len() == 4 {
        if yd[..3] != [b, h, s] {
            return Err(bad());
        }
        yd[3]
    } else {
        if yd[0] != b || yd[1] != s || h == 0 || yd[2] % h != 0 {
            return Err(bad());
        }
        ensure!(
            h == 1 || s == 1,
            "Y_a: 3-D inputs with more than one head and one position ({h} heads, {s} positions) are not supported by the CUDA merge (use 4-D (batch, heads, seq, v_head_size))"
        );
        yd[2] / h
    };
    Ok((b * h * s, dv))
}

impl<T: MergeKernelDtype> CustomOp for CudaMergeOp<T> {
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

    fn compute(&self, _ctx: &mut KernelContext) -> Result<()> {
        Err(host_compute_refused())
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        MergeAttentionOp::<T>::infer(ctx)
    }
}

impl<T: MergeKernelDtype> DeviceKernel for CudaMergeOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let mut inputs: [Option<DeviceTensor>; 4] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let req = |i: usize| {
            inputs[i]
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("{} is required", NAMES[i])))
        };
        let (ya, la, yb, lb) = (req(0)?, req(1)?, req(2)?, req(3)?);
        for (i, t, like) in [(2, yb, ya), (3, lb, la)] {
            ensure!(
                t.ts.dims == like.ts.dims,
                "{}: shape {} must equal {}'s {}",
                NAMES[i],
                fmt_shape(&t.ts.dims),
                NAMES[i - 2],
                fmt_shape(&like.ts.dims)
            );
        }
        for (i, t, want) in [
            (0, ya, T::ONNX),
            (1, la, elem::FLOAT),
            (2, yb, T::ONNX),
            (3, lb, elem::FLOAT),
        ] {
            ensure!(
                t.ts.elem == want,
                "{}: element type {} must be {}",
                NAMES[i],
                elem::name(t.ts.elem),
                elem::name(want)
            );
        }
        let (rows, dv) = rows_and_width(&ya.ts.dims, &la.ts.dims)?;
        let stream = ctx.stream()?;
        let y = ctx
            .output(0, &ya.ts.dims)?
            .ok_or_else(|| Error::fail("Y could not be allocated"))?;
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
