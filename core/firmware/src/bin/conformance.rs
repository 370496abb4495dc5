//! Conformance tests on the target: every case of `cases.rs` through several
//! kernels and tile shapes, compared with the host's f64 reference. Prints
//! one line per run and `N passed, M failed`; exits 0 only if all passed.
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::ptr::addr_of_mut;

use tessera_core::kernel::{MicroKernel, Portable, Scalar};
use tessera_core::{merge, Attention, Element, Error, Flash, Tensor};
use tessera_firmware::cases::{Case, Input, CASES, MAX_HEAD_DIM, MAX_ROWS, MAX_V_HEAD_DIM, MAX_Y};
use tessera_firmware::Out;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const SCRATCH: usize = max(
    max(
        Flash::<Scalar, 12, 16>::scratch_len(MAX_HEAD_DIM, MAX_V_HEAD_DIM),
        // 32x32: the Helium runs on the M55.
        Flash::<Scalar, 32, 32>::scratch_len(MAX_HEAD_DIM, MAX_V_HEAD_DIM),
    ),
    Flash::<Portable, 8, 16>::scratch_len(MAX_HEAD_DIM, MAX_V_HEAD_DIM),
);

/// Output and work buffers, reused by every run.
struct Buffers {
    y: [f32; MAX_Y],
    lse: [f32; MAX_ROWS],
    y_b: [f32; MAX_Y],
    lse_b: [f32; MAX_ROWS],
    merged: [f32; MAX_Y],
    merged_lse: [f32; MAX_ROWS],
    scratch: [f32; SCRATCH],
}

static mut BUFFERS: Buffers = Buffers {
    y: [0.0; MAX_Y],
    lse: [0.0; MAX_ROWS],
    y_b: [0.0; MAX_Y],
    lse_b: [0.0; MAX_ROWS],
    merged: [0.0; MAX_Y],
    merged_lse: [0.0; MAX_ROWS],
    scratch: [0.0; SCRATCH],
};

/// Largest error of a run, relative to its tolerance scale.
#[derive(Clone, Copy, Debug, Default)]
struct Errors {
    y: f32,
    lse: f32,
    unwritten: usize,
}

const TOL: f32 = 2e-5;

/// Compare `y` (with `spec.out` strides) and `lse` against the case.
fn compare(case: &Case, y: &[f32], lse: &[f32]) -> Errors {
    let s = &case.spec;
    let mut e = Errors::default();
    for b in 0..s.batch {
        for h in 0..s.q_heads {
            for i in 0..s.q_len {
                let row = (b * s.q_heads + h) * s.q_len + i;
                let (want, got) = (case.lse[row], lse[row]);
                if got.is_nan() {
                    e.unwritten += 1;
                } else if want == f32::NEG_INFINITY || got == f32::NEG_INFINITY {
                    if want != got {
                        e.lse = f32::INFINITY;
                    }
                } else {
                    e.lse = e.lse.max((got - want).abs() / want.abs().max(1.0));
                }
                let got = &y[s.out.offset(b, h, i)..][..s.v_head_dim];
                for (g, w) in got
                    .iter()
                    .zip(&case.y[row * s.v_head_dim..][..s.v_head_dim])
                {
                    if g.is_nan() {
                        e.unwritten += 1;
                    } else {
                        e.y = e.y.max((g - w).abs() / case.v_amp);
                    }
                }
            }
        }
    }
    e
}

/// One whole-problem run with NaN-poisoned outputs.
fn run_whole<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    kernel: K,
    case: &Case,
    q: &[T],
    k: &[T],
    v: &[T],
    buf: &mut Buffers,
) -> Result<Errors, Error> {
    let att = Attention::new(&case.spec, &case.mask, q, k, v)?;
    let ny = case.spec.required_len(Tensor::Y)?;
    let rows = case.spec.required_len(Tensor::Lse)?;
    let (y, lse) = (&mut buf.y[..ny], &mut buf.lse[..rows]);
    y.fill(f32::NAN);
    lse.fill(f32::NAN);
    buf.scratch.fill(f32::NAN);
    Flash::<K, BQ, BK>::new(kernel).run(&att, y, Some(lse), &mut buf.scratch)?;
    Ok(compare(case, y, lse))
}

/// Keys `0..cut` and `cut..Skv` computed apart per query tile, then merged.
fn run_split<K: MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    kernel: K,
    case: &Case,
    cut: usize,
    q: &[T],
    k: &[T],
    v: &[T],
    buf: &mut Buffers,
) -> Result<Errors, Error> {
    let s = case.spec;
    let att = Attention::new(&s, &case.mask, q, k, v)?;
    let f = Flash::<K, BQ, BK>::new(kernel);
    let dv = s.v_head_dim;
    let rows = s.required_len(Tensor::Lse)?;
    for x in [&mut buf.y[..], &mut buf.y_b[..], &mut buf.merged[..]] {
        x.fill(f32::NAN);
    }
    for x in [
        &mut buf.lse[..],
        &mut buf.lse_b[..],
        &mut buf.merged_lse[..],
    ] {
        x.fill(f32::NAN);
    }
    let mut stats = tessera_core::Stats::default();
    for b in 0..s.batch {
        for h in 0..s.q_heads {
            for t in 0..Flash::<K, BQ, BK>::q_tiles(s.q_len) {
                for (range, y, lse) in [
                    (0..cut, &mut buf.y, &mut buf.lse),
                    (cut..s.kv_len, &mut buf.y_b, &mut buf.lse_b),
                ] {
                    let out = f.tile(&att, b, h, t, range, &mut buf.scratch, &mut stats)?;
                    for r in 0..out.rows {
                        let row = (b * s.q_heads + h) * s.q_len + out.q_start + r;
                        y[row * dv..][..dv].copy_from_slice(out.row(r));
                        lse[row] = out.lse(r);
                    }
                }
            }
        }
    }
    merge(
        &buf.y[..rows * dv],
        &buf.lse[..rows],
        &buf.y_b[..rows * dv],
        &buf.lse_b[..rows],
        &mut buf.merged[..rows * dv],
        &mut buf.merged_lse[..rows],
        dv,
    )?;
    // The merged result is contiguous (B, Hq, Sq, Dv); compare through a
    // BHSD view of the same case.
    let mut contiguous = Case { spec: s, ..*case };
    contiguous.spec.out = tessera_core::Strides::bhsd(s.q_heads, s.q_len, dv);
    Ok(compare(
        &contiguous,
        &buf.merged[..rows * dv],
        &buf.merged_lse[..rows],
    ))
}

fn report(
    name: &str,
    config: &str,
    result: Result<Errors, Error>,
    passed: &mut u32,
    failed: &mut u32,
) {
    let mut out = Out;
    match result {
        Ok(e) if e.unwritten == 0 && e.y <= TOL && e.lse <= TOL => {
            *passed += 1;
            let _ = writeln!(
                out,
                "ok   {name} [{config}] y_err={:.2e} lse_err={:.2e}",
                e.y, e.lse
            );
        }
        Ok(e) => {
            *failed += 1;
            let _ = writeln!(
                out,
                "FAIL {name} [{config}] y_err={:.2e} lse_err={:.2e} unwritten={} (tol {TOL:.0e})",
                e.y, e.lse, e.unwritten
            );
        }
        Err(err) => {
            *failed += 1;
            let _ = writeln!(out, "FAIL {name} [{config}] error: {err}");
        }
    }
}

fn run_case<T: Element>(
    case: &Case,
    q: &[T],
    k: &[T],
    v: &[T],
    buf: &mut Buffers,
    passed: &mut u32,
    failed: &mut u32,
) {
    let n = case.name;
    if let Some(cut) = case.split {
        report(
            n,
            "scalar 12x16 split+merge",
            run_split::<_, 12, 16, T>(Scalar, case, cut, q, k, v, buf),
            passed,
            failed,
        );
        report(
            n,
            "portable 8x16 split+merge",
            run_split::<_, 8, 16, T>(Portable, case, cut, q, k, v, buf),
            passed,
            failed,
        );
        #[cfg(m55)]
        report(
            n,
            "helium 12x16 split+merge",
            run_split::<_, 12, 16, T>(tessera_core::kernel::Helium, case, cut, q, k, v, buf),
            passed,
            failed,
        );
    } else {
        report(
            n,
            "scalar 12x16",
            run_whole::<_, 12, 16, T>(Scalar, case, q, k, v, buf),
            passed,
            failed,
        );
        report(
            n,
            "scalar 24x32",
            run_whole::<_, 24, 32, T>(Scalar, case, q, k, v, buf),
            passed,
            failed,
        );
        report(
            n,
            "portable 8x16",
            run_whole::<_, 8, 16, T>(Portable, case, q, k, v, buf),
            passed,
            failed,
        );
        #[cfg(m55)]
        {
            use tessera_core::kernel::Helium;
            report(
                n,
                "helium 12x16",
                run_whole::<_, 12, 16, T>(Helium, case, q, k, v, buf),
                passed,
                failed,
            );
            report(
                n,
                "helium 32x32",
                run_whole::<_, 32, 32, T>(Helium, case, q, k, v, buf),
                passed,
                failed,
            );
        }
    }
}

#[no_mangle]
extern "C" fn tessera_main() -> i32 {
    // SAFETY: tessera_main runs once, single-threaded, without interrupts;
    // this is the only reference to BUFFERS ever made.
    let buf = unsafe { &mut *addr_of_mut!(BUFFERS) };
    let (mut passed, mut failed) = (0u32, 0u32);
    let _ = writeln!(
        Out,
        "tessera-core conformance on {}",
        core::env!("TARGET_NAME")
    );
    for case in CASES {
        match case.input {
            Input::F32 { q, k, v } => run_case(case, q, k, v, buf, &mut passed, &mut failed),
            Input::F16 { q, k, v } => run_case(case, q, k, v, buf, &mut passed, &mut failed),
        }
    }
    let _ = writeln!(Out, "{passed} passed, {failed} failed");
    i32::from(failed != 0)
}
