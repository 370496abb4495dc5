//! NEON kernel: `4 × 8` register block (eight `q` accumulators).

use core::arch::aarch64::*;

use crate::kernel::{body, MicroKernel, RowUpdate};

/// NEON micro-kernel. NEON is part of the aarch64 baseline, so this kernel is
/// always available there.
#[derive(Clone, Copy, Debug, Default)]
pub struct Neon(());

impl Neon {
    /// NEON is always present on aarch64 targets Rust supports.
    pub const fn new() -> Self {
        Self(())
    }

    /// Always `Some` on aarch64.
    #[cfg(feature = "std")]
    pub fn detect() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Self(()))
    }
}

const MR: usize = 4;
const NR: usize = 8;

impl MicroKernel for Neon {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "neon";

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
        debug_assert!(m % MR == 0 && n % NR == 0);
        // SAFETY: the caller upholds the bounds contract; NEON is baseline.
        unsafe {
            gemm_neon(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
                accumulate,
            )
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

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn gemm_neon(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for i in (0..m).step_by(MR) {
        for j in (0..n).step_by(NR) {
            // SAFETY: pointers stay inside the A rows, B columns and C block
            // the caller promised (see `MicroKernel::gemm`).
            unsafe {
                let cp = c.add(i * ldc + j);
                let mut acc = [vdupq_n_f32(0.0); 8];
                if accumulate {
                    for r in 0..MR {
                        acc[2 * r] = vld1q_f32(cp.add(r * ldc));
                        acc[2 * r + 1] = vld1q_f32(cp.add(r * ldc + 4));
                    }
                }
                let mut bp = b.add(j);
                for p in 0..k {
                    let b0 = vld1q_f32(bp);
                    let b1 = vld1q_f32(bp.add(4));
                    for r in 0..MR {
                        let x = vdupq_n_f32(*a.add((i + r) * lda + p));
                        acc[2 * r] = vfmaq_f32(acc[2 * r], x, b0);
                        acc[2 * r + 1] = vfmaq_f32(acc[2 * r + 1], x, b1);
                    }
                    bp = bp.add(ldb);
                }
                for r in 0..MR {
                    vst1q_f32(cp.add(r * ldc), acc[2 * r]);
                    vst1q_f32(cp.add(r * ldc + 4), acc[2 * r + 1]);
                }
            }
        }
    }
}
