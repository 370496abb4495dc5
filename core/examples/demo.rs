//! A small attention call, checked against the f64 reference and timed.
use std::time::Instant;

use tessera_core::{kernel, reference, Attention, AttentionSpec, Flash, MaskSpec};

fn main() {
    let (b, hq, hkv, s, d) = (1, 8, 2, 1024, 64);
    let spec = AttentionSpec::bhsd(b, hq, hkv, s, s, d, d);
    let mut seed = 0x9e37_79b9_u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let q = rnd(b * hq * s * d);
    let k = rnd(b * hkv * s * d);
    let v = rnd(b * hkv * s * d);
    let mask = MaskSpec::NONE.causal(0).window(128, 0).globals(4);
    let att = Attention::new(&spec, &mask, &q, &k, &v).expect("valid spec");
    let mut y = vec![f32::NAN; q.len()];
    let mut lse = vec![f32::NAN; b * hq * s];

    type F<K> = Flash<K, 48, 64>;
    let mut scratch = vec![0.0; F::<kernel::Portable>::scratch_len(d, d)];
    let det = kernel::detect().unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let stats = tessera_core::with_kernel!(det, k => F::new(k).run(&att, &mut y, Some(&mut lse), &mut scratch))
        .expect("run");
    let dt = t.elapsed();

    let mut y64 = vec![0.0; y.len()];
    let mut lse64 = vec![0.0; lse.len()];
    reference::attention(&spec, &mask, &q, &k, &v, &mut y64, &mut lse64);
    let err = y
        .iter()
        .zip(&y64)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);

    println!("tessera-core demo: B={b} Hq={hq} Hkv={hkv} S={s} D={d}, causal + window 128 + 4 sink tokens");
    println!("kernel: {}", det.name());
    println!("Y[0, 0, 0, :4] = {:?}", &y[..4]);
    println!("lse[0, 0, :4]  = {:?}", &lse[..4]);
    println!("max |Y - Y_f64| = {err:.2e}");
    println!(
        "time: {:.2} ms, tiles visited {} (full {}, partial {}), skipped {}",
        dt.as_secs_f64() * 1e3,
        stats.visited(),
        stats.tiles_full,
        stats.tiles_partial,
        stats.tiles_skipped
    );
}
