//! Tile-size sweep for every kernel this CPU has: dense attention, one thread,
//! best-of-5 GFLOP/s from the thread's CPU time. `cargo run --release -p tessera-core
//! --features std --example tile_sweep [S] [D]`.
use std::time::Duration;

use tessera_core::{kernel, Attention, AttentionSpec, Flash, MaskSpec};

/// This thread's CPU time, less distorted by other processes than wall time.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run<K: kernel::MicroKernel, const BQ: usize, const BK: usize>(k: K, s: usize, d: usize) {
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, d, d);
    let q: Vec<f32> = (0..s * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let att = Attention::new(&spec, &MaskSpec::NONE, &q, &q, &q).unwrap();
    let mut y = vec![0.0f32; s * d];
    let mut scratch = vec![0.0f32; Flash::<K, BQ, BK>::scratch_len(d, d)];
    let f = Flash::<K, BQ, BK>::new(k);
    f.run(&att, &mut y, None, &mut scratch).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = cpu();
        f.run(&att, &mut y, None, &mut scratch).unwrap();
        best = best.min((cpu() - t0).as_secs_f64());
    }
    let gf = 4.0 * (s * s * d) as f64 / best / 1e9;
    println!(
        "BQ={BQ:3} BK={BK:3}: {:8.2} ms  {gf:6.1} GFLOP/s",
        best * 1e3
    );
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let (s, d) = (
        a.first().copied().unwrap_or(2048),
        a.get(1).copied().unwrap_or(64),
    );
    println!("dense S={s} D={d}");
    let only = std::env::var("TESSERA_KERNEL").unwrap_or_default();
    for name in kernel::KERNELS
        .iter()
        .filter(|n| only.is_empty() || **n == only)
    {
        match kernel::by_name(name) {
            Ok(det) => tessera_core::with_kernel!(det, k => sweep(k, s, d)),
            Err(e) => println!("kernel {name}: skipped ({e})"),
        }
    }
}

fn sweep<K: kernel::MicroKernel>(k: K, s: usize, d: usize) {
    println!("kernel {}", K::NAME);
    run::<_, 32, 64>(k, s, d);
    run::<_, 48, 64>(k, s, d);
    run::<_, 64, 64>(k, s, d);
    run::<_, 96, 64>(k, s, d);
    run::<_, 64, 128>(k, s, d);
    run::<_, 96, 128>(k, s, d);
    run::<_, 128, 128>(k, s, d);
    run::<_, 64, 256>(k, s, d);
}
