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
//! alignment, see [`crate::ops`]), `format`: `"e4m3"` (default), `"e5m2"` or
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

//!
//! This module is the op's schema, shared by its kernels: ports,
//! attributes (read once, at attach), the shape rules and inference.
//! [`cpu`] runs it over ORT's pool, `cuda` (feature `cuda`) on the GPU.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use tessera_core::IndexerSpec;
use tessera_schema::lightning_indexer::{attr, input, output, OP};
use tessera_schema::Name;

use crate::attrs::{attr_bool, attr_count};
use crate::error::{Error, Result};
use crate::ffi::{elem, Dim, KernelInfo, ShapeInference};
use crate::op::{Port, PortType, Schema};
use crate::shape::dims;

/// The indexer's sizes from the dims of `index_q` `(B, Sq, Hi, Di)`, `index_k`
/// `(B, Skv, Di)` and `index_w` `(B, Sq, Hi)`, checked against each other
///.
pub(crate) fn indexer_spec(q: &[i64], k: &[i64], w: &[i64]) -> Result<IndexerSpec> {
    let q = dims(
        input::INDEX_Q.as_str(),
        q,
        &[4],
        "4 (batch, q_seq, index_heads, index_dim)",
    )?;
    let k = dims(
        input::INDEX_K.as_str(),
        k,
        &[3],
        "3 (batch, kv_seq, index_dim)",
    )?;
    let w = dims(
        input::INDEX_W.as_str(),
        w,
        &[3],
        "3 (batch, q_seq, index_heads)",
    )?;
    let (b, sq, hi, di) = (q[0], q[1], q[2], q[3]);
    if k[0] != b || k[2] != di {
        return Err(Error::invalid(format!(
            "{}: shape {k:?} must be (batch, kv_seq, index_dim) with batch {b} and index_dim {di} from {}",
            input::INDEX_K,
            input::INDEX_Q
        )));
    }
    if w != [b, sq, hi] {
        return Err(Error::invalid(format!(
            "{}: shape {w:?} must be (batch, q_seq, index_heads) = {:?} from {}",
            input::INDEX_W,
            [b, sq, hi],
            input::INDEX_Q
        )));
    }
    if hi == 0 || di == 0 {
        return Err(Error::invalid(format!(
            "{}: index_heads ({hi}) and index_dim ({di}) must be at least 1",
            input::INDEX_Q
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
pub(crate) const BK: usize = 64;

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
                "{} must be \"e4m3\", \"e5m2\" or \"f32\", got {other:?}",
                attr::FORMAT
            ))),
        }
    }
}

/// The op: the node's attributes, read once.
#[derive(Debug)]
pub struct LightningIndexerOp {
    pub(crate) top_k: usize,
    pub(crate) causal: bool,
    pub(crate) format: Format,
}

impl Schema for LightningIndexerOp {
    const NAME: Name = OP;

    const INPUTS: &'static [Port] = &[
        Port::required(input::INDEX_Q, PortType::Any),
        Port::required(input::INDEX_K, PortType::Any),
        Port::required(input::INDEX_W, PortType::Any),
    ];

    const OUTPUTS: &'static [Port] = &[Port::required(
        output::INDICES,
        PortType::Fixed(elem::INT64),
    )];

    fn attach(info: &KernelInfo) -> Result<Self> {
        let top_k =
            attr_count(attr::TOP_K.as_str(), info.attr_i64(attr::TOP_K.c()))?.ok_or_else(|| {
                Error::invalid(format!(
                    "{} is required (the keys kept per query, >= 1)",
                    attr::TOP_K
                ))
            })?;
        Ok(Self {
            top_k,
            causal: attr_bool(attr::IS_CAUSAL.as_str(), info.attr_i64(attr::IS_CAUSAL.c()))?,
            format: Format::parse(info.attr_string(attr::FORMAT.c()).as_deref())?,
        })
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        let (Some(q), Some(k)) = (ctx.attr_i64(attr::TOP_K.c()), ctx.input(0)?) else {
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

    fn top_k(v: Option<i64>) -> Result<Option<usize>> {
        attr_count(attr::TOP_K.as_str(), v)
    }

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
        assert_eq!(top_k(Some(3)).unwrap(), Some(3));
        assert_eq!(top_k(None).unwrap(), None);
        for bad in [0, -4] {
            let e = top_k(Some(bad)).unwrap_err();
            assert!(e.message.contains("top_k must be >= 1"), "{}", e.message);
        }
    }
}
