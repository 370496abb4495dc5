//! The lightning indexer against an f64 reference on the dequantised
//! operands, over random shapes, formats, scale groups and masks.

#[macro_use]
mod kernels;

use proptest::prelude::*;
use tessera_core::fp8::{quantize, Fp8, Scales, E4M3, E5M2};
use tessera_core::kernel::{MicroKernel, Portable};
use tessera_core::{
    reference, top_k, AttentionSpec, Element, Error, Indexer, IndexerSpec, LightningIndexer,
    MaskSpec, Size, Tensor,
};

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
}

#[derive(Clone, Debug)]
struct Case {
    spec: IndexerSpec,
    group: Option<usize>,
    causal: Option<isize>,
    window: isize,
    globals: usize,
    kv_lens: Option<Vec<usize>>,
    /// Segment ids `(q, kv)` of packed documents.
    segments: Option<(Vec<i32>, Vec<i32>)>,
    top_k: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..40,
        1usize..150,
        1usize..6,
        1usize..140,
        any::<u64>(),
    )
        .prop_flat_map(|(batch, q_len, kv_len, heads, dim, seed)| {
            (
                prop_oneof![
                    Just(None),
                    Just(Some(dim)),
                    Just(Some(128usize)),
                    Just(Some(32usize))
                ],
                prop_oneof![Just(None), (-5isize..60).prop_map(Some)],
                -1isize..40,
                0usize..6,
                proptest::option::of(proptest::collection::vec(0..=kv_len, batch)),
                (1usize..64, any::<bool>()),
            )
                .prop_map(
                    move |(group, causal, window, globals, kv_lens, (top_k, seg))| {
                        // Sorted segment ids (packed documents), from the seed.
                        let segments = seg.then(|| {
                            let ids = |n: usize, salt: u64| -> Vec<i32> {
                                (0..batch * n)
                                    .map(|x| {
                                        ((x % n) as u64 * 3 / n.max(1) as u64 + (salt & 1)) as i32
                                    })
                                    .collect()
                            };
                            (ids(q_len, seed), ids(kv_len, seed >> 1))
                        });
                        Case {
                            spec: IndexerSpec {
                                batch,
                                q_len,
                                kv_len,
                                heads,
                                dim,
                            },
                            group,
                            causal,
                            window,
                            globals,
                            kv_lens,
                            segments,
                            top_k,
                            seed,
                        }
                    },
                )
        })
}

fn mask_of(c: &Case) -> MaskSpec<'_> {
    let mut m = MaskSpec::NONE.window(c.window, -1).globals(c.globals);
    if let Some(off) = c.causal {
        m = m.causal(off);
    }
    if let Some(l) = &c.kv_lens {
        m = m.kv_lens(l, false);
    }
    if let Some((q, kv)) = &c.segments {
        m = m.segments(q, kv);
    }
    m
}

/// Turns f32 operands into the stored format (and scales, when grouped).
type Quantiser<T> = fn(&[f32], usize, Option<usize>, &mut Vec<T>, &mut Vec<f32>);

/// Quantise random f32 operands to `F` (with the case's scale groups) or
/// keep them f32, then check the kernel against the reference.
fn run_case<T: Element + Default, K: MicroKernel>(
    c: &Case,
    kernel: K,
    quant: Quantiser<T>,
) -> Result<(), TestCaseError> {
    let s = c.spec;
    let mut rng = Rng(c.seed | 1);
    let qf: Vec<f32> = (0..s.batch * s.q_len * s.heads * s.dim)
        .map(|_| rng.f32() * 3.0)
        .collect();
    let kf: Vec<f32> = (0..s.batch * s.kv_len * s.dim)
        .map(|_| rng.f32() * 2.0)
        .collect();
    let w: Vec<f32> = (0..s.batch * s.q_len * s.heads)
        .map(|_| rng.f32())
        .collect();
    let (mut q, mut qs, mut k, mut ks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    quant(&qf, s.dim, c.group, &mut q, &mut qs);
    quant(&kf, s.dim, c.group, &mut k, &mut ks);
    let qsc = c.group.map(|g| Scales {
        values: &qs,
        group: g,
    });
    let ksc = c.group.map(|g| Scales {
        values: &ks,
        group: g,
    });
    let mask = mask_of(c);
    let ix = Indexer::new(s, &mask, &q, qsc, &k, ksc, &w).unwrap();

    type L<K> = LightningIndexer<K, 8, 16>;
    let lx = L::<K>::new(kernel);
    let mut scratch = vec![f32::NAN; L::<K>::scratch_len(s.heads, s.dim)];
    let mut scores = vec![f32::NAN; L::<K>::scores_len(s.kv_len)];
    let mut indices = vec![i64::MIN; s.batch * s.q_len * c.top_k];
    lx.run(&ix, c.top_k, &mut indices, &mut scores, &mut scratch)
        .unwrap();

    let aspec = AttentionSpec::bhsd(s.batch, 1, 1, s.q_len, s.kv_len, s.dim, s.dim);
    let (mut qr, mut kr) = (vec![0.0f32; s.dim], vec![0.0f32; s.dim]);
    let mut row_scores = vec![0.0f32; s.kv_len];
    let mut want_idx = vec![0i64; c.top_k];
    for b in 0..s.batch {
        for t in 0..L::<K>::q_tiles(s.q_len) {
            scores.fill(f32::NAN);
            let rows = lx
                .scores_tile(&ix, b, t, &mut scores, &mut scratch)
                .unwrap();
            for r in 0..rows {
                let i = t * 8 + r;
                let mut visible = 0;
                for j in 0..s.kv_len {
                    let got = scores[r * s.kv_len + j];
                    row_scores[j] = got;
                    if !reference::visible(&mask, &aspec, b, 0, i, j) {
                        prop_assert_eq!(
                            got,
                            f32::NEG_INFINITY,
                            "b={} i={} j={} must be masked",
                            b,
                            i,
                            j
                        );
                        continue;
                    }
                    visible += 1;
                    ix.k_row(b, j, &mut kr).unwrap();
                    let (mut want, mut mag) = (0.0f64, 0.0f64);
                    for h in 0..s.heads {
                        ix.q_row(b, i, h, &mut qr).unwrap();
                        let wv = w[(b * s.q_len + i) * s.heads + h] as f64;
                        let dot: f64 = qr.iter().zip(&kr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let abs: f64 = qr
                            .iter()
                            .zip(&kr)
                            .map(|(&a, &b)| (a as f64 * b as f64).abs())
                            .sum();
                        want += wv * dot.max(0.0);
                        mag += wv.abs() * abs;
                    }
                    prop_assert!(
                        ((got as f64) - want).abs() <= 2e-6 * mag + 1e-30,
                        "b={} i={} j={}: got {} want {} (mag {})",
                        b,
                        i,
                        j,
                        got,
                        want,
                        mag
                    );
                }
                // The indices are the top-k of these scores, and only visible keys.
                let n = top_k(&row_scores, &mut want_idx);
                prop_assert_eq!(n, visible.min(c.top_k));
                let got_idx = &indices[(b * s.q_len + i) * c.top_k..][..c.top_k];
                prop_assert_eq!(got_idx, &want_idx[..]);
            }
        }
    }
    Ok(())
}

fn quant_fp8<F: Fp8>(
    src: &[f32],
    dim: usize,
    group: Option<usize>,
    dst: &mut Vec<F>,
    scales: &mut Vec<f32>,
) {
    *dst = vec![F::default(); src.len()];
    match group {
        Some(g) => {
            *scales = vec![f32::NAN; src.len() / dim * dim.div_ceil(g)];
            quantize(src, dim, g, dst, scales).unwrap();
        }
        // No scales: plain saturating conversion.
        None => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &x)| *d = F::from_f32(x * 40.0)),
    }
}

fn quant_f32(
    src: &[f32],
    dim: usize,
    group: Option<usize>,
    dst: &mut Vec<f32>,
    scales: &mut Vec<f32>,
) {
    *dst = src.to_vec();
    // Scales on f32 operands multiply as well; exercise them with powers of two.
    if let Some(g) = group {
        *scales = (0..src.len() / dim * dim.div_ceil(g))
            .map(|i| 2f32.powi((i % 5) as i32 - 2))
            .collect();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn e4m3_matches_reference(c in case()) {
        run_case::<E4M3, _>(&c, Portable, quant_fp8::<E4M3>)?;
    }

    #[test]
    fn e5m2_matches_reference(c in case()) {
        run_case::<E5M2, _>(&c, Portable, quant_fp8::<E5M2>)?;
    }

    #[test]
    fn f32_matches_reference(c in case()) {
        run_case::<f32, _>(&c, Portable, quant_f32)?;
    }

    #[test]
    fn every_kernel_e4m3_matches_reference(c in case()) {
        each_kernel!(k => run_case::<E4M3, _>(&c, k, quant_fp8::<E4M3>)?);
    }
}

#[test]
fn rejects_bad_input() {
    let s = IndexerSpec {
        batch: 1,
        q_len: 2,
        kv_len: 3,
        heads: 2,
        dim: 4,
    };
    let q = [E4M3(0x38); 16];
    let k = [E4M3(0x38); 12];
    let w = [1.0f32; 4];
    let m = MaskSpec::NONE;
    assert!(Indexer::new(s, &m, &q, None, &k, None, &w).is_ok());
    assert_eq!(
        Indexer::new(s, &m, &q[..15], None, &k, None, &w).unwrap_err(),
        Error::WrongLength {
            tensor: Tensor::IndexQ,
            expected: 16,
            got: 15
        }
    );
    assert_eq!(
        Indexer::new(s, &m, &q, None, &k[..11], None, &w).unwrap_err(),
        Error::WrongLength {
            tensor: Tensor::IndexK,
            expected: 12,
            got: 11
        }
    );
    assert_eq!(
        Indexer::new(s, &m, &q, None, &k, None, &w[..3]).unwrap_err(),
        Error::WrongLength {
            tensor: Tensor::IndexW,
            expected: 4,
            got: 3
        }
    );
    let sc = [1.0f32; 3];
    assert!(matches!(
        Indexer::new(
            s,
            &m,
            &q,
            Some(Scales {
                values: &sc,
                group: 4
            }),
            &k,
            None,
            &w
        ),
        Err(Error::WrongLength {
            tensor: Tensor::IndexQScale,
            ..
        })
    ));
    assert_eq!(
        Indexer::new(IndexerSpec { heads: 0, ..s }, &m, &q, None, &k, None, &w).unwrap_err(),
        Error::Zero {
            what: Size::IndexHeads
        }
    );
    let ix = Indexer::new(s, &m, &q, None, &k, None, &w).unwrap();
    type L = LightningIndexer<Portable, 4, 8>;
    let lx = L::new(Portable);
    let mut scratch = vec![0.0; L::scratch_len(2, 4)];
    let mut scores = vec![0.0; L::scores_len(3)];
    let mut idx = vec![0i64; 2 * 2];
    assert_eq!(
        lx.run(&ix, 0, &mut idx, &mut scores, &mut scratch),
        Err(Error::Zero { what: Size::TopK })
    );
    assert!(matches!(
        lx.run(&ix, 2, &mut idx[..3], &mut scores, &mut scratch),
        Err(Error::WrongLength {
            tensor: Tensor::Indices,
            ..
        })
    ));
    assert!(matches!(
        lx.run(&ix, 2, &mut idx, &mut scores, &mut scratch[..5]),
        Err(Error::TooShort {
            tensor: Tensor::Scratch,
            ..
        })
    ));
    // A NaN operand is reported, not selected silently.
    let mut qn = q;
    qn[0] = E4M3(0x7F);
    let ix = Indexer::new(s, &m, &qn, None, &k, None, &w).unwrap();
    assert!(matches!(
        lx.run(&ix, 2, &mut idx, &mut scores, &mut scratch),
        Err(Error::NonFinite {
            tensor: Tensor::IndexScores,
            ..
        })
    ));
}
