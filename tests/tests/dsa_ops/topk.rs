//! `TopKAttention`: index mode against the masked reference, and the
//! training-free mode with every key against dense attention, over threads.

use tessera_tests::onnx::elem;
use tessera_tests::Rng;

use crate::env;
use crate::node::{f32_in, i64_in, model, run, run_in};
use crate::reference::{assert_close, random_lists, reference, visible};
use crate::shared::session;

#[test]
fn topk_index_mode_matches_the_masked_reference() {
    if env().is_none() {
        return;
    }
    let (b, hq, hkv, sq, skv, d, k) = (2, 4, 2, 11, 130, 16, 30);
    let mut rng = Rng::new(2);
    let (q, kk, v) = (
        rng.vec(b * hq * sq * d),
        rng.vec(b * hkv * skv * d),
        rng.vec(b * hkv * skv * d),
    );
    let lists = random_lists(&mut rng, b * sq, skv, k);
    let outputs = [
        ("Y", elem::FLOAT),
        ("selected", elem::INT64),
        ("lse", elem::FLOAT),
    ];
    let out = run(
        "TopKAttention",
        &[("is_causal", 1), ("top_k", k as i64)],
        vec![
            f32_in("Q", &[b, hq, sq, d], q.clone()),
            f32_in("K", &[b, hkv, skv, d], kk.clone()),
            f32_in("V", &[b, hkv, skv, d], v.clone()),
            i64_in("indices", &[b, sq, k], lists.clone()),
        ],
        &outputs,
        2,
    )
    .unwrap();
    let listed =
        |bi: usize, i: usize, j: usize| lists[(bi * sq + i) * k..][..k].contains(&(j as i64));
    let (want_y, want_lse) = reference((b, hq, hkv, sq, skv, d), &q, &kk, &v, |bi, _, i, j| {
        listed(bi, i, j) && visible(true, i, sq, j, skv)
    });
    assert_close("Y", out[0].f(), &want_y, 2e-5);
    assert_close("lse", out[2].f(), &want_lse, 1e-5);
    let (shape, sel) = out[1].i();
    assert_eq!(shape, [b as i64, hkv as i64, sq as i64, k as i64]);
    for bi in 0..b {
        for hk in 0..hkv {
            for i in 0..sq {
                let want: Vec<i64> = (0..skv)
                    .filter(|&j| listed(bi, i, j) && visible(true, i, sq, j, skv))
                    .map(|j| j as i64)
                    .chain(std::iter::repeat(-1))
                    .take(k)
                    .collect();
                assert_eq!(
                    sel[((bi * hkv + hk) * sq + i) * k..][..k],
                    want[..],
                    "({bi},{hk},{i})"
                );
            }
        }
    }
}

#[test]
fn training_free_with_every_key_is_dense_attention_and_threads_agree() {
    if env().is_none() {
        return;
    }
    let (b, hq, hkv, sq, skv, d) = (1, 4, 2, 70, 200, 32);
    let mut rng = Rng::new(3);
    let (q, k, v) = (
        rng.vec(b * hq * sq * d),
        rng.vec(b * hkv * skv * d),
        rng.vec(b * hkv * skv * d),
    );
    let inputs = || {
        vec![
            f32_in("Q", &[b, hq, sq, d], q.clone()),
            f32_in("K", &[b, hkv, skv, d], k.clone()),
            f32_in("V", &[b, hkv, skv, d], v.clone()),
        ]
    };
    let outputs = [("Y", elem::FLOAT), ("", 0), ("lse", elem::FLOAT)];
    let attrs = [("is_causal", 1), ("top_k", skv as i64)];
    let one = run("TopKAttention", &attrs, inputs(), &outputs, 1).unwrap();
    let (want_y, want_lse) = reference((b, hq, hkv, sq, skv, d), &q, &k, &v, |_, _, i, j| {
        visible(true, i, sq, j, skv)
    });
    assert_close("Y", one[0].f(), &want_y, 2e-5);
    assert_close("lse", one[1].f(), &want_lse, 1e-5);

    // Sparse (top_k = 64 of 200 keys) from 8 threads sharing one session,
    // each session on 2 intra-op threads: identical to one thread.
    let env = env().unwrap();
    let small = [
        ("is_causal", 1),
        ("top_k", 64),
        ("left_window_size", 16),
        ("num_global_tokens", 4),
    ];
    let decl = [("Q", elem::FLOAT), ("K", elem::FLOAT), ("V", elem::FLOAT)];
    let m = model("TopKAttention", &small, &decl, &outputs);
    let single = run_in(&mut session(env, &m, 1).unwrap(), inputs(), &outputs).unwrap();
    let shared = std::sync::Mutex::new(session(env, &m, 2).unwrap());
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (shared, single, m, inputs, outputs) = (&shared, &single, &m, &inputs, &outputs);
            s.spawn(move || {
                let mut own = session(env, m, 2).unwrap();
                assert_eq!(&run_in(&mut own, inputs(), outputs).unwrap(), single);
                let got = run_in(&mut shared.lock().unwrap(), inputs(), outputs).unwrap();
                assert_eq!(&got, single);
            });
        }
    });
}
