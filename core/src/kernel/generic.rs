//! The portable kernel: plain Rust that LLVM autovectorises where it can.
//! It is the kernel on Cortex-M and RISC-V, and the reference the
//! architecture kernels are tested against.

use super::{body, MicroKernel, RowUpdate};

/// The portable micro-kernel, `4 × 8` register block.
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

impl MicroKernel for Portable {
    const MR: usize = 4;
    const NR: usize = 8;
    const NAME: &'static str = "portable";

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
        gemm_blocked::<4, 8>(m, n, k, a, lda, b, ldb, c, ldc, accumulate)
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

/// A safe register-blocked GEMM over whole `MR × NR` blocks (bounds-checked
/// indexing; the checks hoist out of the inner loop when the compiler can
/// prove them).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemm_blocked<const MR: usize, const NR: usize>(
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
    for i in (0..m).step_by(MR) {
        for j in (0..n).step_by(NR) {
            let mut acc = [[0.0f32; NR]; MR];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    row.copy_from_slice(&c[(i + r) * ldc + j..][..NR]);
                }
            }
            for p in 0..k {
                let brow: &[f32; NR] = b[p * ldb + j..][..NR].try_into().unwrap_or(&[0.0; NR]);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = a[(i + r) * lda + p];
                    for (x, &bv) in row.iter_mut().zip(brow) {
                        *x += av * bv;
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                c[(i + r) * ldc + j..][..NR].copy_from_slice(row);
            }
        }
    }
}
