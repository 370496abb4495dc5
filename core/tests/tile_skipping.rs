//! The tile counters prove the cost model: a window visits O(S·w) tiles,
//! causal about half, and a dense mask all of them.

use tessera_core::{kernel::Portable, Attention, AttentionSpec, Flash, MaskSpec, Stats};

const BQ: usize = 32;
const BK: usize = 32;
type F = Flash<Portable, BQ, BK>;

fn stats(s: usize, mask: &MaskSpec<'_>) -> Stats {
    let (d, dv) = (8, 8);
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, d, dv);
    let q: Vec<f32> = (0..s * d)
        .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
        .collect();
    let k = q.clone();
    let v = q.clone();
    let att = Attention::new(&spec, mask, &q, &k, &v).unwrap();
    let mut y = vec![f32::NAN; s * dv];
    let mut scratch = vec![0.0; F::scratch_len(d, dv)];
    let st = F::new(Portable)
        .run(&att, &mut y, None, &mut scratch)
        .unwrap();
    assert!(y.iter().all(|x| x.is_finite()));
    st
}

#[test]
fn window_visits_linear_tiles() {
    let w = 128;
    let mask = MaskSpec::NONE.window(w, w);
    let mut prev = None;
    for s in [1024, 2048, 4096] {
        let st = stats(s, &mask);
        let tiles = (s / BQ) * (s / BK);
        assert_eq!(st.visited() + st.tiles_skipped, tiles as u64);
        // Each q-tile sees at most (BQ + 2w) / BK + 2 key tiles.
        let bound = (s / BQ) * ((BQ + 2 * w as usize) / BK + 2);
        assert!(
            st.visited() as usize <= bound,
            "S={s}: visited {} > {bound}",
            st.visited()
        );
        // Most visited tiles are Full: only the window edges are Partial.
        assert!(st.tiles_full > st.tiles_partial, "S={s}: {st:?}");
        if let Some(p) = prev {
            // Doubling S doubles the work (linear), within a tile of slack per q-tile.
            let ratio = st.visited() as f64 / p as f64;
            assert!((1.9..=2.1).contains(&ratio), "S={s}: visited ratio {ratio}");
        }
        prev = Some(st.visited());
    }
}

#[test]
fn causal_visits_about_half() {
    let s = 2048;
    let n = (s / BQ) as u64;
    let st = stats(s, &MaskSpec::NONE.causal(0));
    // Lower triangle plus the diagonal: n(n+1)/2, of which n are Partial.
    assert_eq!(st.visited(), n * (n + 1) / 2);
    assert_eq!(st.tiles_partial, n);
    let dense = stats(s, &MaskSpec::NONE);
    assert_eq!(dense.visited(), n * n);
    assert_eq!(dense.tiles_partial, 0);
}

#[test]
fn sinks_add_only_their_tiles() {
    let s = 4096;
    let plain = stats(s, &MaskSpec::NONE.causal(0).window(64, 0));
    let sinks = stats(s, &MaskSpec::NONE.causal(0).window(64, 0).globals(4));
    // One extra key tile (the sinks) per q-tile that does not already reach it.
    let extra = sinks.visited() - plain.visited();
    assert!(
        extra <= (s / BQ) as u64 && extra >= (s / BQ) as u64 - 4,
        "extra {extra}"
    );
}

#[test]
fn fully_masked_rows_are_zero_with_minus_inf_lse() {
    let (s, d) = (40, 4);
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, d, d);
    let q: Vec<f32> = (0..s * d).map(|i| (i % 5) as f32 - 2.0).collect();
    // A negative causal offset masks the first 10 rows entirely.
    let mask = MaskSpec::NONE.causal(-10);
    let att = Attention::new(&spec, &mask, &q, &q, &q).unwrap();
    let mut y = vec![f32::NAN; s * d];
    let mut lse = vec![f32::NAN; s];
    let mut scratch = vec![f32::NAN; F::scratch_len(d, d)];
    F::new(Portable)
        .run(&att, &mut y, Some(&mut lse), &mut scratch)
        .unwrap();
    for i in 0..10 {
        assert!(y[i * d..(i + 1) * d].iter().all(|&x| x == 0.0), "row {i}");
        assert_eq!(lse[i], f32::NEG_INFINITY);
    }
    assert!(lse[10..].iter().all(|x| x.is_finite()));
}
