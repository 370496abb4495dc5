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

mod inputs;
mod quality;
mod timing;

use inputs::{attention_inputs, indexer_inputs, quantized};
use quality::{indexer_recall, selector_quality};
use timing::time_tables;

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
