//! Top-k on arbitrary f32 rows (NaN, ±inf, subnormals, ±0). Invariant: the
//! selection equals a plain sort's: the `k` largest selectable scores (NaN
//! and -inf are never selected, -0 ranks as +0), ties to the lower index,
//! indices ascending, padded with `NONE`; `top_k` and `top_k_in_place`
//! agree, for `i32`, `i64` and `usize` outputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::topk::order_key;
use tessera_core::{top_k, top_k_in_place, KeyIndex};
use tessera_fuzz::Bytes;

/// The expected selection by sorting.
fn expected(scores: &[f32], k: usize) -> Vec<usize> {
    let selectable = |x: f32| !(x.is_nan() || x == f32::NEG_INFINITY);
    let mut ix: Vec<usize> = (0..scores.len())
        .filter(|&i| selectable(scores[i]))
        .collect();
    // Larger value first (-0 == +0), then lower index.
    ix.sort_by(|&a, &b| {
        let (x, y) = (scores[a] + 0.0, scores[b] + 0.0);
        y.partial_cmp(&x).unwrap().then(a.cmp(&b))
    });
    ix.truncate(k);
    ix.sort_unstable();
    ix
}

fn check<I: KeyIndex>(scores: &[f32], k: usize, want: &[usize]) {
    let mut out = vec![I::NONE; k];
    let n = top_k(scores, &mut out);
    assert_eq!(n, want.len(), "top_k count");
    let got: Vec<Option<usize>> = out.iter().map(|i| i.get().unwrap()).collect();
    let mut expect: Vec<Option<usize>> = want.iter().copied().map(Some).collect();
    expect.resize(k, None);
    assert_eq!(got, expect, "top_k of {scores:?}, k = {k}");
    let mut row = scores.to_vec();
    let mut out2 = vec![I::NONE; k];
    assert_eq!(top_k_in_place(&mut row, &mut out2), n);
    assert_eq!(out2, out, "top_k_in_place differs from top_k");
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let k = r.below(40);
    // Some rows from a small alphabet, so ties and specials are common.
    let alphabet = r.bool();
    let mut scores = Vec::new();
    while !r.is_empty() && scores.len() < 600 {
        scores.push(if alphabet {
            [
                0.0,
                -0.0,
                1.0,
                -1.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e-45,
            ][r.below(8)]
        } else {
            r.f32()
        });
    }
    // The order key is monotone in the value for selectable scores.
    for w in scores.windows(2) {
        let (a, b) = (w[0], w[1]);
        if order_key(a) != 0 && order_key(b) != 0 && a < b {
            assert!(
                order_key(a) < order_key(b),
                "order_key not monotone: {a} < {b}"
            );
        }
    }
    let want = expected(&scores, k);
    check::<i32>(&scores, k, &want);
    check::<i64>(&scores, k, &want);
    check::<usize>(&scores, k, &want);
});
