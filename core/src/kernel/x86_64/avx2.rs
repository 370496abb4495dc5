//! AVX2 + FMA kernel: `4 × 16` register block (eight `ymm` accumulators,
//! enough independent FMA chains to cover the latency of two FMA ports).

use core::arch::x86_64::*;

use crate::kernel::{body, MicroKernel, RowUpdate};

/// AVX2 + FMA micro-kernel. A value of this type proves that the CPU has
/// AVX2 and FMA: construct it with [`Avx2Fma::detect`] (std), [`Avx2Fma::new`]
/// (when the build enables the features statically) or
/// [`Avx2Fma::new_unchecked`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// Some when the CPU has AVX2 and FMA.
    #[cfg(feature = "std")]
    pub fn detect() -> Option<Self> {
        (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")).then_some(Self(()))
    }

    /// Available when the build targets AVX2 + FMA statically.
    #[cfg(all(target_feature = "avx2", target_feature = "fma"))]
    pub const fn new() -> Self {
        Self(())
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    pub const unsafe fn new_unchecked() -> Self {
        Self(())
    }
}

const MR: usize = 4;
const NR: usize = 16;

impl MicroKernel for Avx2Fma {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "avx2-fma";

    #[inline]
    unsafe fn gemm(self, m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        debug_assert!(m % MR == 0 && n % NR == 0);
        debug_assert!(m == 0 || n == 0 || k == 0 || a.len() >= (m - 1) * lda + k);
        debug_assert!(m == 0 || n == 0 || k == 0 || b.len() >= (k - 1) * ldb + n);
        debug_assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n);
        // SAFETY: `self` proves AVX2+FMA; the caller upholds the bounds contract.
        unsafe { gemm_avx2(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) }
    }

    #[inline]
    fn softmax_row(self, s: &mut [f32], m_old: f32) -> RowUpdate {
        // SAFETY: `self` proves AVX2+FMA.
        unsafe { softmax_row_avx2(s, m_old) }
    }

    #[inline]
    fn scale_row(self, o: &mut [f32], alpha: f32) {
        // SAFETY: `self` proves AVX2+FMA.
        unsafe { scale_row_avx2(o, alpha) }
    }
}

#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(s: &mut [f32], m_old: f32) -> RowUpdate {
    body::softmax_row(s, m_old)
}

#[target_feature(enable = "avx2,fma")]
fn scale_row_avx2(o: &mut [f32], alpha: f32) {
    body::scale_row(o, alpha)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, accumulate: bool) {
    for i in (0..m).step_by(MR) {
        for j in (0..n).step_by(NR) {
            // SAFETY: every pointer below stays inside the blocks the caller
            // promised: rows i..i+MR of A (k columns), rows 0..k of B
            // (columns j..j+NR) and the MR×NR block of C at (i, j).
            unsafe {
                let cp = c.add(i * ldc + j);
                let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31);
                if accumulate {
                    c00 = _mm256_loadu_ps(cp);
                    c01 = _mm256_loadu_ps(cp.add(8));
                    c10 = _mm256_loadu_ps(cp.add(ldc));
                    c11 = _mm256_loadu_ps(cp.add(ldc + 8));
                    c20 = _mm256_loadu_ps(cp.add(2 * ldc));
                    c21 = _mm256_loadu_ps(cp.add(2 * ldc + 8));
                    c30 = _mm256_loadu_ps(cp.add(3 * ldc));
                    c31 = _mm256_loadu_ps(cp.add(3 * ldc + 8));
                } else {
                    c00 = _mm256_setzero_ps();
                    c01 = c00;
                    c10 = c00;
                    c11 = c00;
                    c20 = c00;
                    c21 = c00;
                    c30 = c00;
                    c31 = c00;
                }
                let a0 = a.add(i * lda);
                let a1 = a0.add(lda);
                let a2 = a1.add(lda);
                let a3 = a2.add(lda);
                let mut bp = b.add(j);
                for p in 0..k {
                    let b0 = _mm256_loadu_ps(bp);
                    let b1 = _mm256_loadu_ps(bp.add(8));
                    let x = _mm256_broadcast_ss(&*a0.add(p));
                    c00 = _mm256_fmadd_ps(x, b0, c00);
                    c01 = _mm256_fmadd_ps(x, b1, c01);
                    let x = _mm256_broadcast_ss(&*a1.add(p));
                    c10 = _mm256_fmadd_ps(x, b0, c10);
                    c11 = _mm256_fmadd_ps(x, b1, c11);
                    let x = _mm256_broadcast_ss(&*a2.add(p));
                    c20 = _mm256_fmadd_ps(x, b0, c20);
                    c21 = _mm256_fmadd_ps(x, b1, c21);
                    let x = _mm256_broadcast_ss(&*a3.add(p));
                    c30 = _mm256_fmadd_ps(x, b0, c30);
                    c31 = _mm256_fmadd_ps(x, b1, c31);
                    bp = bp.add(ldb);
                }
                _mm256_storeu_ps(cp, c00);
                _mm256_storeu_ps(cp.add(8), c01);
                _mm256_storeu_ps(cp.add(ldc), c10);
                _mm256_storeu_ps(cp.add(ldc + 8), c11);
                _mm256_storeu_ps(cp.add(2 * ldc), c20);
                _mm256_storeu_ps(cp.add(2 * ldc + 8), c21);
                _mm256_storeu_ps(cp.add(3 * ldc), c30);
                _mm256_storeu_ps(cp.add(3 * ldc + 8), c31);
            }
        }
    }
}
