//! Quality tables: the FP8 indexer's recall against the f32 indexer, and
//! the block selector's recall and output error against dense attention.

use super::*;

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

pub(super) fn indexer_recall<K: MicroKernel>(kern: K, md: &mut String) {
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

pub(super) fn selector_quality<K: MicroKernel>(kern: K, md: &mut String) {
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
