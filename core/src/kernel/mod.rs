//! Micro-kernels: one contract, one portable body, per-architecture siblings.
//!
//! The flash loop needs three tile operations, and a [`MicroKernel`] supplies
//! all of them:
//! - [`gemm`](MicroKernel::gemm): `C ← A·B` or `C ← A·B + C` on whole
//!   `MR × NR` blocks. It is the QKᵀ block (`A` = scaled Q, `B` = Kᵀ) and the
//!   P·V block (`A` = P, `B` = V). It never reads `C` when not accumulating.
//! - [`softmax_row`](MicroKernel::softmax_row): the online-softmax step of one
//!   score row: row max, `exp(s - m)`, row sum and the rescale factor.
//! - [`scale_row`](MicroKernel::scale_row): `o ← α·o`.
//!
//! Kernels see only full tiles: the flash loop pads ragged edges with zeros
//! (scores of padding keys are `-inf`), so architecture code has no edge
//! cases.
//!
//! Kernels: [`Portable`] (autovectorises), [`Scalar`] for scalar-FPU cores
//! (Cortex-M4F/M33 and RV32F, with `asm!` blocks), `Helium` on Armv8.1-M
//! with MVE (built only for such a CPU, `cfg(tessera_mve)`), [`Avx512`] and
//! [`Avx2Fma`] on x86-64 and [`Neon`] on aarch64. A `no_std` caller names its
//! kernel; with the `std` feature, [`detect`] picks the best one at run time,
//! or the one `TESSERA_KERNEL` names (`portable`, `avx2`, `avx512`, `neon`; a
//! name the CPU cannot run is an error).

mod generic;
pub use generic::Portable;
mod scalar;
pub use scalar::Scalar;
#[cfg(tessera_mve)]
mod helium;
#[cfg(tessera_mve)]
pub use helium::Helium;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::avx2::Avx2Fma;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::avx512::Avx512;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::neon::Neon;

/// The result of one online-softmax step on a score row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowUpdate {
    /// The new running max.
    pub max: f32,
    /// `exp(m_old - m_new)`: the factor for the old sum and accumulator.
    pub alpha: f32,
    /// `Σ exp(s - m_new)` over this row block.
    pub sum: f32,
}

/// The micro-kernel contract.
///
/// `MR` and `NR` are the register block: every `m` passed to
/// [`gemm`](Self::gemm) is a multiple of `MR` and every `n` a multiple of
/// `NR`. Implementations may assume nothing about alignment.
pub trait MicroKernel: Copy + Send + Sync + core::fmt::Debug {
    /// Rows of the register block.
    const MR: usize;
    /// Columns of the register block; also the padding of `Dv`.
    const NR: usize;
    /// A short name for reports.
    const NAME: &'static str;

    /// `C[m×n] ← A[m×k]·B[k×n]`, or `+ C` when `accumulate`. Row-major with
    /// leading dimensions `lda`, `ldb`, `ldc`. When `accumulate` is false, `C`
    /// is never read.
    ///
    /// # Safety
    /// - `m % MR == 0` and `n % NR == 0`;
    /// - `a[i*lda + p]` for `i < m, p < k`, `b[p*ldb + j]` for `p < k, j < n`
    ///   and `c[i*ldc + j]` for `i < m, j < n` are in bounds of their slices;
    /// - the CPU has the features the kernel was built for (guaranteed when
    ///   the kernel value was obtained from a safe constructor).
    #[allow(clippy::too_many_arguments)]
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
    );

    /// One online-softmax step: with running max `m_old`, overwrite `s` by
    /// `exp(s - m_new)` and return the new max, `alpha` and the row sum. A row
    /// of only `-inf` (with `m_old = -inf`) becomes zeros with `max = -inf`,
    /// `alpha = 1`, `sum = 0`. `s.len()` is a multiple of 8.
    fn softmax_row(self, s: &mut [f32], m_old: f32) -> RowUpdate;

    /// `o ← alpha · o`.
    fn scale_row(self, o: &mut [f32], alpha: f32);

    /// `dst[c·ldd + r] = src[r·lds + c]` for `r < rows`, `c < cols`: packs a
    /// key tile as Kᵀ. Panics only if the slices are shorter than that.
    fn transpose(
        self,
        src: &[f32],
        rows: usize,
        cols: usize,
        lds: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        body::transpose(src, rows, cols, lds, dst, ldd)
    }

    /// `dst[i] = f32(src[i])` for IEEE binary16 bits, over `min(len)`
    /// elements. x86 kernels convert with F16C or AVX-512.
    fn widen_f16(self, src: &[u16], dst: &mut [f32]) {
        body::widen_f16(src, dst)
    }

    /// `dst[i] = f32(src[i])` for bfloat16 bits (a 16-bit shift), over
    /// `min(len)` elements.
    fn widen_bf16(self, src: &[u16], dst: &mut [f32]) {
        body::widen_bf16(src, dst)
    }
}

/// The kernel names [`by_name`] and `TESSERA_KERNEL` accept on this
/// architecture, best last.
#[cfg(target_arch = "x86_64")]
pub const KERNELS: &[&str] = &["portable", "avx2", "avx512"];
/// The kernel names [`by_name`] and `TESSERA_KERNEL` accept on this
/// architecture, best last.
#[cfg(target_arch = "aarch64")]
pub const KERNELS: &[&str] = &["portable", "neon"];
/// The kernel names [`by_name`] and `TESSERA_KERNEL` accept on this
/// architecture, best last.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const KERNELS: &[&str] = &["portable"];

/// A kernel chosen at run time (`std` only).
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug)]
pub enum Detected {
    /// x86-64 with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    /// x86-64 with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(Avx2Fma),
    /// aarch64 with NEON.
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
    /// Anything else.
    Portable(Portable),
}

/// Why `TESSERA_KERNEL` (or [`by_name`]) could not give a kernel.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// The name is none of [`KERNELS`].
    Unknown(std::string::String),
    /// The kernel exists, but this CPU lacks its instructions.
    Unsupported(&'static str),
}

#[cfg(feature = "std")]
impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KernelError::Unknown(name) => write!(
                f,
                "TESSERA_KERNEL={name:?} names no kernel; use one of {}",
                KERNELS.join(", ")
            ),
            KernelError::Unsupported(name) => write!(
                f,
                "TESSERA_KERNEL={name}: this CPU lacks the instructions of the {name} kernel"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

/// The kernel called `name` (one of [`KERNELS`]; the kernels' `NAME`s are
/// accepted too), if this CPU can run it (`std` only).
#[cfg(feature = "std")]
pub fn by_name(name: &str) -> Result<Detected, KernelError> {
    let unsupported = |n: &'static str| KernelError::Unsupported(n);
    match name {
        "portable" => Ok(Detected::Portable(Portable)),
        #[cfg(target_arch = "x86_64")]
        "avx512" => Avx512::detect()
            .map(Detected::Avx512)
            .ok_or(unsupported("avx512")),
        #[cfg(target_arch = "x86_64")]
        "avx2" | "avx2-fma" => Avx2Fma::detect()
            .map(Detected::Avx2Fma)
            .ok_or(unsupported("avx2")),
        #[cfg(target_arch = "aarch64")]
        "neon" => Neon::detect()
            .map(Detected::Neon)
            .ok_or(unsupported("neon")),
        other => Err(KernelError::Unknown(other.into())),
    }
}

/// The best kernel this CPU runs, ignoring `TESSERA_KERNEL` (`std` only):
/// Avx512, then Avx2Fma, then Portable (Neon, then Portable, on aarch64).
#[cfg(feature = "std")]
pub fn best() -> Detected {
    KERNELS
        .iter()
        .rev()
        .find_map(|n| by_name(n).ok())
        .unwrap_or(Detected::Portable(Portable))
}

/// The kernel to run (`std` only): the one `TESSERA_KERNEL` names when that
/// variable is set and not empty, else [`best`]. A name this CPU cannot run,
/// or no kernel's name, is an error, never a silent fallback.
#[cfg(feature = "std")]
pub fn detect() -> Result<Detected, KernelError> {
    match std::env::var("TESSERA_KERNEL") {
        Ok(name) if !name.trim().is_empty() => by_name(name.trim()),
        _ => Ok(best()),
    }
}

#[cfg(feature = "std")]
impl Detected {
    /// The kernel's name.
    pub fn name(&self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Detected::Avx512(_) => Avx512::NAME,
            #[cfg(target_arch = "x86_64")]
            Detected::Avx2Fma(_) => Avx2Fma::NAME,
            #[cfg(target_arch = "aarch64")]
            Detected::Neon(_) => Neon::NAME,
            Detected::Portable(_) => Portable::NAME,
        }
    }
}

/// `with_kernel!(detected, k => body)`: run `body` with `k` bound to the
/// concrete kernel inside a [`Detected`] (`body` is instantiated once per
/// kernel type).
#[cfg(feature = "std")]
#[macro_export]
macro_rules! with_kernel {
    ($det:expr, $k:ident => $body:expr) => {
        match $det {
            #[cfg(target_arch = "x86_64")]
            $crate::kernel::Detected::Avx512($k) => $body,
            #[cfg(target_arch = "x86_64")]
            $crate::kernel::Detected::Avx2Fma($k) => $body,
            #[cfg(target_arch = "aarch64")]
            $crate::kernel::Detected::Neon($k) => $body,
            $crate::kernel::Detected::Portable($k) => $body,
        }
    };
}

/// Shared bodies. Each architecture kernel instantiates these inside its own
/// `#[target_feature]` wrapper, so the same source vectorises per target.
pub(crate) mod body {
    use super::RowUpdate;

    const LOG2E: f32 = core::f32::consts::LOG2_E;
    /// ln 2 split Cody–Waite style: `LN2_HI` has few mantissa bits, so
    /// `n·LN2_HI` is exact for the `n` that occur here.
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// Below this, `exp` underflows to 0 for softmax purposes.
    pub(crate) const EXP_MIN: f32 = -87.0;
    /// Taylor coefficients of `e^f`, highest first (`1/6!` … `1/1!`, then 1).
    pub(crate) const EXP_POLY: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];

    /// `e^x` for `x <= 0` to ~2 ulp, branch-free so that it vectorises;
    /// `x < -87` (including `-inf`) gives exactly 0.
    #[inline(always)]
    pub fn exp_neg(x: f32) -> f32 {
        let xc = if x < EXP_MIN { EXP_MIN } else { x };
        // Round to nearest by the 1.5·2^23 trick (|t| < 2^22 here).
        const MAGIC: f32 = 12_582_912.0;
        let n = (xc * LOG2E + MAGIC) - MAGIC;
        let f = (xc - n * LN2_HI) - n * LN2_LO; // |f| <= ln2/2
        let mut p = EXP_POLY[0];
        for c in &EXP_POLY[1..] {
            p = p * f + c;
        }
        let bits = ((n as i32 + 127) << 23) as u32;
        let r = p * f32::from_bits(bits);
        if x < EXP_MIN {
            0.0
        } else {
            r
        }
    }

    #[inline(always)]
    pub fn softmax_row(s: &mut [f32], m_old: f32) -> RowUpdate {
        let mut lanes = [f32::NEG_INFINITY; 8];
        for chunk in s.chunks_exact(8) {
            for (l, &x) in lanes.iter_mut().zip(chunk) {
                *l = if x > *l { x } else { *l };
            }
        }
        let mut m_new = m_old;
        for l in lanes {
            m_new = if l > m_new { l } else { m_new };
        }
        if m_new == f32::NEG_INFINITY {
            s.iter_mut().for_each(|x| *x = 0.0);
            return RowUpdate {
                max: m_new,
                alpha: 1.0,
                sum: 0.0,
            };
        }
        let mut sums = [0.0f32; 8];
        for chunk in s.chunks_exact_mut(8) {
            for (acc, x) in sums.iter_mut().zip(chunk.iter_mut()) {
                *x = exp_neg(*x - m_new);
                *acc += *x;
            }
        }
        let sum = sums.iter().sum();
        let alpha = exp_neg(m_old - m_new);
        RowUpdate {
            max: m_new,
            alpha,
            sum,
        }
    }

    /// The gemm loop of the register-block kernels: `block(a, b, c)` with
    /// the first element of `A`'s rows, `B`'s columns and `C` of every
    /// `mr × nr` block of `C ← A·B`.
    ///
    /// # Safety
    /// As for [`MicroKernel::gemm`](super::MicroKernel::gemm): `m % mr == 0`,
    /// `n % nr == 0`, and every block's rows of `a`, columns of `b` and
    /// elements of `c` are in bounds of their slices.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub unsafe fn for_each_block(
        (m, n): (usize, usize),
        (mr, nr): (usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        mut block: impl FnMut(*const f32, *const f32, *mut f32),
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        for i in (0..m).step_by(mr) {
            for j in (0..n).step_by(nr) {
                // SAFETY: i + mr <= m and j + nr <= n (whole blocks, the
                // caller's contract), so the offsets stay in their slices.
                unsafe { block(a.add(i * lda), b.add(j), c.add(i * ldc + j)) }
            }
        }
    }

    /// The [`MicroKernel::gemm`](super::MicroKernel::gemm) contract, checked
    /// in debug builds by the kernels that read through raw pointers: whole
    /// `mr × nr` blocks, and every row of `A`, `B` and `C` in its slice.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn debug_check_gemm(
        (m, n, k): (usize, usize, usize),
        (mr, nr): (usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &[f32],
        ldc: usize,
    ) {
        debug_assert!(m % mr == 0 && n % nr == 0);
        debug_assert!(m == 0 || n == 0 || k == 0 || a.len() >= (m - 1) * lda + k);
        debug_assert!(m == 0 || n == 0 || k == 0 || b.len() >= (k - 1) * ldb + n);
        debug_assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n);
    }

    #[inline(always)]
    pub fn widen_f16(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = half::f16::from_bits(s).to_f32();
        }
    }

    #[inline(always)]
    pub fn widen_bf16(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s) << 16);
        }
    }

    #[inline(always)]
    pub fn scale_row(o: &mut [f32], alpha: f32) {
        o.iter_mut().for_each(|x| *x *= alpha);
    }

    #[inline(always)]
    pub fn transpose(
        src: &[f32],
        rows: usize,
        cols: usize,
        lds: usize,
        dst: &mut [f32],
        ldd: usize,
    ) {
        for r in 0..rows {
            let row = &src[r * lds..][..cols];
            for (c, &x) in row.iter().enumerate() {
                dst[c * ldd + r] = x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::body::exp_neg;

    #[test]
    fn exp_neg_matches_libm() {
        let mut x = -90.0f32;
        while x <= 0.0 {
            let want = libm::exp(x as f64);
            let got = exp_neg(x) as f64;
            if x >= -87.0 {
                assert!(
                    (got - want).abs() <= 3e-7 * want,
                    "x={x} got={got} want={want}"
                );
            } else {
                assert_eq!(got, 0.0);
            }
            x += 0.001_3;
        }
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    /// A name is a kernel this CPU runs, a clear error, or unknown; never a
    /// silent fallback.
    #[cfg(feature = "std")]
    #[test]
    fn by_name_reports_what_it_cannot_give() {
        use super::{by_name, KernelError, KERNELS};
        for name in KERNELS {
            match by_name(name) {
                Ok(k) => assert!(k.name().starts_with(name)),
                Err(e) => assert_eq!(e, KernelError::Unsupported(name)),
            }
        }
        let e = by_name("avx1024").unwrap_err();
        assert_eq!(e, KernelError::Unknown("avx1024".into()));
        assert!(std::format!("{e}").contains("TESSERA_KERNEL"));
        assert_eq!(by_name("portable").unwrap().name(), "portable");
    }

    /// Every kernel widens f16 and bf16 bit for bit like the portable body,
    /// at every length (vector blocks and tails) and on special values.
    #[cfg(feature = "std")]
    #[test]
    fn every_kernel_widens_halves_exactly() {
        use super::{body, by_name, MicroKernel, KERNELS};
        let bits: std::vec::Vec<u16> = (0..67u32)
            .map(|i| match i % 11 {
                0 => 0x7c00,                               // f16 +inf
                1 => 0x7e01,                               // NaN in both formats
                2 => 0x0001,                               // smallest subnormal
                3 => 0x8000,                               // -0
                _ => (i.wrapping_mul(40_503) >> 3) as u16, // assorted
            })
            .collect();
        fn check<K: MicroKernel>(k: K, bits: &[u16]) {
            for n in 0..bits.len() {
                let (mut a, mut b) = (std::vec![1.5f32; n], std::vec![1.5f32; n]);
                body::widen_f16(&bits[..n], &mut a);
                k.widen_f16(&bits[..n], &mut b);
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&a, &b), "{} f16 n={n}", K::NAME);
                body::widen_bf16(&bits[..n], &mut a);
                k.widen_bf16(&bits[..n], &mut b);
                assert!(same(&a, &b), "{} bf16 n={n}", K::NAME);
            }
        }
        for name in KERNELS {
            match by_name(name) {
                Ok(det) => crate::with_kernel!(det, k => check(k, &bits)),
                Err(e) => std::eprintln!("kernel {name}: skipped ({e})"),
            }
        }
    }

    /// The architecture kernels' exp and softmax agree with the portable body.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx2_softmax_matches_portable() {
        match super::Avx2Fma::detect() {
            Some(k) => softmax_matches_portable(k),
            None => std::eprintln!("kernel avx2: skipped (CPU lacks avx2/fma)"),
        }
    }

    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx512_softmax_matches_portable() {
        match super::Avx512::detect() {
            Some(k) => softmax_matches_portable(k),
            None => std::eprintln!("kernel avx512: skipped (CPU lacks avx512f)"),
        }
    }

    /// The AVX-512 exp agrees with the portable one lane by lane.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx512_exp_matches_portable() {
        use core::arch::x86_64::*;
        if super::Avx512::detect().is_none() {
            std::eprintln!("kernel avx512: skipped (CPU lacks avx512f)");
            return;
        }
        let mut x = -90.0f32;
        while x <= 0.0 {
            let xs: [f32; 16] = core::array::from_fn(|i| (x - i as f32 * 0.000_7).min(0.0));
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F was detected above; both arrays hold 16 f32s.
            unsafe {
                let v = super::x86_64::avx512::exp_neg_avx512(_mm512_loadu_ps(xs.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&xi, &g) in xs.iter().zip(&got) {
                let want = exp_neg(xi);
                assert!((g - want).abs() <= 4e-7 * want, "x={xi} {g} vs {want}");
            }
            x += 0.013;
        }
    }

    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    fn softmax_matches_portable<K: super::MicroKernel>(k: K) {
        use super::{MicroKernel, Portable};
        // 72 = 4·16 + 8: the AVX-512 kernel's masked half block too.
        for m_old in [f32::NEG_INFINITY, -3.0, 0.5, 40.0] {
            let row: std::vec::Vec<f32> = (0..72)
                .map(|i| {
                    if i % 7 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        (i as f32 * 0.37).sin() * 30.0
                    }
                })
                .collect();
            let (mut a, mut b) = (row.clone(), row.clone());
            let ua = Portable.softmax_row(&mut a, m_old);
            let ub = k.softmax_row(&mut b, m_old);
            assert_eq!(ua.max, ub.max);
            assert!((ua.alpha - ub.alpha).abs() <= 4e-7 * ua.alpha.abs().max(1e-30));
            assert!((ua.sum - ub.sum).abs() <= 1e-6 * ua.sum);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 4e-7 * x.abs(), "{x} vs {y}");
            }
        }
    }
}
