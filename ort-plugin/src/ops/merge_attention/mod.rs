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
//! ([`tessera_core::merge()`]); a side with `lse = -inf` has weight 0, and two
//! such sides give `Y = 0`, `lse = -inf`. For 3-D `Y` the head count comes
//! from `lse_a.shape[1]`. T is float, float16 or bfloat16; math is f32.
//!
//! # Cost
//! `O(B·H·S·Dv)`, split over row ranges of the intra-op pool; 3-D inputs
//! also transpose the lse to `(B, S, H)` (`3·B·H·S` f32s).

//!
//! This module is the op's schema, shared by its kernels: ports, the
//! shape rules and inference. [`cpu`] merges over ORT's pool, `cuda`
//! (feature `cuda`) in one launch.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use core::marker::PhantomData;

use tessera_schema::merge_attention::{input, output, OP};
use tessera_schema::Name;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ffi::{elem, Dim, KernelInfo, ShapeInference};
use crate::op::{Port, PortType, Schema};
use crate::shape::{dims, fmt_shape};

/// The op, for element type `T` (it has no attributes).
#[derive(Debug)]
pub struct MergeAttentionOp<T> {
    _t: PhantomData<fn() -> T>,
}

impl<T: Dtype> Schema for MergeAttentionOp<T> {
    const NAME: Name = OP;

    const INPUTS: &'static [Port] = &[
        Port::required(input::Y_A, PortType::Fixed(T::ONNX)),
        Port::required(input::LSE_A, PortType::Any),
        Port::required(input::Y_B, PortType::Any),
        Port::required(input::LSE_B, PortType::Any),
    ];

    const OUTPUTS: &'static [Port] = &[
        Port::required(output::Y, PortType::Fixed(T::ONNX)),
        Port::optional(output::LSE, PortType::Fixed(elem::FLOAT)),
    ];

    fn attach(_info: &KernelInfo) -> Result<Self> {
        Ok(Self { _t: PhantomData })
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        let Some(y) = ctx.input(0)? else {
            return Ok(());
        };
        let dims: Vec<Dim> = (0..y.dims.len()).map(|i| Dim::of(&y, i)).collect();
        ctx.set_output(0, y.elem, &dims)
    }
}

/// The dims of `Y_a` (3-D or 4-D) and `lse_a` (3-D), checked for rank and
/// size.
pub(crate) fn merge_dims(y: &[i64], lse: &[i64]) -> Result<(Vec<usize>, Vec<usize>)> {
    let y_layout = "3 (batch, seq, heads*v_head_size) or 4 (batch, heads, seq, v_head_size)";
    Ok((
        dims(input::Y_A.as_str(), y, &[3, 4], y_layout)?,
        dims(input::LSE_A.as_str(), lse, &[3], "3 (batch, heads, seq)")?,
    ))
}

/// The geometry of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MergeShape {
    /// `B`
    pub batch: usize,
    /// `H`
    pub heads: usize,
    /// `S`
    pub seq: usize,
    /// `Dv`
    pub v_head_dim: usize,
    /// Y is `(B, S, H·Dv)`, its rows ordered `(B, S, H)`.
    pub three_d: bool,
}

impl MergeShape {
    /// `(B, H, S, Dv)` and the layout of Y from the [`merge_dims`] of `y`
    /// and `lse`, or the rule that `lse` is not `(batch, heads, seq)` of Y.
    pub(crate) fn new(yd: &[usize], ld: &[usize], y: &[i64], lse: &[i64]) -> Result<Self> {
        let (b, h, s) = (ld[0], ld[1], ld[2]);
        let bad = || {
            Error::invalid(format!(
                "{}: shape {} must be (batch, heads, seq) of {} {}",
                input::LSE_A,
                fmt_shape(lse),
                input::Y_A,
                fmt_shape(y)
            ))
        };
        let (v_head_dim, three_d) = if yd.len() == 4 {
            if yd[..3] != [b, h, s] {
                return Err(bad());
            }
            (yd[3], false)
        } else {
            if yd[0] != b || yd[1] != s || h == 0 || yd[2] % h != 0 {
                return Err(bad());
            }
            (yd[2] / h, true)
        };
        Ok(Self {
            batch: b,
            heads: h,
            seq: s,
            v_head_dim,
            three_d,
        })
    }

    /// Rows of Y (and of the lse).
    pub(crate) fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }
}
