//! The Helium (MVE) kernel: Armv8.1-M cores with the M-profile Vector
//! Extension's floating point (Cortex-M55, Cortex-M85). Built only where
//! `cfg(tessera_mve)` is set (by `build.rs`, from `-C target-cpu=cortex-m55`
//! or `cortex-m85`, or `-C target-feature=+mve.fp`): stable Rust has neither
//! MVE intrinsics nor `cfg(target_feature = "mve.fp")`, so the three hot
//! loops are `asm!`.
//!
//! MVE has eight 128-bit `q` registers (aliasing `s0`–`s31`) and
//! vector-by-scalar forms that take the scalar from a general register:
//! - [`gemm`](MicroKernel::gemm): a `4 × 4` register block, one `q`
//!   accumulator per row of `C`. Four steps of `k` per iteration: four `B` rows
//!   (`vldrw`, 4 values each), then per row of `A` one `ldm` of its next four
//!   values into `r0`–`r3` and four `vfma.f32 q, q, r`; 29 instructions per
//!   64 multiply-adds, counted down by the low-overhead loop (`wls`/`le`).
//! - [`softmax_row`](MicroKernel::softmax_row): row max by `vmaxnm` and
//!   `vmaxnmv`, then `exp(s - m)` four lanes at a time with the portable
//!   body's range reduction and polynomial (fused multiply-adds, so the last
//!   bit can differ), 23 instructions per four scores.
//! - [`scale_row`](MicroKernel::scale_row): `vmul.f32 q, q, r`.
//! - [`transpose`](MicroKernel::transpose) (packing Kᵀ): four key rows at a
//!   time, a gather load per column and one contiguous store.
//!
//! `vfma` rounds once per multiply-add; results agree with the portable
//! kernel to the conformance tolerance, not bit for bit.

use super::{body, MicroKernel, RowUpdate};

/// Rows of the register block.
const MR: usize = 4;
/// Columns of the register block (one `q` register).
const NR: usize = 4;

/// The Helium micro-kernel, `4 × 4` register block: `Flash<Helium, BQ, BK>`
/// with `BQ` a multiple of 4 and `BK` of 8 (for example
/// `Flash<Helium, 32, 32>`). It exists only in builds for an MVE core, so
/// holding one means the CPU has MVE.
#[derive(Clone, Copy, Debug, Default)]
pub struct Helium;

impl MicroKernel for Helium {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "helium";

    #[inline]
    unsafe fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's contract (MicroKernel::gemm) is
        // for_each_block's; each block call gets a block of it, and c does
        // not overlap a or b.
        unsafe {
            body::for_each_block((m, n), (MR, NR), a, lda, b, c, ldc, |a, b, c| {
                if accumulate {
                    block::<true>(k, a, lda, b, ldb, c, ldc)
                } else {
                    block::<false>(k, a, lda, b, ldb, c, ldc)
                }
            })
        }
    }

    #[inline]
    fn softmax_row(self, s: &mut [f32], m_old: f32) -> RowUpdate {
        let (vec, tail) = s.split_at_mut(s.len() / 4 * 4);
        if vec.is_empty() {
            return body::softmax_row(s, m_old);
        }
        let mut m_new = row_max(vec, m_old);
        for &x in tail.iter() {
            m_new = if x > m_new { x } else { m_new };
        }
        if m_new == f32::NEG_INFINITY {
            s.iter_mut().for_each(|x| *x = 0.0);
            return RowUpdate {
                max: m_new,
                alpha: 1.0,
                sum: 0.0,
            };
        }
        let lanes = exp_sub(vec, m_new);
        let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for x in tail.iter_mut() {
            *x = body::exp_neg(*x - m_new);
            sum += *x;
        }
        RowUpdate {
            max: m_new,
            alpha: body::exp_neg(m_old - m_new),
            sum,
        }
    }

    #[inline]
    fn scale_row(self, o: &mut [f32], alpha: f32) {
        let (vec, tail) = o.split_at_mut(o.len() / 4 * 4);
        if !vec.is_empty() {
            // SAFETY: the loop reads and writes vec.len() / 4 groups of four
            // f32 from vec's start, exactly vec; the count is non-zero.
            unsafe {
                core::arch::asm!(
                    "wls lr, {n}, 2f",
                    "1:",
                    "vldrw.u32 q0, [{p}]",
                    "vmul.f32 q0, q0, {alpha}",
                    "vstrw.32 q0, [{p}], #16",
                    "le lr, 1b",
                    "2:",
                    p = inout(reg) vec.as_mut_ptr() => _,
                    n = in(reg) vec.len() / 4,
                    alpha = in(reg) alpha.to_bits(),
                    out("lr") _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _,
                    options(nostack),
                );
            }
        }
        body::scale_row(tail, alpha);
    }

    /// Four source rows at a time: a gather load (`vldrw.u32 q, [q, #4]!`)
    /// takes column `c` of the four rows, one contiguous store writes it.
    fn transpose(
        self,
        src: &[f32],
        rows: usize,
        cols: usize,
        lds: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        let fits = rows == 0
            || cols == 0
            || ((rows - 1)
                .checked_mul(lds)
                .and_then(|x| x.checked_add(cols))
                .is_some_and(|x| x <= src.len())
                && (cols - 1)
                    .checked_mul(ldd)
                    .and_then(|x| x.checked_add(rows))
                    .is_some_and(|x| x <= dst.len()));
        if !fits || cols == 0 {
            // The body panics on short slices, as the contract says.
            return body::transpose(src, rows, cols, lds, dst, ldd);
        }
        const F: usize = core::mem::size_of::<f32>();
        let groups = rows / 4;
        for g in 0..groups {
            let r = 4 * g;
            // Lane i: the address of src[(r + i)·lds] minus 4, as the gather
            // pre-increments by 4 before each load.
            let base = src.as_ptr() as usize + r * lds * F;
            let addr: [usize; 4] = core::array::from_fn(|i| base + i * lds * F - F);
            // SAFETY: for c < cols the loads read src[(r + i)·lds + c], i < 4,
            // and the stores write dst[c·ldd + r .. + 4]: in bounds by `fits`
            // (r + 3 < rows). `addr` is only read.
            unsafe {
                core::arch::asm!(
                    "vldrw.u32 q1, [{addr}]",
                    "dls lr, {n}",
                    "1:",
                    "vldrw.u32 q0, [q1, #4]!",
                    "vstrw.32 q0, [{d}]",
                    "add {d}, {ldd}",
                    "le lr, 1b",
                    addr = in(reg) addr.as_ptr(),
                    n = in(reg) cols,
                    d = inout(reg) dst.as_mut_ptr().wrapping_add(r) => _,
                    ldd = in(reg) ldd * F,
                    out("lr") _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _,
                    out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                    options(nostack),
                );
            }
        }
        for r in 4 * groups..rows {
            let row = &src[r * lds..][..cols];
            for (c, &x) in row.iter().enumerate() {
                dst[c * ldd + r] = x;
            }
        }
    }
}

/// `max(m_old, max(s))` for `s.len()` a non-zero multiple of 4 (NaNs are
/// ignored, as `vmaxnm` does).
#[inline]
fn row_max(s: &[f32], m_old: f32) -> f32 {
    let m: u32;
    // SAFETY: reads s.len() / 4 groups of four f32 from s's start, exactly
    // s; the count is non-zero.
    unsafe {
        core::arch::asm!(
            "vdup.32 q0, {m}",
            "wls lr, {n}, 2f",
            "1:",
            "vldrw.u32 q1, [{p}], #16",
            "vmaxnm.f32 q0, q0, q1",
            "le lr, 1b",
            "2:",
            "vmaxnmv.f32 {m}, q0",
            m = inout(reg) m_old.to_bits() => m,
            p = inout(reg) s.as_ptr() => _,
            n = in(reg) s.len() / 4,
            out("lr") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            options(nostack, readonly),
        );
    }
    f32::from_bits(m)
}

/// `s ← exp(s - m)` (`m` finite, `m >= max(s)`), four lanes at a time, with
/// [`body::exp_neg`]'s reduction and polynomial; returns the four lane sums.
/// `s.len()` is a non-zero multiple of 4.
#[inline]
fn exp_sub(s: &mut [f32], m: f32) -> [f32; 4] {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0;
    /// The vector constants, the group count and 1.0: what the loop needs
    /// beyond the eleven general registers it keeps.
    #[repr(C, align(8))]
    struct Block {
        q: [[f32; 4]; 4],
        groups: usize,
        one: f32,
    }
    let c = body::EXP_POLY;
    let blk = Block {
        q: [
            [c[0]; 4],
            [0.0; 4],
            [body::EXP_MIN; 4],
            [f32::from_bits(127 << 23); 4],
        ],
        groups: s.len() / 4,
        one: c[5],
    };
    let (l0, l1, l2, l3): (u32, u32, u32, u32);
    // SAFETY: reads and writes s.len() / 4 groups of four f32 from s's
    // start, exactly s (the count, blk.groups, is non-zero); reads blk. q4-q7
    // hold c0, 0, EXP_MIN and the exponent bias 127 << 23; the lane sums
    // come back in the coefficient registers.
    unsafe {
        core::arch::asm!(
            "vldrw.u32 q4, [{one}]",
            "vldrw.u32 q5, [{one}, #16]",
            "vldrw.u32 q6, [{one}, #32]",
            "vldrw.u32 q7, [{one}, #48]",
            "ldr lr, [{one}, #64]",
            "ldr {one}, [{one}, #68]",
            "vmov.i32 q3, #0",
            "dls lr, lr",
            "1:",
            "vldrw.u32 q0, [{p}]",
            "vsub.f32 q0, q0, {m}",
            // x < EXP_MIN (including -inf) gives exactly 0 at the end.
            "vcmp.f32 lt, q0, q6",
            "vmaxnm.f32 q0, q0, q6",
            // n = round(x·log2 e) by the 1.5·2^23 trick; t keeps n in its
            // low mantissa bits.
            "vmul.f32 q1, q0, {log2e}",
            "vadd.f32 q1, q1, {magic}",
            "vsub.f32 q2, q1, {magic}",
            // f = x - n·ln 2 (hi, lo).
            "vfma.f32 q0, q2, {ln2hi}",
            "vfma.f32 q0, q2, {ln2lo}",
            // p = Horner of the Taylor coefficients.
            "vmov q2, q4",
            "vfmas.f32 q2, q0, {c1}",
            "vfmas.f32 q2, q0, {c2}",
            "vfmas.f32 q2, q0, {c3}",
            "vfmas.f32 q2, q0, {c4}",
            "vfmas.f32 q2, q0, {one}",
            "vfmas.f32 q2, q0, {one}",
            // 2^n: (t_bits << 23) + (127 << 23).
            "vshl.i32 q1, q1, #23",
            "vadd.i32 q1, q1, q7",
            "vmul.f32 q2, q2, q1",
            "vpsel q2, q5, q2",
            "vadd.f32 q3, q3, q2",
            "vstrw.32 q2, [{p}], #16",
            "le lr, 1b",
            "vmov {c1}, {c2}, q3[2], q3[0]",
            "vmov {c3}, {c4}, q3[3], q3[1]",
            p = inout(reg) s.as_mut_ptr() => _,
            one = inout(reg) &blk as *const Block => _,
            m = in(reg) m.to_bits(),
            log2e = in(reg) LOG2E.to_bits(),
            magic = in(reg) MAGIC.to_bits(),
            ln2hi = in(reg) (-body::LN2_HI).to_bits(),
            ln2lo = in(reg) (-body::LN2_LO).to_bits(),
            c1 = inout(reg) c[1].to_bits() => l2,
            c2 = inout(reg) c[2].to_bits() => l0,
            c3 = inout(reg) c[3].to_bits() => l3,
            c4 = inout(reg) c[4].to_bits() => l1,
            out("lr") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        );
    }
    [l0, l1, l2, l3].map(f32::from_bits)
}

/// One `4 × 4` block: `C ← A·B (+ C)` with `A` 4×k (row stride `lda`), `B`
/// k×4 (row stride `ldb`) and `C` 4×4 (row stride `ldc`).
///
/// # Safety
/// `a[r*lda + p]`, `b[p*ldb + q]` are readable and `c[r*ldc + q]` readable
/// and writable for `r, q < 4`, `p < k`; `c` does not overlap `a` or `b`.
///
/// Not inlined: one copy per `ACCUMULATE` keeps the image small.
#[inline(never)]
unsafe fn block<const ACCUMULATE: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    const F: usize = core::mem::size_of::<f32>();
    // c, its row stride in bytes and k, read from memory: the loop needs
    // every other general register.
    let cv = [c as usize, ldc * F, k];
    // SAFETY: the loads touch exactly a[r*lda + p] and b[p*ldb + q] for
    // r, q < 4, p < k, and the stores c[r*ldc + q]: the caller's contract;
    // `cv` is read only. Every s register (q0-q7) is declared clobbered (the
    // compiler saves the callee-saved s16-s31); the stack is not touched.
    unsafe {
        core::arch::asm!(
            "ldrd r0, r1, [{cv}]",
            ".if {acc}",
            "vldrw.u32 q4, [r0]",
            "add r0, r1",
            "vldrw.u32 q5, [r0]",
            "add r0, r1",
            "vldrw.u32 q6, [r0]",
            "add r0, r1",
            "vldrw.u32 q7, [r0]",
            ".else",
            "vmov.i32 q4, #0",
            "vmov.i32 q5, #0",
            "vmov.i32 q6, #0",
            "vmov.i32 q7, #0",
            ".endif",
            "ldr r0, [{cv}, #8]",
            "lsrs r0, r0, #2",
            "wls lr, r0, 3f",
            // Four steps of k: B rows p..p+3 in q0-q3, then per row of A its
            // four values in r0-r3 and four vfma into that row's accumulator.
            "2:",
            "vldrw.u32 q0, [{b}]",
            "add {b}, {ldb}",
            "vldrw.u32 q1, [{b}]",
            "add {b}, {ldb}",
            "vldrw.u32 q2, [{b}]",
            "add {b}, {ldb}",
            "vldrw.u32 q3, [{b}]",
            "add {b}, {ldb}",
            "ldm {a0}!, {{r0-r3}}",
            "vfma.f32 q4, q0, r0", "vfma.f32 q4, q1, r1", "vfma.f32 q4, q2, r2", "vfma.f32 q4, q3, r3",
            "ldm {a1}!, {{r0-r3}}",
            "vfma.f32 q5, q0, r0", "vfma.f32 q5, q1, r1", "vfma.f32 q5, q2, r2", "vfma.f32 q5, q3, r3",
            "ldm {a2}!, {{r0-r3}}",
            "vfma.f32 q6, q0, r0", "vfma.f32 q6, q1, r1", "vfma.f32 q6, q2, r2", "vfma.f32 q6, q3, r3",
            "ldm {a3}!, {{r0-r3}}",
            "vfma.f32 q7, q0, r0", "vfma.f32 q7, q1, r1", "vfma.f32 q7, q2, r2", "vfma.f32 q7, q3, r3",
            "le lr, 2b",
            // k % 4 single steps.
            "3:",
            "ldr r0, [{cv}, #8]",
            "ands r0, r0, #3",
            "wls lr, r0, 5f",
            "4:",
            "vldrw.u32 q0, [{b}]",
            "add {b}, {ldb}",
            "ldr r0, [{a0}], #4", "vfma.f32 q4, q0, r0",
            "ldr r0, [{a1}], #4", "vfma.f32 q5, q0, r0",
            "ldr r0, [{a2}], #4", "vfma.f32 q6, q0, r0",
            "ldr r0, [{a3}], #4", "vfma.f32 q7, q0, r0",
            "le lr, 4b",
            "5:",
            "ldrd r0, r1, [{cv}]",
            "vstrw.32 q4, [r0]",
            "add r0, r1",
            "vstrw.32 q5, [r0]",
            "add r0, r1",
            "vstrw.32 q6, [r0]",
            "add r0, r1",
            "vstrw.32 q7, [r0]",
            acc = const ACCUMULATE as u8,
            cv = in(reg) cv.as_ptr(),
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.wrapping_add(lda) => _,
            a2 = inout(reg) a.wrapping_add(2 * lda) => _,
            a3 = inout(reg) a.wrapping_add(3 * lda) => _,
            b = inout(reg) b => _,
            ldb = in(reg) ldb * F,
            out("r0") _, out("r1") _, out("r2") _, out("r3") _, out("lr") _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        );
    }
}
