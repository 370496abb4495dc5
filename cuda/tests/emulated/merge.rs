//! The LSE merge kernel (`kernels/merge.cu`) against the core merge.

use tessera_core::bf16;
use tessera_cuda::emu;
use tessera_cuda::plan::{self, Dtype, MergeBuffers};

use crate::support::{addr, out, Rng};

#[test]
fn lse_merge_equals_the_core_merge() {
    let mut rng = Rng(0x3e6);
    let (rows, dv) = (37usize, 72usize);
    let ya: Vec<f32> = (0..rows * dv).map(|_| rng.normal()).collect();
    let yb: Vec<f32> = (0..rows * dv).map(|_| rng.normal()).collect();
    let mut la: Vec<f32> = (0..rows).map(|_| rng.normal() * 3.0).collect();
    let lb: Vec<f32> = (0..rows)
        .map(|i| {
            if i % 5 == 0 {
                f32::NEG_INFINITY
            } else {
                rng.normal() * 3.0
            }
        })
        .collect();
    la[0] = f32::NEG_INFINITY; // both sides empty
    la[3] = f32::NEG_INFINITY;
    let (mut want_y, mut want_l) = (vec![0.0f32; rows * dv], vec![0.0f32; rows]);
    tessera_core::merge(&ya, &la, &yb, &lb, &mut want_y, &mut want_l, dv).unwrap();

    let (mut y, mut l) = (vec![f32::NAN; rows * dv], vec![f32::NAN; rows]);
    let b1 = MergeBuffers {
        y_a: addr(&ya),
        lse_a: addr(&la),
        y_b: addr(&yb),
        lse_b: addr(&lb),
        y: out(&mut y),
        lse: out(&mut l),
    };
    let launch = plan::merge(rows, dv, Dtype::F32, &b1).unwrap();
    // SAFETY: all buffers are rows*dv / rows f32.
    unsafe { emu::launch(&launch) }.unwrap();
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x - y).abs() <= 1e-5 * y.abs().max(1.0))
    };
    assert!(close(&y, &want_y) && close(&l, &want_l));

    // In place: the output aliases side a.
    let (mut ya2, mut la2) = (ya.clone(), la.clone());
    let (pa, pl) = (out(&mut ya2), out(&mut la2));
    let b2 = MergeBuffers {
        y_a: pa,
        lse_a: pl,
        y_b: addr(&yb),
        lse_b: addr(&lb),
        y: pa,
        lse: pl,
    };
    let launch = plan::merge(rows, dv, Dtype::F32, &b2).unwrap();
    // SAFETY: as above; aliasing the output with an input is allowed.
    unsafe { emu::launch(&launch) }.unwrap();
    assert!(close(&ya2, &want_y) && close(&la2, &want_l));

    // bf16 rows.
    let ya16: Vec<bf16> = ya.iter().map(|&x| bf16::from_f32(x)).collect();
    let yb16: Vec<bf16> = yb.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut y16 = vec![bf16::from_f32(f32::NAN); rows * dv];
    let mut l16 = vec![f32::NAN; rows];
    let b16 = MergeBuffers {
        y_a: addr(&ya16),
        lse_a: addr(&la),
        y_b: addr(&yb16),
        lse_b: addr(&lb),
        y: out(&mut y16),
        lse: out(&mut l16),
    };
    let launch = plan::merge(rows, dv, Dtype::Bf16, &b16).unwrap();
    // SAFETY: as above.
    unsafe { emu::launch(&launch) }.unwrap();
    let mut want16 = vec![bf16::from_f32(0.0); rows * dv];
    let mut wl = vec![0.0f32; rows];
    tessera_core::merge(&ya16, &la, &yb16, &lb, &mut want16, &mut wl, dv).unwrap();
    for (g, w) in y16.iter().zip(&want16) {
        assert!(
            (g.to_f32() - w.to_f32()).abs() <= 1e-2 * w.to_f32().abs().max(1e-3),
            "{g} vs {w}"
        );
    }
}
