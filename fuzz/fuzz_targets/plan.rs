//! The plugin's input planning for every op (`tessera_ort::preflight`):
//! arbitrary shapes (ranks 0–5, dims negative, zero, 2^62, i64::MAX),
//! optional inputs present or not, the `indices` element type and every
//! attribute. Invariants: no panic; an error names an input or attribute
//! of the op; a plan's output dims are all non-negative and their element
//! counts fit in `isize`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::Bytes;
use tessera_ort::plan::RawAttrs;
use tessera_ort::preflight::{plan, Node, Op};

const OPS: [Op; 5] = [
    Op::Attention,
    Op::TopKIndex,
    Op::TopKTrainingFree,
    Op::LightningIndexer,
    Op::MergeAttention,
];

fn attr(r: &mut Bytes) -> Option<i64> {
    match r.below(4) {
        0 => None,
        1 | 2 => Some(r.below(6) as i64 - 1),
        _ => Some(r.dim()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let op = OPS[r.below(OPS.len())];
    // A few shapes, often sharing dims so that the deeper rules are reached.
    let pool: Vec<i64> = (0..4).map(|_| r.dim()).collect();
    let shapes: Vec<Vec<i64>> = (0..7)
        .map(|_| {
            let rank = r.below(6);
            (0..rank)
                .map(|_| {
                    if r.below(3) == 0 {
                        r.dim()
                    } else {
                        pool[r.below(4)]
                    }
                })
                .collect()
        })
        .collect();
    let present: Vec<bool> = (0..7).map(|i| i < 3 || r.bool()).collect();
    let mut node = Node {
        indices_elem: [None, Some(7), Some(6), Some(1)][r.below(4)],
        raw: RawAttrs {
            is_causal: attr(&mut r),
            scale: r.bool().then(|| r.f32()),
            softcap: r.bool().then(|| r.f32()),
            q_num_heads: attr(&mut r),
            kv_num_heads: attr(&mut r),
            left_window_size: attr(&mut r),
            right_window_size: attr(&mut r),
            num_global_tokens: attr(&mut r),
            qk_matmul_output_mode: attr(&mut r),
            softmax_precision: attr(&mut r),
        },
        top_k: attr(&mut r),
        format: [None, Some("e4m3"), Some("e5m2"), Some("f32"), Some("int4")][r.below(5)],
        ..Default::default()
    };
    for (i, s) in shapes.iter().enumerate() {
        node.inputs[i] = present[i].then_some(s.as_slice());
    }
    match plan(op, &node) {
        Ok(outs) => {
            for dims in outs {
                assert!(
                    dims.iter().all(|&d| d >= 0),
                    "{op:?}: negative output dims {dims:?}"
                );
                let n = dims
                    .iter()
                    .try_fold(1i64, |n, &d| n.checked_mul(d))
                    .filter(|&n| n <= isize::MAX as i64);
                assert!(n.is_some(), "{op:?}: output dims {dims:?} overflow");
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "{op:?}: an empty error");
        }
    }
});
