//! `ai.tessera.LightningIndexer` v1: DeepSeek-V3.2's lightning indexer and
//! an exact top-k per query.
//!
//! | # | input | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `index_q` | float, float16 or bfloat16 | `(B, Sq, Hi, Di)` |
//! | 1 | `index_k` | float, float16 or bfloat16 | `(B, Skv, Di)` |
//! | 2 | `index_w` | float, float16 or bfloat16 | `(B, Sq, Hi)` |
//!
//! | # | output | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `indices` | int64 | `(B, Sq, top_k)`: the `top_k` best keys of each query in ascending key order, `-1` where fewer keys are visible |
//!
//! Attributes: `top_k` (required, >= 1), `is_causal` (0/1, bottom-right
//! alignment, see [`crate::dsa`]), `format`: `"e4m3"` (default), `"e5m2"` or
//! `"f32"`.
//!
//! The score is `I[t,s] = Σ_j w[t,j]·ReLU(q[t,j]·k[s])`. With an FP8
//! `format`, q and k are quantised once per call with one f32 scale per 128
//! elements of a row (DeepSeek-V3's recipe) and the scores accumulate in
//! f32; ties go to the lower key index.
//!
//! # Cost
//! `2·Hi·Di` flops per visible (query, key) pair plus an `O(Skv)` radix
//! select per query. Work items are (batch, query tile of [`BQ`]); each
//! task holds `BQ·Skv` f32 scores and the indexer scratch while it runs.
//! Quantised copies of q and k: one byte per element plus one scale per 128.

use core::ffi::CStr;
use std::borrow::Cow;

use tessera_core::fp8::{quantize, SCALE_GROUP};
use tessera_core::kernel::MicroKernel;
use tessera_core::{
    bf16, f16, Element, Fp8, Indexer, IndexerSpec, LightningIndexer, MaskSpec, Scales, E4M3, E5M2,
};

use super::{attr_at_least, attr_bool, causal_offset, chunks, dims, with_kernel, Disjoint};
use crate::error::{Error, Result};
use crate::ffi::{elem, Dim, InputTensor, KernelContext, KernelInfo, ShapeInference};
use crate::op::{CustomOp, Port, PortType};

/// The op's input names, in order.
pub(crate) const INPUT_NAMES: [&str; 3] = ["index_q", "index_k", "index_w"];

/// The indexer's sizes from the dims of `index_q` `(B, Sq, Hi, Di)`, `index_k`
/// `(B, Skv, Di)` and `index_w` `(B, Sq, Hi)`, checked against each other
/// (shared by the CPU and CUDA kernels).
pub(crate) fn indexer_spec(q: &[i64], k: &[i64], w: &[i64]) -> Result<IndexerSpec> {
    let q = dims(
        "index_q",
        q,
        &[4],
        "4 (batch, q_seq, index_heads, index_dim)",
    )?;
    let k = dims("index_k", k, &[3], "3 (batch, kv_seq, index_dim)")?;
    let w = dims("index_w", w, &[3], "3 (batch, q_seq, index_heads)")?;
    let (b, sq, hi, di) = (q[0], q[1], q[2], q[3]);
    if k[0] != b || k[2] != di {
        return Err(Error::invalid(format!(
            "index_k: shape {k:?} must be (batch, kv_seq, index_dim) with batch {b} and index_dim {di} from index_q"
        )));
    }
    if w != [b, sq, hi] {
        return Err(Error::invalid(format!(
            "index_w: shape {w:?} must be (batch, q_seq, index_heads) = {:?} from index_q",
            [b, sq, hi]
        )));
    }
    if hi == 0 || di == 0 {
        return Err(Error::invalid(format!(
            "index_q: index_heads ({hi}) and index_dim ({di}) must be at least 1"
        )));
    }
    Ok(IndexerSpec {
        batch: b,
        q_len: sq,
        kv_len: k[1],
        heads: hi,
        dim: di,
    })
}

/// Queries per tile.
pub const BQ: usize = 16;
/// Keys per tile.
const BK: usize = 64;

/// Storage of q and k while scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCP FP8 E4M3 (fn), per-128 scales.
    E4M3,
    /// OCP FP8 E5M2, per-128 scales.
    E5M2,
    /// The f32 inputs as they are.
    F32,
}

impl Format {
    /// Parse the `format` attribute (absent = `e4m3`).
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s.unwrap_or("e4m3") {
            "e4m3" => Ok(Format::E4M3),
            "e5m2" => Ok(Format::E5M2),
            "f32" => Ok(Format::F32),
            other => Err(Error::invalid(format!(
                "format must be \"e4m3\", \"e5m2\" or \"f32\", got {other:?}"
            ))),
        }
    }
}

/// The op.
#[derive(Debug)]
pub struct LightningIndexerOp {
    pub(crate) top_k: usize,
    pub(crate) causal: bool,
    pub(crate) format: Format,
}

const INPUTS: &[Port] = &[
    Port::required("index_q", PortType::Any),
    Port::required("index_k", PortType::Any),
    Port::required("index_w", PortType::Any),
];
const OUTPUTS: &[Port] = &[Port::required("indices", PortType::Fixed(elem::INT64))];

/// Read `top_k` (required, >= 1) as `usize`.
pub(crate) fn top_k_attr(v: Option<i64>) -> Result<Option<usize>> {
    match attr_at_least("top_k", v, 1)? {
        None => Ok(None),
        Some(k) => usize::try_from(k)
            .map(Some)
            .map_err(|_| Error::invalid(format!("top_k = {k} is too large"))),
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

impl CustomOp for LightningIndexerOp {
    const NAME: &'static CStr = c"LightningIndexer";

    fn inputs() -> &'static [Port] {
        INPUTS
    }

    fn outputs() -> &'static [Port] {
        OUTPUTS
    }

    fn attach(info: &KernelInfo) -> Result<Self> {
        let top_k = top_k_attr(info.attr_i64(c"top_k"))?
            .ok_or_else(|| Error::invalid("top_k is required (the keys kept per query, >= 1)"))?;
        Ok(Self {
            top_k,
            causal: attr_bool("is_causal", info.attr_i64(c"is_causal"))?,
            format: Format::parse(info.attr_string(c"format").as_deref())?,
        })
    }

    fn compute(&self, ctx: &mut KernelContext) -> Result<()> {
        let mut inputs: [Option<InputTensor>; 3] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let req = |i: usize| {
            inputs[i]
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("{} is required", INPUT_NAMES[i])))
        };
        let (qt, kt, wt) = (req(0)?, req(1)?, req(2)?);
        let spec = indexer_spec(&qt.ts.dims, &kt.ts.dims, &wt.ts.dims)?;
        let (b, sq) = (spec.batch, spec.q_len);
        super::product("indices", &[b, sq, self.top_k])?;
        let (qx, kx, wx) = (
            finite_f32(qt, "index_q")?,
            finite_f32(kt, "index_k")?,
            finite_f32(wt, "index_w")?,
        );
        let out_dims = [b, sq, self.top_k].map(|d| d as i64);
        let mut y = ctx
            .output(0, &out_dims)?
            .ok_or_else(|| Error::fail("indices could not be allocated"))?;
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

    fn infer(ctx: &ShapeInference) -> Result<()> {
        let (Some(q), Some(k)) = (ctx.attr_i64(c"top_k"), ctx.input(0)?) else {
            return Ok(());
        };
        if q < 1 || k.dims.len() != 4 {
            return Ok(());
        }
        ctx.set_output(
            0,
            elem::INT64,
            &[Dim::of(&k, 0), Dim::of(&k, 1), Dim::Known(q)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names() {
        assert_eq!(Format::parse(None).unwrap(), Format::E4M3);
        assert_eq!(Format::parse(Some("e5m2")).unwrap(), Format::E5M2);
        assert_eq!(Format::parse(Some("f32")).unwrap(), Format::F32);
        let e = Format::parse(Some("fp8")).unwrap_err();
        assert!(e.message.contains("format must be"), "{}", e.message);
    }

    #[test]
    fn top_k_must_be_positive() {
        assert_eq!(top_k_attr(Some(3)).unwrap(), Some(3));
        assert_eq!(top_k_attr(None).unwrap(), None);
        for bad in [0, -4] {
            let e = top_k_attr(Some(bad)).unwrap_err();
            assert!(e.message.contains("top_k must be >= 1"), "{}", e.message);
        }
    }
}
