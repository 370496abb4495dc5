//! AVX2 + FMA kernel. The work runs in `6 × 16` register blocks: twelve `ymm`
//! accumulators (more independent FMA chains than two FMA ports' latency
//! needs) and 8 loads per 12 FMAs. The contract's `MR` is 4, so callers pick
//! any `BQ` that is a multiple of 4; a 4- or 2-row tail block finishes `m`.

use core::arch::x86_64::*;

use crate::kernel::{body, MicroKernel, RowUpdate};

/// AVX2 + FMA micro-kernel. A value of this type proves that the CPU has
/// AVX2, FMA and F16C (for f16 inputs): construct it with [`Avx2Fma::detect`] (std), [`Avx2Fma::new`]
/// (when the build enables the features statically) or
/// [`Avx2Fma::new_unchecked`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// Some when the CPU has AVX2, FMA and F16C.
    #[cfg(feature = "std")]
    pub fn detect() -> Option<Self> {
        (std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"))
        .then_some(Self(()))
    }

    /// Available when the build targets AVX2, FMA and F16C statically.
    #[cfg(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    pub const fn new() -> Self {
        Self(())
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (every AVX2 CPU has F16C).
    pub const unsafe fn new_unchecked() -> Self {
        Self(())
    }
}

/// The contract's row block: callers pass `m % 4 == 0`.
const MR: usize = 4;
/// The row block that carries the work.
const BIG_MR: usize = 6;
const NR: usize = 16;

impl MicroKernel for Avx2Fma {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "avx2-fma";

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
        body::debug_check_gemm((m, n, k), (MR, NR), a, lda, b, ldb, c, ldc);
        // SAFETY: `self` proves AVX2+FMA; the caller upholds the bounds contract.
        unsafe {
            gemm_avx2(
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
        // SAFETY: `self` proves AVX2+FMA.
        unsafe { softmax_row_avx2(s, m_old) }
    }

    #[inline]
    fn scale_row(self, o: &mut [f32], alpha: f32) {
        // SAFETY: `self` proves AVX2+FMA.
        unsafe { scale_row_avx2(o, alpha) }
    }

    #[inline]
    fn transpose(
        self,
        src: &[f32],
        rows: usize,
        cols: usize,
        lds: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        // SAFETY: `self` proves AVX2+FMA.
        unsafe { transpose_avx2(src, rows, cols, lds, dst, ldd) }
    }

    #[inline]
    fn widen_f16(self, src: &[u16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX2, FMA and F16C.
        unsafe { widen_avx2::<false>(src, dst) }
    }

    #[inline]
    fn widen_bf16(self, src: &[u16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX2, FMA and F16C.
        unsafe { widen_avx2::<true>(src, dst) }
    }
}

/// f16 (`BF16 = false`: F16C `vcvtph2ps`) or bf16 (`BF16 = true`:
/// zero-extend and shift) bits to f32, 8 at a time; a tail under 8 goes
/// through the portable body.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen_avx2<const BF16: bool>(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n8 = n / 8 * 8;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= n8 <= both lengths; unaligned loads and stores.
        unsafe {
            let h = _mm_loadu_si128(sp.add(i).cast());
            let f = if BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            } else {
                _mm256_cvtph_ps(h)
            };
            _mm256_storeu_ps(dp.add(i), f);
        }
    }
    if BF16 {
        body::widen_bf16(&src[n8..n], &mut dst[n8..n]);
    } else {
        body::widen_f16(&src[n8..n], &mut dst[n8..n]);
    }
}

/// `e^x` for 8 lanes with `x <= 0`, to ~2 ulp; lanes below -87 (and `-inf`)
/// give exactly 0. Same range reduction as [`body::exp_neg`].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp_neg_avx2(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(body::EXP_MIN);
    let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let x = _mm256_max_ps(x, lo);
    let t = _mm256_mul_ps(x, _mm256_set1_ps(core::f32::consts::LOG2_E));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(body::LN2_HI), x);
    let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(body::LN2_LO), f);
    let mut p = _mm256_set1_ps(body::EXP_POLY[0]);
    for c in &body::EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(*c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(s: &mut [f32], m_old: f32) -> RowUpdate {
    debug_assert!(s.len() % 8 == 0);
    let n = s.len() / 8 * 8;
    let p = s.as_mut_ptr();
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= s.len().
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(p.add(i)) });
    }
    let m_new = hmax(vmax).max(m_old);
    if m_new == f32::NEG_INFINITY {
        s.fill(0.0);
        return RowUpdate {
            max: m_new,
            alpha: 1.0,
            sum: 0.0,
        };
    }
    let vm = _mm256_set1_ps(m_new);
    let mut vsum = _mm256_setzero_ps();
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= s.len().
        unsafe {
            let e = exp_neg_avx2(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
            _mm256_storeu_ps(p.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    RowUpdate {
        max: m_new,
        alpha: body::exp_neg(m_old - m_new),
        sum: hsum(vsum),
    }
}

/// 8×8 blocks through registers, the ragged rest element by element.
#[target_feature(enable = "avx2,fma")]
pub(super) fn transpose_avx2(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src.len() >= (rows - 1) * lds + cols && dst.len() >= (cols - 1) * ldd + rows);
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for r in (0..r8).step_by(8) {
        for c in (0..c8).step_by(8) {
            // SAFETY: rows r..r+8 < rows and columns c..c+8 < cols, inside
            // both slices by the assert above.
            unsafe {
                let l = |i: usize| _mm256_loadu_ps(sp.add((r + i) * lds + c));
                let (a0, a1, a2, a3, a4, a5, a6, a7) =
                    (l(0), l(1), l(2), l(3), l(4), l(5), l(6), l(7));
                let t0 = _mm256_unpacklo_ps(a0, a1);
                let t1 = _mm256_unpackhi_ps(a0, a1);
                let t2 = _mm256_unpacklo_ps(a2, a3);
                let t3 = _mm256_unpackhi_ps(a2, a3);
                let t4 = _mm256_unpacklo_ps(a4, a5);
                let t5 = _mm256_unpackhi_ps(a4, a5);
                let t6 = _mm256_unpacklo_ps(a6, a7);
                let t7 = _mm256_unpackhi_ps(a6, a7);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (i, v) in out.iter().enumerate() {
                    _mm256_storeu_ps(dp.add((c + i) * ldd + r), *v);
                }
            }
        }
    }
    for r in 0..rows {
        let from = if r < r8 { c8 } else { 0 };
        for c in from..cols {
            dst[c * ldd + r] = src[r * lds + c];
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn scale_row_avx2(o: &mut [f32], alpha: f32) {
    body::scale_row(o, alpha)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(
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
    // Six-row blocks carry the work; m % 4 == 0 leaves a tail of 0, 2 or 4 rows.
    let m6 = m / BIG_MR * BIG_MR;
    for j in (0..n).step_by(NR) {
        // SAFETY: each block call stays inside rows i..i+R (R = 6, 4 or 2,
        // i + R <= m) and columns j..j+NR (j + NR <= n), which the caller
        // promised are in bounds of a, b and c.
        unsafe {
            for i in (0..m6).step_by(BIG_MR) {
                block::<BIG_MR>(
                    k,
                    a.add(i * lda),
                    lda,
                    b.add(j),
                    ldb,
                    c.add(i * ldc + j),
                    ldc,
                    accumulate,
                );
            }
            match m - m6 {
                4 => block::<4>(
                    k,
                    a.add(m6 * lda),
                    lda,
                    b.add(j),
                    ldb,
                    c.add(m6 * ldc + j),
                    ldc,
                    accumulate,
                ),
                2 => block::<2>(
                    k,
                    a.add(m6 * lda),
                    lda,
                    b.add(j),
                    ldb,
                    c.add(m6 * ldc + j),
                    ldc,
                    accumulate,
                ),
                _ => {}
            }
        }
    }
}

/// One `R × 16` block of C over the whole `k` loop, in registers.
///
/// # Safety
/// `a` has `R` rows of `k` (stride `lda`), `b` has `k` rows of 16 (stride
/// `ldb`), `c` has `R` rows of 16 (stride `ldc`); AVX2 and FMA are present.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: all offsets stay inside the R×k, k×16 and R×16 blocks promised above.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                row[0] = _mm256_loadu_ps(c.add(r * ldc));
                row[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
            }
        }
        let mut bp = b;
        for p in 0..k {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                row[0] = _mm256_fmadd_ps(x, b0, row[0]);
                row[1] = _mm256_fmadd_ps(x, b1, row[1]);
            }
            bp = bp.add(ldb);
        }
        for (r, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), row[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
        }
    }
}
