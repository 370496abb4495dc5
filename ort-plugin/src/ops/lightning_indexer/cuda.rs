//! The CUDA-EP kernel of `ai.tessera.LightningIndexer`: the op's schema,
//! attributes and shape rules ([`super`]), run by
//! `tessera_cuda::dsa::lightning_indexer` on the node's stream.
//!
//! Same result as the CPU op: q and k quantised to E4M3/E5M2 with one scale
//! per 128 elements (codes and scales bit for bit the CPU's), f32 scores,
//! bottom-right causal rule, top-k in ascending key order with ties to the
//! lower key and `-1` padding; refused the same way (a non-finite input
//! element, named; a visible score that is not finite). Only the order of
//! the f32 additions differs, so two keys whose scores differ in the last
//! bits may be ranked differently.
//!
//! Refused with `ORT_INVALID_ARGUMENT`, naming the rule: `format = "f32"`
//! (the GPU indexer is FP8 only) and `index_dim` other than 64 or 128.
//!
//! # Cost
//! Quantised copies of q and k (one byte per element plus one f32 per 128)
//! and the f32 scores of a chunk of queries (at most 256 MiB) in scratch;
//! two launches per chunk; one stream synchronisation per call to read the
//! error flags.

use tessera_cuda::dsa::{self, IndexerCall, IndexerIo, OnStream};
use tessera_cuda::{Dtype, Fp8Format, Module};
use tessera_schema::lightning_indexer::{attr, input, output, OP};

use super::{indexer_spec, Format, LightningIndexerOp};
use crate::error::{from_cuda, Error, Result};
use crate::ffi::device::{DeviceContext, DeviceTensor};
use crate::ffi::elem;
use crate::op::{required, CudaKernel};
use crate::shape::product;

/// The kernels' name for an input's element type.
fn source(name: &str, t: &DeviceTensor) -> Result<Dtype> {
    match t.ts.elem {
        elem::FLOAT => Ok(Dtype::F32),
        elem::FLOAT16 => Ok(Dtype::F16),
        elem::BFLOAT16 => Ok(Dtype::Bf16),
        other => Err(Error::invalid(format!(
            "{name}: element type {} is not supported (float, float16 or bfloat16)",
            elem::name(other)
        ))),
    }
}

/// The GPU indexer's format for the `format` attribute: FP8 only.
fn kernel_format(f: Format) -> Result<Fp8Format> {
    match f {
        Format::E4M3 => Ok(Fp8Format::E4M3),
        Format::E5M2 => Ok(Fp8Format::E5M2),
        Format::F32 => Err(Error::invalid(format!(
            "{} = \"f32\" is not supported by the CUDA {OP} (FP8 only: \"e4m3\" or \"e5m2\"; the CPU EP runs \"f32\")",
            attr::FORMAT
        ))),
    }
}

impl CudaKernel for LightningIndexerOp {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let format = kernel_format(self.format)?;
        let inputs = ctx.inputs::<3>()?;
        let req = |i: usize| required(&inputs, &input::ALL, i);
        let (qt, kt, wt) = (req(0)?, req(1)?, req(2)?);
        let spec = indexer_spec(&qt.ts.dims, &kt.ts.dims, &wt.ts.dims)?;
        let (b, sq) = (spec.batch, spec.q_len);
        let top_k = self.top_k;
        product(output::INDICES.as_str(), &[b, sq, top_k])?;
        let sources = [
            source(input::INDEX_Q.as_str(), qt)?,
            source(input::INDEX_K.as_str(), kt)?,
            source(input::INDEX_W.as_str(), wt)?,
        ];
        let call = IndexerCall {
            spec,
            top_k,
            causal: self.causal,
            format,
            sources,
            scores_budget: dsa::SCORES_BUDGET,
        };
        let stream = ctx.stream()?;
        let out = ctx
            .output(0, &[b, sq, top_k].map(|d| d as i64))?
            .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::INDICES)))?;
        if b * sq == 0 {
            return Ok(());
        }
        let scratch = ctx.scratch(qt, call.scratch_bytes().map_err(from_cuda)?)?;
        // After ORT's allocations, so the EP's context is current here.
        let module = Module::for_current_context().map_err(from_cuda)?;
        let io = IndexerIo {
            q: qt.ptr,
            k: kt.ptr,
            w: wt.ptr,
            indices: out,
        };
        let dev = OnStream {
            module: &module,
            stream,
        };
        // The call ends with a synchronisation of the stream, so the
        // scratch may be freed when it returns.
        dsa::lightning_indexer(&dev, &call, &io, scratch.ptr()).map_err(from_cuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fp8_formats_map_and_f32_is_refused_by_name() {
        assert_eq!(kernel_format(Format::E4M3).unwrap(), Fp8Format::E4M3);
        assert_eq!(kernel_format(Format::E5M2).unwrap(), Fp8Format::E5M2);
        let e = kernel_format(Format::F32).unwrap_err();
        assert!(e.message.contains("format = \"f32\""), "{}", e.message);
    }

    #[test]
    fn input_types_map_to_the_quantiser_sources() {
        let t = |elem| {
            DeviceTensor::for_tests(
                crate::ffi::TypeShape {
                    elem,
                    symbols: vec![],
                    dims: vec![],
                },
                0,
            )
        };
        assert_eq!(
            source(input::INDEX_Q.as_str(), &t(elem::BFLOAT16)).unwrap(),
            Dtype::Bf16
        );
        assert_eq!(
            source(input::INDEX_K.as_str(), &t(elem::FLOAT16)).unwrap(),
            Dtype::F16
        );
        let e = source(input::INDEX_W.as_str(), &t(elem::DOUBLE)).unwrap_err();
        assert!(
            e.message.starts_with("index_w: element type double"),
            "{}",
            e.message
        );
    }
}
