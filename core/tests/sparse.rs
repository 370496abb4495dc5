//! Gather attention over index lists against the f64 reference with a dense
//! bool mask built from the same lists (and the structural mask).

#[macro_use]
mod kernels;

use proptest::prelude::*;
use tessera_core::kernel::{MicroKernel, Portable};
use tessera_core::sparse::{GatherAttention, IndexList, SparseAttention};
use tessera_core::{
    reference, AttentionSpec, DenseMask, Error, MaskSpec, MaskStrides, Size, Tensor,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    kv_heads: usize,
    group: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    dv: usize,
    top_k: usize,
    shared: bool,
    causal: Option<isize>,
    window: isize,
    globals: usize,
    softcap: f32,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..3,
            1usize..3,
            1usize..6,
            1usize..20,
            1usize..120,
            1usize..40,
            1usize..40,
        ),
        (
            1usize..140,
            any::<bool>(),
            proptest::option::of(-4isize..30),
            -1isize..30,
            0usize..4,
            prop_oneof![Just(0.0f32), Just(5.0f32)],
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (batch, kv_heads, group, q_len, kv_len, d, dv),
                (top_k, shared, causal, window, globals, softcap, seed),
            )| Case {
                batch,
                kv_heads,
                group,
                q_len,
                kv_len,
                d,
                dv,
                top_k,
                shared,
                causal,
                window,
                globals,
                softcap,
                seed,
            },
        )
}

/// Random distinct keys in random order, `-1` sprinkled in.
fn lists(c: &Case, rng: &mut Rng) -> Vec<i64> {
    let rows = c.batch * if c.shared { 1 } else { c.kv_heads } * c.q_len;
    let mut out = Vec::with_capacity(rows * c.top_k);
    let mut perm: Vec<i64> = (0..c.kv_len as i64).collect();
    for _ in 0..rows {
        for a in (1..perm.len()).rev() {
            perm.swap(a, rng.below(a + 1));
        }
        let mut taken = 0;
        for slot in 0..c.top_k {
            if taken < perm.len() && rng.below(5) != 0 {
                out.push(perm[taken]);
                taken += 1;
            } else {
                let _ = slot;
                out.push(-1);
            }
        }
    }
    out
}

fn run_case<K: MicroKernel>(c: &Case, kernel: K) -> Result<(), TestCaseError> {
    let hq = c.kv_heads * c.group;
    let spec = AttentionSpec::bhsd(c.batch, hq, c.kv_heads, c.q_len, c.kv_len, c.d, c.dv)
        .with_softcap(c.softcap);
    let mut rng = Rng(c.seed | 1);
    let q: Vec<f32> = (0..c.batch * hq * c.q_len * c.d)
        .map(|_| rng.f32() * 2.0)
        .collect();
    let k: Vec<f32> = (0..c.batch * c.kv_heads * c.kv_len * c.d)
        .map(|_| rng.f32() * 2.0)
        .collect();
    let v: Vec<f32> = (0..c.batch * c.kv_heads * c.kv_len * c.dv)
        .map(|_| rng.f32())
        .collect();
    let idx = lists(c, &mut rng);
    let list = if c.shared {
        IndexList::shared(&idx, c.q_len, c.top_k)
    } else {
        IndexList::per_kv_head(&idx, c.kv_heads, c.q_len, c.top_k)
    };
    let mut mask = MaskSpec::NONE.window(c.window, -1).globals(c.globals);
    if let Some(off) = c.causal {
        mask = mask.causal(off);
    }
    let p = SparseAttention::new(&spec, &mask, &q, &k, &v, list).unwrap();
    type G<K> = GatherAttention<K, 16>;
    let g = G::<K>::new(kernel);
    let mut scratch = vec![f32::NAN; G::<K>::scratch_len(c.group, c.d, c.dv)];
    let mut seen = vec![0u64; G::<K>::seen_len(c.kv_len)];
    let mut y = vec![f32::NAN; c.batch * hq * c.q_len * c.dv];
    let mut lse = vec![f32::NAN; c.batch * hq * c.q_len];
    g.run(&p, &mut y, Some(&mut lse), &mut scratch, &mut seen)
        .unwrap();
    prop_assert!(seen.iter().all(|&w| w == 0), "seen must be left clean");

    // The dense bool mask (B, Hq, Sq, Skv) of "key in the list".
    let mut dense = vec![false; c.batch * hq * c.q_len * c.kv_len];
    for b in 0..c.batch {
        for h in 0..hq {
            for i in 0..c.q_len {
                for &j in list.row(b, h / c.group, i) {
                    if j >= 0 {
                        dense[((b * hq + h) * c.q_len + i) * c.kv_len + j as usize] = true;
                    }
                }
            }
        }
    }
    let full = mask.dense(DenseMask::Bool(
        &dense,
        MaskStrides::broadcast(c.batch, hq, c.q_len, c.kv_len),
    ));
    let mut yr = vec![f64::NAN; y.len()];
    let mut lr = vec![f64::NAN; lse.len()];
    reference::attention(&spec, &full, &q, &k, &v, &mut yr, &mut lr);
    for r in 0..lse.len() {
        if lr[r] == f64::NEG_INFINITY {
            prop_assert_eq!(lse[r], f32::NEG_INFINITY, "row {} sees nothing", r);
        } else {
            prop_assert!(
                (lse[r] as f64 - lr[r]).abs() <= 1e-5 * lr[r].abs().max(1.0),
                "lse row {}: {} vs {}",
                r,
                lse[r],
                lr[r]
            );
        }
        for d in 0..c.dv {
            let (a, e) = (y[r * c.dv + d] as f64, yr[r * c.dv + d]);
            prop_assert!((a - e).abs() <= 1e-5, "y row {} d {}: {} vs {}", r, d, a, e);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn portable_matches_masked_dense(c in case()) {
        run_case(&c, Portable)?;
    }

    #[test]
    fn every_kernel_matches_masked_dense(c in case()) {
        each_kernel!(k => run_case(&c, k)?);
    }
}

#[test]
fn rejects_bad_lists_and_leaves_seen_clean() {
    let spec = AttentionSpec::bhsd(1, 2, 1, 2, 10, 4, 4);
    let (q, k, v) = (vec![0.5f32; 16], vec![0.25f32; 40], vec![1.0f32; 40]);
    let m = MaskSpec::NONE;
    type G = GatherAttention<Portable, 8>;
    let g = G::new(Portable);
    let mut scratch = vec![0.0; G::scratch_len(2, 4, 4)];
    let mut seen = vec![0u64; G::seen_len(10)];
    let mut y = vec![0.0f32; 16];
    let bad: [(&[i64], Error); 4] = [
        (
            &[1, 2, 1, 3, 4, 5],
            Error::DuplicateIndex { row: 0, index: 1 },
        ),
        (
            &[1, 2, 3, 4, 10, 5],
            Error::IndexOutOfRange {
                row: 1,
                index: 10,
                kv_len: 10,
            },
        ),
        (
            &[1, 2, 3, 4, -2, 5],
            Error::IndexOutOfRange {
                row: 1,
                index: -2,
                kv_len: 10,
            },
        ),
        (
            &[-1, -1, -1, 9, 9, -1],
            Error::DuplicateIndex { row: 1, index: 9 },
        ),
    ];
    for (list, err) in bad {
        let p = SparseAttention::new(&spec, &m, &q, &k, &v, IndexList::shared(list, 2, 3)).unwrap();
        assert_eq!(g.run(&p, &mut y, None, &mut scratch, &mut seen), Err(err));
        assert!(seen.iter().all(|&w| w == 0));
    }
    assert_eq!(
        SparseAttention::new(&spec, &m, &q, &k, &v, IndexList::shared(&[0i64; 5], 2, 3))
            .unwrap_err(),
        Error::TooShort {
            tensor: Tensor::Indices,
            need: 6,
            got: 5
        }
    );
    assert_eq!(
        SparseAttention::new(&spec, &m, &q, &k, &v, IndexList::<i64>::shared(&[], 2, 0))
            .unwrap_err(),
        Error::Zero { what: Size::TopK }
    );
    // All padding: Y = 0 and lse = -inf, never NaN.
    let pad = [-1i64; 6];
    let p = SparseAttention::new(&spec, &m, &q, &k, &v, IndexList::shared(&pad, 2, 3)).unwrap();
    let mut lse = vec![0.0f32; 4];
    g.run(&p, &mut y, Some(&mut lse), &mut scratch, &mut seen)
        .unwrap();
    assert!(y.iter().all(|&x| x == 0.0) && lse.iter().all(|&l| l == f32::NEG_INFINITY));
}
