//! The scalar-FPU kernel: for cores with a single-precision FPU and no SIMD
//! (Cortex-M4F, Cortex-M7 in single precision, Cortex-M33, RV32F).
//!
//! Such a core has 32 single-precision registers (`s0`–`s31` on ARMv7E-M and
//! ARMv8-M, `f0`–`f31` on RV32F). The `6 × 4` register block keeps the 24
//! accumulators, the 4 values of one `B` row and one `A` value live at once
//! (29 registers), so the inner loop is, per step of `k`, 4 + 6 loads and 24
//! multiply-adds with no spill: about 1.4 instructions per multiply-add once
//! loop overhead is counted (see BENCHMARKS.md, "Embedded").
//!
//! The body is plain Rust with raw-pointer loads: bounds are the caller's
//! contract ([`MicroKernel::gemm`]'s `# Safety`), so no check sits in the
//! inner loop. On a core without an FPU (RV32IMAC) it still runs, through
//! the soft-float routines, at correspondingly lower speed.

use super::{body, MicroKernel, RowUpdate};

/// Rows of the register block.
const MR: usize = 6;
/// Columns of the register block.
const NR: usize = 4;

/// The scalar-FPU micro-kernel, `6 × 4` register block. `Flash`'s `BQ` must
/// be a multiple of 6 and `BK` a multiple of 8 (for example `Flash<Scalar, 24, 16>`).
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
        // SAFETY: the caller upholds `gemm`'s contract: whole blocks, and
        // every index the contract names is inside its slice.
        unsafe {
            gemm_registers(
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

/// `C ← A·B (+ C)` over whole `MR × NR` blocks, one block in registers.
///
/// # Safety
/// `m % MR == 0`, `n % NR == 0`, and `a[i*lda + p]`, `b[p*ldb + j]`,
/// `c[i*ldc + j]` are valid for `i < m`, `j < n`, `p < k` (reads for `a`, `b`;
/// reads and writes for `c`, which does not overlap `a` or `b`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_registers(
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
            let mut acc = [[0.0f32; NR]; MR];
            // SAFETY (whole block): i + r < m and j + q < n, so every
            // offset below is one the contract declares valid.
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (q, x) in row.iter_mut().enumerate() {
                        // SAFETY: see above; c is valid for reads.
                        *x = unsafe { *c.add((i + r) * ldc + j + q) };
                    }
                }
            }
            // SAFETY: row i..i+MR of a and column j..j+NR of b are in range.
            let (mut a_col, mut b_row) = unsafe { (a.add(i * lda), b.add(j)) };
            for _ in 0..k {
                // SAFETY: b_row points at b[p*ldb + j], valid for NR reads.
                let bv: [f32; NR] = core::array::from_fn(|q| unsafe { *b_row.add(q) });
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: a_col points at a[i*lda + p]; row r adds r*lda.
                    let av = unsafe { *a_col.add(r * lda) };
                    for (x, &bq) in row.iter_mut().zip(&bv) {
                        *x += av * bq;
                    }
                }
                // SAFETY: stepping to p + 1; after the last step the pointers
                // are one past what was read and are not dereferenced
                // (wrapping_add: the final value need not be in bounds).
                a_col = a_col.wrapping_add(1);
                b_row = b_row.wrapping_add(ldb);
            }
            for (r, row) in acc.iter().enumerate() {
                for (q, &x) in row.iter().enumerate() {
                    // SAFETY: c[(i+r)*ldc + j+q] is valid for writes.
                    unsafe { *c.add((i + r) * ldc + j + q) = x };
                }
            }
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
        for (m, n, k) in [(6, 4, 1), (12, 8, 7), (24, 16, 32), (6, 32, 3), (18, 4, 64)] {
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
                // SAFETY: m % 6 == 0, n % 4 == 0; the buffers are sized by the strides.
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
        let seg_q: std::vec::Vec<i32> = (0..2 * 37).map(|i| ((i % 37) / 11) as i32).collect();
        let seg_kv: std::vec::Vec<i32> = (0..2 * 45).map(|j| ((j % 45) / 13) as i32).collect();
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
