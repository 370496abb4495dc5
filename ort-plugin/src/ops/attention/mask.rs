//! The CPU kernel's view of `attn_mask` and `nonpad_kv_seqlen`: key
//! lengths where the mask is a key-padding prefix, else the dense mask
//! converted for the kernel (bool, or f32 bias padded to the key length).

use std::borrow::Cow;

use tessera_core::{bf16, f16, DenseMask, MaskSpec, MaskStrides};
use tessera_schema::attention::input;

use crate::error::{Error, Result};
use crate::ffi::{elem, InputTensor};
use crate::plan::{Attrs, Plan};

/// The masks of one call beyond the structural rules.
pub(super) struct KeyMasks<'a> {
    /// `nonpad_kv_seqlen` as key counts (aligns the causal rule).
    nonpad: Option<Vec<usize>>,
    /// A bool key-padding mask read as key lengths.
    prefix: Option<Vec<usize>>,
    /// Any other mask, converted.
    dense: Option<MaskData<'a>>,
}

impl<'a> KeyMasks<'a> {
    /// Read `attn_mask` and `nonpad_kv_seqlen` of a planned call.
    pub(super) fn read(
        attrs: &Attrs,
        plan: &Plan,
        mask: Option<&'a InputTensor>,
        nonpad: Option<&InputTensor>,
    ) -> Result<Self> {
        let total = plan.kv_total();
        let nonpad = nonpad.map(|t| kv_lens(t, total)).transpose()?;
        // A bool key-padding mask whose rows are prefixes (right padding, as
        // the graph tool's key-padding input usually is) becomes key lengths,
        // so padded tiles are skipped instead of tested element by element.
        let prefix = match (mask, plan.mask, &nonpad) {
            (Some(t), Some(d), None) if attrs.global_tokens == 0 => {
                prefix_lengths(t, d, plan.batch)?
            }
            _ => None,
        };
        let dense = match (mask, plan.mask) {
            (Some(t), Some(d)) if prefix.is_none() => Some(MaskData::new(t, d, total)?),
            _ => None,
        };
        Ok(Self {
            nonpad,
            prefix,
            dense,
        })
    }

    /// `mask` with these key lengths and dense mask added.
    pub(super) fn apply<'m>(&'m self, mut mask: MaskSpec<'m>) -> MaskSpec<'m> {
        if let Some(lens) = &self.nonpad {
            mask = mask.kv_lens(lens, true);
        }
        if let Some(lens) = &self.prefix {
            mask = mask.kv_lens(lens, false);
        }
        if let Some(m) = &self.dense {
            mask = mask.dense(m.view());
        }
        mask
    }
}

/// The key lengths of a bool `attn_mask` of shape `(B or 1, 1, 1, width)`
/// whose every row is `true…true false…false` (keys past `width` count as
/// masked), or `None` when it has another shape or a row is not a prefix.
/// Cost: one pass over the mask.
fn prefix_lengths(t: &InputTensor, d: [usize; 4], batch: usize) -> Result<Option<Vec<usize>>> {
    if t.ts.elem != elem::BOOL || d[1] != 1 || d[2] != 1 || !(d[0] == 1 || d[0] == batch) {
        return Ok(None);
    }
    let bytes = t.bytes(input::ATTN_MASK.as_str())?;
    let width = d[3];
    let mut lens = Vec::with_capacity(batch);
    for row in bytes.chunks_exact(width.max(1)).take(d[0]) {
        let len = row.iter().take_while(|&&x| x != 0).count();
        if row[len..].iter().any(|&x| x != 0) {
            return Ok(None);
        }
        lens.push(len);
    }
    if lens.len() != d[0] {
        return Ok(None);
    }
    if d[0] == 1 {
        lens.resize(batch, lens[0]);
    }
    Ok(Some(lens))
}

/// `nonpad_kv_seqlen` as key counts, each within `[0, total]`.
fn kv_lens(t: &InputTensor, total: usize) -> Result<Vec<usize>> {
    let raw = t.slice::<i64>(input::NONPAD_KV_SEQLEN.as_str(), elem::INT64)?;
    raw.iter()
        .enumerate()
        .map(|(b, &n)| {
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= total)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{}[{b}] = {n} must be within [0, {total}] (the key sequence length)",
                        input::NONPAD_KV_SEQLEN
                    ))
                })
        })
        .collect()
}

/// A dense mask converted for the kernel: bool stays bool (any nonzero byte
/// is true), float types become f32, and a last axis shorter than the key
/// length is padded as masked (`false` / `-inf`), as the ONNX reference does.
enum MaskData<'a> {
    Bool(Vec<bool>, MaskStrides),
    Float(Cow<'a, [f32]>, MaskStrides),
}

impl<'a> MaskData<'a> {
    fn new(t: &'a InputTensor, d: [usize; 4], total: usize) -> Result<Self> {
        let strides = MaskStrides::broadcast(d[0], d[1], d[2], total);
        let (rows, width) = (d[0] * d[1] * d[2], d[3]);
        fn padded<S: Copy, D: Copy>(
            src: &[S],
            rows: usize,
            width: usize,
            total: usize,
            pad: D,
            f: impl Fn(S) -> D,
        ) -> Vec<D> {
            let mut out = Vec::with_capacity(rows * total);
            for r in 0..rows {
                out.extend(src[r * width..][..width].iter().map(|&x| f(x)));
                out.extend(core::iter::repeat_n(pad, total - width));
            }
            out
        }
        let name = input::ATTN_MASK.as_str();
        Ok(match t.ts.elem {
            elem::BOOL => MaskData::Bool(
                padded(t.bytes(name)?, rows, width, total, false, |x| x != 0),
                strides,
            ),
            elem::FLOAT if width == total => {
                MaskData::Float(Cow::Borrowed(t.slice::<f32>(name, elem::FLOAT)?), strides)
            }
            elem::FLOAT => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<f32>(name, elem::FLOAT)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    |x| x,
                )),
                strides,
            ),
            elem::FLOAT16 => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<f16>(name, elem::FLOAT16)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    f16::to_f32,
                )),
                strides,
            ),
            elem::BFLOAT16 => MaskData::Float(
                Cow::Owned(padded(
                    t.slice::<bf16>(name, elem::BFLOAT16)?,
                    rows,
                    width,
                    total,
                    f32::NEG_INFINITY,
                    bf16::to_f32,
                )),
                strides,
            ),
            other => {
                return Err(Error::invalid(format!(
                    "{}: element type {} is not supported (bool, float, float16 or bfloat16)",
                    input::ATTN_MASK,
                    elem::name(other)
                )))
            }
        })
    }

    fn view(&self) -> DenseMask<'_> {
        match self {
            MaskData::Bool(m, s) => DenseMask::Bool(m, *s),
            MaskData::Float(m, s) => DenseMask::Additive(m, *s),
        }
    }
}
