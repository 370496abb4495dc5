//! Radix top-k against a sort-based reference on data with many ties,
//! masked (-inf) and NaN entries, signed zeros and every k.

use proptest::prelude::*;
use tessera_core::topk::{order_key, top_k, top_k_in_place, KeyIndex};

/// Sort by (value desc, index asc), keep the first k selectable, return
/// them in ascending index order.
fn reference(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len())
        .filter(|&j| !scores[j].is_nan() && scores[j] != f32::NEG_INFINITY)
        .collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

fn check<I: KeyIndex>(scores: &[f32], k: usize) -> Result<(), TestCaseError> {
    let want = reference(scores, k);
    let mut out = vec![I::from_usize(7); k];
    let n = top_k(scores, &mut out);
    prop_assert_eq!(n, want.len());
    let got: Vec<usize> = out[..n].iter().map(|x| x.get().unwrap().unwrap()).collect();
    prop_assert_eq!(&got, &want, "k = {}", k);
    prop_assert!(out[n..].iter().all(|&x| x == I::NONE));
    // The in-place variant selects the same entries.
    let mut row = scores.to_vec();
    let mut out2 = vec![I::from_usize(3); k];
    prop_assert_eq!(top_k_in_place(&mut row, &mut out2), n);
    prop_assert_eq!(&out2, &out);
    Ok(())
}

/// A row drawn from a small value set (heavy ties) with masked and NaN
/// entries sprinkled in; `distinct` controls the tie density.
fn row() -> impl Strategy<Value = Vec<f32>> {
    (1usize..3000, 1u32..40, any::<u64>()).prop_map(|(n, distinct, seed)| {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match s % 23 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::NAN,
                    2 => -0.0,
                    3 => 0.0,
                    4 => {
                        f32::from_bits((s >> 32) as u32 & 0x7F7F_FFFF)
                            * if s & 1 == 0 { 1.0 } else { -1.0 }
                    }
                    _ => ((s >> 40) as u32 % distinct) as f32 * 0.25 - 3.0,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn matches_sort_reference(scores in row(), k_frac in 0.0f64..1.2, k_small in 1usize..8) {
        let k = ((scores.len() as f64 * k_frac) as usize).max(1);
        check::<i64>(&scores, k)?;
        check::<i32>(&scores, k_small)?;
        check::<usize>(&scores, scores.len())?;
    }

    /// Values that share long key prefixes (the same exponent, mantissas
    /// differing only in the low byte) force all four radix passes.
    #[test]
    fn deep_prefixes(n in 1usize..2000, base in any::<u32>(), seed in any::<u64>(), k in 1usize..64) {
        let base = base & 0x7F7F_FF00;
        let mut s = seed | 1;
        let scores: Vec<f32> = (0..n).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; f32::from_bits(base | (s as u32 & 0x3F)) }).collect();
        check::<i64>(&scores, k)?;
    }
}

#[test]
fn edge_rows() {
    let mut out = [0i64; 3];
    assert_eq!(top_k(&[], &mut out), 0);
    assert_eq!(out, [-1; 3]);
    assert_eq!(top_k(&[f32::NEG_INFINITY; 5], &mut out), 0);
    assert_eq!(
        top_k(&[f32::NAN, 1.0, f32::INFINITY, -f32::INFINITY], &mut out),
        2
    );
    assert_eq!(out, [1, 2, -1]);
    let mut none: [i64; 0] = [];
    assert_eq!(top_k(&[1.0, 2.0], &mut none), 0);
    // All equal: ties go to the lowest indices.
    let flat = [0.5f32; 100];
    let mut out = [0i32; 10];
    assert_eq!(top_k(&flat, &mut out), 10);
    assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(order_key(1.0) > order_key(0.5));
}
