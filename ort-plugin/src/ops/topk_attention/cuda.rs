//! The CUDA-EP kernel of `ai.tessera.TopKAttention` (float16, bfloat16):
//! the op's schema, attributes and shape rules ([`super`]), run by
//! `tessera_cuda::dsa::topk_attention` on the node's stream.
//!
//! Index mode, as on the CPU: each query attends to its listed keys plus the
//! kept ones (sinks `[0, num_global_tokens)` and the window
//! `[p - left_window_size, p]`), each key once, under the bottom-right
//! causal rule; lists shared by every head `(B, Sq, k)` or per KV head
//! `(B, Hkv, Sq, k)`; `-1` pads; an entry outside `[0, Skv)` or a key listed
//! twice is refused with the CPU op's message for the lowest bad row;
//! `selected_indices` (ascending, `-1`-padded, width `k + min(window + 1 +
//! sinks, Skv)`) and `softmax_lse`.
//!
//! Refused with `ORT_INVALID_ARGUMENT`, naming the rule: the training-free
//! mode (no `indices` input: the block selection runs on the CPU EP only),
//! head dims that are not multiples of 8 or exceed 256, and key lengths
//! above the list check's bitmap (`tessera_cuda::plan::INDEX_CHECK_MAX_KEYS`).
//! Float `TopKAttention` is left to the CPU kernel (no half kernel for it).
//!
//! # Cost
//! One list-check launch (`B·Hkv` more for shared lists with
//! `selected_indices`), one gather launch, one stream synchronisation to
//! read the check's flag; 256 bytes of scratch.

use tessera_cuda::dsa::{self, OnStream, TopKCall, TopKIo};
use tessera_cuda::{AttentionBuffers, KeyLists, Module, SparseRules};
use tessera_schema::topk_attention::{input, output, OP};

use super::{list_shape, ListShape, TopKAttentionOp};
use crate::dtype::Half;
use crate::error::{from_cuda, Error, Result};
use crate::ffi::device::{DeviceContext, DeviceTensor};
use crate::op::{required, CudaKernel};
use crate::ops::unlike_q;
use crate::plan::{Plan, Shapes};
use crate::shape::{causal_offset, fmt_shape, product};

/// The `indices` input as key lists, checked against Q and K like the
/// CPU op does (rank, int64, leading dims, `k >= 1`, `k = top_k` when
/// set); the values are checked on the GPU.
fn key_lists(t: &DeviceTensor, plan: &Plan, top_k: Option<usize>) -> Result<KeyLists> {
    let shown = fmt_shape(&t.ts.dims);
    let ListShape { kv_heads, k } = list_shape(&t.ts.dims, &shown, Some(t.ts.elem), plan, top_k)?;
    let sq = plan.q_len;
    Ok(KeyLists {
        ptr: t.ptr,
        top_k: k,
        batch: kv_heads.unwrap_or(1) * sq * k,
        head: if kv_heads.is_some() { sq * k } else { 0 },
        seq: k,
    })
}

impl<T: Half> CudaKernel for TopKAttentionOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let inputs = ctx.inputs::<4>()?;
        let (plan, call) = self.call(&inputs)?;
        let (q_in, k_in, v_in) = (req(&inputs, 0)?, req(&inputs, 1)?, req(&inputs, 2)?);
        let width = dsa::selected_width(call.lists.top_k, plan.kv_new, &call.rules);
        let sel_dims = [plan.batch, plan.kv_heads, plan.q_len, width];
        product(output::SELECTED_INDICES.as_str(), &sel_dims)?;

        let stream = ctx.stream()?;
        let y = ctx
            .output(0, &plan.y_dims())?
            .ok_or_else(|| Error::fail(format!("{} could not be allocated", output::Y)))?;
        let selected = ctx.output(1, &sel_dims.map(|x| x as i64))?;
        let lse = ctx.output(2, &plan.lse_dims())?;
        if plan.batch * plan.kv_heads * plan.q_len == 0 {
            return Ok(());
        }
        let scratch = ctx.scratch(q_in, call.scratch_bytes())?;
        // After ORT's allocations, so the EP's context is current here.
        let module = Module::for_current_context().map_err(from_cuda)?;
        let io = TopKIo {
            attention: AttentionBuffers {
                q: q_in.ptr,
                k: k_in.ptr,
                v: v_in.ptr,
                y,
                lse,
            },
            selected: selected.map(|p| (p, width)),
        };
        let dev = OnStream {
            module: &module,
            stream,
        };
        // The call ends with a synchronisation of the stream, so the
        // scratch may be freed when it returns.
        dsa::topk_attention(&dev, &call, &io, scratch.ptr()).map_err(from_cuda)
    }
}

impl<T: Half> TopKAttentionOp<T> {
    /// Plan the call: index mode only, Q, K and V of one type, the key
    /// lists checked against them, and the rules the gather applies.
    fn call(&self, inputs: &[Option<DeviceTensor>; 4]) -> Result<(Plan, TopKCall)> {
        let (q_in, k_in, v_in) = (req(inputs, 0)?, req(inputs, 1)?, req(inputs, 2)?);
        let Some(idx_in) = &inputs[3] else {
            return Err(Error::invalid(format!(
                "the training-free mode (no {} input) is not supported by the CUDA {OP}; pass {} (e.g. from {}) or run the node on the CPU EP",
                input::INDICES,
                input::INDICES,
                tessera_schema::lightning_indexer::OP
            )));
        };
        let attrs = &self.attrs;
        let shapes = Shapes::qkv(&q_in.ts.dims, &k_in.ts.dims, &v_in.ts.dims);
        let plan = Plan::new(attrs, &shapes)?;
        for (i, t) in [(1, k_in), (2, v_in)] {
            if t.ts.elem != T::ONNX {
                return Err(unlike_q(input::ALL[i], t.ts.elem, T::ONNX));
            }
        }
        let lists = key_lists(idx_in, &plan, self.top_k)?;
        let spec = plan.cacheless_spec(attrs.scale);
        let rules = SparseRules {
            causal: attrs.is_causal,
            q_offset: causal_offset(spec.q_len, spec.kv_len)?,
            left_window: self.keep.local_window,
            global_tokens: self.keep.global_tokens,
        };
        let call = TopKCall {
            spec,
            dtype: T::CUDA,
            lists,
            rules,
        };
        Ok((plan, call))
    }
}

/// Input `i`, or the error that it is required.
fn req(inputs: &[Option<DeviceTensor>; 4], i: usize) -> Result<&DeviceTensor> {
    required(inputs, &input::ALL, i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{elem, TypeShape};
    use crate::plan::{Attrs, RawAttrs};

    fn tensor(elem: i32, dims: &[i64]) -> DeviceTensor {
        DeviceTensor::for_tests(
            TypeShape {
                elem,
                symbols: vec![String::new(); dims.len()],
                dims: dims.to_vec(),
            },
            0x1000,
        )
    }

    fn plan() -> Plan {
        let attrs = Attrs::parse(&RawAttrs::default()).unwrap();
        let (q, k) = ([2i64, 4, 7, 64], [2i64, 2, 30, 64]);
        Plan::new(&attrs, &Shapes::qkv(&q, &k, &k)).unwrap()
    }

    #[test]
    fn lists_are_shared_or_per_kv_head_with_the_cpu_shape_rules() {
        let p = plan();
        let shared = key_lists(&tensor(elem::INT64, &[2, 7, 5]), &p, None).unwrap();
        assert_eq!(
            (shared.top_k, shared.batch, shared.head, shared.seq),
            (5, 35, 0, 5)
        );
        let per_head = key_lists(&tensor(elem::INT64, &[2, 2, 7, 5]), &p, Some(5)).unwrap();
        assert_eq!((per_head.batch, per_head.head, per_head.seq), (70, 35, 5));
        for (t, top_k, want) in [
            (
                tensor(elem::INT64, &[2, 7, 5]),
                Some(4),
                "must equal the top_k attribute 4",
            ),
            (
                tensor(elem::INT64, &[2, 8, 5]),
                None,
                "indices: shape (2, 8, 5) must be (batch, q_seq, k)",
            ),
            (
                tensor(elem::INT64, &[2, 3, 7, 5]),
                None,
                "(batch, kv_num_heads, q_seq, k)",
            ),
            (tensor(elem::INT64, &[2, 7, 0]), None, "at least 1"),
            (
                tensor(elem::INT32, &[2, 7, 5]),
                None,
                "element type int32 must be int64",
            ),
            (
                tensor(elem::INT64, &[2, 7]),
                None,
                "indices: rank must be 3",
            ),
        ] {
            let e = key_lists(&t, &p, top_k).unwrap_err();
            assert!(e.message.contains(want), "{}", e.message);
        }
    }
}
