//! The CUDA-EP kernel of `ai.tessera.Attention` (float16, bfloat16): the
//! op's schema and plan ([`super`]), run by `tessera-cuda`'s flash kernel.
//!
//! The CUDA path implements: float16/bfloat16; `D = Dv` in {64, 128}; 3-D
//! and 4-D Q/K/V; GQA; `is_causal`, `scale`, `softcap`, windows and global
//! tokens; a bool or float `attn_mask` whose last axis is the full key length
//! (broadcast on the other axes); `nonpad_kv_seqlen` (read by the kernel
//! from device memory, with the external-cache offset); 4-D
//! `past_key`/`past_value` and `present_key`/`present_value` (keys copied
//! on the stream into `present_*`, or into scratch when the node does not
//! ask for them); `softmax_lse`.
//!
//! Refused with `ORT_INVALID_ARGUMENT`, naming the rule: other head dims,
//! float16/bfloat16 additive masks, masks shorter than the key length,
//! `qk_matmul_output`, and a cache or present outputs with 3-D K/V. Not checked here, unlike
//! on the CPU: the values of `nonpad_kv_seqlen` (the host cannot read
//! them; the kernel clamps them to the key length).
//!
//! # Cost
//! One flash launch; with a cache, `2·B·Hkv` device-to-device copies per
//! cache tensor (past rows, then new rows, per (batch, head)).

use tessera_core::{MaskStrides, Strides};
use tessera_cuda::{AttentionBuffers, DeviceDenseMask, DeviceMask, DevicePtr, Driver, Module};
use tessera_schema::attention::{input, output};

use super::{kernel_call, plan_inputs, slot, AttentionOp, Outputs};
use crate::dtype::Half;
use crate::error::{ensure, from_cuda, Error, Result};
use crate::ffi::device::{DeviceContext, DeviceTensor, Scratch};
use crate::ffi::elem;
use crate::op::CudaKernel;
use crate::ops::unlike_q;
use crate::plan::{Layout, Plan};

impl<T: Half> CudaKernel for AttentionOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let inputs = ctx.inputs::<7>()?;
        let plan = plan_inputs(&self.attrs, &inputs)?;
        check_types::<T>(&inputs)?;
        let dense = match (&inputs[3], plan.mask) {
            (Some(t), Some(d)) => Some(dense_mask(t.ts.elem, d, plan.kv_total(), t.ptr)?),
            _ => None,
        };
        let outs = device_outputs(ctx, &plan)?;
        let stream = ctx.stream()?;
        // After ORT's allocations, so the EP's context is current here.
        let module = Module::for_current_context().map_err(from_cuda)?;
        // Keys and values: read in place, or concatenated with the cache.
        let mut cache = Cache {
            ctx,
            plan: &plan,
            stream,
            elem_bytes: T::CUDA.size() as usize,
            scratch: Vec::new(),
        };
        let past = |i: usize| inputs[i].as_ref().filter(|_| plan.has_past);
        let (k_in, v_in) = (required(&inputs, 1)?, required(&inputs, 2)?);
        let (k_ptr, k_strides) = cache.keys(outs.present_k, past(4), k_in, plan.head_dim)?;
        let (v_ptr, v_strides) = cache.keys(outs.present_v, past(5), v_in, plan.v_head_dim)?;

        let (spec, mask) = kernel_call(&self.attrs, &plan, k_strides, v_strides)?;
        let device_mask = DeviceMask {
            kv_lens: inputs[6].as_ref().map(|t| t.ptr),
            align_to_kv_lens: inputs[6].is_some(),
            dense,
        };
        let bufs = AttentionBuffers {
            q: required(&inputs, 0)?.ptr,
            k: k_ptr,
            v: v_ptr,
            y: outs.y,
            lse: outs.lse,
        };
        module
            .attention(stream, &spec, &mask, &device_mask, T::CUDA, &bufs)
            .map_err(from_cuda)?;
        // Scratch is freed only now, after every kernel using it is queued
        // on the stream (see `DeviceContext::scratch`).
        drop(cache);
        Ok(())
    }
}

/// Input `i`, which the plan found present.
fn required(inputs: &[Option<DeviceTensor>; 7], i: usize) -> Result<&DeviceTensor> {
    crate::op::required(inputs, &input::ALL, i)
}

/// K, V and the cache have Q's element type; `nonpad_kv_seqlen` is int64.
fn check_types<T: Half>(inputs: &[Option<DeviceTensor>; 7]) -> Result<()> {
    for i in [0, 1, 2, 4, 5] {
        if let Some(t) = inputs[i].as_ref().filter(|t| t.ts.elem != T::ONNX) {
            return Err(unlike_q(input::ALL[i], t.ts.elem, T::ONNX));
        }
    }
    if let Some(t) = &inputs[6] {
        ensure!(
            t.ts.elem == elem::INT64,
            "{}: element type {} must be int64",
            input::NONPAD_KV_SEQLEN,
            elem::name(t.ts.elem)
        );
    }
    Ok(())
}

/// Refuse `qk_matmul_output`, then allocate the other outputs; with a
/// cache or present outputs K and V must be 4-D.
fn device_outputs(ctx: &mut DeviceContext, plan: &Plan) -> Result<Outputs<DevicePtr>> {
    if ctx.output_count()? > slot::QK_MATMUL_OUTPUT {
        ensure!(
            ctx.output(slot::QK_MATMUL_OUTPUT, &plan.qk_dims())?
                .is_none(),
            "{} is not supported by the CUDA kernels (run the node on the CPU EP)",
            output::QK_MATMUL_OUTPUT
        );
    }
    let outs = Outputs::alloc(ctx, plan)?;
    let concat = plan.has_past || outs.present_k.is_some() || outs.present_v.is_some();
    ensure!(
        !concat || plan.layout == Layout::Bhsd,
        "{}: {}/{} or {}/{} with 3-D K/V are not supported by the CUDA kernels (use 4-D K/V)",
        input::K,
        input::PAST_KEY,
        input::PAST_VALUE,
        output::PRESENT_KEY,
        output::PRESENT_VALUE
    );
    Ok(outs)
}

/// Keys and values as the flash kernel reads them, concatenated with the
/// cache on the node's stream where needed; owns the scratch it used.
struct Cache<'a> {
    ctx: &'a DeviceContext,
    plan: &'a Plan,
    stream: tessera_cuda::Stream,
    elem_bytes: usize,
    scratch: Vec<Scratch>,
}

impl Cache<'_> {
    /// `new` (`dim` per head) in place without a cache and without
    /// `present`, else `past` then `new` copied into `present`, or into
    /// scratch when the node does not ask for it.
    fn keys(
        &mut self,
        present: Option<DevicePtr>,
        past: Option<&DeviceTensor>,
        new: &DeviceTensor,
        dim: usize,
    ) -> Result<(DevicePtr, Strides)> {
        let plan = self.plan;
        let (hkv, total) = (plan.kv_heads, plan.kv_total());
        if !plan.has_past && present.is_none() {
            return Ok((new.ptr, plan.strides(hkv, plan.kv_new, dim)));
        }
        let dst = match present {
            Some(p) => p,
            None => {
                let n = plan.batch * hkv * total * dim * self.elem_bytes;
                let s = self.ctx.scratch(new, n)?;
                let p = s.ptr();
                self.scratch.push(s);
                p
            }
        };
        // P = 0 without a cache: only the new rows are copied.
        let past = past.map_or(DevicePtr::NULL, |t| t.ptr);
        let driver = Driver::get().map_err(from_cuda)?;
        // SAFETY: past (P rows, P = 0 when absent), new and dst are device
        // tensors of this node, 4-D (checked by `device_outputs`) with
        // the shapes `plan` checked; dst holds B·Hkv·(P+Skv)·dim elements.
        unsafe {
            concat_cache(
                driver,
                plan,
                dim,
                (past, new.ptr, dst),
                self.stream,
                self.elem_bytes,
            )?;
        }
        Ok((dst, Strides::bhsd(hkv, total, dim)))
    }
}

/// `(B, Hkv, P+Skv, dim)` keys or values: `past` (P rows, none when P = 0)
/// then the new rows, copied on `stream` into `dst`. New rows are read BHSD
/// (4-D K/V only).
///
/// # Safety
/// Every address is device memory of the current context holding its
/// tensor's elements, and `dst` holds `B·Hkv·(P+Skv)·dim` elements.
unsafe fn concat_cache(
    driver: &Driver,
    plan: &Plan,
    dim: usize,
    (past, new, dst): (DevicePtr, DevicePtr, DevicePtr),
    stream: tessera_cuda::Stream,
    elem_bytes: usize,
) -> Result<()> {
    let (p, n) = (plan.past, plan.kv_new);
    let row = dim * elem_bytes;
    for bh in 0..plan.batch * plan.kv_heads {
        let to = dst.0 + (bh * (p + n) * row) as u64;
        for (src, len, at) in [
            (past.0 + (bh * p * row) as u64, p * row, to),
            (
                new.0 + (bh * n * row) as u64,
                n * row,
                to + (p * row) as u64,
            ),
        ] {
            if len > 0 {
                // SAFETY: both ranges lie inside their tensors (caller's
                // contract and the offsets above); the copy is queued on
                // the node's stream, ahead of the flash launch.
                unsafe { driver.copy_async(at, src, len, stream.0) }.map_err(from_cuda)?;
            }
        }
    }
    Ok(())
}

/// The kernel's view of a dense `attn_mask` whose dims, right-aligned to
/// `(B, Hq, Sq, kv)`, are `d`: bool or float, its last axis the full key
/// length `total`, broadcast on the others.
fn dense_mask(
    elem_type: i32,
    d: [usize; 4],
    total: usize,
    ptr: DevicePtr,
) -> Result<DeviceDenseMask> {
    let is_bool = match elem_type {
        elem::BOOL => true,
        elem::FLOAT => false,
        other => {
            return Err(Error::invalid(format!(
                "{}: element type {} is not supported by the CUDA kernels (bool or float)",
                input::ATTN_MASK,
                elem::name(other)
            )))
        }
    };
    ensure!(
        d[3] == total,
        "{}: last axis {} must be the total key length {total} on the CUDA kernels (shorter masks are padded only on the CPU)",
        input::ATTN_MASK,
        d[3]
    );
    Ok(DeviceDenseMask {
        ptr,
        is_bool,
        strides: MaskStrides::broadcast(d[0], d[1], d[2], total),
    })
}

#[cfg(test)]
mod tests {
    //! The plugin's calls checked against `tessera_cuda::plan`, the same
    //! validation a launch runs first, with aligned stand-in addresses: no
    //! GPU is needed to see that every supported node becomes a valid launch
    //! with the CPU op's geometry and mask.
    use super::*;
    use crate::plan::{Attrs, RawAttrs, Shapes};
    use tessera_cuda::{plan, Dtype};

    const Q: DevicePtr = DevicePtr(0x10_0000);
    const K: DevicePtr = DevicePtr(0x20_0000);
    const V: DevicePtr = DevicePtr(0x30_0000);
    const Y: DevicePtr = DevicePtr(0x40_0000);
    const LSE: DevicePtr = DevicePtr(0x50_0000);
    const LENS: DevicePtr = DevicePtr(0x60_0000);
    const MASK: DevicePtr = DevicePtr(0x70_0000);

    fn attrs(raw: RawAttrs) -> Attrs {
        Attrs::parse(&raw).unwrap()
    }

    /// Plan + kernel call + the CUDA plan for a node, as `run` builds them
    /// (K/V concatenated with the cache into BHSD when `past` is given).
    fn launch(
        a: &Attrs,
        shapes: Shapes<'_>,
        mask_elem: Option<i32>,
        dtype: Dtype,
    ) -> Result<plan::Launch<tessera_cuda::params::FlashParams>> {
        let p = Plan::new(a, &shapes)?;
        let (k, v) = if p.has_past {
            (
                Strides::bhsd(p.kv_heads, p.kv_total(), p.head_dim),
                Strides::bhsd(p.kv_heads, p.kv_total(), p.v_head_dim),
            )
        } else {
            (
                p.strides(p.kv_heads, p.kv_new, p.head_dim),
                p.strides(p.kv_heads, p.kv_new, p.v_head_dim),
            )
        };
        let (spec, mask) = kernel_call(a, &p, k, v)?;
        let dense = match (mask_elem, p.mask) {
            (Some(e), Some(d)) => Some(dense_mask(e, d, p.kv_total(), MASK)?),
            _ => None,
        };
        let dm = DeviceMask {
            kv_lens: shapes.nonpad.map(|_| LENS),
            align_to_kv_lens: shapes.nonpad.is_some(),
            dense,
        };
        let bufs = AttentionBuffers {
            q: Q,
            k: K,
            v: V,
            y: Y,
            lse: Some(LSE),
        };
        plan::attention(&spec, &mask, &dm, dtype, &bufs).map_err(from_cuda)
    }

    #[test]
    fn a_4d_gqa_causal_node_with_a_cache_launches_with_the_cpu_geometry() {
        let a = attrs(RawAttrs {
            is_causal: Some(1),
            softcap: Some(30.0),
            left_window_size: Some(100),
            num_global_tokens: Some(4),
            ..Default::default()
        });
        let l = launch(
            &a,
            Shapes {
                q: &[2, 8, 5, 128],
                k: &[2, 2, 5, 128],
                v: &[2, 2, 5, 128],
                past_key: Some(&[2, 2, 300, 128]),
                past_value: Some(&[2, 2, 300, 128]),
                ..Default::default()
            },
            None,
            Dtype::Bf16,
        )
        .unwrap();
        let f = l.params;
        assert_eq!(l.kernel, "tessera_flash_bf16_d128_sc1_dm0");
        assert_eq!(
            (f.batch, f.q_heads, f.kv_heads, f.q_len, f.kv_len),
            (2, 8, 2, 5, 305)
        );
        assert_eq!((f.causal, f.q_offset, f.offset_from_kv_lens), (1, 300, 0));
        assert_eq!(
            (f.left_window, f.right_window, f.global_tokens),
            (100, -1, 4)
        );
        assert_eq!(
            (f.k_batch, f.k_head, f.k_seq),
            (2 * 305 * 128, 305 * 128, 128)
        );
        assert_eq!((f.q_batch, f.q_head, f.q_seq), (8 * 5 * 128, 5 * 128, 128));
        assert_eq!(f.scale, 1.0 / (128f32).sqrt());
        assert_eq!((f.softcap, f.lse, f.kv_lens, f.mask), (30.0, LSE.0, 0, 0));
    }

    #[test]
    fn a_3d_node_with_nonpad_and_a_bool_mask_launches_in_place() {
        let a = attrs(RawAttrs {
            q_num_heads: Some(4),
            kv_num_heads: Some(4),
            scale: Some(0.25),
            ..Default::default()
        });
        let l = launch(
            &a,
            Shapes {
                q: &[3, 7, 4 * 64],
                k: &[3, 9, 4 * 64],
                v: &[3, 9, 4 * 64],
                mask: Some(&[3, 1, 7, 9]),
                nonpad: Some(&[3]),
                ..Default::default()
            },
            Some(elem::BOOL),
            Dtype::F16,
        )
        .unwrap();
        let f = l.params;
        assert_eq!(l.kernel, "tessera_flash_f16_d64_sc0_dm1");
        // (B, S, H·D): heads are D apart, positions H·D.
        assert_eq!((f.q_batch, f.q_head, f.q_seq), (7 * 256, 64, 256));
        assert_eq!((f.k_batch, f.k_head, f.k_seq), (9 * 256, 64, 256));
        assert_eq!((f.y_batch, f.y_head, f.y_seq), (7 * 256, 64, 256));
        assert_eq!((f.kv_lens, f.offset_from_kv_lens, f.causal), (LENS.0, 1, 0));
        assert_eq!((f.mask, f.mask_is_bool), (MASK.0, 1));
        // The mask broadcasts over heads: (B, 1, Sq, Skv) contiguous.
        assert_eq!((f.m_batch, f.m_head, f.m_q, f.m_k), (7 * 9, 0, 9, 1));
        assert_eq!(f.scale, 0.25);
    }

    #[test]
    fn what_the_cuda_kernels_lack_is_bad_input_naming_the_rule() {
        let a = Attrs::default();
        let q = [1, 2, 4, 96];
        let e = launch(
            &a,
            Shapes {
                q: &q,
                k: &q,
                v: &q,
                ..Default::default()
            },
            None,
            Dtype::F16,
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::InvalidArgument);
        assert!(e.message.contains("D=96"), "{}", e.message);
        let short = dense_mask(elem::BOOL, [1, 1, 4, 3], 4, MASK).unwrap_err();
        assert!(
            short
                .message
                .contains("last axis 3 must be the total key length 4"),
            "{}",
            short.message
        );
        let half = dense_mask(elem::FLOAT16, [1, 1, 4, 4], 4, MASK).unwrap_err();
        assert!(
            half.message.contains("float16 is not supported"),
            "{}",
            half.message
        );
        let ok = dense_mask(elem::FLOAT, [1, 1, 1, 4], 4, MASK).unwrap();
        assert!(!ok.is_bool);
        assert_eq!(
            (
                ok.strides.batch,
                ok.strides.head,
                ok.strides.q,
                ok.strides.k
            ),
            (0, 0, 0, 1)
        );
    }
}
