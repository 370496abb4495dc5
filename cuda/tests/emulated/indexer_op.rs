//! `LightningIndexer` as the CUDA-EP op runs it (`dsa::lightning_indexer`:
//! widening, quantiser, indexer and top-k launches) against the CPU op.

use tessera_core::fp8::{quantize, SCALE_GROUP};
use tessera_core::{bf16, f16, Element, Fp8, IndexerSpec, E4M3, E5M2};
use tessera_cuda::dsa::{self, IndexerCall, IndexerIo};
use tessera_cuda::plan::{DevicePtr, Dtype, Fp8Format};
use tessera_cuda::{emu, CudaError};

use crate::support::{addr, fill, out, Rng};

/// A random `LightningIndexer` call through `dsa::lightning_indexer` (the
/// CUDA-EP op's own sequence of launches) on the emulator, against the CPU
/// op's math: q and k quantised by the core quantiser, f64 scores, and
/// exact ties where keys repeat.
#[allow(clippy::too_many_arguments)]
fn run_indexer_op<S: Element, F: Fp8>(
    source: Dtype,
    format: Fp8Format,
    (b, sq, skv, heads, dim): (usize, usize, usize, usize, usize),
    top_k: usize,
    causal: bool,
    budget: usize,
    seed: u64,
) -> Result<(), String> {
    let spec = IndexerSpec {
        batch: b,
        q_len: sq,
        kv_len: skv,
        heads,
        dim,
    };
    let ops = Operands::<S>::random(&spec, &mut Rng(seed));
    let call = IndexerCall {
        spec,
        top_k,
        causal,
        format,
        sources: [source; 3],
        scores_budget: budget,
    };
    let indices = ops.run(&call)?;
    let cpu = CpuScores::<F>::new(&spec, &ops);
    let offset = skv as isize - sq as isize;
    for bi in 0..b {
        for t in 0..sq {
            let row_out = &indices[(bi * sq + t) * top_k..][..top_k];
            let cap = if causal {
                t as isize + offset
            } else {
                skv as isize - 1
            };
            let visible = (cap + 1).clamp(0, skv as isize) as usize;
            let ctx = || format!("b {bi} t {t}: {row_out:?}");
            let chosen = check_list(row_out, visible).map_err(|e| format!("{e}: {}", ctx()))?;
            let scores: Vec<f64> = (0..visible).map(|s| cpu.score(bi, t, s)).collect();
            check_ranking(chosen, &scores).map_err(|e| format!("{e}: {}", ctx()))?;
            let key = |s: usize| &ops.k[(bi * skv + s) * dim..][..dim];
            check_ties(chosen, visible, key).map_err(|e| format!("{e}: {}", ctx()))?;
        }
    }
    Ok(())
}

/// The op's inputs in the source type `S`.
struct Operands<S> {
    q: Vec<S>,
    k: Vec<S>,
    w: Vec<S>,
}

impl<S: Element> Operands<S> {
    /// q with outliers, k rows at two spreads (some repeating an earlier
    /// row, so that they score exactly alike), w normal.
    fn random(spec: &IndexerSpec, rng: &mut Rng) -> Self {
        let (b, sq, skv, heads, dim) = (spec.batch, spec.q_len, spec.kv_len, spec.heads, spec.dim);
        let spread = |rng: &mut Rng| if rng.uniform() < 0.5 { 0.01 } else { 20.0 };
        let q: Vec<S> = (0..b * sq * heads * dim)
            .map(|i| S::from_f32(rng.normal() * if i % 7 == 0 { 5.0 } else { 1.0 }))
            .collect();
        let row_spread: Vec<f32> = (0..b * skv).map(|_| spread(rng)).collect();
        let mut k: Vec<S> = (0..b * skv * dim)
            .map(|i| S::from_f32(rng.normal() * row_spread[i / dim]))
            .collect();
        // Repeated key rows score exactly alike: ties, broken to the lower key.
        for r in 0..b * skv {
            if r % skv >= 3 && rng.uniform() < 0.25 {
                let src = r - 1 - rng.below(2);
                let row: Vec<S> = k[src * dim..][..dim].to_vec();
                k[r * dim..][..dim].copy_from_slice(&row);
            }
        }
        let w: Vec<S> = (0..b * sq * heads)
            .map(|_| S::from_f32(rng.normal()))
            .collect();
        Self { q, k, w }
    }

    /// The op's launches on the emulator: the `(B, Sq, top_k)` indices.
    fn run(&self, call: &IndexerCall) -> Result<Vec<i64>, String> {
        let s = &call.spec;
        let mut indices = vec![-7i64; s.batch * s.q_len * call.top_k];
        let mut scratch = vec![0u64; call.scratch_bytes().map_err(|e| e.to_string())?.div_ceil(8)];
        let io = IndexerIo {
            q: addr(&self.q),
            k: addr(&self.k),
            w: addr(&self.w),
            indices: out(&mut indices),
        };
        // SAFETY: every address is a live Vec of the call's size.
        let dev = unsafe { emu::Emulator::new() };
        dsa::lightning_indexer(&dev, call, &io, out(&mut scratch)).map_err(|e| e.to_string())?;
        Ok(indices)
    }
}

/// The CPU op's operands: q and k widened to f32 and quantised by the core
/// quantiser (codes and per-row scales), w widened.
struct CpuScores<F> {
    spec: IndexerSpec,
    qc: Vec<F>,
    qsc: Vec<f32>,
    kc: Vec<F>,
    ksc: Vec<f32>,
    w: Vec<f32>,
}

impl<F: Fp8> CpuScores<F> {
    fn new<S: Element>(spec: &IndexerSpec, ops: &Operands<S>) -> Self {
        let dim = spec.dim;
        let wide = |x: &[S]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
        let quant = |x: &[f32]| {
            let mut c = vec![F::default(); x.len()];
            let mut s = vec![0.0f32; x.len() / dim];
            if !x.is_empty() {
                quantize(x, dim, SCALE_GROUP, &mut c, &mut s).unwrap();
            }
            (c, s)
        };
        let (qc, qsc) = quant(&wide(&ops.q));
        let (kc, ksc) = quant(&wide(&ops.k));
        Self {
            spec: *spec,
            qc,
            qsc,
            kc,
            ksc,
            w: wide(&ops.w),
        }
    }

    /// `I[t, s] = Σ_j w[t, j]·ReLU(q[t, j]·k[s])` in f64 for batch `bi`.
    fn score(&self, bi: usize, t: usize, s: usize) -> f64 {
        let IndexerSpec {
            q_len: sq,
            kv_len: skv,
            heads,
            dim,
            ..
        } = self.spec;
        (0..heads)
            .map(|j| {
                let r = (bi * sq + t) * heads + j;
                let dot: f64 = (0..dim)
                    .map(|d| {
                        self.qc[r * dim + d].to_f32() as f64
                            * self.qsc[r] as f64
                            * self.kc[(bi * skv + s) * dim + d].to_f32() as f64
                            * self.ksc[bi * skv + s] as f64
                    })
                    .sum();
                self.w[r] as f64 * dot.max(0.0)
            })
            .sum()
    }
}

/// A row holds `min(top_k, visible)` ascending visible keys, then `-1`s;
/// returns the chosen keys.
fn check_list(row_out: &[i64], visible: usize) -> Result<&[i64], String> {
    let n = row_out.len().min(visible);
    let chosen = &row_out[..n];
    if row_out[n..].iter().any(|&x| x != -1) {
        return Err("padding".into());
    }
    if chosen.windows(2).any(|p| p[0] >= p[1])
        || chosen.iter().any(|&j| j < 0 || j as usize >= visible)
    {
        return Err("not ascending visible keys".into());
    }
    Ok(chosen)
}

/// No left-out key scores above a chosen one (within f32 rounding).
fn check_ranking(chosen: &[i64], scores: &[f64]) -> Result<(), String> {
    let tol = 1e-5 * scores.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    let picked = |j: usize| chosen.binary_search(&(j as i64)).is_ok();
    let worst_in = chosen
        .iter()
        .map(|&j| scores[j as usize])
        .fold(f64::INFINITY, f64::min);
    let best_out = (0..scores.len())
        .filter(|&j| !picked(j))
        .map(|j| scores[j])
        .fold(f64::NEG_INFINITY, f64::max);
    if best_out > worst_in + tol {
        return Err(format!("key scoring {best_out} left out for {worst_in}"));
    }
    Ok(())
}

/// Ties: a left-out key whose row repeats a chosen key's must come after it.
fn check_ties<'k, S: Element + 'k>(
    chosen: &[i64],
    visible: usize,
    key: impl Fn(usize) -> &'k [S],
) -> Result<(), String> {
    let picked = |j: usize| chosen.binary_search(&(j as i64)).is_ok();
    for u in (0..visible).filter(|&u| !picked(u)) {
        for &c in chosen {
            if key(u)
                .iter()
                .zip(key(c as usize))
                .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits())
                && u < c as usize
            {
                return Err(format!("tie broken to the higher key {c} over {u}"));
            }
        }
    }
    Ok(())
}

/// Mixed input types (as the CPU op takes them: each input float, float16 or
/// bfloat16) give exactly what their f32 widening gives: the quantiser sees
/// the same values.
#[test]
fn the_indexer_op_takes_each_input_in_its_own_type() {
    let (b, sq, skv, heads, dim, top_k) = (2usize, 9usize, 77usize, 5usize, 128usize, 72usize);
    let mut rng = Rng(0x31);
    let q: Vec<f16> = fill(&mut rng, b * sq * heads * dim);
    let k: Vec<bf16> = fill(&mut rng, b * skv * dim);
    let w: Vec<f32> = (0..b * sq * heads).map(|_| rng.normal()).collect();
    let (qf, kf): (Vec<f32>, Vec<f32>) = (
        q.iter().map(|x| x.to_f32()).collect(),
        k.iter().map(|x| x.to_f32()).collect(),
    );
    // SAFETY: every address below is a live Vec of the call's size.
    let dev = unsafe { emu::Emulator::new() };
    let run = |sources: [Dtype; 3], q: DevicePtr, k: DevicePtr| {
        let call = IndexerCall {
            spec: IndexerSpec {
                batch: b,
                q_len: sq,
                kv_len: skv,
                heads,
                dim,
            },
            top_k,
            causal: true,
            format: Fp8Format::E5M2,
            sources,
            scores_budget: dsa::SCORES_BUDGET,
        };
        let mut scratch = vec![0u64; call.scratch_bytes().unwrap().div_ceil(8)];
        let mut indices = vec![-7i64; b * sq * top_k];
        let io = IndexerIo {
            q,
            k,
            w: addr(&w),
            indices: out(&mut indices),
        };
        dsa::lightning_indexer(&dev, &call, &io, out(&mut scratch)).unwrap();
        indices
    };
    let mixed = run([Dtype::F16, Dtype::Bf16, Dtype::F32], addr(&q), addr(&k));
    let wide = run([Dtype::F32; 3], addr(&qf), addr(&kf));
    assert_eq!(mixed, wide);
    assert!(mixed.iter().all(|&j| j >= -1 && j < skv as i64) && mixed.contains(&-1));
}

/// Non-finite inputs are refused by name and element, as on the CPU.
#[test]
fn the_indexer_op_refuses_non_finite_inputs_by_name() {
    let (sq, skv, heads, dim) = (4usize, 9usize, 2usize, 64usize);
    let mut rng = Rng(9);
    let q: Vec<f32> = (0..sq * heads * dim).map(|_| rng.normal()).collect();
    let mut k: Vec<f32> = (0..skv * dim).map(|_| rng.normal()).collect();
    let mut w: Vec<f32> = (0..sq * heads).map(|_| rng.normal()).collect();
    let mut indices = vec![0i64; sq * 3];
    let call = IndexerCall {
        spec: IndexerSpec {
            batch: 1,
            q_len: sq,
            kv_len: skv,
            heads,
            dim,
        },
        top_k: 3,
        causal: false,
        format: Fp8Format::E4M3,
        sources: [Dtype::F32; 3],
        scores_budget: dsa::SCORES_BUDGET,
    };
    let mut scratch = vec![0u64; call.scratch_bytes().unwrap().div_ceil(8)];
    // SAFETY: every address below is a live Vec of the call's size.
    let dev = unsafe { emu::Emulator::new() };
    let mut run = |k: &[f32], w: &[f32]| {
        let io = IndexerIo {
            q: addr(&q),
            k: addr(k),
            w: addr(w),
            indices: out(&mut indices),
        };
        dsa::lightning_indexer(&dev, &call, &io, out(&mut scratch))
    };
    k[77] = f32::NAN;
    let e = run(&k, &w).unwrap_err();
    assert_eq!(
        e.to_string(),
        "index_k: element 77 is not finite (NaN or infinity), must be finite"
    );
    k[77] = 0.5;
    w[5] = f32::NEG_INFINITY;
    let e = run(&k, &w).unwrap_err();
    assert!(
        matches!(
            e,
            CudaError::Invalid {
                input: "index_w",
                ..
            }
        ),
        "{e}"
    );
    w[5] = 1.0;
    run(&k, &w).unwrap();
    let mut bad_dim = call;
    bad_dim.spec.dim = 32;
    let io = IndexerIo {
        q: addr(&q),
        k: addr(&k),
        w: addr(&w),
        indices: out(&mut indices),
    };
    let e = dsa::lightning_indexer(&dev, &bad_dim, &io, out(&mut scratch)).unwrap_err();
    assert!(e.to_string().contains("index_dim 32"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, ..Default::default() })]

    /// Random `LightningIndexer` calls (the CUDA-EP op's launches): shapes,
    /// both formats, f32/f16/bf16 inputs, causal or not, top_k above and
    /// below the visible keys, and score chunks small enough to split the
    /// queries.
    #[test]
    fn the_indexer_op_selects_the_cpu_op_keys_on_random_problems(
        b in 1usize..3, sq in 1usize..20, skv in 0usize..150, heads in 1usize..40,
        d128 in proptest::bool::ANY, e5m2 in proptest::bool::ANY, src in 0usize..3,
        top_k in 1usize..40, causal in proptest::bool::ANY, small_chunks in proptest::bool::ANY,
        seed in proptest::num::u64::ANY,
    ) {
        let dims = (b, sq, skv, heads, if d128 { 128 } else { 64 });
        let budget = if small_chunks { 4 * skv.max(1) * 3 } else { dsa::SCORES_BUDGET };
        let r = match (src, e5m2) {
            (0, false) => run_indexer_op::<f32, E4M3>(Dtype::F32, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (0, true) => run_indexer_op::<f32, E5M2>(Dtype::F32, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
            (1, false) => run_indexer_op::<f16, E4M3>(Dtype::F16, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (1, true) => run_indexer_op::<f16, E5M2>(Dtype::F16, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
            (_, false) => run_indexer_op::<bf16, E4M3>(Dtype::Bf16, Fp8Format::E4M3, dims, top_k, causal, budget, seed),
            (_, true) => run_indexer_op::<bf16, E5M2>(Dtype::Bf16, Fp8Format::E5M2, dims, top_k, causal, budget, seed),
        };
        proptest::prop_assert!(r.is_ok(), "{:?}", r);
    }
}
