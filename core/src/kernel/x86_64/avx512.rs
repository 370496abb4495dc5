//! AVX-512F kernel. The work runs in `8 × 32` register blocks: sixteen `zmm`
//! accumulators (two FMA ports of 4-cycle latency need eight independent
//! chains; sixteen leave room for the loads) and 10 loads per 16 FMAs. The
//! contract's block is `4 × 16`, so callers pick any `BQ` that is a multiple
//! of 4 and any `BK` that is a multiple of 16; a 4-row or 16-column tail
//! block finishes `m` and `n`.
//!
//! The shape is the AVX2 kernel's at twice the width, by design: one
//! micro-kernel contract, one blocked loop per ISA (see STYLE.md).

use core::arch::x86_64::*;

use crate::kernel::{body, MicroKernel, RowUpdate};

/// AVX-512F micro-kernel (the constructor also checks AVX2, FMA and F16C,
/// which every AVX-512 CPU has and which the packing code uses). A value of
/// this type proves the CPU has them: construct it with [`Avx512::detect`]
/// (std) or [`Avx512::new_unchecked`].
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// Some when the CPU has AVX-512F (and AVX2, FMA, F16C).
    #[cfg(feature = "std")]
    pub fn detect() -> Option<Self> {
        (std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"))
        .then_some(Self(()))
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    pub const unsafe fn new_unchecked() -> Self {
        Self(())
    }
}

/// The contract's row block: callers pass `m % 4 == 0`.
const MR: usize = 4;
/// The row block that carries the work.
const BIG_MR: usize = 8;
/// The contract's column block: one `zmm`.
const NR: usize = 16;

impl MicroKernel for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "avx512";

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
        // SAFETY: `self` proves AVX-512F; the caller upholds the bounds contract.
        unsafe {
            gemm_avx512(
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
        // SAFETY: `self` proves AVX-512F.
        unsafe { softmax_row_avx512(s, m_old) }
    }

    #[inline]
    fn scale_row(self, o: &mut [f32], alpha: f32) {
        // SAFETY: `self` proves AVX-512F.
        unsafe { scale_row_avx512(o, alpha) }
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
        // SAFETY: `self` proves AVX2 and FMA as well (checked in `detect`).
        unsafe { super::avx2::transpose_avx2(src, rows, cols, lds, dst, ldd) }
    }

    #[inline]
    fn widen_f16(self, src: &[u16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX-512F.
        unsafe { widen_avx512::<false>(src, dst) }
    }

    #[inline]
    fn widen_bf16(self, src: &[u16], dst: &mut [f32]) {
        // SAFETY: `self` proves AVX-512F.
        unsafe { widen_avx512::<true>(src, dst) }
    }
}

/// f16 (`BF16 = false`: `vcvtph2ps`) or bf16 (`BF16 = true`: zero-extend
/// and shift) bits to f32, 16 at a time; a tail under 16 goes through the
/// portable body.
#[target_feature(enable = "avx512f")]
fn widen_avx512<const BF16: bool>(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n16 = n / 16 * 16;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..n16).step_by(16) {
        // SAFETY: i + 16 <= n16 <= both lengths; unaligned loads and stores.
        unsafe {
            let h = _mm256_loadu_si256(sp.add(i).cast());
            let f = if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_cvtph_ps(h)
            };
            _mm512_storeu_ps(dp.add(i), f);
        }
    }
    if BF16 {
        body::widen_bf16(&src[n16..n], &mut dst[n16..n]);
    } else {
        body::widen_f16(&src[n16..n], &mut dst[n16..n]);
    }
}

/// `e^x` for 16 lanes with `x <= 0`, to ~2 ulp; lanes below -87 (and `-inf`)
/// give exactly 0. Same range reduction as [`body::exp_neg`].
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp_neg_avx512(x: __m512) -> __m512 {
    let lo = _mm512_set1_ps(body::EXP_MIN);
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo);
    let x = _mm512_max_ps(x, lo);
    let t = _mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_fnmadd_ps(n, _mm512_set1_ps(body::LN2_HI), x);
    let f = _mm512_fnmadd_ps(n, _mm512_set1_ps(body::LN2_LO), f);
    let mut p = _mm512_set1_ps(body::EXP_POLY[0]);
    for c in &body::EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(bits))
}

#[target_feature(enable = "avx512f")]
fn softmax_row_avx512(s: &mut [f32], m_old: f32) -> RowUpdate {
    debug_assert!(s.len() % 8 == 0);
    let len = s.len();
    let n16 = len / 16 * 16;
    // The contract allows a multiple of 8: at most one masked half block.
    let tail: __mmask16 = ((1u32 << (len - n16)) - 1) as __mmask16;
    let p = s.as_mut_ptr();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut vmax = ninf;
    for i in (0..n16).step_by(16) {
        // SAFETY: i + 16 <= n16 <= s.len().
        vmax = _mm512_max_ps(vmax, unsafe { _mm512_loadu_ps(p.add(i)) });
    }
    // SAFETY: the mask covers only lanes n16..len, inside s.
    vmax = _mm512_max_ps(vmax, unsafe {
        _mm512_mask_loadu_ps(ninf, tail, p.add(n16))
    });
    let m_new = _mm512_reduce_max_ps(vmax).max(m_old);
    if m_new == f32::NEG_INFINITY {
        s.fill(0.0);
        return RowUpdate {
            max: m_new,
            alpha: 1.0,
            sum: 0.0,
        };
    }
    let vm = _mm512_set1_ps(m_new);
    let mut vsum = _mm512_setzero_ps();
    for i in (0..n16).step_by(16) {
        // SAFETY: i + 16 <= n16 <= s.len().
        unsafe {
            let e = exp_neg_avx512(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vm));
            _mm512_storeu_ps(p.add(i), e);
            vsum = _mm512_add_ps(vsum, e);
        }
    }
    // SAFETY: the mask covers only lanes n16..len, inside s.
    unsafe {
        let x = _mm512_mask_loadu_ps(ninf, tail, p.add(n16));
        let e = exp_neg_avx512(_mm512_sub_ps(x, vm));
        _mm512_mask_storeu_ps(p.add(n16), tail, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    RowUpdate {
        max: m_new,
        alpha: body::exp_neg(m_old - m_new),
        sum: _mm512_reduce_add_ps(vsum),
    }
}

#[target_feature(enable = "avx512f")]
fn scale_row_avx512(o: &mut [f32], alpha: f32) {
    body::scale_row(o, alpha)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn gemm_avx512(
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
    // BIG_MR-row blocks carry the work; m % 4 == 0 leaves a tail of 0 or 4
    // rows. 32-column blocks likewise; n % 16 == 0 leaves 0 or 16 columns.
    let mb = m / BIG_MR * BIG_MR;
    let n32 = n / 32 * 32;
    // SAFETY: each call stays inside rows i..i+R (i + R <= m) and columns
    // j..j+16·C (j + 16·C <= n), which the caller promised are in bounds.
    let run = |i: usize, j: usize, rows: usize, wide: bool| unsafe {
        let (a, b, c) = (a.add(i * lda), b.add(j), c.add(i * ldc + j));
        match (rows == BIG_MR, wide) {
            (true, true) => block::<BIG_MR, 2>(k, a, lda, b, ldb, c, ldc, accumulate),
            (true, false) => block::<BIG_MR, 1>(k, a, lda, b, ldb, c, ldc, accumulate),
            (false, true) => block::<MR, 2>(k, a, lda, b, ldb, c, ldc, accumulate),
            (false, false) => block::<MR, 1>(k, a, lda, b, ldb, c, ldc, accumulate),
        }
    };
    for j in (0..n).step_by(32) {
        let wide = j < n32;
        for i in (0..mb).step_by(BIG_MR) {
            run(i, j, BIG_MR, wide);
        }
        if mb < m {
            run(mb, j, m - mb, wide);
        }
    }
}

/// One `R × 16·C` block of C over the whole `k` loop, in registers.
///
/// # Safety
/// `a` has `R` rows of `k` (stride `lda`), `b` has `k` rows of `16·C`
/// (stride `ldb`), `c` has `R` rows of `16·C` (stride `ldc`); AVX-512F is
/// present.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const C: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: all offsets stay inside the R×k, k×16C and R×16C blocks promised above.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(c.add(r * ldc + 16 * q));
                }
            }
        }
        let mut bp = b;
        for p in 0..k {
            let mut bv = [_mm512_setzero_ps(); C];
            for (q, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * q));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                for (q, y) in row.iter_mut().enumerate() {
                    *y = _mm512_fmadd_ps(x, bv[q], *y);
                }
            }
            bp = bp.add(ldb);
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, x) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc + 16 * q), *x);
            }
        }
    }
}
