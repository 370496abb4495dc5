//! Property tests: every kernel and tile size against the f64 reference, on
//! random shapes, random data and random compositions of every mask rule.

#[macro_use]
mod kernels;

mod common;

use common::{assert_close, expected, Rng};
use proptest::prelude::*;
use tessera_core::{
    bf16, f16, kernel, merge_into, Attention, AttentionSpec, DenseMask, Element, Flash, MaskSpec,
    MaskStrides, Stats,
};

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    kv_heads: usize,
    group: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    v_head_dim: usize,
    bshd: bool,
    causal: bool,
    offset: isize,
    left: isize,
    right: isize,
    globals: usize,
    chunk: usize,
    segments: bool,
    kv_lens: Option<bool>,
    dense: u8,
    dense_bcast: u8,
    softcap: f32,
    scale_mul: f32,
    seed: u64,
}

fn window() -> impl Strategy<Value = isize> {
    prop_oneof![Just(-1isize), Just(0), Just(1), 2isize..40, Just(1000)]
}

prop_compose! {
    fn case()(
        batch in 1usize..=2,
        kv_heads in 1usize..=2,
        group in prop::sample::select(vec![1usize, 2, 4, 8]),
        q_len in 1usize..=300,
        kv_len in 1usize..=300,
        head_dim in prop::sample::select(vec![1usize, 3, 8, 64, 128, 256]),
        dv_same in any::<bool>(),
        dv in prop::sample::select(vec![1usize, 5, 16, 40]),
        bshd in any::<bool>(),
        causal in any::<bool>(),
        offset in prop_oneof![Just(0isize), -40isize..40],
        left in window(),
        right in window(),
        globals in prop_oneof![Just(0usize), 1usize..6],
        chunk in prop_oneof![3 => Just(0usize), 1 => 1usize..50],
        segments in prop::bool::weighted(0.2),
        kv_lens in prop_oneof![2 => Just(None), 1 => any::<bool>().prop_map(Some)],
        dense in prop::sample::select(vec![0u8, 0, 1, 2]),
        dense_bcast in any::<u8>(),
        softcap in prop_oneof![3 => Just(0.0f32), 1 => 0.5f32..20.0],
        scale_mul in prop_oneof![3 => Just(1.0f32), 1 => 0.1f32..4.0],
        seed in any::<u64>(),
    ) -> Case {
        // Keep the f64 reference affordable: Hq·Sq·Skv·(D+Dv) at most ~4M.
        let mut c = Case { batch, kv_heads, group, q_len, kv_len, head_dim, v_head_dim: if dv_same { head_dim } else { dv },
            bshd, causal, offset, left, right, globals, chunk, segments, kv_lens, dense, dense_bcast, softcap, scale_mul, seed: seed | 1 };
        while c.batch * c.kv_heads * c.group * c.q_len * c.kv_len * (c.head_dim + c.v_head_dim) > 4_000_000 {
            if c.group > 1 { c.group /= 2 } else if c.batch > 1 { c.batch = 1 } else if c.kv_heads > 1 { c.kv_heads = 1 }
            else { c.q_len = c.q_len.div_ceil(2); c.kv_len = c.kv_len.div_ceil(2) }
        }
        c
    }
}

/// Everything a case owns: data and mask buffers.
struct Problem<T> {
    spec: AttentionSpec,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    seg_q: Vec<i32>,
    seg_kv: Vec<i32>,
    kv_lens: Vec<usize>,
    bool_mask: Vec<bool>,
    add_mask: Vec<f32>,
    mask_strides: MaskStrides,
}

impl<T: Element> Problem<T> {
    fn new(c: &Case) -> Self {
        let mut rng = Rng(c.seed);
        let hq = c.kv_heads * c.group;
        let ctor = if c.bshd {
            AttentionSpec::bshd
        } else {
            AttentionSpec::bhsd
        };
        let mut spec = ctor(
            c.batch,
            hq,
            c.kv_heads,
            c.q_len,
            c.kv_len,
            c.head_dim,
            c.v_head_dim,
        );
        spec.scale *= c.scale_mul;
        spec.softcap = c.softcap;
        let q = rng.vec(spec.required_len(tessera_core::Tensor::Q).unwrap(), 1.0);
        let k = rng.vec(spec.required_len(tessera_core::Tensor::K).unwrap(), 1.0);
        let v = rng.vec(spec.required_len(tessera_core::Tensor::V).unwrap(), 1.0);
        let ids = |rng: &mut Rng, n: usize| -> Vec<i32> {
            let mut id = 0;
            (0..n)
                .map(|_| {
                    if rng.below(8) == 0 {
                        id += 1
                    }
                    id
                })
                .collect()
        };
        let seg_q = (0..c.batch).flat_map(|_| ids(&mut rng, c.q_len)).collect();
        let seg_kv = (0..c.batch).flat_map(|_| ids(&mut rng, c.kv_len)).collect();
        let kv_lens = (0..c.batch).map(|_| rng.below(c.kv_len + 1)).collect();
        let bits = c.dense_bcast;
        let mb = if bits & 1 != 0 { 1 } else { c.batch };
        let mh = if bits & 2 != 0 { 1 } else { hq };
        let mq = if bits & 4 != 0 { 1 } else { c.q_len };
        let mask_strides = MaskStrides::broadcast(mb, mh, mq, c.kv_len);
        let n = mb * mh * mq * c.kv_len;
        let bool_mask = (0..n).map(|_| rng.below(4) != 0).collect();
        let add_mask = (0..n)
            .map(|_| {
                if rng.below(5) == 0 {
                    f32::NEG_INFINITY
                } else {
                    rng.f32() * 2.0
                }
            })
            .collect();
        Self {
            spec,
            q,
            k,
            v,
            seg_q,
            seg_kv,
            kv_lens,
            bool_mask,
            add_mask,
            mask_strides,
        }
    }

    fn mask(&self, c: &Case) -> MaskSpec<'_> {
        let mut m = MaskSpec::NONE
            .offset(c.offset)
            .window(c.left, c.right)
            .globals(c.globals)
            .chunked(c.chunk);
        m.causal = c.causal;
        if c.segments {
            m = m.segments(&self.seg_q, &self.seg_kv);
        }
        if let Some(align) = c.kv_lens {
            m = m.kv_lens(&self.kv_lens, align);
        }
        match c.dense {
            1 => m = m.dense(DenseMask::Bool(&self.bool_mask, self.mask_strides)),
            2 => m = m.dense(DenseMask::Additive(&self.add_mask, self.mask_strides)),
            _ => {}
        }
        m
    }
}

/// Run one kernel configuration with poisoned outputs.
fn run<K: kernel::MicroKernel, const BQ: usize, const BK: usize, T: Element, O: Element>(
    kernel: K,
    att: &Attention<'_, T>,
) -> (Vec<O>, Vec<f32>, Stats) {
    let s = att.spec();
    let mut y = vec![O::from_f32(f32::NAN); s.required_len(tessera_core::Tensor::Y).unwrap()];
    let mut lse = vec![f32::NAN; s.batch * s.q_heads * s.q_len];
    let mut scratch = vec![f32::NAN; Flash::<K, BQ, BK>::scratch_len(s.head_dim, s.v_head_dim)];
    let stats = Flash::<K, BQ, BK>::new(kernel)
        .run(att, &mut y, Some(&mut lse), &mut scratch)
        .unwrap();
    (y, lse, stats)
}

/// The packed-KV entry: pack each (batch, KV head) once into NaN-poisoned
/// panels, then every query tile of its query heads reads them; outputs
/// poisoned too.
fn run_packed<K: kernel::MicroKernel, const BQ: usize, const BK: usize, T: Element>(
    kernel: K,
    att: &Attention<'_, T>,
) -> (Vec<f32>, Vec<f32>, Stats) {
    type F<K, const BQ: usize, const BK: usize> = Flash<K, BQ, BK>;
    let s = att.spec();
    let f = F::<K, BQ, BK>::new(kernel);
    let mut y = vec![f32::NAN; s.required_len(tessera_core::Tensor::Y).unwrap()];
    let mut lse = vec![f32::NAN; s.batch * s.q_heads * s.q_len];
    let mut panels =
        vec![f32::NAN; F::<K, BQ, BK>::packed_kv_len(s.kv_len, s.head_dim, s.v_head_dim)];
    let mut scratch = vec![f32::NAN; F::<K, BQ, BK>::packed_scratch_len(s.head_dim, s.v_head_dim)];
    let mut stats = Stats::default();
    let group = s.q_heads / s.kv_heads;
    for b in 0..s.batch {
        for hk in 0..s.kv_heads {
            panels.fill(f32::NAN);
            // Two halves of the key tiles, as two workers would pack them.
            let tiles = s.kv_len.div_ceil(BK);
            let (lo, hi) = panels.split_at_mut(
                tiles / 2 * F::<K, BQ, BK>::packed_tile_len(s.head_dim, s.v_head_dim),
            );
            f.pack_kv(att, b, hk, 0..tiles / 2, lo).unwrap();
            f.pack_kv(att, b, hk, tiles / 2..tiles, hi).unwrap();
            for h in hk * group..(hk + 1) * group {
                for t in 0..F::<K, BQ, BK>::q_tiles(s.q_len) {
                    let o = f
                        .tile_packed(att, b, h, t, 0..s.kv_len, &panels, &mut scratch, &mut stats)
                        .unwrap();
                    for r in 0..o.rows {
                        let i = o.q_start + r;
                        y[s.out.offset(b, h, i)..][..s.v_head_dim].copy_from_slice(o.row(r));
                        lse[(b * s.q_heads + h) * s.q_len + i] = o.lse(r);
                    }
                }
            }
        }
    }
    (y, lse, stats)
}

/// Every kernel and a few tile shapes on one problem.
fn check_all<T: Element>(c: &Case, tol: f64) {
    let p = Problem::<T>::new(c);
    let mask = p.mask(c);
    let att = Attention::new(&p.spec, &mask, &p.q, &p.k, &p.v).unwrap();
    let exp = expected(&p.spec, &mask, &p.q, &p.k, &p.v);
    let check =
        |(y, lse, _): (Vec<f32>, Vec<f32>, Stats)| assert_close(&p.spec, &exp, &y, &lse, 1.0, tol);
    check(run::<_, 4, 8, T, f32>(kernel::Portable, &att));
    check(run::<_, 16, 32, T, f32>(kernel::Portable, &att));
    each_kernel!(k => {
        check(run::<_, 8, 16, T, f32>(k, &att));
        check(run::<_, 64, 64, T, f32>(k, &att));
        check(run::<_, 48, 32, T, f32>(k, &att));
        check(run_packed::<_, 64, 64, T>(k, &att));
        check(run_packed::<_, 8, 32, T>(k, &att));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn f32_matches_reference(c in case()) {
        check_all::<f32>(&c, 1e-5);
    }

    #[test]
    fn half_inputs_match_reference(c in case()) {
        // The reference reads the same rounded inputs, so only the f32
        // accumulation differs: the f32 tolerance still holds.
        check_all::<f16>(&c, 1e-5);
        check_all::<bf16>(&c, 1e-5);
    }

    #[test]
    fn half_outputs_round_once(c in case()) {
        let p = Problem::<f32>::new(&c);
        let mask = p.mask(&c);
        let att = Attention::new(&p.spec, &mask, &p.q, &p.k, &p.v).unwrap();
        let exp = expected(&p.spec, &mask, &p.q, &p.k, &p.v);
        let (y, lse, _) = run::<_, 16, 32, f32, f16>(kernel::Portable, &att);
        assert_close(&p.spec, &exp, &y, &lse, 1.0, 1e-3);
        let (y, lse, _) = run::<_, 16, 32, f32, bf16>(kernel::Portable, &att);
        assert_close(&p.spec, &exp, &y, &lse, 1.0, 8e-3);
    }

    /// Splitting the keys anywhere and merging the halves equals the whole.
    #[test]
    fn merged_halves_equal_whole(c in case(), cut in 0.0f64..=1.0) {
        let p = Problem::<f32>::new(&c);
        let mask = p.mask(&c);
        let att = Attention::new(&p.spec, &mask, &p.q, &p.k, &p.v).unwrap();
        let exp = expected(&p.spec, &mask, &p.q, &p.k, &p.v);
        let s = p.spec;
        let split = ((s.kv_len as f64) * cut) as usize;
        type F = Flash<kernel::Portable, 8, 16>;
        let f = F::new(kernel::Portable);
        let mut scratch = vec![f32::NAN; F::scratch_len(s.head_dim, s.v_head_dim)];
        let dv = s.v_head_dim;
        let mut y = vec![f32::NAN; s.batch * s.q_heads * s.q_len * dv];
        let mut lse = vec![f32::NAN; s.batch * s.q_heads * s.q_len];
        let mut stats = Stats::default();
        for b in 0..s.batch {
            for h in 0..s.q_heads {
                for t in 0..F::q_tiles(s.q_len) {
                    let a = f.tile(&att, b, h, t, 0..split, &mut scratch, &mut stats).unwrap();
                    let rows = a.rows;
                    let i0 = a.q_start;
                    let base = (b * s.q_heads + h) * s.q_len + i0;
                    let mut ya: Vec<f32> = (0..rows).flat_map(|r| a.row(r).to_vec()).collect();
                    let mut la: Vec<f32> = (0..rows).map(|r| a.lse(r)).collect();
                    let bpart = f.tile(&att, b, h, t, split..s.kv_len, &mut scratch, &mut stats).unwrap();
                    let yb: Vec<f32> = (0..rows).flat_map(|r| bpart.row(r).to_vec()).collect();
                    let lb: Vec<f32> = (0..rows).map(|r| bpart.lse(r)).collect();
                    merge_into(&mut ya, &mut la, &yb, &lb, dv).unwrap();
                    y[base * dv..(base + rows) * dv].copy_from_slice(&ya);
                    lse[base..base + rows].copy_from_slice(&la);
                }
            }
        }
        let contiguous = AttentionSpec { out: tessera_core::Strides::bhsd(s.q_heads, s.q_len, dv), ..s };
        assert_close(&contiguous, &exp, &y, &lse, 1.0, 2e-5);
    }

    /// A Full tile has every element visible, an Empty one none.
    #[test]
    fn tile_classes_agree_with_elements(c in case(), bq in 1usize..40, bk in 1usize..40) {
        let p = Problem::<f32>::new(&c);
        let mask = p.mask(&c);
        let s = p.spec;
        for b in 0..s.batch {
            let off = mask.batch_offset(b, s.q_len);
            let valid = mask.batch_kv_len(b, s.kv_len);
            for i0 in (0..s.q_len).step_by(bq) {
                let rows = bq.min(s.q_len - i0);
                let spans: Vec<_> = (0..rows).map(|r| mask.row_span((i0 + r) as isize + off, valid)).collect();
                for j0 in (0..s.kv_len).step_by(bk) {
                    let j1 = (j0 + bk).min(s.kv_len);
                    let class = mask.classify(&spans, j0, j1);
                    for h in 0..s.q_heads {
                        for r in 0..rows {
                            for j in j0..j1 {
                                let vis = tessera_core::reference::visible(&mask, &s, b, h, i0 + r, j);
                                match class {
                                    tessera_core::TileClass::Empty => prop_assert!(!vis, "Empty tile has visible ({},{})", i0 + r, j),
                                    tessera_core::TileClass::Full => prop_assert!(vis, "Full tile has masked ({},{})", i0 + r, j),
                                    tessera_core::TileClass::Partial => {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
