//! `ai.tessera.Attention` on the CUDA EP: the schema and shape rules of the
//! CPU op ([`crate::attention`]), run by `tessera-cuda`'s flash kernel.
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

use core::ffi::CStr;
use core::marker::PhantomData;

use tessera_core::{bf16, default_scale, f16, AttentionSpec, MaskSpec, MaskStrides, Strides};
use tessera_cuda::{
    AttentionBuffers, DeviceDenseMask, DeviceMask, DevicePtr, Driver, Dtype, Module,
};

use super::device::{DeviceContext, DeviceTensor, Scratch};
use super::{from_cuda, host_compute_refused, DeviceKernel};
use crate::attention::plan::{Attrs, Layout, Plan};
use crate::attention::{plan_inputs, read_attrs, AttentionOp, Dtype as HostDtype, INPUT_NAMES};
use crate::error::{ensure, Error, Result};
use crate::ffi::{elem, KernelContext, KernelInfo, ShapeInference};
use crate::op::{CustomOp, Port};

/// A half type with a flash kernel.
pub trait HalfDtype: HostDtype {
    /// The kernel's dtype.
    const CUDA: Dtype;
}

impl HalfDtype for f16 {
    const CUDA: Dtype = Dtype::F16;
}

impl HalfDtype for bf16 {
    const CUDA: Dtype = Dtype::Bf16;
}

/// The CUDA-EP op, for element type `T`.
#[derive(Debug)]
pub struct CudaAttentionOp<T> {
    attrs: Attrs,
    _t: PhantomData<fn() -> T>,
}

impl<T: HalfDtype> CustomOp for CudaAttentionOp<T> {
    const NAME: &'static CStr = c"Attention";

    fn inputs() -> &'static [Port] {
        T::INPUTS
    }

    fn outputs() -> &'static [Port] {
        T::OUTPUTS
    }

    fn attach(info: &KernelInfo) -> Result<Self> {
        Ok(Self {
            attrs: read_attrs(info)?,
            _t: PhantomData,
        })
    }

    fn compute(&self, _ctx: &mut KernelContext) -> Result<()> {
        Err(host_compute_refused())
    }

    fn infer(ctx: &ShapeInference) -> Result<()> {
        AttentionOp::<T>::infer(ctx)
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

fn layout_strides(layout: Layout, heads: usize, seq: usize, dim: usize) -> Strides {
    match layout {
        Layout::Bhsd => Strides::bhsd(heads, seq, dim),
        Layout::Bshd => Strides::bshd(heads, seq, dim),
    }
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
                "attn_mask: element type {} is not supported by the CUDA kernels (bool or float)",
                elem::name(other)
            )))
        }
    };
    ensure!(
        d[3] == total,
        "attn_mask: last axis {} must be the total key length {total} on the CUDA kernels (shorter masks are padded only on the CPU)",
        d[3]
    );
    Ok(DeviceDenseMask {
        ptr,
        is_bool,
        strides: MaskStrides::broadcast(d[0], d[1], d[2], total),
    })
}

/// The spec and structural mask of one call: Q and Y in the node's layout,
/// K and V with `k`/`v` strides (in place, or the BHSD concatenation with
/// the cache), positions offset by the cache length as on the CPU.
fn kernel_call(
    attrs: &Attrs,
    plan: &Plan,
    k: Strides,
    v: Strides,
) -> Result<(AttentionSpec, MaskSpec<'static>)> {
    let (d, dv) = (plan.head_dim, plan.v_head_dim);
    let spec = AttentionSpec {
        batch: plan.batch,
        q_heads: plan.q_heads,
        kv_heads: plan.kv_heads,
        q_len: plan.q_len,
        kv_len: plan.kv_total(),
        head_dim: d,
        v_head_dim: dv,
        scale: attrs.scale.unwrap_or_else(|| default_scale(d)),
        softcap: attrs.softcap,
        q: layout_strides(plan.layout, plan.q_heads, plan.q_len, d),
        k,
        v,
        out: layout_strides(plan.layout, plan.q_heads, plan.q_len, dv),
    };
    let offset = isize::try_from(plan.past)
        .map_err(|_| Error::invalid("past_key: past length too large"))?;
    let mask = if attrs.is_causal {
        MaskSpec::NONE.causal(offset)
    } else {
        MaskSpec::NONE.offset(offset)
    }
    .window(attrs.left_window, attrs.right_window)
    .globals(attrs.global_tokens);
    Ok((spec, mask))
}

impl<T: HalfDtype> DeviceKernel for CudaAttentionOp<T> {
    fn run(&self, ctx: &mut DeviceContext) -> Result<()> {
        let mut inputs: [Option<DeviceTensor>; 7] = Default::default();
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = ctx.input(i)?;
        }
        let req = |i: usize| {
            inputs[i]
                .as_ref()
                .ok_or_else(|| Error::invalid(format!("{} is required", INPUT_NAMES[i])))
        };
        let plan = plan_inputs(
            &self.attrs,
            inputs.each_ref().map(|t| t.as_ref().map(|t| &t.ts)),
        )?;
        let (q_in, k_in, v_in) = (req(0)?, req(1)?, req(2)?);
        for i in [0, 1, 2, 4, 5] {
            if let Some(t) = &inputs[i] {
                ensure!(
                    t.ts.elem == T::ONNX,
                    "{}: element type {} must equal Q's {}",
                    INPUT_NAMES[i],
                    elem::name(t.ts.elem),
                    elem::name(T::ONNX)
                );
            }
        }
        if let Some(t) = &inputs[6] {
            ensure!(
                t.ts.elem == elem::INT64,
                "nonpad_kv_seqlen: element type {} must be int64",
                elem::name(t.ts.elem)
            );
        }
        let total = plan.kv_total();
        let dense = match (&inputs[3], plan.mask) {
            (Some(t), Some(d)) => Some(dense_mask(t.ts.elem, d, total, t.ptr)?),
            _ => None,
        };
        if ctx.output_count()? > 4 {
            ensure!(
                ctx.output(4, &plan.qk_dims())?.is_none(),
                "qk_matmul_output is not supported by the CUDA kernels (run the node on the CPU EP)"
            );
        }

        let stream = ctx.stream()?;
        let y = ctx
            .output(0, &plan.y_dims())?
            .ok_or_else(|| Error::fail("Y could not be allocated"))?;
        let present_k = ctx.output(1, &plan.present_key_dims())?;
        let present_v = ctx.output(2, &plan.present_value_dims())?;
        let lse = ctx.output(3, &plan.lse_dims())?;
        let concat = plan.has_past || present_k.is_some() || present_v.is_some();
        ensure!(
            !concat || plan.layout == Layout::Bhsd,
            "K: past_key/past_value or present_key/present_value with 3-D K/V are not supported by the CUDA kernels (use 4-D K/V)"
        );
        // After ORT's allocations, so the EP's context is current here.
        let module = Module::for_current_context().map_err(from_cuda)?;

        let in_strides = |heads, seq, dim| layout_strides(plan.layout, heads, seq, dim);
        let (hkv, d, dv) = (plan.kv_heads, plan.head_dim, plan.v_head_dim);
        let bytes = T::CUDA.size() as usize;
        // Keys and values: read in place, or concatenated with the cache.
        let mut scratch: Vec<Scratch> = Vec::new();
        let mut with_cache = |present: Option<DevicePtr>,
                              past: usize,
                              new: &DeviceTensor,
                              dim: usize|
         -> Result<(DevicePtr, Strides)> {
            if !plan.has_past && present.is_none() {
                let s = in_strides(hkv, plan.kv_new, dim);
                return Ok((new.ptr, s));
            }
            let dst = match present {
                Some(p) => p,
                None => {
                    let n = plan.batch * hkv * total * dim * bytes;
                    let s = ctx.scratch(new, n)?;
                    let p = s.ptr();
                    scratch.push(s);
                    p
                }
            };
            // P = 0 without a cache: only the new rows are copied.
            let past = match &inputs[past] {
                Some(t) if plan.has_past => t.ptr,
                _ => DevicePtr::NULL,
            };
            let driver = Driver::get().map_err(from_cuda)?;
            // SAFETY: past (P rows, P = 0 when absent), new and dst are
            // device tensors of this node, 4-D (checked above) with the
            // shapes `plan` checked; dst holds B·Hkv·(P+Skv)·dim elements.
            unsafe {
                concat_cache(driver, &plan, dim, (past, new.ptr, dst), stream, bytes)?;
            }
            Ok((dst, Strides::bhsd(hkv, total, dim)))
        };
        let (k_ptr, k_strides) = with_cache(present_k, 4, k_in, d)?;
        let (v_ptr, v_strides) = with_cache(present_v, 5, v_in, dv)?;

        let (spec, mask) = kernel_call(&self.attrs, &plan, k_strides, v_strides)?;
        let device_mask = DeviceMask {
            kv_lens: inputs[6].as_ref().map(|t| t.ptr),
            align_to_kv_lens: inputs[6].is_some(),
            dense,
        };
        let bufs = AttentionBuffers {
            q: q_in.ptr,
            k: k_ptr,
            v: v_ptr,
            y,
            lse,
        };
        module
            .attention(stream, &spec, &mask, &device_mask, T::CUDA, &bufs)
            .map_err(from_cuda)?;
        // Scratch is freed only now, after every kernel using it is queued
        // on the stream (see `DeviceContext::scratch`).
        drop(scratch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The plugin's calls checked against `tessera_cuda::plan`, the same
    //! validation a launch runs first, with aligned stand-in addresses: no
    //! GPU is needed to see that every supported node becomes a valid launch
    //! with the CPU op's geometry and mask.
    use super::*;
    use crate::attention::plan::{RawAttrs, Shapes};
    use tessera_cuda::plan;

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
                layout_strides(p.layout, p.kv_heads, p.kv_new, p.head_dim),
                layout_strides(p.layout, p.kv_heads, p.kv_new, p.v_head_dim),
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
