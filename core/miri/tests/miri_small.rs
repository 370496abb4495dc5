//! Small cases for Miri: the portable path, scratch splitting, masks and
//! merge, checked against the f64 reference. Run with
//! `cargo +nightly miri test -p tessera-core-miri`.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{assert_close, expected, Rng};
use tessera_core::{
    kernel::Portable, merge, Attention, AttentionSpec, DenseMask, Flash, MaskSpec, MaskStrides,
};

type F = Flash<Portable, 4, 8>;

fn check(spec: AttentionSpec, mask: &MaskSpec<'_>, seed: u64) {
    let mut rng = Rng(seed);
    let q: Vec<f32> = rng.vec(spec.required_len(tessera_core::Tensor::Q).unwrap(), 1.0);
    let k: Vec<f32> = rng.vec(spec.required_len(tessera_core::Tensor::K).unwrap(), 1.0);
    let v: Vec<f32> = rng.vec(spec.required_len(tessera_core::Tensor::V).unwrap(), 1.0);
    let att = Attention::new(&spec, mask, &q, &k, &v).unwrap();
    let mut y = vec![f32::NAN; spec.required_len(tessera_core::Tensor::Y).unwrap()];
    let mut lse = vec![f32::NAN; spec.batch * spec.q_heads * spec.q_len];
    let mut scratch = vec![f32::NAN; F::scratch_len(spec.head_dim, spec.v_head_dim)];
    F::new(Portable)
        .run(&att, &mut y, Some(&mut lse), &mut scratch)
        .unwrap();
    assert_close(
        &spec,
        &expected(&spec, mask, &q, &k, &v),
        &y,
        &lse,
        1.0,
        1e-5,
    );
}

#[test]
fn dense_gqa_bshd() {
    check(
        AttentionSpec::bshd(1, 4, 2, 5, 11, 3, 2),
        &MaskSpec::NONE,
        3,
    );
}

#[test]
fn causal_window_globals_chunk() {
    let m = MaskSpec::NONE.causal(2).window(3, 1).globals(1).chunked(4);
    check(AttentionSpec::bhsd(1, 2, 1, 9, 11, 4, 4), &m, 5);
}

#[test]
fn segments_lens_and_dense_masks() {
    let seg_q = [0, 0, 1, 1, 1, 2];
    let seg_kv = [0, 1, 1, 1, 2, 2, 2];
    let lens = [6usize];
    let bools: Vec<bool> = (0..7).map(|j| j % 3 != 1).collect();
    let adds: Vec<f32> = (0..6 * 7)
        .map(|i| {
            if i % 5 == 0 {
                f32::NEG_INFINITY
            } else {
                (i % 7) as f32 * 0.1
            }
        })
        .collect();
    let spec = AttentionSpec::bhsd(1, 1, 1, 6, 7, 5, 3);
    check(
        spec,
        &MaskSpec::NONE
            .segments(&seg_q, &seg_kv)
            .kv_lens(&lens, true)
            .causal(0),
        7,
    );
    check(
        spec,
        &MaskSpec::NONE.dense(DenseMask::Bool(&bools, MaskStrides::broadcast(1, 1, 1, 7))),
        9,
    );
    check(
        spec,
        &MaskSpec::NONE.dense(DenseMask::Additive(
            &adds,
            MaskStrides::broadcast(1, 1, 6, 7),
        )),
        11,
    );
    let capped = spec.with_softcap(0.7).with_scale(2.0);
    check(capped, &MaskSpec::NONE.causal(1), 13);
}

#[test]
fn merge_of_empty_sides() {
    let (ya, yb) = ([1.0f32, 2.0], [3.0f32, 4.0]);
    let (la, lb) = ([f32::NEG_INFINITY], [0.5f32]);
    let mut y = [f32::NAN; 2];
    let mut l = [f32::NAN];
    merge(&ya, &la, &yb, &lb, &mut y, &mut l, 2).unwrap();
    assert_eq!((y, l), ([3.0, 4.0], [0.5]));
    merge(&ya, &la, &yb, &la, &mut y, &mut l, 2).unwrap();
    assert_eq!((y, l), ([0.0, 0.0], [f32::NEG_INFINITY]));
}
