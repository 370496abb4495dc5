//! Time tables: score / select / attention split of both sparse modes
//! next to dense exact attention, sampled per query tile and scaled.

use super::*;

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

pub(super) fn time_tables<K: MicroKernel>(kern: K, md: &mut String, sizes: &[usize]) {
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
