//! The shape and attribute rules of [`super::Plan`], each refusal checked
//! for the input and rule its message names.

use super::*;

fn attrs() -> Attrs {
    Attrs::default()
}

fn plan(a: &Attrs, q: &[i64], k: &[i64], v: &[i64]) -> Result<Plan> {
    Plan::new(a, &qkv(q, k, v))
}

#[test]
fn four_d_gqa_sizes() {
    let p = plan(&attrs(), &[2, 9, 4, 8], &[2, 3, 6, 8], &[2, 3, 6, 10]).unwrap();
    assert_eq!(
        (
            p.batch,
            p.q_heads,
            p.kv_heads,
            p.q_len,
            p.kv_new,
            p.head_dim,
            p.v_head_dim
        ),
        (2, 9, 3, 4, 6, 8, 10)
    );
    assert_eq!(p.y_dims(), vec![2, 9, 4, 10]);
    assert_eq!(p.qk_dims(), vec![2, 9, 4, 6]);
}

#[test]
fn three_d_sizes() {
    let a = Attrs {
        q_heads: Some(4),
        kv_heads: Some(1),
        ..attrs()
    };
    let p = plan(&a, &[2, 4, 32], &[2, 6, 8], &[2, 6, 6]).unwrap();
    assert_eq!(
        (p.q_heads, p.kv_heads, p.head_dim, p.v_head_dim, p.layout),
        (4, 1, 8, 6, Layout::Bshd)
    );
    assert_eq!(p.y_dims(), vec![2, 4, 24]);
}

/// Q, K and V with no optional input.
fn qkv<'a>(q: &'a [i64], k: &'a [i64], v: &'a [i64]) -> Shapes<'a> {
    Shapes::qkv(q, k, v)
}

const Q4: [i64; 4] = [2, 3, 4, 8];
const K5: [i64; 4] = [2, 3, 5, 8];

/// 4-D Q with 4 queries and K, V with 5 keys, changed by `f`.
fn with(f: impl FnOnce(&mut Shapes<'static>)) -> Shapes<'static> {
    let mut s = Shapes::qkv(&Q4, &K5, &K5);
    f(&mut s);
    s
}

/// Each bad shape is refused with a message naming the input and rule.
#[test]
fn bad_shapes_name_the_input_and_rule() {
    let three_d = Attrs {
        q_heads: Some(3),
        kv_heads: Some(2),
        ..attrs()
    };
    let d = &attrs();
    let cases: &[(&Attrs, Shapes<'_>, &str)] = &[
        (
            d,
            qkv(&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]),
            "Q: 3-D inputs need",
        ),
        (d, with(|s| s.q = &[2, 3, 4, 8, 1]), "Q: rank must be 3"),
        (d, qkv(&Q4, &[2, 3, 4], &Q4), "K: rank 3 must equal"),
        (
            d,
            qkv(&Q4, &[2, 2, 4, 8], &[2, 2, 4, 8]),
            "must be a positive multiple of kv_num_heads (2)",
        ),
        (d, qkv(&Q4, &[2, 3, 4, 7], &Q4), "K: head size 7"),
        (
            &three_d,
            qkv(&[2, 4, 24], &[2, 4, 16], &[2, 4, 16]),
            "multiple of kv_num_heads",
        ),
        (d, with(|s| s.v = &Q4), "V: sequence length 4"),
        (
            d,
            with(|s| s.mask = Some(&[2, 4, 5])),
            "attn_mask: shape (2, 4, 5) does not broadcast",
        ),
        (
            d,
            with(|s| s.mask = Some(&[4, 6])),
            "attn_mask: last axis 6",
        ),
        (
            d,
            with(|s| s.past_key = Some(&[2, 3, 1, 8])),
            "past_key and past_value must be given together",
        ),
        (
            d,
            with(|s| {
                s.past_key = Some(&[2, 3, 1, 8]);
                s.past_value = Some(&[2, 3, 2, 8]);
            }),
            "past_value: shape (2, 3, 2, 8)",
        ),
        (
            d,
            with(|s| s.nonpad = Some(&[3])),
            "nonpad_kv_seqlen: shape (3)",
        ),
        (
            d,
            qkv(&[0, 1 << 40, 1 << 30, 8], &[0, 1, 1, 8], &[0, 1, 1, 8]),
            "overflows",
        ),
    ];
    for (a, s, want) in cases {
        let err = Plan::new(a, s).unwrap_err();
        assert!(
            err.message.contains(want),
            "{s:?}: got {:?}, want {want:?}",
            err.message
        );
    }
}

#[test]
fn bad_attributes_are_refused() {
    let cases: &[(RawAttrs, &str)] = &[
        (
            RawAttrs {
                left_window_size: Some(-2),
                ..Default::default()
            },
            "left_window_size must be >= -1",
        ),
        (
            RawAttrs {
                right_window_size: Some(-5),
                ..Default::default()
            },
            "right_window_size must be >= -1",
        ),
        (
            RawAttrs {
                is_causal: Some(2),
                ..Default::default()
            },
            "is_causal must be 0 or 1",
        ),
        (
            RawAttrs {
                scale: Some(f32::NAN),
                ..Default::default()
            },
            "scale must be finite",
        ),
        (
            RawAttrs {
                softcap: Some(-1.0),
                ..Default::default()
            },
            "softcap must be finite and >= 0",
        ),
        (
            RawAttrs {
                q_num_heads: Some(0),
                ..Default::default()
            },
            "q_num_heads must be >= 1",
        ),
        (
            RawAttrs {
                qk_matmul_output_mode: Some(4),
                ..Default::default()
            },
            "qk_matmul_output_mode must be 0, 1, 2 or 3",
        ),
        (
            RawAttrs {
                softmax_precision: Some(6),
                ..Default::default()
            },
            "softmax_precision must be a float type",
        ),
        (
            RawAttrs {
                num_global_tokens: Some(-1),
                ..Default::default()
            },
            "num_global_tokens must be >= 0",
        ),
    ];
    for (raw, want) in cases {
        let err = Attrs::parse(raw).unwrap_err();
        assert!(err.message.contains(want), "{raw:?}: got {:?}", err.message);
    }
    assert!(Attrs::parse(&RawAttrs {
        left_window_size: Some(-1),
        softmax_precision: Some(11),
        ..Default::default()
    })
    .is_ok());
}

#[test]
fn masks_broadcast_right_aligned() {
    let s = |m: &'static [i64]| Shapes {
        q: &[2, 3, 4, 8],
        k: &[2, 3, 6, 8],
        v: &[2, 3, 6, 8],
        mask: Some(m),
        ..Default::default()
    };
    assert_eq!(
        Plan::new(&attrs(), &s(&[6])).unwrap().mask,
        Some([1, 1, 1, 6])
    );
    assert_eq!(
        Plan::new(&attrs(), &s(&[4, 6])).unwrap().mask,
        Some([1, 1, 4, 6])
    );
    assert_eq!(
        Plan::new(&attrs(), &s(&[3, 4, 6])).unwrap().mask,
        Some([1, 3, 4, 6])
    );
    assert_eq!(
        Plan::new(&attrs(), &s(&[2, 1, 4, 3])).unwrap().mask,
        Some([2, 1, 4, 3])
    );
}
