//! `ai.tessera.TopKAttention` v1: attention restricted to selected keys.
//!
//! | # | input | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Q` | T | `(B, Hq, Sq, D)` or `(B, Sq, Hq·D)` |
//! | 1 | `K` | T | `(B, Hkv, Skv, D)` or `(B, Skv, Hkv·D)` |
//! | 2 | `V` | T | `(B, Hkv, Skv, Dv)` or `(B, Skv, Hkv·Dv)` |
//! | 3 | `indices` (opt.) | int64 | `(B, Sq, k)` shared by every head (`LightningIndexer`'s output) or `(B, Hkv, Sq, k)` per KV head; `-1` pads |
//!
//! | # | output | type | shape |
//! | --- | --- | --- | --- |
//! | 0 | `Y` | T | like Q with `Dv` |
//! | 1 | `selected_indices` (opt.) | int64 | `(B, Hkv, Sq, W)`: the keys each query attended to, ascending, `-1`-padded |
//! | 2 | `softmax_lse` (opt.) | float | `(B, Hq, Sq)`, natural log, `-inf` for a row that saw no key |
//!
//! T is float, float16 or bfloat16; arithmetic is f32. Attributes:
//! `top_k`, `is_causal` (bottom-right, see [`crate::ops`]), `scale`,
//! `q_num_heads`/`kv_num_heads` (3-D inputs), `left_window_size` and
//! `num_global_tokens`.
//!
//! **With `indices`** (index mode) each query attends to the listed keys
//! that the causal rule lets it see; an entry outside `[0, Skv)` (other than
//! `-1`) or a key listed twice in a row is refused, naming the row. `top_k`
//! may be left out; when set it must equal the list width `k`. The window
//! `[p - left_window_size, p]` and the sinks `[0, num_global_tokens)` are
//! always kept here too: keys of theirs a row does not list are appended
//! to it, so `W = k + min(left_window_size + 1 + num_global_tokens, Skv)`
//! (`W = k` without them).
//!
//! **Without `indices`** (training-free mode, as Quest / NSA selection)
//! keys are grouped in blocks of [`BK`]; each block keeps the element-wise
//! min and max of its keys (f32), and for each (query tile of [`BQ`], KV
//! head) the blocks with the highest upper bound `Σ_d max(q_d·min_d,
//! q_d·max_d)` are chosen, `ceil(top_k / BK)` of them, plus the blocks of
//! every query's local window `[p - left_window_size, p]` and of the first
//! `num_global_tokens` keys, which are always kept. The exact flash kernel
//! then runs on the chosen tiles. With `top_k` at least the keys a query
//! may see the result is dense attention, bit for bit. `W` is
//! `BK · min(blocks, max(ceil(top_k / BK) + 2, forced blocks))`.
//!
//! # Cost
//! Index mode: `4·D` flops per listed key and query head, nothing that grows
//! with `Skv` but an `Skv/8`-byte bitmap per task. Training-free: one pass
//! over K for the summaries (`B·Hkv·2D·ceil(Skv/BK)` f32), `4·D·BQ·G` flops
//! per (tile, block) to score, then `4·D·BQ·BK` per selected tile and head.

//!
//! This module is the op's schema, shared by its kernels: ports,
//! attributes (read once, at attach), the shape rules of `indices` and
//! inference. [`cpu`] runs both modes over ORT's pool, `cuda` (feature
//! `cuda`) the index mode on the GPU.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use core::marker::PhantomData;

use tessera_core::Keep;
use tessera_schema::topk_attention::{attr, input, output, OP};
use tessera_schema::Name;

use crate::attrs::{attr_at_least, attr_bool, attr_count};
use crate::dtype::Dtype;
use crate::error::{ensure, Error, Result};
use crate::ffi::{elem, KernelInfo, ShapeInference};
use crate::op::{Port, PortType, Schema};
use crate::plan::{Attrs, Plan, RawAttrs};
use crate::shape::dims;

/// Query tile of the training-free mode.
pub const BQ: usize = 32;
/// Key block (summary block and flash key tile) of the training-free mode,
/// and the gather width of the index mode.
pub const BK: usize = 64;

/// The op, for element type `T`: the node's attributes, read once.
#[derive(Debug)]
pub struct TopKAttentionOp<T> {
    pub(crate) attrs: Attrs,
    pub(crate) top_k: Option<usize>,
    pub(crate) keep: Keep,
    _t: PhantomData<fn() -> T>,
}

impl<T: Dtype> Schema for TopKAttentionOp<T> {
    const NAME: Name = OP;

    const INPUTS: &'static [Port] = &[
        Port::required(input::Q, PortType::Fixed(T::ONNX)),
        Port::required(input::K, PortType::Any),
        Port::required(input::V, PortType::Any),
        Port::optional(input::INDICES, PortType::Any),
    ];

    const OUTPUTS: &'static [Port] = &[
        Port::required(output::Y, PortType::Fixed(T::ONNX)),
        Port::optional(output::SELECTED_INDICES, PortType::Fixed(elem::INT64)),
        Port::optional(output::SOFTMAX_LSE, PortType::Fixed(elem::FLOAT)),
    ];

    fn attach(info: &KernelInfo) -> Result<Self> {
        let raw = RawAttrs {
            is_causal: info.attr_i64(attr::IS_CAUSAL.c()),
            scale: info.attr_f32(attr::SCALE.c()),
            q_num_heads: info.attr_i64(attr::Q_NUM_HEADS.c()),
            kv_num_heads: info.attr_i64(attr::KV_NUM_HEADS.c()),
            ..Default::default()
        };
        attr_bool(attr::IS_CAUSAL.as_str(), raw.is_causal)?;
        let window = attr_at_least(
            attr::LEFT_WINDOW_SIZE.as_str(),
            info.attr_i64(attr::LEFT_WINDOW_SIZE.c()),
            -1,
        )?;
        let globals = attr_at_least(
            attr::NUM_GLOBAL_TOKENS.as_str(),
            info.attr_i64(attr::NUM_GLOBAL_TOKENS.c()),
            0,
        )?;
        let too_large = |name: Name| Error::invalid(format!("{name} is too large"));
        Ok(Self {
            attrs: Attrs::parse(&raw)?,
            top_k: attr_count(attr::TOP_K.as_str(), info.attr_i64(attr::TOP_K.c()))?,
            keep: Keep {
                local_window: match window {
                    None | Some(-1) => None,
                    Some(w) => {
                        Some(usize::try_from(w).map_err(|_| too_large(attr::LEFT_WINDOW_SIZE))?)
                    }
                },
                global_tokens: usize::try_from(globals.unwrap_or(0))
                    .map_err(|_| too_large(attr::NUM_GLOBAL_TOKENS))?,
            },
            _t: PhantomData,
        })
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        // Y is shaped like Attention's Y.
        crate::ops::attention::infer_y(ctx)
    }
}

/// The shape of an `indices` input: `(B, Sq, k)` lists shared by every
/// head or `(B, Hkv, Sq, k)` per KV head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListShape {
    /// `Some(Hkv)` for per-KV-head lists.
    pub kv_heads: Option<usize>,
    /// Entries per row, `k >= 1`.
    pub k: usize,
}

/// Check the shape of `indices` against Q and K (rank, leading dims,
/// `k >= 1`, `k = top_k` when set); `elem`, when given, must be int64
/// (checked after the rank). `shown` is the shape as messages print it.
pub(crate) fn list_shape(
    shape: &[i64],
    shown: &str,
    elem_type: Option<i32>,
    plan: &Plan,
    top_k: Option<usize>,
) -> Result<ListShape> {
    let name = input::INDICES;
    let shape = dims(
        name.as_str(),
        shape,
        &[3, 4],
        "3 (batch, q_seq, k) or 4 (batch, kv_num_heads, q_seq, k)",
    )?;
    if let Some(e) = elem_type {
        ensure!(
            e == elem::INT64,
            "{name}: element type {} must be int64",
            elem::name(e)
        );
    }
    let (b, sq, hkv) = (plan.batch, plan.q_len, plan.kv_heads);
    let per_head = shape.len() == 4;
    let want: Vec<usize> = if per_head {
        vec![b, hkv, sq]
    } else {
        vec![b, sq]
    };
    let k = shape[shape.len() - 1];
    ensure!(
        shape[..shape.len() - 1] == want[..],
        "{name}: shape {shown} must be {} = {want:?} + [k] from {} and {}",
        if per_head {
            "(batch, kv_num_heads, q_seq, k)"
        } else {
            "(batch, q_seq, k)"
        },
        input::Q,
        input::K
    );
    ensure!(
        k > 0,
        "{name}: the last axis (k, keys per query) must be at least 1"
    );
    if let Some(top_k) = top_k {
        ensure!(
            top_k == k,
            "{name}: last axis {k} must equal the {} attribute {top_k}",
            attr::TOP_K
        );
    }
    Ok(ListShape {
        kv_heads: per_head.then_some(hkv),
        k,
    })
}
