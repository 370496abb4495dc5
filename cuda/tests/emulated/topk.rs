//! The radix top-k kernel (`kernels/topk.cu`) against the core selection.

use tessera_cuda::emu;
use tessera_cuda::plan::{self};

use crate::support::{addr, out, Rng};

#[test]
fn radix_top_k_equals_the_core_selection_exactly() {
    let mut rng = Rng(0x70b);
    for &(rows, n, k, ties) in &[
        (6usize, 3000usize, 100usize, false),
        (4, 2000, 700, true),
        (3, 40, 64, false),
        (2, 5, 1, true),
    ] {
        let mut s: Vec<f32> = (0..rows * n)
            .map(|_| {
                let x = rng.normal();
                if ties {
                    (x * 4.0).round() / 4.0
                } else {
                    x
                }
            })
            .collect();
        for x in s.iter_mut() {
            if rng.uniform() < 0.2 {
                *x = f32::NEG_INFINITY;
            }
        }
        s[..n / 2].iter_mut().for_each(|x| *x = f32::NEG_INFINITY); // a row with few candidates
        if n > 3 {
            s[n + 1] = f32::NAN;
            s[n + 2] = -0.0;
        }
        let mut idx = vec![-7i64; rows * k];
        let launch = plan::top_k(rows, n, k, addr(&s), out(&mut idx)).unwrap();
        // SAFETY: `s` holds rows*n f32 and `idx` rows*k i64.
        unsafe { emu::launch(&launch) }.unwrap();
        for r in 0..rows {
            let mut want = vec![0i64; k];
            tessera_core::top_k(&s[r * n..][..n], &mut want);
            assert_eq!(
                &idx[r * k..][..k],
                &want[..],
                "rows={rows} n={n} k={k} row {r}"
            );
        }
    }
}
