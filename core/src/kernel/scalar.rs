//! The scalar-FPU kernel: for cores with a single-precision FPU and no SIMD
//! (Cortex-M4F, Cortex-M7 in single precision, Cortex-M33, RV32F).
//!
//! Such a core has 32 single-precision registers (`s0`–`s31` on ARMv7E-M and
//! ARMv8-M). The `4 × 4` register block is sized to them: 16 accumulators,
//! and for two steps of `k` at once the 8 values of two `B` rows and the 8
//! values of four `A` row pairs, 32 registers in all. On Arm hard-float
//! targets the block is a hand-written loop (`vldmia` loads two `A` values or
//! four `B` values per instruction, then 32 `vmla.f32`): 42 instructions per
//! 32 multiply-adds. `vmla` rounds the product and the sum separately, like
//! the portable Rust body, so both give bit-identical results.
//!
//! Elsewhere the same block is plain Rust with raw-pointer loads. Bounds are
//! the caller's contract ([`MicroKernel::gemm`]'s `# Safety`), so no check
//! sits in the inner loop, except on RV32F, which has its own `fmadd.s` loop
//! (`cfg(tessera_rv32f)`, set by `build.rs`: stable Rust has no
//! `target_feature = "f"`). On a core without an FPU (RV32IMAC) it runs
//! through the soft-float routines.

use super::{body, MicroKernel, RowUpdate};

/// Rows of the register block.
const MR: usize = 4;
/// Columns of the register block.
const NR: usize = 4;

/// The scalar-FPU micro-kernel, `4 × 4` register block. `Flash`'s `BQ` must
/// be a multiple of 4 and `BK` a multiple of 8 (for example `Flash<Scalar, 32, 32>`).
///
/// # Firmware quick start
/// `Cargo.toml`: `tessera-core = { path = "…/core", default-features = false }`
/// (no heap, no `std`). Every buffer is the caller's; scratch is a `const fn`
/// of the head sizes, so it can be a static:
/// ```
/// use core::ptr::addr_of_mut;
/// use tessera_core::{kernel::Scalar, Attention, AttentionSpec, Flash, MaskSpec, Error};
///
/// const S: usize = 64; // tokens
/// const D: usize = 32; // head size (Q/K and V)
/// type F = Flash<Scalar, 32, 32>; // BQ = 32 query rows, BK = 32 keys per tile
/// const SCRATCH: usize = F::scratch_len(D, D); // BQ·D + D·BK + BK·Dvp + BQ·BK + BQ·Dvp + 2·BQ f32s
/// assert_eq!(SCRATCH * 4, 20_736); // bytes
///
/// static mut SCRATCH_BUF: [f32; SCRATCH] = [0.0; SCRATCH];
/// static mut Y: [f32; S * D] = [0.0; S * D];
///
/// fn attend(q: &[f32], k: &[f32], v: &[f32]) -> Result<(), Error> {
///     let spec = AttentionSpec::bhsd(1, 1, 1, S, S, D, D); // B, Hq, Hkv, Sq, Skv, D, Dv
///     let mask = MaskSpec::NONE.causal(0).window(16, 0).globals(2);
///     let att = Attention::new(&spec, &mask, q, k, v)?; // every size checked here
///     // SAFETY: single-threaded firmware; nothing else refers to these statics.
///     let (scratch, y) = unsafe { (&mut *addr_of_mut!(SCRATCH_BUF), &mut *addr_of_mut!(Y)) };
///     F::new(Scalar).run(&att, y, None, scratch)?;
///     Ok(())
/// }
///
/// let x = [0.5f32; S * D];
/// attend(&x, &x, &x).unwrap();
/// // SAFETY: attend has returned; this is the only reference.
/// assert!(unsafe { (*addr_of_mut!(Y))[0] } == 0.5);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

impl MicroKernel for Scalar {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "scalar";

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
        body::softmax_row(s, m_old)
    }

    #[inline]
    fn scale_row(self, o: &mut [f32], alpha: f32) {
        body::scale_row(o, alpha)
    }
}

/// One `4 × 4` block: `C ← A·B (+ C)` with `A` 4×k (row stride `lda`), `B`
/// k×4 (row stride `ldb`) and `C` 4×4 (row stride `ldc`).
///
/// # Safety
/// `a[r*lda + p]`, `b[p*ldb + q]` are readable and `c[r*ldc + q]` readable
/// and writable for `r, q < 4`, `p < k`; `c` does not overlap `a` or `b`.
///
/// Not inlined: one copy per `ACCUMULATE` keeps the image small (the call
/// costs about 1% of a block with `k = 32`).
#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
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
    let rows = [
        a,
        a.wrapping_add(lda),
        a.wrapping_add(2 * lda),
        a.wrapping_add(3 * lda),
    ];
    // SAFETY: the loads touch exactly a[r*lda + p] and b[p*ldb + q] for
    // r, q < 4, p < k, and the stores c[r*ldc + q]: the caller's contract.
    // Every s register used is declared clobbered (the compiler saves the
    // callee-saved s16-s31); the stack is not touched.
    unsafe {
        core::arch::asm!(
            // s16-s31: the 4×4 accumulators, one row per 4 registers.
            ".if {acc}",
            "vldmia {c}, {{s16-s19}}",
            "add {c}, {c}, {ldc}",
            "vldmia {c}, {{s20-s23}}",
            "add {c}, {c}, {ldc}",
            "vldmia {c}, {{s24-s27}}",
            "add {c}, {c}, {ldc}",
            "vldmia {c}, {{s28-s31}}",
            "sub {c}, {c}, {ldc}",
            "sub {c}, {c}, {ldc}",
            "sub {c}, {c}, {ldc}",
            ".else",
            // Not `vsub s16, s16, s16`: that is NaN when s16 holds a NaN or
            // an infinity left by earlier code.
            "movs {n}, #0",
            "vmov s16, {n}",
            "vmov.f32 s17, s16", "vmov.f32 s18, s16", "vmov.f32 s19, s16",
            "vmov.f32 s20, s16", "vmov.f32 s21, s16", "vmov.f32 s22, s16", "vmov.f32 s23, s16",
            "vmov.f32 s24, s16", "vmov.f32 s25, s16", "vmov.f32 s26, s16", "vmov.f32 s27, s16",
            "vmov.f32 s28, s16", "vmov.f32 s29, s16", "vmov.f32 s30, s16", "vmov.f32 s31, s16",
            ".endif",
            "lsrs {n}, {k}, #1",
            "beq 3f",
            // Two steps of k: A values a[r][p], a[r][p+1] in s(2r), s(2r+1);
            // B rows p and p+1 in s8-s11 and s12-s15.
            "2:",
            "vldmia {a0}!, {{s0-s1}}",
            "vldmia {a1}!, {{s2-s3}}",
            "vldmia {a2}!, {{s4-s5}}",
            "vldmia {a3}!, {{s6-s7}}",
            "vldmia {b}, {{s8-s11}}",
            "add {b}, {b}, {ldb}",
            "vldmia {b}, {{s12-s15}}",
            "add {b}, {b}, {ldb}",
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s2, s8", "vmla.f32 s21, s2, s9", "vmla.f32 s22, s2, s10", "vmla.f32 s23, s2, s11",
            "vmla.f32 s24, s4, s8", "vmla.f32 s25, s4, s9", "vmla.f32 s26, s4, s10", "vmla.f32 s27, s4, s11",
            "vmla.f32 s28, s6, s8", "vmla.f32 s29, s6, s9", "vmla.f32 s30, s6, s10", "vmla.f32 s31, s6, s11",
            "vmla.f32 s16, s1, s12", "vmla.f32 s17, s1, s13", "vmla.f32 s18, s1, s14", "vmla.f32 s19, s1, s15",
            "vmla.f32 s20, s3, s12", "vmla.f32 s21, s3, s13", "vmla.f32 s22, s3, s14", "vmla.f32 s23, s3, s15",
            "vmla.f32 s24, s5, s12", "vmla.f32 s25, s5, s13", "vmla.f32 s26, s5, s14", "vmla.f32 s27, s5, s15",
            "vmla.f32 s28, s7, s12", "vmla.f32 s29, s7, s13", "vmla.f32 s30, s7, s14", "vmla.f32 s31, s7, s15",
            "subs {n}, {n}, #1",
            "bne 2b",
            // An odd k leaves one step.
            "3:",
            "tst {k}, #1",
            "beq 4f",
            "vldr s0, [{a0}]",
            "vldr s2, [{a1}]",
            "vldr s4, [{a2}]",
            "vldr s6, [{a3}]",
            "vldmia {b}, {{s8-s11}}",
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s2, s8", "vmla.f32 s21, s2, s9", "vmla.f32 s22, s2, s10", "vmla.f32 s23, s2, s11",
            "vmla.f32 s24, s4, s8", "vmla.f32 s25, s4, s9", "vmla.f32 s26, s4, s10", "vmla.f32 s27, s4, s11",
            "vmla.f32 s28, s6, s8", "vmla.f32 s29, s6, s9", "vmla.f32 s30, s6, s10", "vmla.f32 s31, s6, s11",
            "4:",
            "vstmia {c}, {{s16-s19}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s20-s23}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s24-s27}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s28-s31}}",
            acc = const ACCUMULATE as u8,
            a0 = inout(reg) rows[0] => _,
            a1 = inout(reg) rows[1] => _,
            a2 = inout(reg) rows[2] => _,
            a3 = inout(reg) rows[3] => _,
            b = inout(reg) b => _,
            ldb = in(reg) ldb * F,
            c = inout(reg) c => _,
            ldc = in(reg) ldc * F,
            k = in(reg) k,
            n = out(reg) _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        );
    }
}

/// One `4 × 4` block on RV32F: the Arm loop in RISC-V, with `fmadd.s`
/// (fused: one rounding per multiply-add, so results may differ from the
/// portable body in the last bit). Four steps of `k` per iteration: 32 `flw`,
/// 64 `fmadd.s` and 10 integer instructions per 64 multiply-adds. Only two
/// callee-saved registers (`fs0`, `fs1`, the `B` values) are used, so the
/// call saves and restores just those: the accumulators and the `A` values
/// sit in the 20 caller-saved `f` registers.
///
/// # Safety
/// As for the Arm version above.
#[cfg(tessera_rv32f)]
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
    // SAFETY: the loads touch exactly a[r*lda + p] and b[p*ldb + q] for
    // r, q < 4, p < k, and the stores c[r*ldc + q]: the caller's contract.
    // Every f register written is declared clobbered (the compiler saves the
    // callee-saved ones); the stack is not touched.
    unsafe {
        core::arch::asm!(
            ".if {acc}",
            "mv {n}, {c}",
            "flw f0, 0({n})", "flw f1, 4({n})", "flw f2, 8({n})", "flw f3, 12({n})",
            "add {n}, {n}, {ldc}",
            "flw f4, 0({n})", "flw f5, 4({n})", "flw f6, 8({n})", "flw f7, 12({n})",
            "add {n}, {n}, {ldc}",
            "flw f10, 0({n})", "flw f11, 4({n})", "flw f12, 8({n})", "flw f13, 12({n})",
            "add {n}, {n}, {ldc}",
            "flw f14, 0({n})", "flw f15, 4({n})", "flw f16, 8({n})", "flw f17, 12({n})",
            ".else",
            "fmv.w.x f0, zero", "fmv.w.x f1, zero", "fmv.w.x f2, zero", "fmv.w.x f3, zero",
            "fmv.w.x f4, zero", "fmv.w.x f5, zero", "fmv.w.x f6, zero", "fmv.w.x f7, zero",
            "fmv.w.x f10, zero", "fmv.w.x f11, zero", "fmv.w.x f12, zero", "fmv.w.x f13, zero",
            "fmv.w.x f14, zero", "fmv.w.x f15, zero", "fmv.w.x f16, zero", "fmv.w.x f17, zero",
            ".endif",
            "add {b1}, {b}, {ldb}",
            "add {ldb}, {ldb}, {ldb}",
            // Four steps of k per iteration, then two, then one.
            "srli {n}, {k}, 2",
            "beqz {n}, 5f",
            "2:",
            "flw f28, 0({a0})", "flw f29, 0({a1})", "flw f30, 0({a2})", "flw f31, 0({a3})",
            "flw f8, 0({b})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "flw f28, 4({a0})", "flw f29, 4({a1})", "flw f30, 4({a2})", "flw f31, 4({a3})",
            "flw f8, 0({b1})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b1})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b1})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b1})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "add {b}, {b}, {ldb}", "add {b1}, {b1}, {ldb}",
            "flw f28, 8({a0})", "flw f29, 8({a1})", "flw f30, 8({a2})", "flw f31, 8({a3})",
            "flw f8, 0({b})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "flw f28, 12({a0})", "flw f29, 12({a1})", "flw f30, 12({a2})", "flw f31, 12({a3})",
            "flw f8, 0({b1})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b1})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b1})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b1})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "add {b}, {b}, {ldb}", "add {b1}, {b1}, {ldb}",
            "addi {a0}, {a0}, 16", "addi {a1}, {a1}, 16", "addi {a2}, {a2}, 16", "addi {a3}, {a3}, 16",
            "addi {n}, {n}, -1",
            "bnez {n}, 2b",
            "5:",
            "andi {n}, {k}, 2",
            "beqz {n}, 3f",
            "flw f28, 0({a0})", "flw f29, 0({a1})", "flw f30, 0({a2})", "flw f31, 0({a3})",
            "flw f8, 0({b})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "flw f28, 4({a0})", "flw f29, 4({a1})", "flw f30, 4({a2})", "flw f31, 4({a3})",
            "flw f8, 0({b1})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b1})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b1})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b1})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "add {b}, {b}, {ldb}",
            "addi {a0}, {a0}, 8", "addi {a1}, {a1}, 8", "addi {a2}, {a2}, 8", "addi {a3}, {a3}, 8",
            "3:",
            "andi {n}, {k}, 1",
            "beqz {n}, 4f",
            "flw f28, 0({a0})", "flw f29, 0({a1})", "flw f30, 0({a2})", "flw f31, 0({a3})",
            "flw f8, 0({b})", "fmadd.s f0, f28, f8, f0", "fmadd.s f4, f29, f8, f4", "fmadd.s f10, f30, f8, f10", "fmadd.s f14, f31, f8, f14",
            "flw f9, 4({b})", "fmadd.s f1, f28, f9, f1", "fmadd.s f5, f29, f9, f5", "fmadd.s f11, f30, f9, f11", "fmadd.s f15, f31, f9, f15",
            "flw f8, 8({b})", "fmadd.s f2, f28, f8, f2", "fmadd.s f6, f29, f8, f6", "fmadd.s f12, f30, f8, f12", "fmadd.s f16, f31, f8, f16",
            "flw f9, 12({b})", "fmadd.s f3, f28, f9, f3", "fmadd.s f7, f29, f9, f7", "fmadd.s f13, f30, f9, f13", "fmadd.s f17, f31, f9, f17",
            "4:",
            "fsw f0, 0({c})", "fsw f1, 4({c})", "fsw f2, 8({c})", "fsw f3, 12({c})",
            "add {c}, {c}, {ldc}",
            "fsw f4, 0({c})", "fsw f5, 4({c})", "fsw f6, 8({c})", "fsw f7, 12({c})",
            "add {c}, {c}, {ldc}",
            "fsw f10, 0({c})", "fsw f11, 4({c})", "fsw f12, 8({c})", "fsw f13, 12({c})",
            "add {c}, {c}, {ldc}",
            "fsw f14, 0({c})", "fsw f15, 4({c})", "fsw f16, 8({c})", "fsw f17, 12({c})",
            acc = const ACCUMULATE as u8,
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.wrapping_add(lda) => _,
            a2 = inout(reg) a.wrapping_add(2 * lda) => _,
            a3 = inout(reg) a.wrapping_add(3 * lda) => _,
            b = inout(reg) b => _,
            b1 = out(reg) _,
            ldb = inout(reg) ldb * F => _,
            c = inout(reg) c => _,
            ldc = in(reg) ldc * F,
            k = in(reg) k,
            n = out(reg) _,
            out("f0") _, out("f1") _, out("f2") _, out("f3") _, out("f4") _, out("f5") _, out("f6") _, out("f7") _,
            out("f8") _, out("f9") _, out("f10") _, out("f11") _, out("f12") _, out("f13") _, out("f14") _, out("f15") _,
            out("f16") _, out("f17") _, out("f28") _, out("f29") _, out("f30") _, out("f31") _,
            options(nostack),
        );
    }
}

/// One `4 × 4` block in plain Rust (targets without an assembly loop).
///
/// # Safety
/// As for the Arm version above.
#[cfg(not(any(all(target_arch = "arm", target_abi = "eabihf"), tessera_rv32f)))]
#[inline(always)]
unsafe fn block<const ACCUMULATE: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[0.0f32; NR]; MR];
    if ACCUMULATE {
        for (r, row) in acc.iter_mut().enumerate() {
            for (q, x) in row.iter_mut().enumerate() {
                // SAFETY: c[r*ldc + q] is readable (the caller's contract).
                *x = unsafe { *c.add(r * ldc + q) };
            }
        }
    }
    for p in 0..k {
        // SAFETY: b[p*ldb + q] is readable for q < NR.
        let bv: [f32; NR] = core::array::from_fn(|q| unsafe { *b.add(p * ldb + q) });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: a[r*lda + p] is readable.
            let av = unsafe { *a.add(r * lda + p) };
            for (x, &bq) in row.iter_mut().zip(&bv) {
                *x += av * bq;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, &x) in row.iter().enumerate() {
            // SAFETY: c[r*ldc + q] is writable.
            unsafe { *c.add(r * ldc + q) = x };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Portable;

    /// A deterministic, never-zero fill.
    fn fill(buf: &mut [f32], seed: u32) {
        let mut x = seed | 1;
        for v in buf {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *v = (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0 + 1.0 / 4096.0;
        }
    }

    #[test]
    fn gemm_matches_f64_on_every_block_shape() {
        for (m, n, k) in [
            (4, 4, 1),
            (12, 8, 7),
            (24, 16, 32),
            (8, 32, 3),
            (20, 4, 64),
            (4, 12, 2),
        ] {
            for accumulate in [false, true] {
                let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
                let mut a = std::vec![0.0; m * lda];
                let mut b = std::vec![0.0; k * ldb];
                let mut c = std::vec![0.0; m * ldc];
                fill(&mut a, 1 + m as u32);
                fill(&mut b, 7 + k as u32);
                fill(&mut c, 11 + n as u32);
                let c0 = c.clone();
                if !accumulate {
                    // Not-accumulating must never read C.
                    c.iter_mut().for_each(|x| *x = f32::NAN);
                }
                // SAFETY: m % 4 == 0, n % 4 == 0; the buffers are sized by the strides.
                unsafe { Scalar.gemm(m, n, k, &a, lda, &b, ldb, &mut c, ldc, accumulate) };
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|p| a[i * lda + p] as f64 * b[p * ldb + j] as f64)
                            .sum();
                        let want = dot
                            + if accumulate {
                                c0[i * ldc + j] as f64
                            } else {
                                0.0
                            };
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "({m},{n},{k}) c[{i},{j}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn flash_with_scalar_matches_reference_under_every_mask() {
        use crate::{reference, Attention, AttentionSpec, Flash, MaskSpec};
        let spec = AttentionSpec::bhsd(2, 4, 2, 37, 45, 12, 20);
        let mut q = std::vec![0.0; spec.required_len(crate::Tensor::Q).unwrap()];
        let mut k = std::vec![0.0; spec.required_len(crate::Tensor::K).unwrap()];
        let mut v = std::vec![0.0; spec.required_len(crate::Tensor::V).unwrap()];
        fill(&mut q, 3);
        fill(&mut k, 5);
        fill(&mut v, 9);
        let seg_q: std::vec::Vec<i32> = (0..2 * 37).map(|i| (i % 37) / 11).collect();
        let seg_kv: std::vec::Vec<i32> = (0..2 * 45).map(|j| (j % 45) / 13).collect();
        let masks = [
            MaskSpec::NONE,
            MaskSpec::NONE.causal(8),
            MaskSpec::NONE.causal(-3).window(5, 0).globals(2),
            MaskSpec::NONE.window(4, 6).globals(3),
            MaskSpec::NONE.causal(8).segments(&seg_q, &seg_kv),
        ];
        for mask in &masks {
            let att = Attention::new(&spec, mask, &q, &k, &v).unwrap();
            let mut y_ref = std::vec![0.0f64; 2 * 4 * 37 * 20];
            let mut lse_ref = std::vec![0.0f64; 2 * 4 * 37];
            reference::attention(&spec, mask, &q, &k, &v, &mut y_ref, &mut lse_ref);
            type F = Flash<Scalar, 12, 16>;
            let mut scratch = std::vec![f32::NAN; F::scratch_len(12, 20)];
            let mut y = std::vec![f32::NAN; y_ref.len()];
            let mut lse = std::vec![f32::NAN; lse_ref.len()];
            F::new(Scalar)
                .run(&att, &mut y, Some(&mut lse), &mut scratch)
                .unwrap();
            for (got, want) in y.iter().zip(&y_ref) {
                assert!(
                    (*got as f64 - want).abs() <= 2e-5,
                    "{mask:?}: y {got} vs {want}"
                );
            }
            for (got, want) in lse.iter().zip(&lse_ref) {
                let ok = (*got as f64 == *want)
                    || (*got as f64 - want).abs() <= 2e-5 * want.abs().max(1.0);
                assert!(ok, "{mask:?}: lse {got} vs {want}");
            }
            // The portable kernel on the same problem agrees too.
            let mut y_p = std::vec![f32::NAN; y_ref.len()];
            let mut scratch = std::vec![f32::NAN; Flash::<Portable, 8, 16>::scratch_len(12, 20)];
            Flash::<Portable, 8, 16>::new(Portable)
                .run(&att, &mut y_p, None, &mut scratch)
                .unwrap();
            for (a, b) in y.iter().zip(&y_p) {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{mask:?}: scalar {a} vs portable {b}"
                );
            }
        }
    }
}
