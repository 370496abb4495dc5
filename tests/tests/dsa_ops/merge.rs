//! `MergeAttention` of two key halves equals attention over all keys.

use tessera_tests::onnx::elem;
use tessera_tests::Rng;

use crate::env;
use crate::node::{f32_in, i64_in, run, Out};
use crate::reference::{assert_close, reference};

#[test]
fn merging_two_key_halves_equals_attention_over_all_keys() {
    if env().is_none() {
        return;
    }
    let (b, h, sq, skv, d) = (1, 2, 9, 40, 8);
    let mut rng = Rng::new(4);
    let (q, k, v) = (
        rng.vec(b * h * sq * d),
        rng.vec(b * h * skv * d),
        rng.vec(b * h * skv * d),
    );
    let half = |keys: std::ops::Range<usize>| -> Vec<Out> {
        let width = keys.len();
        let lists: Vec<i64> = (0..b * sq)
            .flat_map(|_| keys.clone().map(|j| j as i64))
            .collect();
        run(
            "TopKAttention",
            &[],
            vec![
                f32_in("Q", &[b, h, sq, d], q.clone()),
                f32_in("K", &[b, h, skv, d], k.clone()),
                f32_in("V", &[b, h, skv, d], v.clone()),
                i64_in("indices", &[b, sq, width], lists),
            ],
            &[("Y", elem::FLOAT), ("", 0), ("lse", elem::FLOAT)],
            2,
        )
        .unwrap()
    };
    let (a, c) = (half(0..15), half(15..skv));
    let merged = run(
        "MergeAttention",
        &[],
        vec![
            f32_in("Y_a", &[b, h, sq, d], a[0].f().to_vec()),
            f32_in("lse_a", &[b, h, sq], a[1].f().to_vec()),
            f32_in("Y_b", &[b, h, sq, d], c[0].f().to_vec()),
            f32_in("lse_b", &[b, h, sq], c[1].f().to_vec()),
        ],
        &[("Y", elem::FLOAT), ("lse", elem::FLOAT)],
        2,
    )
    .unwrap();
    let (want_y, want_lse) = reference((b, h, h, sq, skv, d), &q, &k, &v, |_, _, _, _| true);
    assert_close("Y", merged[0].f(), &want_y, 2e-5);
    assert_close("lse", merged[1].f(), &want_lse, 1e-5);
}
