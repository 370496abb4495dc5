//! `ai.tessera.TopKAttention` on the CUDA EP (float16, bfloat16): the CPU
//! op's attributes (read by [`TopKAttentionOp::attach`]), schema and shape
//! rules, run by `tessera_cuda::dsa::topk_attention` on the node's stream.
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

use core::ffi::CStr;
use core::marker::PhantomData;

use tessera_core::{bf16, f16};
use tessera_cuda::dsa::{self, OnStream, TopKCall, TopKIo};
use tessera_cuda::{AttentionBuffers, Dtype, KeyLists, Module, SparseRules};

use super::attention::HalfDtype;
use super::device::{DeviceContext, DeviceTensor};
use super::{from_cuda, host_compute_refused, DeviceKernel};
use crate::attention::plan::{Plan, Shapes};
use crate::dsa::topk_attention::{TopKAttentionOp, TopKDtype, INPUT_NAMES};
use crate::dsa::{causal_offset, dims, fmt_shape, product};
use crate::error::{ensure, Error, Result};
use crate::ffi::{elem, KernelContext, KernelInfo, ShapeInference};
use crate::op::{CustomOp, Port};

/// A half type with a gather kernel and the op's port tables.
pub trait TopKHalf: HalfDtype + TopKDtype {}
impl TopKHalf for f16 {}
impl TopKHalf for bf16 {}

/// The CUDA-EP op, for element type `T`: the CPU op's attributes.
#[derive(Debug)]
pub struct CudaTopKAttentionOp<T> {
    cpu: TopKAttentionOp<T>,
    _t: PhantomData<fn() -> T>,
}

impl<T: TopKHalf> CustomOp for CudaTopKAttentionOp<T> {
    const NAME: &'static CStr = c"TopKAttention";

    fn inputs() -> &'static [Port] {
        T::TOPK_INPUTS
    }

    fn outputs() -> &'static [Port] {
        T::TOPK_OUTPUTS
    }

    fn attach(info: &KernelInfo) -> Result<Self> {
        Ok(Self {
            cpu: TopKAttentionOp::attach(info)?,
            _t: PhantomData,
        })
    }

    fn compute(&self, _ctx: &mut KernelContext) -> Result<()> {
        Err(host_compute_refused())
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        TopKAttentionOp::<T>::infer(ctx)
    }
}

/// The `indices` input as key lists, checked against Q and K like the
/// CPU op does (rank, leading dims, `k >= 1`, `k = top_k` when set,
/// int64); the values are checked on the GPU.
fn key_lists(t: &DeviceTensor, plan: &Plan, top_k: Option<usize>) -> Result<KeyLists> {
    let shape = dims(
        "indices",
        &t.ts.dims,
        &[3, 4],
        "3 (batch, q_seq, k) or 4 (batch, kv_num_heads, q_seq, k)",
    )?;
    ensure!(
        t.ts.elem == elem::INT64,
        "indices: element type {} must be int64",
        elem::name(t.ts.elem)
    );
    let (b, sq, hkv) = (plan.batch, plan.q_len, plan.kv_heads);
    let want: Vec<usize> = if shape.len() == 3 {
        vec![b, sq]
    } else {
        vec![b, hkv, sq]
    };
    let k = shape[shape.len() - 1];
    ensure!(
        shape[..shape.len() - 1] == want[..],
        "indices: shape {} must be {} = {want:?} + [k] from Q and K",
        fmt_shape(&t.ts.dims),
        if shape.len() == 3 {
            "(batch, q_seq, k)"
        } else {
            "(batch, kv_num_heads, q_seq, k)"
        }
    );
    ensure!(
        k > 0,
        "indices: the last axis (k, keys per query) must be at least 1"
    );
    if let Some(top_k) = top_k {
        ensure!(
            top_k == k,
            "indices: last axis {k} must equal the top_k attribute {top_k}"
        );
    }
    let heads = if shape.len() == 4 { hkv } else { 1 };
    Ok(KeyLists {
        ptr: t.ptr,
        top_k: k,
        batch: heads * sq * k,
        head: if shape.len() == 4 { sq * k } else { 0 },
        seq: k,
    })
}

impl<T: TopKHalf> DeviceKernel for CudaTopKAttentionOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let mut inputs: [Option<DeviceTensor>; 4] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let req = |i: usize| {
            inputs[i]
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("{} is required", INPUT_NAMES[i])))
        };
        let (q_in, k_in, v_in) = (req(0)?, req(1)?, req(2)?);
        let Some(idx_in) = &inputs[3] else {
            return Err(Error::invalid(
                "the training-free mode (no indices input) is not supported by the CUDA TopKAttention; pass indices (e.g. from LightningIndexer) or run the node on the CPU EP",
            ));
        };
        let attrs = &self.cpu.attrs;
        let plan = Plan::new(
            attrs,
            &Shapes {
                q: &q_in.ts.dims,
                k: &k_in.ts.dims,
                v: &v_in.ts.dims,
                ..Default::default()
            },
        )?;
        for (i, t) in [(1, k_in), (2, v_in)] {
            ensure!(
                t.ts.elem == T::ONNX,
                "{}: element type {} must equal Q's {}",
                INPUT_NAMES[i],
                elem::name(t.ts.elem),
                elem::name(T::ONNX)
            );
        }
        let lists = key_lists(idx_in, &plan, self.cpu.top_k)?;
        let spec = plan.cacheless_spec(attrs.scale);
        let (hkv, sq, skv) = (spec.kv_heads, spec.q_len, spec.kv_len);
        let rules = SparseRules {
            causal: attrs.is_causal,
            q_offset: causal_offset(sq, skv)?,
            left_window: self.cpu.keep.local_window,
            global_tokens: self.cpu.keep.global_tokens,
        };
        let width = dsa::selected_width(lists.top_k, skv, &rules);
        let sel_dims = [plan.batch, hkv, sq, width];
        product("selected_indices", &sel_dims)?;

        let stream = ctx.stream()?;
        let y = ctx
            .output(0, &plan.y_dims())?
            .ok_or_else(|| Error::fail("Y could not be allocated"))?;
        let selected = ctx.output(1, &sel_dims.map(|x| x as i64))?;
        let lse = ctx.output(2, &plan.lse_dims())?;
        if plan.batch * hkv * sq == 0 {
            return Ok(());
        }
        let call = TopKCall {
            spec,
            dtype: T::CUDA,
            lists,
            rules,
        };
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
        debug_assert!(matches!(T::CUDA, Dtype::F16 | Dtype::Bf16));
        // The call ends with a synchronisation of the stream, so the
        // scratch may be freed when it returns.
        dsa::topk_attention(&dev, &call, &io, scratch.ptr()).map_err(from_cuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::plan::{Attrs, RawAttrs};
    use crate::ffi::TypeShape;

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
        Plan::new(
            &attrs,
            &Shapes {
                q: &q,
                k: &k,
                v: &k,
                ..Default::default()
            },
        )
        .unwrap()
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
