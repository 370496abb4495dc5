//! `TopKAttention` as the CUDA-EP op runs it (`kernels/sparse.cu`: the
//! index-list check and the gather attention) against the f64 reference.

use tessera_core::mask::{DenseMask, MaskSpec, MaskStrides};
use tessera_core::spec::{AttentionSpec, Tensor};
use tessera_core::{bf16, f16, reference, Element};
use tessera_cuda::dsa::{self, TopKCall, TopKIo};
use tessera_cuda::plan::{Dtype, KeyLists, SparseRules};
use tessera_cuda::{emu, AttentionBuffers};

use crate::support::{addr, fill, out, rel_err, Rng};

/// The keys query `t` attends under `rules`, given its list: the listed
/// keys in range plus the kept ones, restricted by the causal cap — the CPU
/// op's widened list after its visibility filter, as a set.
fn attended(list: &[i64], t: usize, skv: usize, rules: &SparseRules) -> Vec<usize> {
    let p = t as isize + rules.q_offset;
    let cap = if rules.causal {
        p.min(skv as isize - 1)
    } else {
        skv as isize - 1
    };
    let mut keys: Vec<usize> = list
        .iter()
        .filter(|&&j| j >= 0 && (j as usize) < skv)
        .map(|&j| j as usize)
        .collect();
    keys.extend(0..rules.global_tokens.min(skv));
    if let (Some(w), true) = (rules.left_window, p >= 0) {
        let lo = (p - w as isize).max(0) as usize;
        keys.extend(lo..=(p as usize).min(skv - 1));
    }
    keys.retain(|&j| j as isize <= cap);
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// One `TopKAttention` (index mode) call through `dsa::topk_attention` on
/// the emulator: Y and the lse against the f64 reference whose mask is
/// "attended" (listed or kept, and visible), `selected_indices` against the
/// same set, ascending and `-1`-padded.
#[allow(clippy::too_many_arguments)]
fn run_sparse<T: Element>(
    dims: [usize; 7],
    dtype: Dtype,
    shared: bool,
    softcap: f32,
    rules: SparseRules,
    with_selected: bool,
    seed: u64,
) -> Result<(), String> {
    let [b, hq, hkv, sq, skv, d, topk] = dims;
    let mut rng = Rng(seed);
    let spec = AttentionSpec::bhsd(b, hq, hkv, sq, skv, d, d).with_softcap(softcap);
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<T>(&mut rng, len(Tensor::Q)),
        fill::<T>(&mut rng, len(Tensor::K)),
        fill::<T>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![T::from_f32(f32::NAN); len(Tensor::Y)];
    let mut lse = vec![f32::NAN; b * hq * sq];
    let list_heads = if shared { 1 } else { hkv };
    // Distinct keys per list with -1 padding anywhere; some lists empty.
    let mut lists = vec![-1i64; b * list_heads * sq * topk];
    for (li, list) in lists.chunks_mut(topk).enumerate() {
        if li % sq == 1 {
            continue;
        }
        let mut keys: Vec<i64> = (0..skv as i64).collect();
        for slot in 0..topk.min(skv) {
            let j = slot + rng.below(skv - slot);
            keys.swap(slot, j);
            if rng.uniform() < 0.85 {
                list[slot] = keys[slot];
            }
        }
        for i in (1..topk).rev() {
            list.swap(i, rng.below(i + 1));
        }
    }
    let width = dsa::selected_width(topk, skv, &rules);
    let mut selected = vec![-7i64; b * hkv * sq * width];
    let call = TopKCall {
        spec,
        dtype,
        lists: KeyLists {
            ptr: addr(&lists),
            top_k: topk,
            batch: list_heads * sq * topk,
            head: if shared { 0 } else { sq * topk },
            seq: topk,
        },
        rules,
    };
    let mut scratch = vec![0u64; call.scratch_bytes().div_ceil(8)];
    let io = TopKIo {
        attention: AttentionBuffers {
            q: addr(&q),
            k: addr(&k),
            v: addr(&v),
            y: out(&mut y),
            lse: Some(out(&mut lse)),
        },
        selected: with_selected.then(|| (out(&mut selected), width)),
    };
    // SAFETY: every address is a live Vec sized by the spec and the lists.
    let dev = unsafe { emu::Emulator::new() };
    dsa::topk_attention(&dev, &call, &io, out(&mut scratch)).map_err(|e| e.to_string())?;

    let mut visible = vec![false; b * hq * sq * skv];
    for bi in 0..b {
        for h in 0..hq {
            let lh = if shared { 0 } else { h / (hq / hkv) };
            for t in 0..sq {
                let list = &lists[((bi * list_heads + lh) * sq + t) * topk..][..topk];
                let keys = attended(list, t, skv, &rules);
                for &j in &keys {
                    visible[((bi * hq + h) * sq + t) * skv + j] = true;
                }
                if with_selected && h % (hq / hkv) == 0 {
                    let hk = h / (hq / hkv);
                    let row = &selected[((bi * hkv + hk) * sq + t) * width..][..width];
                    let mut want: Vec<i64> = keys.iter().map(|&j| j as i64).collect();
                    want.resize(width, -1);
                    if row != &want[..] {
                        return Err(format!(
                            "selected (b {bi}, hk {hk}, t {t}): {row:?}, want {want:?}"
                        ));
                    }
                }
            }
        }
    }
    let mask = MaskSpec::NONE.dense(DenseMask::Bool(
        &visible,
        MaskStrides::broadcast(b, hq, sq, skv),
    ));
    let mut y_ref = vec![0.0f64; b * hq * sq * d];
    let mut lse_ref = vec![0.0f64; b * hq * sq];
    reference::attention(&spec, &mask, &q, &k, &v, &mut y_ref, &mut lse_ref);
    let y_got: Vec<f64> = y.iter().map(|x| x.to_f32() as f64).collect();
    let lse_got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let ey = rel_err(&y_got, &y_ref)?;
    let el = rel_err(&lse_got, &lse_ref)?;
    if ey < 1e-2 && el < 1e-2 {
        Ok(())
    } else {
        Err(format!("dims {dims:?}: Y err {ey:.2e}, lse err {el:.2e}"))
    }
}

#[test]
fn sparse_gather_attention_matches_the_reference_over_its_key_lists() {
    let none = SparseRules::default();
    run_sparse::<f16>(
        [2, 4, 2, 9, 200, 128, 40],
        Dtype::F16,
        true,
        0.0,
        none,
        false,
        0xa11,
    )
    .unwrap();
    run_sparse::<bf16>(
        [1, 4, 4, 7, 90, 64, 33],
        Dtype::Bf16,
        false,
        12.0,
        none,
        true,
        0xa12,
    )
    .unwrap();
    // Bottom-right causal with a window and sinks, shared lists, per-head output.
    let keep = SparseRules {
        causal: true,
        q_offset: 70 - 11,
        left_window: Some(6),
        global_tokens: 3,
    };
    run_sparse::<f16>(
        [1, 4, 2, 11, 70, 64, 9],
        Dtype::F16,
        true,
        0.0,
        keep,
        true,
        0xa13,
    )
    .unwrap();
    // More queries than keys: the leading rows see nothing.
    let early = SparseRules {
        causal: true,
        q_offset: 20 - 30,
        left_window: Some(0),
        global_tokens: 0,
    };
    run_sparse::<bf16>(
        [1, 2, 1, 30, 20, 64, 5],
        Dtype::Bf16,
        false,
        0.0,
        early,
        true,
        0xa14,
    )
    .unwrap();
    // Not causal: sinks and window only widen.
    let wide = SparseRules {
        causal: false,
        q_offset: 0,
        left_window: Some(40),
        global_tokens: 50,
    };
    run_sparse::<f16>(
        [2, 2, 2, 8, 60, 128, 4],
        Dtype::F16,
        false,
        0.0,
        wide,
        true,
        0xa15,
    )
    .unwrap();
}

/// Repeated or out-of-range entries are refused with the CPU op's message,
/// naming the lowest bad row in the CPU's numbering.
#[test]
fn bad_index_lists_are_refused_like_the_cpu_op() {
    let (b, hq, hkv, sq, skv, d, topk) = (2usize, 2usize, 2usize, 5usize, 30usize, 64usize, 4usize);
    let spec = AttentionSpec::bhsd(b, hq, hkv, sq, skv, d, d);
    let mut rng = Rng(0xbad);
    let len = |t| spec.required_len(t).unwrap();
    let (q, k, v) = (
        fill::<f16>(&mut rng, len(Tensor::Q)),
        fill::<f16>(&mut rng, len(Tensor::K)),
        fill::<f16>(&mut rng, len(Tensor::V)),
    );
    let mut y = vec![f16::from_f32(f32::NAN); len(Tensor::Y)];
    let mut scratch = vec![0u64; 64];
    // SAFETY: every address is a live Vec sized by the spec and the lists.
    let dev = unsafe { emu::Emulator::new() };
    let mut run = |lists: &[i64], shared: bool| {
        let call = TopKCall {
            spec,
            dtype: Dtype::F16,
            lists: KeyLists {
                ptr: addr(lists),
                top_k: topk,
                batch: if shared { sq * topk } else { hkv * sq * topk },
                head: if shared { 0 } else { sq * topk },
                seq: topk,
            },
            rules: SparseRules::default(),
        };
        let io = TopKIo {
            attention: AttentionBuffers {
                q: addr(&q),
                k: addr(&k),
                v: addr(&v),
                y: out(&mut y),
                lse: None,
            },
            selected: None,
        };
        dsa::topk_attention(&dev, &call, &io, out(&mut scratch)).map(|_| ())
    };
    let good: Vec<i64> = (0..b * hkv * sq * topk)
        .map(|i| (i % topk) as i64 * 3 - 1)
        .collect();
    run(&good, false).unwrap();
    let mut dup = good.clone();
    // Row (b 1, hk 0, t 2) = 12 repeats key 5; row 17 holds 30.
    dup[12 * topk + 3] = 5;
    dup[12 * topk + 2] = 5;
    dup[17 * topk] = 30;
    let e = run(&dup, false).unwrap_err().to_string();
    assert_eq!(e, "indices: row 12 names key 5 more than once");
    // Shared lists (B, Sq, k): list row 7 = (b 1, t 2), CPU row (1·2 + 0)·5 + 2 = 12.
    let mut shared: Vec<i64> = good[..b * sq * topk].to_vec();
    shared[7 * topk + 1] = -2;
    let e = run(&shared, true).unwrap_err().to_string();
    assert_eq!(
        e,
        "indices: row 12 holds -2, outside [0, 30) (only -1 may pad)"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, ..Default::default() })]
    /// lists with -1 padding, bottom-right causal offsets, windows, sinks,
    /// and `selected_indices`.
    #[test]
    fn topk_attention_matches_the_reference_on_random_problems(
        b in 1usize..3, hkv in 1usize..3, group in 1usize..3, sq in 1usize..24, skv in 1usize..120,
        d128 in proptest::bool::ANY, bf in proptest::bool::ANY, shared in proptest::bool::ANY,
        topk in 1usize..40, causal in proptest::bool::ANY,
        window in proptest::option::of(0usize..30), globals in 0usize..6,
        selected in proptest::bool::ANY, seed in proptest::num::u64::ANY,
    ) {
        let rules = SparseRules {
            causal,
            q_offset: skv as isize - sq as isize,
            left_window: window,
            global_tokens: globals,
        };
        let dims = [b, hkv * group, hkv, sq, skv, if d128 { 128 } else { 64 }, topk];
        let r = if bf {
            run_sparse::<bf16>(dims, Dtype::Bf16, shared, 0.0, rules, selected, seed)
        } else {
            run_sparse::<f16>(dims, Dtype::F16, shared, 0.0, rules, selected, seed)
        };
        proptest::prop_assert!(r.is_ok(), "{:?}", r);
    }
}
