//! Core attention benchmark (criterion, single thread), side by side in one
//! run with the machine's own ceilings:
//! - `fma-peak-avx2` and `fma-peak-avx512`: independent FMA chains, 12 on
//!   `ymm` (16 registers: 12 accumulators and the two operands fit without
//!   spilling) and 16 on `zmm` (32 registers); two FMA ports of 4-cycle
//!   latency need 8. The single-core FMA roofline of each ISA the CPU has;
//! - `sgemm`: matrixmultiply's single-threaded sgemm at 1024³;
//! - `naive`: materialised scores (S×S), softmax, then P·V;
//! - `tessera-dense-<kernel>` and `tessera-window128-<kernel>`: the flash
//!   kernel, once per micro-kernel the CPU has (portable, avx2, avx512),
//!   side by side. `TESSERA_KERNEL=name` runs only that one.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not
//! wall time, so that other processes on a shared machine distort it less.
//! Effective GFLOP/s counts `4·visible_pairs·D`. For S ≥ 16K a sample of 512
//! query rows from the middle of the sequence is timed and scaled by S/512
//! (cost is linear in the number of query rows). After the criterion runs a
//! Markdown table with ratios is printed and written to
//! `target/bench-core.md`.
//!
//! `cargo bench -p tessera-core --bench attention` (set `TESSERA_BENCH_QUICK=1`
//! to skip the 64K rows).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion};
use tessera_core::{kernel, Attention, AttentionSpec, Element, Flash, MaskSpec};

/// Criterion measurement of this thread's CPU time.
struct ThreadCpuTime;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

const SAMPLE_ROWS: usize = 512;
const WINDOW: isize = 128;
type Tiles<K> = Flash<K, 64, 64>;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One benchmark problem: the rows actually computed and the scale factor to
/// the full sequence.
struct Problem {
    s: usize,
    d: usize,
    window: bool,
    rows: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Problem {
    fn new(s: usize, d: usize, window: bool) -> Self {
        let rows = if s >= 16 * 1024 { SAMPLE_ROWS } else { s };
        Self {
            s,
            d,
            window,
            rows,
            q: data(rows * d, 1),
            k: data(s * d, 2),
            v: data(s * d, 3),
        }
    }
    fn offset(&self) -> isize {
        ((self.s - self.rows) / 2) as isize
    }
    fn mask(&self) -> MaskSpec<'static> {
        let m = MaskSpec::NONE.offset(self.offset());
        if self.window {
            m.window(WINDOW, WINDOW)
        } else {
            m
        }
    }
    fn spec(&self) -> AttentionSpec {
        AttentionSpec::bhsd(1, 1, 1, self.rows, self.s, self.d, self.d)
    }
    /// Visible (query, key) pairs of the full problem.
    fn visible_pairs(&self) -> f64 {
        if !self.window {
            return (self.s * self.s) as f64;
        }
        let w = WINDOW as usize;
        (0..self.s)
            .map(|i| (i.min(w) + (self.s - 1 - i).min(w) + 1) as f64)
            .sum()
    }
    fn flops(&self) -> f64 {
        4.0 * self.visible_pairs() * self.d as f64
    }
    fn scale(&self) -> f64 {
        self.s as f64 / self.rows as f64
    }
}

fn run_flash<K: kernel::MicroKernel>(k: K, p: &Problem, y: &mut [f32], scratch: &mut [f32]) {
    let spec = p.spec();
    let mask = p.mask();
    let att = Attention::new(&spec, &mask, &p.q, &p.k, &p.v).unwrap();
    Tiles::<K>::new(k).run(&att, y, None, scratch).unwrap();
}

fn flash(det: kernel::Detected, p: &Problem, y: &mut [f32], scratch: &mut [f32]) {
    tessera_core::with_kernel!(det, k => run_flash(k, p, y, scratch))
}

/// The kernels to compare: the one `TESSERA_KERNEL` names, else every one
/// this CPU has (a missing one is printed, not silently dropped).
fn kernels() -> Vec<kernel::Detected> {
    if std::env::var("TESSERA_KERNEL").is_ok_and(|v| !v.trim().is_empty()) {
        return vec![kernel::detect().unwrap_or_else(|e| panic!("{e}"))];
    }
    kernel::KERNELS
        .iter()
        .filter_map(|n| match kernel::by_name(n) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("kernel {n}: skipped ({e})");
                None
            }
        })
        .collect()
}

/// Materialised attention: S = QKᵀ (row by row), softmax, Y = P·V.
fn naive(p: &Problem, scores: &mut [f32], y: &mut [f32]) {
    let (s, d) = (p.s, p.d);
    let scale = 1.0 / (d as f32).sqrt();
    for i in 0..p.rows {
        let q = &p.q[i * d..][..d];
        let row = &mut scores[i * s..][..s];
        for (j, x) in row.iter_mut().enumerate() {
            let k = &p.k[j * d..][..d];
            *x = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut l = 0.0;
        for x in row.iter_mut() {
            *x = (*x - m).exp();
            l += *x;
        }
        let out = &mut y[i * d..][..d];
        out.fill(0.0);
        for (j, &pj) in row.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&p.v[j * d..][..d]) {
                *o += pj * v;
            }
        }
        out.iter_mut().for_each(|o| *o /= l);
    }
}

/// Independent FMA chains on `ymm`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let x = _mm256_set1_ps(0.999_999);
    let y = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS_AVX2];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = acc[0];
    for a in &acc[1..] {
        s = _mm256_add_ps(s, *a);
    }
    // SAFETY: `out` holds 8 f32s.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// Independent FMA chains on `zmm`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let x = _mm512_set1_ps(0.999_999);
    let y = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); CHAINS_AVX512];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut s = acc[0];
    for a in &acc[1..] {
        s = _mm512_add_ps(s, *a);
    }
    _mm512_reduce_add_ps(s)
}

/// Independent accumulators of the ceiling loops.
const CHAINS_AVX2: usize = 12;
const CHAINS_AVX512: usize = 16;
const FMA_ITERS: usize = 1 << 20;
const GEMM_N: usize = 1024;

fn benches(
    c: &mut Criterion<ThreadCpuTime>,
    quick: bool,
    kernels: &[kernel::Detected],
) -> Vec<(String, f64, f64)> {
    let mut results = Vec::new(); // (id, flops per iteration, scale)
    let mut g = c.benchmark_group("ceilings");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        g.bench_function("fma-peak-avx2", |b| {
            b.iter(|| {
                // SAFETY: AVX2 and FMA were detected just above.
                unsafe { fma_chains_avx2(black_box(FMA_ITERS)) }
            })
        });
        results.push((
            "ceilings/fma-peak-avx2".into(),
            (FMA_ITERS * CHAINS_AVX2 * 2 * 8) as f64,
            1.0,
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        g.bench_function("fma-peak-avx512", |b| {
            b.iter(|| {
                // SAFETY: AVX-512F was detected just above.
                unsafe { fma_chains_avx512(black_box(FMA_ITERS)) }
            })
        });
        results.push((
            "ceilings/fma-peak-avx512".into(),
            (FMA_ITERS * CHAINS_AVX512 * 2 * 16) as f64,
            1.0,
        ));
    }
    let (a, bm) = (data(GEMM_N * GEMM_N, 4), data(GEMM_N * GEMM_N, 5));
    let mut cm = vec![0.0f32; GEMM_N * GEMM_N];
    g.bench_function("sgemm", |b| {
        b.iter(|| {
            let n = GEMM_N;
            // SAFETY: a, bm and cm are n×n row-major buffers.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    n,
                    n,
                    1.0,
                    a.as_ptr(),
                    n as isize,
                    1,
                    bm.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    cm.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        })
    });
    results.push(("ceilings/sgemm".into(), 2.0 * (GEMM_N as f64).powi(3), 1.0));
    g.finish();

    let sizes: &[usize] = if quick {
        &[1024, 4096, 16384]
    } else {
        &[1024, 4096, 16384, 65536]
    };
    for d in [64usize, 128] {
        let mut g = c.benchmark_group(format!("attention-d{d}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for &s in sizes {
            for window in [false, true] {
                let p = Problem::new(s, d, window);
                let mut y = vec![0.0f32; p.rows * d];
                let mut scratch = vec![0.0f32; Tiles::<kernel::Portable>::scratch_len(d, d)];
                let kind = if window {
                    "tessera-window128"
                } else {
                    "tessera-dense"
                };
                for &det in kernels {
                    // Criterion turns a '/' inside a name into '_' on disk.
                    let name = format!("{kind}-{}", det.name());
                    g.bench_with_input(BenchmarkId::new(&name, s), &p, |b, p| {
                        b.iter(|| flash(det, p, &mut y, &mut scratch))
                    });
                    results.push((format!("attention-d{d}/{name}/{s}"), p.flops(), p.scale()));
                }
                if !window && s <= 4096 {
                    let mut scores = vec![0.0f32; p.rows * s];
                    g.bench_with_input(BenchmarkId::new("naive-dense", s), &p, |b, p| {
                        b.iter(|| naive(p, &mut scores, &mut y))
                    });
                    results.push((
                        format!("attention-d{d}/naive-dense/{s}"),
                        p.flops(),
                        p.scale(),
                    ));
                }
            }
        }
        g.finish();
    }
    results
}

/// Criterion's mean estimate (ns) for a benchmark id.
fn mean_ns(id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let path = format!("{dir}/criterion/{id}/new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let quick = std::env::var_os("TESSERA_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .configure_from_args();
    let kernels = kernels();
    let results = benches(&mut c, quick, &kernels);
    c.final_summary();

    let gflops =
        |id: &str, flops: f64, scale: f64| mean_ns(id).map(|ns| (ns * scale, flops / (ns * scale)));
    let ceiling = |isa: &str| {
        let id = format!("ceilings/fma-peak-{isa}");
        results
            .iter()
            .find(|r| r.0 == id)
            .and_then(|r| gflops(&r.0, r.1, r.2))
            .map(|x| x.1)
    };
    // The best ISA's ceiling: what the "≥ 75%" is measured against.
    let peak = ceiling("avx512").or_else(|| ceiling("avx2"));
    let mut table = String::new();
    let names: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
    table.push_str(&format!(
        "CPU: {}\nISA: {}\nkernels: {}, element {}, 1 thread, time = thread CPU time (mean)\n\n",
        cpu_model(),
        isa_flags(),
        names.join(", "),
        f32::NAME
    ));
    table.push_str(
        "| benchmark | time | GFLOP/s | % of best FMA ceiling |\n| --- | ---: | ---: | ---: |\n",
    );
    let mut dense = std::collections::HashMap::new();
    let mut window = std::collections::HashMap::new();
    for (id, flops, scale) in &results {
        let Some((ns, gf)) = gflops(id, *flops, *scale) else {
            continue;
        };
        let pct = peak
            .map(|p| format!("{:.0}%", 100.0 * gf / p))
            .unwrap_or_else(|| "-".into());
        let sampled = if *scale > 1.0 {
            " (sampled rows, scaled)"
        } else {
            ""
        };
        table.push_str(&format!(
            "| {id}{sampled} | {:.3} ms | {gf:.1} | {pct} |\n",
            ns / 1e6
        ));
        if let Some(rest) = id.strip_prefix("attention-d") {
            // Linearity and speedup rows are for the kernel `detect` picks.
            let parts: Vec<&str> = rest.split('/').collect();
            let Some(kind) = parts[1].strip_suffix(&format!("-{}", kernel::best().name())) else {
                continue;
            };
            let key = (parts[0].to_string(), parts[2].parse::<usize>().unwrap_or(0));
            match kind {
                "tessera-dense" => {
                    dense.insert(key, ns);
                }
                "tessera-window128" => {
                    window.insert(key, ns);
                }
                _ => {}
            }
        }
    }
    table.push_str("\n| D | t_win(64K)/t_win(4K) (target ≤ 17) | t_dense(64K)/t_win(64K) (target ≥ 100) |\n| --- | ---: | ---: |\n");
    for d in ["64", "128"] {
        let w = |s| window.get(&(d.to_string(), s)).copied();
        let dn = |s| dense.get(&(d.to_string(), s)).copied();
        let lin = w(65536)
            .zip(w(4096))
            .map(|(a, b)| format!("{:.1}", a / b))
            .unwrap_or("-".into());
        let sp = dn(65536)
            .zip(w(65536))
            .map(|(a, b)| format!("{:.0}", a / b))
            .unwrap_or("-".into());
        table.push_str(&format!("| {d} | {lin} | {sp} |\n"));
    }
    println!("\n{table}");
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let _ = std::fs::write(format!("{dir}/bench-core.md"), table);
}

/// The CPU model from `/proc/cpuinfo` (Linux), else "unknown".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The SIMD features the kernels care about that this CPU has.
fn isa_flags() -> String {
    #[allow(unused_mut)]
    let mut found: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::is_x86_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512bf16",
            "avx512vnni"
        );
    }
    found.join(" ")
}
