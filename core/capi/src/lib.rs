//! The C API of tessera-core: `include/tessera.h` declares every item here.
//!
//! Every entry point validates all of its input (null or misaligned
//! pointers, overlapping buffers, the spec, the buffer lengths) and returns a
//! status code; none can crash on input it refuses. On hosted targets each
//! call also runs under `catch_unwind`, so no panic crosses the C boundary;
//! on bare metal the library is built with `panic = "abort"` and tessera-core
//! does not panic on validated input.
//!
//! The kernel is `Flash<K, 32, 32>`, with `K` the hand-written Arm FPU kernel
//! ([`Scalar`]) on Arm hard-float targets and [`Portable`] elsewhere.
#![cfg_attr(not(test), no_std)]

#[cfg(all(not(test), not(target_os = "none")))]
extern crate std;

use core::mem::size_of;
use core::slice;

#[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
use tessera_core::kernel::Portable as Kernel;
#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
use tessera_core::kernel::Scalar as Kernel;
use tessera_core::{merge, Attention, AttentionSpec, Error, Flash, MaskSpec};

/// Query rows per tile (`TESSERA_BQ` in the header).
pub const BQ: usize = 32;
/// Keys per tile (`TESSERA_BK` in the header).
pub const BK: usize = 32;
type F = Flash<Kernel, BQ, BK>;

/// `tessera_spec` in `tessera.h`: 15 four-byte fields, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TesseraSpec {
    /// Batch size `B`.
    pub batch: u32,
    /// Query heads `Hq`.
    pub q_heads: u32,
    /// Key/value heads `Hkv`; divides `Hq`.
    pub kv_heads: u32,
    /// Query length `Sq`.
    pub q_len: u32,
    /// Key/value length `Skv`.
    pub kv_len: u32,
    /// Q/K head size `D`.
    pub head_dim: u32,
    /// V/Y head size `Dv`.
    pub v_head_dim: u32,
    /// Score scale; 0 means `1/sqrt(D)`.
    pub scale: f32,
    /// Softcap; 0 means off.
    pub softcap: f32,
    /// `TESSERA_LAYOUT_BHSD` (0) or `TESSERA_LAYOUT_BSHD` (1).
    pub layout: u32,
    /// Non-zero: causal.
    pub causal: u32,
    /// Position offset of query 0 (causal and windows).
    pub q_offset: i32,
    /// Keys before `p - left_window` are masked; -1 = unbounded.
    pub left_window: i32,
    /// Keys after `p + right_window` are masked; -1 = unbounded.
    pub right_window: i32,
    /// Global / sink tokens at the start of the sequence.
    pub global_tokens: u32,
}

const _: () = assert!(size_of::<TesseraSpec>() == 60);

/// Success.
pub const TESSERA_OK: i32 = 0;
/// A required pointer is null.
pub const TESSERA_ERR_NULL: i32 = -1;
/// A pointer is not aligned for `float`.
pub const TESSERA_ERR_ALIGN: i32 = -2;
/// An output buffer overlaps another buffer.
pub const TESSERA_ERR_OVERLAP: i32 = -3;
/// `layout` is neither BHSD nor BSHD.
pub const TESSERA_ERR_LAYOUT: i32 = -4;
/// `head_dim` or `v_head_dim` is 0.
pub const TESSERA_ERR_HEAD_DIM: i32 = -5;
/// A head count is 0 or `q_heads` is not a multiple of `kv_heads`.
pub const TESSERA_ERR_HEADS: i32 = -6;
/// `scale` is negative or not finite.
pub const TESSERA_ERR_SCALE: i32 = -7;
/// `softcap` is negative or not finite.
pub const TESSERA_ERR_SOFTCAP: i32 = -8;
/// A window size is below -1.
pub const TESSERA_ERR_WINDOW: i32 = -9;
/// A size overflows the address space.
pub const TESSERA_ERR_OVERFLOW: i32 = -10;
/// A buffer is shorter than the spec needs.
pub const TESSERA_ERR_TOO_SHORT: i32 = -11;
/// A buffer has the wrong length (lse).
pub const TESSERA_ERR_LENGTH: i32 = -12;
/// Anything else (a bug: please report it).
pub const TESSERA_ERR_INTERNAL: i32 = -13;

fn status(e: Error) -> i32 {
    match e {
        Error::ZeroHeadDim => TESSERA_ERR_HEAD_DIM,
        Error::HeadsNotDivisible { .. } => TESSERA_ERR_HEADS,
        Error::BadScale(_) => TESSERA_ERR_SCALE,
        Error::BadSoftcap(_) => TESSERA_ERR_SOFTCAP,
        Error::WindowBelowMinusOne(_) => TESSERA_ERR_WINDOW,
        Error::Overflow(_) => TESSERA_ERR_OVERFLOW,
        Error::TooShort { .. } => TESSERA_ERR_TOO_SHORT,
        Error::WrongLength { .. } => TESSERA_ERR_LENGTH,
        _ => TESSERA_ERR_INTERNAL,
    }
}

/// Run `f`, turning a panic into [`TESSERA_ERR_INTERNAL`] on hosted targets,
/// so that no panic crosses the C boundary.
#[cfg(not(target_os = "none"))]
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(TESSERA_ERR_INTERNAL)
}

/// On bare metal there is no unwinding (`panic = "abort"`): validated input
/// never panics in tessera-core, and the panic handler below traps.
#[cfg(target_os = "none")]
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    f()
}

/// A borrowed `float` buffer from C: pointer and element count.
#[derive(Clone, Copy)]
struct Buf {
    ptr: *const f32,
    len: usize,
}

impl Buf {
    fn check(self) -> Result<Self, i32> {
        if self.ptr.is_null() {
            return Err(TESSERA_ERR_NULL);
        }
        if !self.ptr.is_aligned() {
            return Err(TESSERA_ERR_ALIGN);
        }
        if self
            .len
            .checked_mul(size_of::<f32>())
            .is_none_or(|b| b > isize::MAX as usize)
        {
            return Err(TESSERA_ERR_OVERFLOW);
        }
        Ok(self)
    }

    fn overlaps(self, other: Buf) -> bool {
        let (a0, b0) = (self.ptr as usize, other.ptr as usize);
        let (a1, b1) = (
            a0 + self.len * size_of::<f32>(),
            b0 + other.len * size_of::<f32>(),
        );
        self.len != 0 && other.len != 0 && a0 < b1 && b0 < a1
    }
}

/// No output buffer may overlap any other buffer.
fn disjoint(outputs: &[Buf], inputs: &[Buf]) -> Result<(), i32> {
    for (i, o) in outputs.iter().enumerate() {
        if inputs
            .iter()
            .chain(&outputs[i + 1..])
            .any(|b| o.overlaps(*b))
        {
            return Err(TESSERA_ERR_OVERLAP);
        }
    }
    Ok(())
}

/// f32 elements of scratch one `tessera_attention_f32` call needs.
#[no_mangle]
pub extern "C" fn tessera_scratch_len(head_dim: u32, v_head_dim: u32) -> usize {
    F::scratch_len(head_dim as usize, v_head_dim as usize)
}

fn spec_of(s: &TesseraSpec) -> Result<(AttentionSpec, MaskSpec<'static>), i32> {
    let sizes = [
        s.batch,
        s.q_heads,
        s.kv_heads,
        s.q_len,
        s.kv_len,
        s.head_dim,
        s.v_head_dim,
    ]
    .map(|x| x as usize);
    let [b, hq, hk, sq, skv, d, dv] = sizes;
    let mut spec = match s.layout {
        0 => AttentionSpec::bhsd(b, hq, hk, sq, skv, d, dv),
        1 => AttentionSpec::bshd(b, hq, hk, sq, skv, d, dv),
        _ => return Err(TESSERA_ERR_LAYOUT),
    };
    if s.scale != 0.0 {
        spec = spec.with_scale(s.scale);
    }
    spec = spec.with_softcap(s.softcap);
    let mut mask = MaskSpec::NONE
        .offset(s.q_offset as isize)
        .window(s.left_window as isize, s.right_window as isize);
    mask = mask.globals(s.global_tokens as usize);
    if s.causal != 0 {
        mask = mask.causal(s.q_offset as isize);
    }
    Ok((spec, mask))
}

/// Attention in f32. See `tessera.h` for the contract.
///
/// # Safety
/// Each non-null pointer must be valid for its stated number of `float`s
/// (reads for `q`, `k`, `v`; reads and writes for `y`, `lse`, `scratch`) for
/// the duration of the call, and `spec` must point to a `tessera_spec`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tessera_attention_f32(
    spec: *const TesseraSpec,
    q: *const f32,
    q_len: usize,
    k: *const f32,
    k_len: usize,
    v: *const f32,
    v_len: usize,
    y: *mut f32,
    y_len: usize,
    lse: *mut f32,
    lse_len: usize,
    scratch: *mut f32,
    scratch_len: usize,
) -> i32 {
    guarded(|| {
        let run = || -> Result<(), i32> {
            if spec.is_null() {
                return Err(TESSERA_ERR_NULL);
            }
            if !spec.is_aligned() {
                return Err(TESSERA_ERR_ALIGN);
            }
            // SAFETY: non-null and aligned (checked); the caller guarantees it
            // points to a tessera_spec. Copied out at once.
            let s = unsafe { spec.read() };
            let (spec, mask) = spec_of(&s)?;
            let (q, k, v) = (
                Buf { ptr: q, len: q_len }.check()?,
                Buf { ptr: k, len: k_len }.check()?,
                Buf { ptr: v, len: v_len }.check()?,
            );
            let (yb, sb) = (
                Buf { ptr: y, len: y_len }.check()?,
                Buf {
                    ptr: scratch,
                    len: scratch_len,
                }
                .check()?,
            );
            let lb = if lse.is_null() {
                None
            } else {
                Some(
                    Buf {
                        ptr: lse,
                        len: lse_len,
                    }
                    .check()?,
                )
            };
            match lb {
                Some(l) => disjoint(&[yb, sb, l], &[q, k, v])?,
                None => disjoint(&[yb, sb], &[q, k, v])?,
            }
            // SAFETY: each pointer is non-null and aligned (checked), valid
            // for its length (the caller's contract), and no mutable buffer
            // overlaps any other buffer (checked), so the shared and the
            // exclusive slices do not alias.
            let (q, k, v, y, scratch, lse) = unsafe {
                (
                    slice::from_raw_parts(q.ptr, q.len),
                    slice::from_raw_parts(k.ptr, k.len),
                    slice::from_raw_parts(v.ptr, v.len),
                    slice::from_raw_parts_mut(yb.ptr as *mut f32, yb.len),
                    slice::from_raw_parts_mut(sb.ptr as *mut f32, sb.len),
                    lb.map(|l| slice::from_raw_parts_mut(l.ptr as *mut f32, l.len)),
                )
            };
            let att = Attention::new(&spec, &mask, q, k, v).map_err(status)?;
            F::new(Kernel).run(&att, y, lse, scratch).map_err(status)?;
            Ok(())
        };
        match run() {
            Ok(()) => TESSERA_OK,
            Err(e) => e,
        }
    })
}

/// Merge two attention results over disjoint key sets. See `tessera.h`.
///
/// # Safety
/// `y_a`, `y_b` and `y` must be valid for `rows · v_head_dim` floats and
/// `lse_a`, `lse_b`, `lse` for `rows` floats (reads for the inputs, reads
/// and writes for `y` and `lse`).
#[no_mangle]
pub unsafe extern "C" fn tessera_merge_f32(
    y_a: *const f32,
    lse_a: *const f32,
    y_b: *const f32,
    lse_b: *const f32,
    y: *mut f32,
    lse: *mut f32,
    rows: usize,
    v_head_dim: u32,
) -> i32 {
    guarded(|| {
        let run = || -> Result<(), i32> {
            let dv = v_head_dim as usize;
            if dv == 0 {
                return Err(TESSERA_ERR_HEAD_DIM);
            }
            let n = rows.checked_mul(dv).ok_or(TESSERA_ERR_OVERFLOW)?;
            let [ya, yb, yo] = [y_a, y_b, y as *const f32].map(|p| Buf { ptr: p, len: n });
            let [la, lb, lo] = [lse_a, lse_b, lse as *const f32].map(|p| Buf { ptr: p, len: rows });
            for b in [ya, yb, yo, la, lb, lo] {
                b.check()?;
            }
            disjoint(&[yo, lo], &[ya, yb, la, lb])?;
            // SAFETY: non-null, aligned, in-range (checked and the caller's
            // contract); the two outputs overlap nothing (checked).
            let (ya, yb, la, lb, yo, lo) = unsafe {
                (
                    slice::from_raw_parts(ya.ptr, n),
                    slice::from_raw_parts(yb.ptr, n),
                    slice::from_raw_parts(la.ptr, rows),
                    slice::from_raw_parts(lb.ptr, rows),
                    slice::from_raw_parts_mut(yo.ptr as *mut f32, n),
                    slice::from_raw_parts_mut(lo.ptr as *mut f32, rows),
                )
            };
            merge(ya, la, yb, lb, yo, lo, dv).map_err(status)
        };
        match run() {
            Ok(()) => TESSERA_OK,
            Err(e) => e,
        }
    })
}

/// A static, NUL-terminated name for a status code.
#[no_mangle]
pub extern "C" fn tessera_status_name(status: i32) -> *const core::ffi::c_char {
    let s: &'static core::ffi::CStr = match status {
        TESSERA_OK => c"ok",
        TESSERA_ERR_NULL => c"a required pointer is null",
        TESSERA_ERR_ALIGN => c"a pointer is not aligned for float",
        TESSERA_ERR_OVERLAP => c"an output buffer overlaps another buffer",
        TESSERA_ERR_LAYOUT => c"layout must be TESSERA_LAYOUT_BHSD or TESSERA_LAYOUT_BSHD",
        TESSERA_ERR_HEAD_DIM => c"head_dim and v_head_dim must be at least 1",
        TESSERA_ERR_HEADS => c"q_heads must be a positive multiple of kv_heads",
        TESSERA_ERR_SCALE => c"scale must be finite and >= 0 (0 = 1/sqrt(head_dim))",
        TESSERA_ERR_SOFTCAP => c"softcap must be finite and >= 0 (0 = off)",
        TESSERA_ERR_WINDOW => c"window sizes must be >= -1 (-1 = unbounded)",
        TESSERA_ERR_OVERFLOW => c"a size overflows the address space",
        TESSERA_ERR_TOO_SHORT => c"a buffer is shorter than the spec needs",
        TESSERA_ERR_LENGTH => c"lse must hold exactly batch*q_heads*q_len floats",
        TESSERA_ERR_INTERNAL => c"internal error",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// On bare metal a panic (never expected: input is validated) traps, so
/// the C firmware's fault handler sees it.
#[cfg(all(not(test), target_os = "none"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        #[cfg(target_arch = "arm")]
        // SAFETY: a permanently undefined instruction: it raises a fault.
        unsafe {
            core::arch::asm!("udf #0")
        };
    }
}

#[cfg(test)]
mod tests;
