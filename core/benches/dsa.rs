//! DSA-style sparse attention benchmark (single thread, one run, side by
//! side with Tessera's dense flash kernel):
//! 1. **Indexer recall**: recall@2048 of the FP8 lightning indexer against
//!    the same indexer on f32 operands, random and structured inputs.
//! 2. **Block selector quality** at S = 8K: recall of the true top-k keys
//!    (exact q·k) inside the selected tiles, and the output error against
//!    dense attention, as k varies.
//! 3. **Time split** (score / select / attention) at S = 8K, 32K, 128K with
//!    k = 2048, for indexer mode (Di ∈ {64, 128}, Hi ∈ {4, 16}) and the
//!    training-free mode (H = 12, D = 64), next to dense exact attention.
//!
//! Every phase's cost is linear in the number of query tiles, so each time
//! is measured on `SAMPLE_TILES` query tiles spread evenly over the
//! sequence (their mean cost is the mean over all tiles of a causal
//! problem) and scaled to all tiles; heads are independent, so one head is
//! timed and scaled by the head count. The table says so.
//!
//! A few criterion micro-benchmarks run first (short sample); the tables are
//! printed as Markdown and written to `target/bench-dsa.md`.
//!
//! `cargo bench -p tessera-core --bench dsa` (`TESSERA_BENCH_QUICK=1` skips
//! 128K; a name filter such as `-- topk` runs only the criterion part).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tessera_core::blocksel::{summarize, summary_len, BlockSelector, BlockSummaries, Keep};
use tessera_core::fp8::{quantize, Fp8, Scales, E4M3, E5M2};
use tessera_core::kernel::{self, MicroKernel};
use tessera_core::sparse::{GatherAttention, IndexList, SparseAttention};
use tessera_core::{
    top_k, Attention, AttentionSpec, Element, Flash, Indexer, IndexerSpec, LightningIndexer,
    MaskSpec, Stats,
};

const TOP_K: usize = 2048;
const SAMPLE_TILES: usize = 24;
/// Query and key tile of the dense kernel (the core bench's choice).
type Dense<K> = Flash<K, 64, 64>;
/// Query tile 32, key block 64 for the selector.
type Selector<K> = BlockSelector<K, 32, 64>;
type Lx<K> = LightningIndexer<K, 16, 64>;
type Gather<K> = GatherAttention<K, 64>;

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
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * amp).collect()
    }
}

fn sampled_tiles(n_tiles: usize) -> Vec<usize> {
    // Fewer samples for very long rows (each one already costs S work).
    let n = if n_tiles >= 4096 {
        SAMPLE_TILES / 2
    } else {
        SAMPLE_TILES
    }
    .min(n_tiles);
    (0..n).map(|i| (2 * i + 1) * n_tiles / (2 * n)).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------- indexer

/// Indexer inputs: `(q, k, w)` as f32, random or structured (a few strong
/// keys per topic among noise).
fn indexer_inputs(
    s: usize,
    hi: usize,
    di: usize,
    structured: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    if !structured {
        return (
            rng.vec(s * hi * di, 1.0),
            rng.vec(s * di, 1.0),
            (0..s * hi).map(|_| rng.f32().abs() + 0.05).collect(),
        );
    }
    const TOPICS: usize = 32;
    let topics = rng.vec(TOPICS * di, 1.0);
    let mut k = rng.vec(s * di, 0.3);
    for key in 0..s {
        if rng.below(100) < 3 {
            let t = rng.below(TOPICS);
            for d in 0..di {
                k[key * di + d] += 3.0 * topics[t * di + d];
            }
        }
    }
    let mut q = rng.vec(s * hi * di, 0.3);
    for t in 0..s {
        let topic = rng.below(TOPICS);
        for j in 0..hi {
            for d in 0..di {
                q[(t * hi + j) * di + d] += topics[topic * di + d];
            }
        }
    }
    (q, k, (0..s * hi).map(|_| rng.f32().abs() + 0.05).collect())
}

fn quantized<F: Fp8>(x: &[f32], di: usize) -> (Vec<F>, Vec<f32>) {
    let mut q = vec![F::default(); x.len()];
    let mut s = vec![0.0f32; x.len() / di];
    quantize(x, di, di, &mut q, &mut s).unwrap();
    (q, s)
}

/// The top-k rows of the sampled query tiles.
fn indexer_topk<K: MicroKernel, T: Element>(
    k: K,
    ix: &Indexer<'_, T>,
    tiles: &[usize],
) -> Vec<Vec<i64>> {
    let s = ix.spec();
    let lx = Lx::<K>::new(k);
    let mut scratch = vec![0.0; Lx::<K>::scratch_len(s.heads, s.dim)];
    let mut scores = vec![0.0; Lx::<K>::scores_len(s.kv_len)];
    let mut out = Vec::new();
    for &t in tiles {
        let rows = lx.scores_tile(ix, 0, t, &mut scores, &mut scratch).unwrap();
        for r in 0..rows {
            let mut idx = vec![0i64; TOP_K];
            top_k(&scores[r * s.kv_len..][..s.kv_len], &mut idx);
            out.push(idx);
        }
    }
    out
}

fn recall(want: &[Vec<i64>], got: &[Vec<i64>]) -> f64 {
    let (mut hit, mut total) = (0usize, 0usize);
    for (w, g) in want.iter().zip(got) {
        let w: Vec<i64> = w.iter().copied().filter(|&x| x >= 0).collect();
        total += w.len();
        hit += g
            .iter()
            .filter(|x| **x >= 0 && w.binary_search(x).is_ok())
            .count();
    }
    hit as f64 / total.max(1) as f64
}

fn indexer_recall<K: MicroKernel>(kern: K, md: &mut String) {
    let s = 8192;
    writeln!(md, "\n### Indexer recall@{TOP_K}, FP8 vs f32 operands (S = {s}, causal, rows from the second half)\n").unwrap();
    writeln!(md, "| inputs | Hi | Di | E4M3 recall | E5M2 recall |").unwrap();
    writeln!(md, "| --- | ---: | ---: | ---: | ---: |").unwrap();
    let n_tiles = Lx::<K>::q_tiles(s);
    let tiles: Vec<usize> = sampled_tiles(n_tiles / 2)
        .into_iter()
        .map(|t| t + n_tiles / 2)
        .take(8)
        .collect();
    let mask = MaskSpec::NONE.causal(0);
    for structured in [false, true] {
        for (hi, di) in [(4, 64), (16, 64), (4, 128), (16, 128)] {
            let spec = IndexerSpec {
                batch: 1,
                q_len: s,
                kv_len: s,
                heads: hi,
                dim: di,
            };
            let (q, k, w) = indexer_inputs(s, hi, di, structured, 11 + hi as u64 * di as u64);
            let ixf = Indexer::new(spec, &mask, &q, None, &k, None, &w).unwrap();
            let want = indexer_topk(kern, &ixf, &tiles);
            let (q4, qs4) = quantized::<E4M3>(&q, di);
            let (k4, ks4) = quantized::<E4M3>(&k, di);
            let sc = |v| {
                Some(Scales {
                    values: v,
                    group: di,
                })
            };
            let ix4 = Indexer::new(spec, &mask, &q4, sc(&qs4), &k4, sc(&ks4), &w).unwrap();
            let r4 = recall(&want, &indexer_topk(kern, &ix4, &tiles));
            let (q5, qs5) = quantized::<E5M2>(&q, di);
            let (k5, ks5) = quantized::<E5M2>(&k, di);
            let ix5 = Indexer::new(spec, &mask, &q5, sc(&qs5), &k5, sc(&ks5), &w).unwrap();
            let r5 = recall(&want, &indexer_topk(kern, &ix5, &tiles));
            let name = if structured { "structured" } else { "random" };
            writeln!(md, "| {name} | {hi} | {di} | {r4:.4} | {r5:.4} |").unwrap();
        }
    }
}

// ---------------------------------------------------------- block selector

/// Attention inputs for one head: random, or structured (keys drift slowly
/// along the sequence so nearby keys are alike; queries aim at a few
/// earlier positions shared by runs of 32 queries).
fn attention_inputs(
    s: usize,
    d: usize,
    structured: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    let v = rng.vec(s * d, 1.0);
    if !structured {
        return (rng.vec(s * d, 1.0), rng.vec(s * d, 1.0), v);
    }
    let mut k = vec![0.0f32; s * d];
    let mut walk = rng.vec(d, 1.0);
    for key in 0..s {
        for dd in 0..d {
            walk[dd] = 0.995 * walk[dd] + 0.1 * rng.f32();
            k[key * d + dd] = 2.0 * walk[dd] + 0.3 * rng.f32();
        }
    }
    // Each run of 32 queries aims at 4 shared earlier positions (nearby
    // queries attend alike), each query at one of them.
    let mut q = vec![0.0f32; s * d];
    let mut targets = [0usize; 4];
    for t in 0..s {
        if t % 32 == 0 {
            targets.iter_mut().for_each(|x| *x = rng.below(t + 1));
        }
        let target = targets[rng.below(4)];
        for dd in 0..d {
            q[t * d + dd] = 0.5 * k[target * d + dd] + 0.3 * rng.f32();
        }
    }
    (q, k, v)
}

fn selector_quality<K: MicroKernel>(kern: K, md: &mut String) {
    let (s, d) = (8192, 64);
    writeln!(md, "\n### Block selector quality (S = {s}, D = {d}, causal, blocks of 64 keys, query tiles of 32, f16 summaries, kept: 4 sink tokens + 64-key local window)\n").unwrap();
    writeln!(md, "Recall: share of each query's true top-k keys (exact q·k over its visible keys) inside the selected tiles. Error: over the sampled tiles, relative L2 and max abs of Y against dense exact attention.\n").unwrap();
    writeln!(
        md,
        "| inputs | k | recall | rel. L2 error | max abs error |"
    )
    .unwrap();
    writeln!(md, "| --- | ---: | ---: | ---: | ---: |").unwrap();
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, d, d);
    let mask = MaskSpec::NONE.causal(0);
    let keep = Keep {
        local_window: Some(64),
        global_tokens: 4,
    };
    let n_tiles = s.div_ceil(32);
    // Tiles from the second half, where k < visible keys for every k here.
    let tiles: Vec<usize> = sampled_tiles(n_tiles / 2)
        .into_iter()
        .map(|t| t + n_tiles / 2)
        .collect();
    for structured in [false, true] {
        let (q, k, v) = attention_inputs(s, d, structured, 5);
        let att = Attention::new(&spec, &mask, &q, &k, &v).unwrap();
        let mut sums = vec![tessera_core::f16::ZERO; summary_len(&spec, 64).unwrap()];
        summarize(&spec, &k, 64, &mut sums).unwrap();
        let view = BlockSummaries::new(&spec, 64, &sums).unwrap();
        let sel = Selector::<K>::new(kern);
        let flash = Flash::<K, 32, 64>::new(kern);
        let mut scratch = vec![0.0; Selector::<K>::scratch_len(1, d)];
        let mut fs = vec![0.0; Flash::<K, 32, 64>::scratch_len(d, d)];
        let mut fs2 = vec![0.0; Flash::<K, 32, 64>::scratch_len(d, d)];
        let mut scores = vec![0.0; Selector::<K>::blocks(s)];
        let mut chosen = vec![0usize; Selector::<K>::blocks(s)];
        for kk in [256, 512, 1024, 2048, 4096] {
            let (mut hit, mut total, mut err2, mut ref2, mut max_abs) =
                (0usize, 0usize, 0.0f64, 0.0f64, 0.0f64);
            let mut stats = Stats::default();
            for &t in &tiles {
                let budget = sel
                    .score_tile(
                        &att,
                        &q,
                        &view,
                        0,
                        0,
                        t,
                        kk,
                        keep,
                        &mut scores,
                        &mut scratch,
                    )
                    .unwrap();
                let n = Selector::<K>::select_tiles(&scores, budget, &mut chosen).unwrap();
                let sparse = flash
                    .tile_selected(&att, 0, 0, t, &chosen[..n], &mut fs, &mut stats)
                    .unwrap();
                let dense = flash
                    .tile(&att, 0, 0, t, 0..s, &mut fs2, &mut stats)
                    .unwrap();
                for r in 0..sparse.rows {
                    for (a, b) in sparse.row(r).iter().zip(dense.row(r)) {
                        err2 += ((a - b) as f64).powi(2);
                        ref2 += (*b as f64).powi(2);
                        max_abs = max_abs.max((a - b).abs() as f64);
                    }
                    // True top-k by exact score over the visible keys.
                    let i = t * 32 + r;
                    let mut exact: Vec<(f32, usize)> = (0..=i)
                        .map(|j| {
                            (
                                q[i * d..][..d]
                                    .iter()
                                    .zip(&k[j * d..][..d])
                                    .map(|(a, b)| a * b)
                                    .sum::<f32>(),
                                j,
                            )
                        })
                        .collect();
                    exact.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    for &(_, j) in exact.iter().take(kk) {
                        total += 1;
                        hit += usize::from(chosen[..n].contains(&(j / 64)));
                    }
                }
            }
            let name = if structured { "structured" } else { "random" };
            writeln!(
                md,
                "| {name} | {kk} | {:.4} | {:.2e} | {:.2e} |",
                hit as f64 / total as f64,
                (err2 / ref2).sqrt(),
                max_abs
            )
            .unwrap();
        }
    }
}

// ------------------------------------------------------------- time split

struct Split {
    score: f64,
    select: f64,
    attention: f64,
}

/// Training-free mode on one head: per sampled query tile of 32, time the
/// bound scoring, the selection, the selected-tile attention and, right
/// after, the dense 64×64 flash tile holding the same rows (interleaved, so
/// load changes on a shared machine hit both alike); scale to all tiles.
fn time_training_free<K: MicroKernel>(kern: K, s: usize, d: usize) -> (Split, f64) {
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, d, d);
    let mask = MaskSpec::NONE.causal(0);
    let (q, k, v) = attention_inputs(s, d, false, 9);
    let att = Attention::new(&spec, &mask, &q, &k, &v).unwrap();
    let keep = Keep {
        local_window: Some(64),
        global_tokens: 4,
    };
    let t0 = Instant::now();
    let mut sums = vec![0.0f32; summary_len(&spec, 64).unwrap()];
    summarize(&spec, &k, 64, &mut sums).unwrap();
    let summary_time = secs(t0.elapsed());
    let view = BlockSummaries::new(&spec, 64, &sums).unwrap();
    let sel = Selector::<K>::new(kern);
    let dense = Dense::<K>::new(kern);
    let n_tiles = s.div_ceil(32);
    let tiles = sampled_tiles(n_tiles);
    let mut scratch = vec![0.0; Selector::<K>::scratch_len(1, d)];
    let mut fs = vec![0.0; Flash::<K, 32, 64>::scratch_len(d, d)];
    let mut ds = vec![0.0; Dense::<K>::scratch_len(d, d)];
    let nb = Selector::<K>::blocks(s);
    let mut scores = vec![0.0f32; nb];
    let mut chosen = vec![0usize; nb];
    let mut stats = Stats::default();
    let (mut score, mut select, mut attention, mut dense_t) = (0.0, 0.0, 0.0, 0.0);
    for &t in &tiles {
        let t0 = Instant::now();
        let budget = sel
            .score_tile(
                &att,
                &q,
                &view,
                0,
                0,
                t,
                TOP_K,
                keep,
                &mut scores,
                &mut scratch,
            )
            .unwrap();
        let t1 = Instant::now();
        let n = Selector::<K>::select_tiles(&scores, budget, &mut chosen).unwrap();
        let t2 = Instant::now();
        let out = sel
            .flash()
            .tile_selected(&att, 0, 0, t, &chosen[..n], &mut fs, &mut stats)
            .unwrap();
        black_box(out.row(0)[0]);
        let t3 = Instant::now();
        // The dense 64-row tile holds this tile's rows and one neighbour's.
        let out = dense
            .tile(&att, 0, 0, t / 2, 0..s, &mut ds, &mut stats)
            .unwrap();
        black_box(out.row(0)[0]);
        let t4 = Instant::now();
        score += secs(t1 - t0);
        select += secs(t2 - t1);
        attention += secs(t3 - t2);
        dense_t += secs(t4 - t3) / 2.0;
    }
    let f = n_tiles as f64 / tiles.len() as f64;
    (
        Split {
            score: score * f + summary_time,
            select: select * f,
            attention: attention * f,
        },
        dense_t * f,
    )
}

/// Indexer mode: FP8 E4M3 indexer (scores), top-k (select), gather
/// attention with Hq = 12 heads sharing one KV head (attention), and the
/// dense 64×64 flash tile of the same rows for one head, interleaved per
/// sampled query tile of 16 and scaled (dense times the head count). Also
/// returns the indexer's GFLOP/s on E4M3 and on f32 operands.
fn time_indexer<K: MicroKernel>(
    kern: K,
    s: usize,
    hi: usize,
    di: usize,
    heads: usize,
    d: usize,
) -> (Split, f64, f64, f64) {
    let ispec = IndexerSpec {
        batch: 1,
        q_len: s,
        kv_len: s,
        heads: hi,
        dim: di,
    };
    let mask = MaskSpec::NONE.causal(0);
    let (qf, kf, w) = indexer_inputs(s, hi, di, true, 3);
    let (q4, qs) = quantized::<E4M3>(&qf, di);
    let (k4, ks) = quantized::<E4M3>(&kf, di);
    let ix = Indexer::new(
        ispec,
        &mask,
        &q4,
        Some(Scales {
            values: &qs,
            group: di,
        }),
        &k4,
        Some(Scales {
            values: &ks,
            group: di,
        }),
        &w,
    )
    .unwrap();
    let ixf = Indexer::new(ispec, &mask, &qf, None, &kf, None, &w).unwrap();
    let lx = Lx::<K>::new(kern);
    let n_tiles = Lx::<K>::q_tiles(s);
    let tiles = sampled_tiles(n_tiles);
    let mut scratch = vec![0.0; Lx::<K>::scratch_len(hi, di)];
    let per = Lx::<K>::scores_len(s);
    let mut scores = vec![0.0; per];
    let mut idx = vec![-1i64; s * TOP_K];
    let spec = AttentionSpec::bhsd(1, heads, 1, s, s, d, d);
    let mut rng = Rng(77);
    let (q, k, v) = (
        rng.vec(heads * s * d, 1.0),
        rng.vec(s * d, 1.0),
        rng.vec(s * d, 1.0),
    );
    let att = Attention::new(&spec, &mask, &q, &k, &v).unwrap();
    let g = Gather::<K>::new(kern);
    let mut gs = vec![0.0; Gather::<K>::scratch_len(heads, d, d)];
    let mut seen = vec![0u64; Gather::<K>::seen_len(s)];
    let dense = Dense::<K>::new(kern);
    let mut ds = vec![0.0; Dense::<K>::scratch_len(d, d)];
    let mut stats = Stats::default();
    let (mut score, mut score_f32, mut select, mut attention, mut dense_t) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    for &t in &tiles {
        let rows = 16.min(s - t * 16);
        let t0 = Instant::now();
        lx.scores_tile(&ixf, 0, t, &mut scores, &mut scratch)
            .unwrap();
        let t1 = Instant::now();
        lx.scores_tile(&ix, 0, t, &mut scores, &mut scratch)
            .unwrap();
        let t2 = Instant::now();
        for r in 0..rows {
            tessera_core::top_k_in_place(
                &mut scores[r * s..][..s],
                &mut idx[(t * 16 + r) * TOP_K..][..TOP_K],
            );
        }
        let t3 = Instant::now();
        let p = SparseAttention::new(&spec, &mask, &q, &k, &v, IndexList::shared(&idx, s, TOP_K))
            .unwrap();
        for i in t * 16..t * 16 + rows {
            let out = g.query(&p, 0, 0, i, &mut gs, &mut seen).unwrap();
            black_box(out.row(0)[0]);
        }
        let t4 = Instant::now();
        let out = dense
            .tile(&att, 0, 0, t / 4, 0..s, &mut ds, &mut stats)
            .unwrap();
        black_box(out.row(0)[0]);
        let t5 = Instant::now();
        score_f32 += secs(t1 - t0);
        score += secs(t2 - t1);
        select += secs(t3 - t2);
        attention += secs(t4 - t3);
        dense_t += secs(t5 - t4) / 4.0 * heads as f64;
    }
    // Useful flops of the sampled tiles: 2·Hi·Di per visible (causal) pair.
    let pairs: f64 = tiles
        .iter()
        .map(|&t| {
            (t * 16..((t + 1) * 16).min(s))
                .map(|i| (i + 1) as f64)
                .sum::<f64>()
        })
        .sum();
    let flops = pairs * 2.0 * (hi * di) as f64;
    let f = n_tiles as f64 / tiles.len() as f64;
    (
        Split {
            score: score * f,
            select: select * f,
            attention: attention * f,
        },
        dense_t * f,
        flops / score / 1e9,
        flops / score_f32 / 1e9,
    )
}

fn time_tables<K: MicroKernel>(kern: K, md: &mut String, sizes: &[usize]) {
    let (h, d) = (12, 64);
    writeln!(md, "\n### Time split, training-free mode (H = {h}, D = {d}, causal, k = {TOP_K}, one thread)\n").unwrap();
    writeln!(md, "Seconds for the whole problem. Each phase is timed on {SAMPLE_TILES} query tiles of 32 ({} at 128K) spread over the sequence, interleaved with the dense 64×64 flash tile holding the same rows, and scaled to all tiles, for one head, times {h} heads (heads are independent). Score includes building the f32 summaries (one pass over K; the gemm reads f32 summaries in place, f16 ones are widened per chunk).\n", SAMPLE_TILES / 2).unwrap();
    writeln!(
        md,
        "| S | score | select | attention | total | dense exact | speed-up |"
    )
    .unwrap();
    writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |").unwrap();
    for &s in sizes {
        let (sp, dense) = time_training_free(kern, s, d);
        let hf = h as f64;
        let total = (sp.score + sp.select + sp.attention) * hf;
        writeln!(
            md,
            "| {} | {:.3} | {:.4} | {:.3} | {:.3} | {:.2} | {:.1}× |",
            s,
            sp.score * hf,
            sp.select * hf,
            sp.attention * hf,
            total,
            dense * hf,
            dense * hf / total
        )
        .unwrap();
    }
    writeln!(md, "\n### Time split, indexer mode (FP8 E4M3 indexer, k = {TOP_K}; attention: Hq = {h} heads sharing one KV head, D = {d}; one thread)\n").unwrap();
    writeln!(md, "Seconds for the whole problem, timed on {SAMPLE_TILES} query tiles of 16 ({} at 128K) spread over the sequence, each interleaved with the dense 64×64 flash tile holding its rows (one head, times 12), and scaled to all tiles. GFLOP/s counts 2·Hi·Di per visible pair, for the same indexer on E4M3 and on f32 operands in the same run.\n", SAMPLE_TILES / 2).unwrap();
    writeln!(md, "| S | Hi | Di | score | select | attention | total | dense exact | speed-up | indexer GFLOP/s E4M3 | f32 |").unwrap();
    writeln!(
        md,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    .unwrap();
    for &s in sizes {
        for (hi, di) in [(4, 64), (16, 64), (4, 128), (16, 128)] {
            let (sp, dense, g8, g32) = time_indexer(kern, s, hi, di, h, d);
            let total = sp.score + sp.select + sp.attention;
            writeln!(md, "| {} | {hi} | {di} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2}× | {:.1} | {:.1} |", s, sp.score, sp.select, sp.attention, total, dense, dense / total, g8, g32).unwrap();
        }
    }
}

// ------------------------------------------------------------- criterion

fn micro<K: MicroKernel>(kern: K, c: &mut Criterion) {
    let mut rng = Rng(3);
    let row: Vec<f32> = (0..32768).map(|_| (rng.f32() * 64.0).round()).collect();
    let mut out = vec![0i64; TOP_K];
    c.bench_function("topk/radix S=32K k=2048 (heavy ties)", |b| {
        b.iter(|| top_k(black_box(&row), &mut out))
    });
    c.bench_function("topk/sort S=32K k=2048 (reference)", |b| {
        b.iter(|| {
            let mut idx: Vec<u32> = (0..row.len() as u32).collect();
            idx.sort_unstable_by(|&a, &b| {
                row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
            });
            black_box(idx[TOP_K - 1])
        })
    });
    let x = rng.vec(1 << 16, 100.0);
    let mut q8 = vec![E4M3::default(); x.len()];
    c.bench_function("fp8/encode e4m3 64K", |b| {
        b.iter(|| {
            q8.iter_mut()
                .zip(black_box(&x))
                .for_each(|(o, &v)| *o = E4M3::from_f32(v))
        })
    });
    let _ = kern;
}

fn main() {
    let kern = kernel::detect().unwrap_or_else(|e| panic!("{e}"));
    let quick = std::env::var("TESSERA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut md = String::new();
    writeln!(md, "Kernel: `{}`.", kern.name()).unwrap();
    let sizes: &[usize] = if quick {
        &[8192, 32768]
    } else {
        &[8192, 32768, 131072]
    };
    tessera_core::with_kernel!(kern, k => run(k, &mut c, &mut md, sizes));
    c.final_summary();
    if md.lines().count() <= 1 {
        return; // criterion part only
    }
    println!("{md}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-dsa.md", &md);
}

fn run<K: MicroKernel>(k: K, c: &mut Criterion, md: &mut String, sizes: &[usize]) {
    micro(k, c);
    // A name filter (`cargo bench --bench dsa -- topk`) runs only the
    // criterion part, and so does `cargo test` (no `--bench` flag: criterion
    // then runs each micro-benchmark once as a smoke test).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| !a.starts_with('-')) {
        return;
    }
    indexer_recall(k, md);
    selector_quality(k, md);
    time_tables(k, md, sizes);
}
