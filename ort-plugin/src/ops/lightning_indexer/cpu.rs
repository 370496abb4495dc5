//! The CPU kernel of `ai.tessera.LightningIndexer`: inputs widened to f32
//! and quantised once per call, then (batch, query tile) items scored and
//! selected over ORT's pool.

use std::borrow::Cow;

use tessera_core::fp8::{quantize, SCALE_GROUP};
use tessera_core::kernel::MicroKernel;
use tessera_core::{
    bf16, f16, Element, Fp8, Indexer, IndexerSpec, LightningIndexer, MaskSpec, Scales, E4M3, E5M2,
};
use tessera_schema::lightning_indexer::{input, output};

use super::{indexer_spec, Format, LightningIndexerOp, BK, BQ};
use crate::error::{Error, Result};
use crate::ffi::{elem, InputTensor, KernelContext};
use crate::kernel::with_kernel;
use crate::op::{required, CpuKernel};
use crate::parallel::{chunks, Disjoint};
use crate::shape::{causal_offset, product};

impl CpuKernel for LightningIndexerOp {
    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let inputs = ctx.inputs::<3>()?;
        let req = |i: usize| required(&inputs, &input::ALL, i);
        let (qt, kt, wt) = (req(0)?, req(1)?, req(2)?);
        let spec = indexer_spec(&qt.ts.dims, &kt.ts.dims, &wt.ts.dims)?;
        let (b, sq) = (spec.batch, spec.q_len);
        product(output::INDICES.as_str(), &[b, sq, self.top_k])?;
        let (qx, kx, wx) = (
            finite_f32(qt, input::INDEX_Q.as_str())?,
            finite_f32(kt, input::INDEX_K.as_str())?,
            finite_f32(wt, input::INDEX_W.as_str())?,
        );
        let out_dims = [b, sq, self.top_k].map(|d| d as i64);
        let mut y = ctx
            .output(0, &out_dims)?
            .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::INDICES)))?;
        // SAFETY: output 0 is declared int64.
        let out = unsafe { y.slice_mut::<i64>() };
        if out.is_empty() {
            return Ok(());
        }
        let skv = spec.kv_len;
        let mask = if self.causal {
            MaskSpec::NONE.causal(causal_offset(sq, skv)?)
        } else {
            MaskSpec::NONE
        };
        match self.format {
            Format::E4M3 => self.run_fp8::<E4M3>(ctx, spec, &mask, (&qx, &kx, &wx), out),
            Format::E5M2 => self.run_fp8::<E5M2>(ctx, spec, &mask, (&qx, &kx, &wx), out),
            Format::F32 => {
                let ix = Indexer::new(spec, &mask, &qx, None, &kx, None, &wx)?;
                self.run(ctx, &ix, out)
            }
        }
    }
}

/// `x` as f32: float in place, float16/bfloat16 widened (exactly) into a
/// copy; the first non-finite element is refused by name (its FP8 scale
/// would be meaningless).
fn finite_f32<'a>(t: &'a InputTensor, name: &str) -> Result<Cow<'a, [f32]>> {
    let x: Cow<'a, [f32]> = match t.ts.elem {
        elem::FLOAT => Cow::Borrowed(t.slice::<f32>(name, elem::FLOAT)?),
        elem::FLOAT16 => Cow::Owned(widen::<f16>(t.slice(name, elem::FLOAT16)?)),
        elem::BFLOAT16 => Cow::Owned(widen::<bf16>(t.slice(name, elem::BFLOAT16)?)),
        other => {
            return Err(Error::invalid(format!(
                "{name}: element type {} is not supported (float, float16 or bfloat16)",
                elem::name(other)
            )))
        }
    };
    if let Some(at) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{name}: element {at} is {}, must be finite",
            x[at]
        )));
    }
    Ok(x)
}

fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// `x` quantised row by row (`row_len` elements) with per-128 scales.
fn quantised<F: Fp8>(x: &[f32], row_len: usize) -> Result<(Vec<F>, Vec<f32>)> {
    let rows = x.len() / row_len.max(1);
    let mut codes = vec![F::default(); x.len()];
    let mut scales = vec![0.0f32; rows * row_len.div_ceil(SCALE_GROUP)];
    if !x.is_empty() {
        quantize(x, row_len, SCALE_GROUP, &mut codes, &mut scales)?;
    }
    Ok((codes, scales))
}

impl LightningIndexerOp {
    fn run<T: Element>(
        &self,
        ctx: &KernelContext,
        ix: &Indexer<'_, T>,
        out: &mut [i64],
    ) -> Result<()> {
        with_kernel!(k => self.run_with(ctx, k, ix, out))
    }

    fn run_with<K: MicroKernel, T: Element>(
        &self,
        ctx: &KernelContext,
        kernel: K,
        ix: &Indexer<'_, T>,
        out: &mut [i64],
    ) -> Result<()> {
        type L<K> = LightningIndexer<K, BQ, BK>;
        let s = *ix.spec();
        let lx = L::new(kernel);
        let q_tiles = L::<K>::q_tiles(s.q_len);
        let items = s.batch * q_tiles;
        let (tasks, per_task) = chunks(items);
        let (scratch_len, scores_len) = (
            L::<K>::scratch_len(s.heads, s.dim),
            L::<K>::scores_len(s.kv_len),
        );
        let out = Disjoint::new(out);
        ctx.parallel_for(tasks, &|task| {
            let mut scratch = vec![0.0f32; scratch_len];
            let mut scores = vec![0.0f32; scores_len];
            for item in task * per_task..((task + 1) * per_task).min(items) {
                let (b, t) = (item / q_tiles, item % q_tiles);
                let row0 = b * s.q_len + t * BQ;
                let rows = BQ.min(s.q_len - t * BQ);
                // SAFETY: rows [row0, row0 + rows) of batch b belong to this
                // (b, tile) item alone, and each item runs in one task.
                let dst = unsafe { out.range(row0 * self.top_k, rows * self.top_k)? };
                lx.top_k_tile(ix, b, t, self.top_k, dst, &mut scores, &mut scratch)?;
            }
            Ok(())
        })
    }

    fn run_fp8<F: Fp8>(
        &self,
        ctx: &KernelContext,
        spec: IndexerSpec,
        mask: &MaskSpec<'_>,
        (q, k, w): (&[f32], &[f32], &[f32]),
        out: &mut [i64],
    ) -> Result<()> {
        let (qc, qs) = quantised::<F>(q, spec.dim)?;
        let (kc, ks) = quantised::<F>(k, spec.dim)?;
        let group = SCALE_GROUP;
        let ix = Indexer::new(
            spec,
            mask,
            &qc,
            Some(Scales { values: &qs, group }),
            &kc,
            Some(Scales { values: &ks, group }),
            w,
        )?;
        self.run(ctx, &ix, out)
    }
}
