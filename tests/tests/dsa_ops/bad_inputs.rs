//! Bad inputs to each op fail with a message naming the op, the input and
//! the rule.

use tessera_tests::onnx::elem;

use crate::env;
use crate::node::{f32_in, i32_in, i64_in, run, In};

#[test]
fn bad_inputs_fail_with_a_message_naming_input_and_rule() {
    if env().is_none() {
        return;
    }
    let cases: Vec<Bad> = [indexer_cases(), topk_cases(), merge_cases()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(cases.len(), 13);
    for bad in cases {
        let (op, want) = (bad.op, bad.want);
        let err = run(op, bad.attrs, bad.inputs, bad.outputs, 1).expect_err(want);
        assert!(
            err.contains(want) && err.contains(&format!("ai.tessera.{op}")),
            "{op}: got {err:?}, want {want:?}"
        );
    }
}

/// One call the op must refuse, and the text its error must hold.
struct Bad {
    op: &'static str,
    attrs: &'static [(&'static str, i64)],
    inputs: Vec<In>,
    outputs: &'static [(&'static str, i32)],
    want: &'static str,
}

const IX_OUT: &[(&str, i32)] = &[("indices", elem::INT64)];
const AT_OUT: &[(&str, i32)] = &[("Y", elem::FLOAT)];

/// f32 `index_q`, `index_k`, `index_w` of the given shapes.
fn indexer_inputs(q: &[usize], k: &[usize], w: &[usize]) -> Vec<In> {
    let n = |s: &[usize]| s.iter().product::<usize>();
    vec![
        f32_in("index_q", q, vec![0.5; n(q)]),
        f32_in("index_k", k, vec![0.5; n(k)]),
        f32_in("index_w", w, vec![0.5; n(w)]),
    ]
}

/// Valid indexer inputs: 5 queries, 2 heads of dim 8, 7 keys.
fn ok_indexer() -> Vec<In> {
    indexer_inputs(&[1, 5, 2, 8], &[1, 7, 8], &[1, 5, 2])
}

/// Valid f32 Q, K, V: 4 queries, 6 keys.
fn qkv() -> Vec<In> {
    vec![
        f32_in("Q", &[1, 2, 4, 8], vec![0.5; 64]),
        f32_in("K", &[1, 2, 6, 8], vec![0.5; 96]),
        f32_in("V", &[1, 2, 6, 8], vec![0.5; 96]),
    ]
}

/// [`qkv`] plus one more input.
fn qkv_with(extra: In) -> Vec<In> {
    let mut v = qkv();
    v.push(extra);
    v
}

/// i64 `indices (1, 4, 2)`.
fn lists(rows: Vec<i64>) -> In {
    i64_in("indices", &[1, 4, 2], rows)
}

/// Two merge parts `(1, 2, 3, 4)` with lse of shape `lse`.
fn merge_inputs(lse: &[usize]) -> Vec<In> {
    vec![
        f32_in("Y_a", &[1, 2, 3, 4], vec![1.0; 24]),
        f32_in("lse_a", lse, vec![0.0; lse.iter().product()]),
        f32_in("Y_b", &[1, 2, 3, 4], vec![1.0; 24]),
        f32_in("lse_b", lse, vec![0.0; lse.iter().product()]),
    ]
}

/// `LightningIndexer`: top_k missing or 0, shapes that disagree, rank.
fn indexer_cases() -> Vec<Bad> {
    vec![
        Bad {
            op: "LightningIndexer",
            attrs: &[("top_k", 0)],
            inputs: ok_indexer(),
            outputs: IX_OUT,
            want: "top_k must be >= 1, got 0",
        },
        Bad {
            op: "LightningIndexer",
            attrs: &[],
            inputs: ok_indexer(),
            outputs: IX_OUT,
            want: "top_k is required",
        },
        Bad {
            op: "LightningIndexer",
            attrs: &[("top_k", 2)],
            inputs: indexer_inputs(&[1, 5, 2, 8], &[1, 7, 9], &[1, 5, 2]),
            outputs: IX_OUT,
            want: "index_k: shape [1, 7, 9]",
        },
        Bad {
            op: "LightningIndexer",
            attrs: &[("top_k", 2)],
            inputs: indexer_inputs(&[1, 5, 2, 8], &[1, 7, 8], &[1, 4, 2]),
            outputs: IX_OUT,
            want: "index_w: shape [1, 4, 2] must be",
        },
        Bad {
            op: "LightningIndexer",
            attrs: &[("top_k", 2)],
            inputs: indexer_inputs(&[1, 5, 16], &[1, 7, 8], &[1, 5, 2]),
            outputs: IX_OUT,
            want: "index_q: rank must be 4",
        },
    ]
}

/// `TopKAttention`: top_k, and index lists out of range, repeated, of the
/// wrong type or shape, or disagreeing with the attribute.
fn topk_cases() -> Vec<Bad> {
    vec![
        Bad {
            op: "TopKAttention",
            attrs: &[("top_k", 0)],
            inputs: qkv(),
            outputs: AT_OUT,
            want: "top_k must be >= 1, got 0",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[],
            inputs: qkv(),
            outputs: AT_OUT,
            want: "top_k is required without an indices input",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[],
            inputs: qkv_with(lists(vec![0, 1, 2, 6, 0, 1, 0, 1])),
            outputs: AT_OUT,
            want: "holds 6, outside [0, 6)",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[],
            inputs: qkv_with(lists(vec![0, 1, 4, 4, 0, 1, 0, 1])),
            outputs: AT_OUT,
            want: "names key 4 more than once",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[],
            inputs: qkv_with(i32_in("indices", &[1, 4, 2], vec![0; 8])),
            outputs: AT_OUT,
            want: "indices: element type int32",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[],
            inputs: qkv_with(i64_in("indices", &[1, 5, 2], vec![0; 10])),
            outputs: AT_OUT,
            want: "indices: shape [1, 5, 2] must be",
        },
        Bad {
            op: "TopKAttention",
            attrs: &[("top_k", 3)],
            inputs: qkv_with(lists(vec![0; 8])),
            outputs: AT_OUT,
            want: "must equal the top_k attribute 3",
        },
    ]
}

/// `MergeAttention`: an lse that is not `(batch, heads, seq)`.
fn merge_cases() -> Vec<Bad> {
    vec![Bad {
        op: "MergeAttention",
        attrs: &[],
        inputs: merge_inputs(&[1, 2, 4]),
        outputs: AT_OUT,
        want: "lse_a: shape (1, 2, 4) must be (batch, heads, seq)",
    }]
}
