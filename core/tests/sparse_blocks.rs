//! The training-free block selector: the upper
//! bound, the selection rule, exact equality with dense attention when
//! `top_k` covers the visible keys, and equality with dense attention masked
//! to the selected tiles otherwise.

#[macro_use]
mod kernels;

use proptest::prelude::*;
use tessera_core::blocksel::{
    summarize, summary_len, BlockSelector, BlockSummaries, BoundFormat, Keep, TileBudget,
};
use tessera_core::kernel::{MicroKernel, Portable};
use tessera_core::{
    f16, reference, Attention, AttentionSpec, DenseMask, Error, Flash, MaskSpec, MaskStrides, Size,
    Tensor, E4M3, E5M2,
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
}

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    kv_heads: usize,
    group: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    causal: Option<isize>,
    window: isize,
    globals: usize,
    kv_lens: Option<Vec<usize>>,
    top_k: usize,
    keep: Keep,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..3,
        1usize..4,
        1usize..40,
        1usize..200,
        1usize..24,
        any::<u64>(),
    )
        .prop_flat_map(|(batch, kv_heads, group, q_len, kv_len, d, seed)| {
            (
                prop_oneof![Just(None), (-3isize..150).prop_map(Some)],
                -1isize..80,
                0usize..10,
                proptest::option::of(proptest::collection::vec(0..=kv_len, batch)),
                1usize..120,
                (proptest::option::of(0usize..40), 0usize..20),
            )
                .prop_map(
                    move |(causal, window, globals, kv_lens, top_k, (lw, gt))| Case {
                        batch,
                        kv_heads,
                        group,
                        q_len,
                        kv_len,
                        d,
                        causal,
                        window,
                        globals,
                        kv_lens,
                        top_k,
                        keep: Keep {
                            local_window: lw,
                            global_tokens: gt,
                        },
                        seed,
                    },
                )
        })
}

const BQ: usize = 8;
const BK: usize = 16;

struct Problem {
    spec: AttentionSpec,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn problem(c: &Case) -> Problem {
    let hq = c.kv_heads * c.group;
    let spec = AttentionSpec::bhsd(c.batch, hq, c.kv_heads, c.q_len, c.kv_len, c.d, c.d);
    let mut rng = Rng(c.seed | 1);
    // Keys with a per-block offset so that blocks really differ.
    let q = (0..c.batch * hq * c.q_len * c.d)
        .map(|_| rng.f32() * 2.0)
        .collect();
    let k = (0..c.batch * c.kv_heads * c.kv_len * c.d)
        .map(|i| rng.f32() + ((i / c.d / BK) % 3) as f32 * 0.5)
        .collect();
    let v = (0..c.batch * c.kv_heads * c.kv_len * c.d)
        .map(|_| rng.f32())
        .collect();
    Problem { spec, q, k, v }
}

fn mask_of(c: &Case) -> MaskSpec<'_> {
    let mut m = MaskSpec::NONE.window(c.window, -1).globals(c.globals);
    if let Some(off) = c.causal {
        m = m.causal(off);
    }
    if let Some(l) = &c.kv_lens {
        m = m.kv_lens(l, false);
    }
    m
}

type Sel<K> = BlockSelector<K, BQ, BK>;

/// The caller's buffers of one case, NaN-poisoned.
struct Bufs {
    scratch: Vec<f32>,
    fscratch: Vec<f32>,
    scores: Vec<f32>,
    tiles: Vec<usize>,
    y: Vec<f32>,
    lse: Vec<f32>,
}

impl Bufs {
    fn new<K: MicroKernel>(c: &Case, s: &AttentionSpec) -> Self {
        let nb = Sel::<K>::blocks(s.kv_len);
        let rows = s.batch * s.q_heads * s.q_len;
        Self {
            scratch: vec![f32::NAN; Sel::<K>::scratch_len(c.group, c.d)],
            fscratch: vec![f32::NAN; Flash::<K, BQ, BK>::scratch_len(c.d, c.d)],
            scores: vec![f32::NAN; nb],
            tiles: vec![usize::MAX; nb],
            y: vec![f32::NAN; rows * s.v_head_dim],
            lse: vec![f32::NAN; rows],
        }
    }
}

/// `BlockSelector::run` with `top_k` into `bufs.y` and `bufs.lse`.
fn run_selector<K: MicroKernel, S: BoundFormat>(
    sel: &Sel<K>,
    att: &Attention<'_, f32>,
    view: &BlockSummaries<'_, S>,
    top_k: usize,
    keep: Keep,
    bufs: &mut Bufs,
) {
    sel.run(
        att,
        att.q(),
        view,
        top_k,
        keep,
        &mut bufs.y,
        Some(&mut bufs.lse),
        &mut bufs.scratch,
        &mut bufs.fscratch,
        &mut bufs.scores,
        &mut bufs.tiles,
    )
    .unwrap();
}

fn run_case<K: MicroKernel, S: BoundFormat>(c: &Case, kernel: K) -> Result<(), TestCaseError> {
    let p = problem(c);
    let s = p.spec;
    let mask = mask_of(c);
    let att = Attention::new(&s, &mask, &p.q, &p.k, &p.v).unwrap();
    let mut sums = vec![S::default(); summary_len(&s, BK).unwrap()];
    summarize(&s, &p.k, BK, &mut sums).unwrap();
    let view = BlockSummaries::new(&s, BK, &sums).unwrap();
    let sel = Sel::<K>::new(kernel);
    let mut bufs = Bufs::new::<K>(c, &s);

    // 1. top_k >= every visible count: bit-identical to the dense flash run.
    run_selector(&sel, &att, &view, s.kv_len.max(1), c.keep, &mut bufs);
    let mut yd = vec![f32::NAN; bufs.y.len()];
    let mut ld = vec![f32::NAN; bufs.lse.len()];
    sel.flash()
        .run(&att, &mut yd, Some(&mut ld), &mut bufs.fscratch)
        .unwrap();
    prop_assert!(
        bufs.y
            .iter()
            .zip(&yd)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "dense-budget output differs from dense flash"
    );
    prop_assert!(bufs
        .lse
        .iter()
        .zip(&ld)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // 2. A small budget: check the bound, the rule, and the output against
    //    dense attention masked to the selected tiles.
    let allowed = check_selection(c, &sel, &att, &view, &mut bufs)?;
    run_selector(&sel, &att, &view, c.top_k, c.keep, &mut bufs);
    check_against_reference(&att, &allowed, &bufs)
}

/// Score and select every (batch, KV head, query tile) with `c.top_k`,
/// check the selection rule and the bound, and return which (query row,
/// key) pairs the chosen tiles allow.
fn check_selection<K: MicroKernel, S: BoundFormat>(
    c: &Case,
    sel: &Sel<K>,
    att: &Attention<'_, f32>,
    view: &BlockSummaries<'_, S>,
    bufs: &mut Bufs,
) -> Result<Vec<bool>, TestCaseError> {
    let s = *att.spec();
    let mut allowed = vec![false; s.batch * s.q_heads * s.q_len * s.kv_len];
    for b in 0..s.batch {
        for hk in 0..s.kv_heads {
            for t in 0..s.q_len.div_ceil(BQ) {
                let budget = sel
                    .score_tile(
                        att,
                        att.q(),
                        view,
                        b,
                        hk,
                        t,
                        c.top_k,
                        c.keep,
                        &mut bufs.scores,
                        &mut bufs.scratch,
                    )
                    .unwrap();
                let n = Sel::<K>::select_tiles(&bufs.scores, budget, &mut bufs.tiles).unwrap();
                let (scores, chosen) = (&bufs.scores, &bufs.tiles[..n]);
                check_rule(scores, budget, chosen)?;
                if !budget.dense {
                    prop_assert_eq!(
                        budget.blocks,
                        c.top_k
                            .div_ceil(BK)
                            .max(scores.iter().filter(|x| **x == f32::INFINITY).count())
                            .min(budget.non_empty)
                    );
                    check_bound(c, att, b, hk, t, scores)?;
                }
                allow(&s, c.group, b, hk, t, chosen, &mut allowed);
            }
        }
    }
    Ok(allowed)
}

/// The selection rule: ascending distinct non-Empty blocks, every kept
/// (`+inf`) block chosen, and nothing left out beats what was chosen.
fn check_rule(scores: &[f32], budget: TileBudget, chosen: &[usize]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        chosen.len(),
        budget
            .blocks
            .min(scores.iter().filter(|x| **x != f32::NEG_INFINITY).count())
    );
    prop_assert!(
        chosen.windows(2).all(|w| w[0] < w[1]),
        "ascending, distinct"
    );
    prop_assert!(
        chosen.iter().all(|&j| scores[j] != f32::NEG_INFINITY),
        "only non-Empty blocks"
    );
    let min_chosen = chosen
        .iter()
        .map(|&j| scores[j])
        .fold(f32::INFINITY, f32::min);
    for (j, &sj) in scores.iter().enumerate() {
        if !chosen.contains(&j) {
            prop_assert!(sj != f32::INFINITY, "kept block {} not chosen", j);
            prop_assert!(
                sj <= min_chosen,
                "block {} ({}) beats a chosen one ({})",
                j,
                sj,
                min_chosen
            );
        }
    }
    Ok(())
}

/// The bound holds for every key of every scored block of query tile `t`
/// of (batch `b`, KV head `hk`), for every query and head of the group.
fn check_bound(
    c: &Case,
    att: &Attention<'_, f32>,
    b: usize,
    hk: usize,
    t: usize,
    scores: &[f32],
) -> Result<(), TestCaseError> {
    let s = att.spec();
    let (q, k) = (att.q(), att.k());
    let mut qf = vec![0.0f64; c.d];
    for (j, &sc) in scores.iter().enumerate().filter(|(_, x)| x.is_finite()) {
        for r in 0..BQ.min(s.q_len - t * BQ) {
            for h in hk * c.group..(hk + 1) * c.group {
                let qo = s.q.offset(b, h, t * BQ + r);
                qf.iter_mut()
                    .zip(&q[qo..qo + c.d])
                    .for_each(|(a, &x)| *a = x as f64);
                for key in j * BK..((j + 1) * BK).min(s.kv_len) {
                    let ko = s.k.offset(b, hk, key);
                    let dot: f64 = qf
                        .iter()
                        .zip(&k[ko..ko + c.d])
                        .map(|(a, &x)| a * x as f64)
                        .sum();
                    let mag: f64 = qf
                        .iter()
                        .zip(&k[ko..ko + c.d])
                        .map(|(a, &x)| (a * x as f64).abs())
                        .sum();
                    prop_assert!(
                        sc as f64 >= dot - 1e-5 * (mag + 1.0),
                        "bound {} < q·k {} (block {}, key {})",
                        sc,
                        dot,
                        j,
                        key
                    );
                }
            }
        }
    }
    Ok(())
}

/// Mark the keys of the `chosen` tiles as allowed for every query row of
/// tile `t` and head of KV head `hk`'s group.
fn allow(
    s: &AttentionSpec,
    group: usize,
    b: usize,
    hk: usize,
    t: usize,
    chosen: &[usize],
    allowed: &mut [bool],
) {
    for h in hk * group..(hk + 1) * group {
        for i in t * BQ..((t + 1) * BQ).min(s.q_len) {
            for &j in chosen {
                for key in j * BK..((j + 1) * BK).min(s.kv_len) {
                    allowed[((b * s.q_heads + h) * s.q_len + i) * s.kv_len + key] = true;
                }
            }
        }
    }
}

/// `bufs.y` and `bufs.lse` against the f64 reference under the case's mask
/// and "key is `allowed`".
fn check_against_reference(
    att: &Attention<'_, f32>,
    allowed: &[bool],
    bufs: &Bufs,
) -> Result<(), TestCaseError> {
    let s = *att.spec();
    let (y, lse) = (&bufs.y, &bufs.lse);
    let full = att.mask().dense(DenseMask::Bool(
        allowed,
        MaskStrides::broadcast(s.batch, s.q_heads, s.q_len, s.kv_len),
    ));
    let mut yr = vec![f64::NAN; y.len()];
    let mut lr = vec![f64::NAN; lse.len()];
    reference::attention(&s, &full, att.q(), att.k(), att.v(), &mut yr, &mut lr);
    for r in 0..lse.len() {
        if lr[r] == f64::NEG_INFINITY {
            prop_assert_eq!(lse[r], f32::NEG_INFINITY);
        } else {
            prop_assert!(
                (lse[r] as f64 - lr[r]).abs() <= 1e-5 * lr[r].abs().max(1.0),
                "lse {}: {} vs {}",
                r,
                lse[r],
                lr[r]
            );
        }
        for d in 0..s.v_head_dim {
            prop_assert!((y[r * s.v_head_dim + d] as f64 - yr[r * s.v_head_dim + d]).abs() <= 1e-5);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn portable_selector(c in case()) {
        run_case::<_, f16>(&c, Portable)?;
        run_case::<_, E5M2>(&c, Portable)?;
    }

    #[test]
    fn every_kernel_selector(c in case()) {
        each_kernel!(k => run_case::<_, f32>(&c, k)?);
    }
}

#[test]
fn strong_block_is_found() {
    // One block of keys aligned with every query among noise: it must be
    // selected with a one-block budget and no kept blocks.
    let (sq, skv, d) = (16, 512, 16);
    let spec = AttentionSpec::bhsd(1, 1, 1, sq, skv, d, d);
    let mut rng = Rng(7);
    let q: Vec<f32> = (0..sq * d)
        .map(|i| if i % d == 0 { 1.0 } else { rng.f32() * 0.1 })
        .collect();
    let k: Vec<f32> = (0..skv * d)
        .map(|i| {
            if i / d / BK == 21 && i % d == 0 {
                8.0
            } else {
                rng.f32() * 0.1
            }
        })
        .collect();
    let v = k.clone();
    let m = MaskSpec::NONE;
    let att = Attention::new(&spec, &m, &q, &k, &v).unwrap();
    let mut sums = vec![0.0f32; summary_len(&spec, BK).unwrap()];
    summarize(&spec, &k, BK, &mut sums).unwrap();
    let view = BlockSummaries::new(&spec, BK, &sums).unwrap();
    type Sel = BlockSelector<Portable, BQ, BK>;
    let sel = Sel::new(Portable);
    let mut scratch = vec![0.0; Sel::scratch_len(1, d)];
    let mut scores = vec![0.0; Sel::blocks(skv)];
    let mut tiles = vec![0usize; Sel::blocks(skv)];
    for t in 0..2 {
        let budget = sel
            .score_tile(
                &att,
                &q,
                &view,
                0,
                0,
                t,
                BK,
                Keep::default(),
                &mut scores,
                &mut scratch,
            )
            .unwrap();
        assert_eq!(budget.blocks, 1);
        assert_eq!(Sel::select_tiles(&scores, budget, &mut tiles).unwrap(), 1);
        assert_eq!(tiles[0], 21);
    }
}

#[test]
fn rejects_bad_input() {
    let spec = AttentionSpec::bhsd(1, 1, 1, 4, 40, 4, 4);
    let k = vec![1.0f32; 160];
    let mut sums = vec![E4M3::default(); summary_len(&spec, BK).unwrap()];
    assert!(summarize(&spec, &k, BK, &mut sums[1..]).is_err());
    let mut big = k.clone();
    big[5] = 1000.0;
    assert_eq!(
        summarize(&spec, &big, BK, &mut sums),
        Err(Error::SummaryOverflow { at: 1 })
    );
    big[5] = f32::NAN;
    assert_eq!(
        summarize(&spec, &big, BK, &mut sums),
        Err(Error::NonFinite {
            tensor: Tensor::K,
            at: 5
        })
    );
    summarize(
        &spec,
        &k,
        8,
        &mut vec![E4M3::default(); summary_len(&spec, 8).unwrap()],
    )
    .unwrap();
    let s8 = vec![0.0f32; summary_len(&spec, 8).unwrap()];
    let view = BlockSummaries::new(&spec, 8, &s8).unwrap();
    let (q, v) = (vec![1.0f32; 16], vec![1.0f32; 160]);
    let m = MaskSpec::NONE;
    let att = Attention::new(&spec, &m, &q, &k, &v).unwrap();
    type Sel = BlockSelector<Portable, BQ, BK>;
    let sel = Sel::new(Portable);
    let mut scratch = vec![0.0; Sel::scratch_len(1, 4)];
    let mut scores = vec![0.0; 3];
    assert_eq!(
        sel.score_tile(
            &att,
            &q,
            &view,
            0,
            0,
            0,
            4,
            Keep::default(),
            &mut scores,
            &mut scratch
        ),
        Err(Error::BlockMismatch {
            summary: 8,
            tile: BK
        })
    );
    let s16 = vec![0.0f32; summary_len(&spec, BK).unwrap()];
    let view = BlockSummaries::new(&spec, BK, &s16).unwrap();
    assert_eq!(
        sel.score_tile(
            &att,
            &q,
            &view,
            0,
            0,
            0,
            0,
            Keep::default(),
            &mut scores,
            &mut scratch
        ),
        Err(Error::Zero { what: Size::TopK })
    );
    assert!(matches!(
        sel.score_tile(
            &att,
            &q,
            &view,
            0,
            0,
            0,
            4,
            Keep::default(),
            &mut scores[..2],
            &mut scratch
        ),
        Err(Error::TooShort { .. })
    ));
    assert!(matches!(
        sel.score_tile(
            &att,
            &q,
            &view,
            0,
            0,
            1,
            4,
            Keep::default(),
            &mut scores,
            &mut scratch
        ),
        Err(Error::TileOutOfRange)
    ));
}
