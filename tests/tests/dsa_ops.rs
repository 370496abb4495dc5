//! `ai.tessera.LightningIndexer`, `TopKAttention` and `MergeAttention`
//! through ONNX Runtime (the `ort` crate, loading `libonnxruntime` from
//! `ORT_DYLIB_PATH`) and the built plugin: numbers against f64 references
//! written here, dense equivalence, an exact merge of two key halves, a
//! table of bad inputs with the message each must give, and threads sharing
//! one session.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use half::bf16;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use tessera_core::fp8::{dequantize, quantize, SCALE_GROUP};
use tessera_core::{Scales, E4M3};
use tessera_tests::onnx::{self, elem, Attr, Node};
use tessera_tests::{ort_dylib, plugin_path, Rng};

fn env() -> Option<&'static Environment> {
    static ENV: OnceLock<Option<Environment>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = ort_dylib()?;
        Some(
            ort::init_from(path)
                .expect("load libonnxruntime")
                .build()
                .expect("ORT environment"),
        )
    })
    .as_ref()
}

/// An input: name, element type, value.
type In = (&'static str, i32, DynValue);

fn f32_in(name: &'static str, shape: &[usize], x: Vec<f32>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::FLOAT,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

fn i64_in(name: &'static str, shape: &[usize], x: Vec<i64>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::INT64,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

fn i32_in(name: &'static str, shape: &[usize], x: Vec<i32>) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    (
        name,
        elem::INT32,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

/// An output read back.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    F(Vec<i64>, Vec<f32>),
    I(Vec<i64>, Vec<i64>),
}

impl Out {
    fn f(&self) -> &[f32] {
        match self {
            Out::F(_, x) => x,
            Out::I(..) => panic!("not a float output"),
        }
    }

    fn i(&self) -> (&[i64], &[i64]) {
        match self {
            Out::I(s, x) => (s, x),
            Out::F(..) => panic!("not an int64 output"),
        }
    }
}

/// A one-node model: `op` with `attrs` on `inputs`, producing `outputs`
/// (`("", 0)` leaves a slot out).
fn model(
    op: &str,
    attrs: &[(&str, i64)],
    inputs: &[(&str, i32)],
    outputs: &[(&str, i32)],
) -> Vec<u8> {
    let node = Node {
        op_type: op.into(),
        domain: "ai.tessera".into(),
        inputs: inputs.iter().map(|(n, _)| n.to_string()).collect(),
        outputs: outputs.iter().map(|(n, _)| n.to_string()).collect(),
        attrs: attrs
            .iter()
            .map(|(n, v)| (n.to_string(), Attr::Int(*v)))
            .collect(),
    };
    let outs: Vec<(&str, i32)> = outputs
        .iter()
        .copied()
        .filter(|(n, _)| !n.is_empty())
        .collect();
    onnx::model(&node, inputs, &outs, &[("", 21), ("ai.tessera", 1)])
}

fn session(env: &Environment, model: &[u8], threads: usize) -> Result<Session, String> {
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_operator_library(plugin_path())
        .map_err(|e| e.to_string())?
        .commit_from_memory(model)
        .map_err(|e| e.to_string())
}

fn run_in(
    sess: &mut Session,
    inputs: Vec<In>,
    outputs: &[(&str, i32)],
) -> Result<Vec<Out>, String> {
    let feeds: Vec<(String, SessionInputValue<'_>)> = inputs
        .into_iter()
        .map(|(n, _, v)| (n.to_string(), v.into()))
        .collect();
    let out = sess.run(feeds).map_err(|e| e.to_string())?;
    Ok(outputs
        .iter()
        .filter(|(n, _)| !n.is_empty())
        .map(|&(n, t)| {
            if t == elem::INT64 {
                let (s, d) = out[n].try_extract_tensor::<i64>().unwrap();
                Out::I(s.to_vec(), d.to_vec())
            } else {
                let (s, d) = out[n].try_extract_tensor::<f32>().unwrap();
                Out::F(s.to_vec(), d.to_vec())
            }
        })
        .collect())
}

/// Build, load and run one node.
fn run(
    op: &str,
    attrs: &[(&str, i64)],
    inputs: Vec<In>,
    outputs: &[(&str, i32)],
    threads: usize,
) -> Result<Vec<Out>, String> {
    let env = env().expect("checked by the caller");
    let decl: Vec<(&str, i32)> = inputs.iter().map(|(n, t, _)| (*n, *t)).collect();
    let mut sess = session(env, &model(op, attrs, &decl, outputs), threads)?;
    run_in(&mut sess, inputs, outputs)
}

/// Query `i` of `sq` sees key `j` of `skv` (bottom-right causal rule).
fn visible(causal: bool, i: usize, sq: usize, j: usize, skv: usize) -> bool {
    !causal || j + sq <= i + skv
}

/// f64 attention of BHSD q/k/v over the keys `allowed(b, h, i, j)` admits;
/// returns Y and lse (`-inf`, Y = 0 for a row with no key).
#[allow(clippy::too_many_arguments)]
fn reference(
    (b, hq, hkv, sq, skv, d): (usize, usize, usize, usize, usize, usize),
    q: &[f32],
    k: &[f32],
    v: &[f32],
    allowed: impl Fn(usize, usize, usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d as f64).sqrt();
    let (mut y, mut lse) = (
        vec![0.0; b * hq * sq * d],
        vec![f64::NEG_INFINITY; b * hq * sq],
    );
    for bi in 0..b {
        for h in 0..hq {
            let hk = h / (hq / hkv);
            for i in 0..sq {
                let qr = &q[((bi * hq + h) * sq + i) * d..][..d];
                let s: Vec<(usize, f64)> = (0..skv)
                    .filter(|&j| allowed(bi, h, i, j))
                    .map(|j| {
                        let kr = &k[((bi * hkv + hk) * skv + j) * d..][..d];
                        (
                            j,
                            scale
                                * qr.iter()
                                    .zip(kr)
                                    .map(|(&a, &c)| a as f64 * c as f64)
                                    .sum::<f64>(),
                        )
                    })
                    .collect();
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().fold(f64::NEG_INFINITY, |m, &(_, x)| m.max(x));
                let l: f64 = s.iter().map(|&(_, x)| (x - m).exp()).sum();
                let out = &mut y[((bi * hq + h) * sq + i) * d..][..d];
                for &(j, x) in &s {
                    let p = (x - m).exp() / l;
                    let vr = &v[((bi * hkv + hk) * skv + j) * d..][..d];
                    out.iter_mut()
                        .zip(vr)
                        .for_each(|(o, &c)| *o += p * c as f64);
                }
                lse[(bi * hq + h) * sq + i] = m + l.ln();
            }
        }
    }
    (y, lse)
}

fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g == f32::NEG_INFINITY && w == f64::NEG_INFINITY)
            || (g as f64 - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{name}[{i}] = {g}, want {w}");
    }
}

/// Random duplicate-free key lists of width `k` with some `-1` padding.
fn random_lists(rng: &mut Rng, rows: usize, skv: usize, k: usize) -> Vec<i64> {
    let mut out = vec![-1i64; rows * k];
    for row in out.chunks_exact_mut(k) {
        let n = rng.below(k.min(skv) + 1);
        let mut keys = BTreeSet::new();
        while keys.len() < n {
            keys.insert(rng.below(skv) as i64);
        }
        for (slot, j) in row.iter_mut().zip(keys.into_iter().rev()) {
            *slot = j; // descending: the op must not rely on order
        }
    }
    out
}

#[test]
fn indexer_e4m3_top_k_matches_the_reference_on_dequantised_values() {
    if env().is_none() {
        return;
    }
    let (b, sq, skv, hi, di, top_k) = (2, 21, 90, 4, 160, 9);
    let mut rng = Rng::new(1);
    let q = rng.vec(b * sq * hi * di);
    let k = rng.vec(b * skv * di);
    let w: Vec<f32> = (0..b * sq * hi)
        .map(|_| 0.55 + 0.45 * rng.uniform())
        .collect();
    let out = run(
        "LightningIndexer",
        &[("top_k", top_k as i64), ("is_causal", 1)],
        vec![
            f32_in("index_q", &[b, sq, hi, di], q.clone()),
            f32_in("index_k", &[b, skv, di], k.clone()),
            f32_in("index_w", &[b, sq, hi], w.clone()),
        ],
        &[("indices", elem::INT64)],
        2,
    )
    .unwrap();
    let (shape, idx) = out[0].i();
    assert_eq!(shape, [b as i64, sq as i64, top_k as i64]);
    // What the op computes with: per-128 E4M3 quantisation, then exact values.
    let dq = |x: &[f32]| {
        let mut codes = vec![E4M3::default(); x.len()];
        let mut scales = vec![0.0; x.len() / di * di.div_ceil(SCALE_GROUP)];
        quantize(x, di, SCALE_GROUP, &mut codes, &mut scales).unwrap();
        let mut back = vec![0.0; x.len()];
        let s = Scales {
            values: &scales,
            group: SCALE_GROUP,
        };
        dequantize(&codes, di, s, &mut back).unwrap();
        back
    };
    let (qd, kd) = (dq(&q), dq(&k));
    for bi in 0..b {
        for t in 0..sq {
            let scores: Vec<f64> = (0..skv)
                .map(|s| {
                    if !visible(true, t, sq, s, skv) {
                        return f64::NEG_INFINITY;
                    }
                    (0..hi)
                        .map(|j| {
                            let qr = &qd[((bi * sq + t) * hi + j) * di..][..di];
                            let kr = &kd[(bi * skv + s) * di..][..di];
                            let dot: f64 =
                                qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                            w[(bi * sq + t) * hi + j] as f64 * dot.max(0.0)
                        })
                        .sum()
                })
                .collect();
            let mut finite: Vec<f64> = scores.iter().copied().filter(|x| x.is_finite()).collect();
            finite.sort_by(|a, c| c.partial_cmp(a).unwrap());
            let n = top_k.min(finite.len());
            let row = &idx[(bi * sq + t) * top_k..][..top_k];
            assert!(
                row[n..].iter().all(|&x| x == -1),
                "({bi},{t}) padding: {row:?}"
            );
            assert!(
                row[..n].windows(2).all(|p| p[0] < p[1]),
                "({bi},{t}) ascending: {row:?}"
            );
            let kth = finite[n - 1];
            for &j in &row[..n] {
                assert!(
                    scores[j as usize] >= kth - 1e-4 * finite[0].abs(),
                    "({bi},{t}) key {j} is not in the top {n}"
                );
            }
        }
    }
}

/// A bfloat16 input holding `x` rounded to bfloat16.
fn bf16_in(name: &'static str, shape: &[usize], x: &[f32]) -> In {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let x: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    (
        name,
        elem::BFLOAT16,
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    )
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

#[test]
fn bfloat16_inputs_run_as_their_exact_values() {
    if env().is_none() {
        return;
    }
    let mut rng = Rng::new(5);
    // LightningIndexer: bfloat16 operands pick the same keys as their f32 values.
    let (b, sq, skv, hi, di) = (1, 24, 60, 2, 32);
    let (q, k, w) = (
        rng.vec(b * sq * hi * di),
        rng.vec(b * skv * di),
        rng.vec(b * sq * hi),
    );
    let attrs = [("top_k", 8), ("is_causal", 1)];
    let outputs = [("indices", elem::INT64)];
    let half = run(
        "LightningIndexer",
        &attrs,
        vec![
            bf16_in("index_q", &[b, sq, hi, di], &q),
            bf16_in("index_k", &[b, skv, di], &k),
            bf16_in("index_w", &[b, sq, hi], &w),
        ],
        &outputs,
        2,
    )
    .unwrap();
    let wide = run(
        "LightningIndexer",
        &attrs,
        vec![
            f32_in("index_q", &[b, sq, hi, di], round_bf16(&q)),
            f32_in("index_k", &[b, skv, di], round_bf16(&k)),
            f32_in("index_w", &[b, sq, hi], round_bf16(&w)),
        ],
        &outputs,
        2,
    )
    .unwrap();
    assert_eq!(half, wide);

    // TopKAttention (training-free, every key) on bfloat16: dense attention
    // to bfloat16 precision.
    let (hq, d) = (2, 16);
    let (q, k, v) = (
        round_bf16(&rng.vec(hq * sq * d)),
        round_bf16(&rng.vec(hq * skv * d)),
        round_bf16(&rng.vec(hq * skv * d)),
    );
    let env = env().unwrap();
    let decl = [
        ("Q", elem::BFLOAT16),
        ("K", elem::BFLOAT16),
        ("V", elem::BFLOAT16),
    ];
    let m = model(
        "TopKAttention",
        &[("is_causal", 1), ("top_k", skv as i64)],
        &decl,
        &[("Y", elem::BFLOAT16)],
    );
    let mut sess = session(env, &m, 2).unwrap();
    let feeds: Vec<(String, SessionInputValue<'_>)> = vec![
        bf16_in("Q", &[1, hq, sq, d], &q),
        bf16_in("K", &[1, hq, skv, d], &k),
        bf16_in("V", &[1, hq, skv, d], &v),
    ]
    .into_iter()
    .map(|(n, _, x)| (n.to_string(), x.into()))
    .collect();
    let out = sess.run(feeds).unwrap();
    let (_, y) = out["Y"].try_extract_tensor::<bf16>().unwrap();
    let y: Vec<f32> = y.iter().map(|x| x.to_f32()).collect();
    let (want, _) = reference((1, hq, hq, sq, skv, d), &q, &k, &v, |_, _, i, j| {
        visible(true, i, sq, j, skv)
    });
    assert_close("Y (bfloat16)", &y, &want, 8e-3);
}

#[test]
fn topk_index_mode_matches_the_masked_reference() {
    if env().is_none() {
        return;
    }
    let (b, hq, hkv, sq, skv, d, k) = (2, 4, 2, 11, 130, 16, 30);
    let mut rng = Rng::new(2);
    let (q, kk, v) = (
        rng.vec(b * hq * sq * d),
        rng.vec(b * hkv * skv * d),
        rng.vec(b * hkv * skv * d),
    );
    let lists = random_lists(&mut rng, b * sq, skv, k);
    let outputs = [
        ("Y", elem::FLOAT),
        ("selected", elem::INT64),
        ("lse", elem::FLOAT),
    ];
    let out = run(
        "TopKAttention",
        &[("is_causal", 1), ("top_k", k as i64)],
        vec![
            f32_in("Q", &[b, hq, sq, d], q.clone()),
            f32_in("K", &[b, hkv, skv, d], kk.clone()),
            f32_in("V", &[b, hkv, skv, d], v.clone()),
            i64_in("indices", &[b, sq, k], lists.clone()),
        ],
        &outputs,
        2,
    )
    .unwrap();
    let listed =
        |bi: usize, i: usize, j: usize| lists[(bi * sq + i) * k..][..k].contains(&(j as i64));
    let (want_y, want_lse) = reference((b, hq, hkv, sq, skv, d), &q, &kk, &v, |bi, _, i, j| {
        listed(bi, i, j) && visible(true, i, sq, j, skv)
    });
    assert_close("Y", out[0].f(), &want_y, 2e-5);
    assert_close("lse", out[2].f(), &want_lse, 1e-5);
    let (shape, sel) = out[1].i();
    assert_eq!(shape, [b as i64, hkv as i64, sq as i64, k as i64]);
    for bi in 0..b {
        for hk in 0..hkv {
            for i in 0..sq {
                let want: Vec<i64> = (0..skv)
                    .filter(|&j| listed(bi, i, j) && visible(true, i, sq, j, skv))
                    .map(|j| j as i64)
                    .chain(std::iter::repeat(-1))
                    .take(k)
                    .collect();
                assert_eq!(
                    sel[((bi * hkv + hk) * sq + i) * k..][..k],
                    want[..],
                    "({bi},{hk},{i})"
                );
            }
        }
    }
}

#[test]
fn training_free_with_every_key_is_dense_attention_and_threads_agree() {
    if env().is_none() {
        return;
    }
    let (b, hq, hkv, sq, skv, d) = (1, 4, 2, 70, 200, 32);
    let mut rng = Rng::new(3);
    let (q, k, v) = (
        rng.vec(b * hq * sq * d),
        rng.vec(b * hkv * skv * d),
        rng.vec(b * hkv * skv * d),
    );
    let inputs = || {
        vec![
            f32_in("Q", &[b, hq, sq, d], q.clone()),
            f32_in("K", &[b, hkv, skv, d], k.clone()),
            f32_in("V", &[b, hkv, skv, d], v.clone()),
        ]
    };
    let outputs = [("Y", elem::FLOAT), ("", 0), ("lse", elem::FLOAT)];
    let attrs = [("is_causal", 1), ("top_k", skv as i64)];
    let one = run("TopKAttention", &attrs, inputs(), &outputs, 1).unwrap();
    let (want_y, want_lse) = reference((b, hq, hkv, sq, skv, d), &q, &k, &v, |_, _, i, j| {
        visible(true, i, sq, j, skv)
    });
    assert_close("Y", one[0].f(), &want_y, 2e-5);
    assert_close("lse", one[1].f(), &want_lse, 1e-5);

    // Sparse (top_k = 64 of 200 keys) from 8 threads sharing one session,
    // each session on 2 intra-op threads: identical to one thread.
    let env = env().unwrap();
    let small = [
        ("is_causal", 1),
        ("top_k", 64),
        ("left_window_size", 16),
        ("num_global_tokens", 4),
    ];
    let decl = [("Q", elem::FLOAT), ("K", elem::FLOAT), ("V", elem::FLOAT)];
    let m = model("TopKAttention", &small, &decl, &outputs);
    let single = run_in(&mut session(env, &m, 1).unwrap(), inputs(), &outputs).unwrap();
    let shared = std::sync::Mutex::new(session(env, &m, 2).unwrap());
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (shared, single, m, inputs, outputs) = (&shared, &single, &m, &inputs, &outputs);
            s.spawn(move || {
                let mut own = session(env, m, 2).unwrap();
                assert_eq!(&run_in(&mut own, inputs(), outputs).unwrap(), single);
                let got = run_in(&mut shared.lock().unwrap(), inputs(), outputs).unwrap();
                assert_eq!(&got, single);
            });
        }
    });
}

#[test]
fn merging_two_key_halves_equals_attention_over_all_keys() {
    if env().is_none() {
        return;
    }
    let (b, h, sq, skv, d) = (1, 2, 9, 40, 8);
    let mut rng = Rng::new(4);
    let (q, k, v) = (
        rng.vec(b * h * sq * d),
        rng.vec(b * h * skv * d),
        rng.vec(b * h * skv * d),
    );
    let half = |keys: std::ops::Range<usize>| -> Vec<Out> {
        let width = keys.len();
        let lists: Vec<i64> = (0..b * sq)
            .flat_map(|_| keys.clone().map(|j| j as i64))
            .collect();
        run(
            "TopKAttention",
            &[],
            vec![
                f32_in("Q", &[b, h, sq, d], q.clone()),
                f32_in("K", &[b, h, skv, d], k.clone()),
                f32_in("V", &[b, h, skv, d], v.clone()),
                i64_in("indices", &[b, sq, width], lists),
            ],
            &[("Y", elem::FLOAT), ("", 0), ("lse", elem::FLOAT)],
            2,
        )
        .unwrap()
    };
    let (a, c) = (half(0..15), half(15..skv));
    let merged = run(
        "MergeAttention",
        &[],
        vec![
            f32_in("Y_a", &[b, h, sq, d], a[0].f().to_vec()),
            f32_in("lse_a", &[b, h, sq], a[1].f().to_vec()),
            f32_in("Y_b", &[b, h, sq, d], c[0].f().to_vec()),
            f32_in("lse_b", &[b, h, sq], c[1].f().to_vec()),
        ],
        &[("Y", elem::FLOAT), ("lse", elem::FLOAT)],
        2,
    )
    .unwrap();
    let (want_y, want_lse) = reference((b, h, h, sq, skv, d), &q, &k, &v, |_, _, _, _| true);
    assert_close("Y", merged[0].f(), &want_y, 2e-5);
    assert_close("lse", merged[1].f(), &want_lse, 1e-5);
}

#[test]
fn bad_inputs_fail_with_a_message_naming_input_and_rule() {
    if env().is_none() {
        return;
    }
    let indexer = |q: &[usize], k: &[usize], w: &[usize]| {
        let n = |s: &[usize]| s.iter().product::<usize>();
        vec![
            f32_in("index_q", q, vec![0.5; n(q)]),
            f32_in("index_k", k, vec![0.5; n(k)]),
            f32_in("index_w", w, vec![0.5; n(w)]),
        ]
    };
    let ok_ix = || indexer(&[1, 5, 2, 8], &[1, 7, 8], &[1, 5, 2]);
    let qkv = || {
        vec![
            f32_in("Q", &[1, 2, 4, 8], vec![0.5; 64]),
            f32_in("K", &[1, 2, 6, 8], vec![0.5; 96]),
            f32_in("V", &[1, 2, 6, 8], vec![0.5; 96]),
        ]
    };
    let with = |extra: In| {
        let mut v = qkv();
        v.push(extra);
        v
    };
    let merge = |lse: &[usize]| {
        vec![
            f32_in("Y_a", &[1, 2, 3, 4], vec![1.0; 24]),
            f32_in("lse_a", lse, vec![0.0; lse.iter().product()]),
            f32_in("Y_b", &[1, 2, 3, 4], vec![1.0; 24]),
            f32_in("lse_b", lse, vec![0.0; lse.iter().product()]),
        ]
    };
    let ix_out = [("indices", elem::INT64)];
    let at_out = [("Y", elem::FLOAT)];
    let lists = |rows: Vec<i64>| i64_in("indices", &[1, 4, 2], rows);
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &[(&str, i64)], Vec<In>, &[(&str, i32)], &str)> = vec![
        (
            "LightningIndexer",
            &[("top_k", 0)],
            ok_ix(),
            &ix_out,
            "top_k must be >= 1, got 0",
        ),
        (
            "LightningIndexer",
            &[],
            ok_ix(),
            &ix_out,
            "top_k is required",
        ),
        (
            "LightningIndexer",
            &[("top_k", 2)],
            indexer(&[1, 5, 2, 8], &[1, 7, 9], &[1, 5, 2]),
            &ix_out,
            "index_k: shape [1, 7, 9]",
        ),
        (
            "LightningIndexer",
            &[("top_k", 2)],
            indexer(&[1, 5, 2, 8], &[1, 7, 8], &[1, 4, 2]),
            &ix_out,
            "index_w: shape [1, 4, 2] must be",
        ),
        (
            "LightningIndexer",
            &[("top_k", 2)],
            indexer(&[1, 5, 16], &[1, 7, 8], &[1, 5, 2]),
            &ix_out,
            "index_q: rank must be 4",
        ),
        (
            "TopKAttention",
            &[("top_k", 0)],
            qkv(),
            &at_out,
            "top_k must be >= 1, got 0",
        ),
        (
            "TopKAttention",
            &[],
            qkv(),
            &at_out,
            "top_k is required without an indices input",
        ),
        (
            "TopKAttention",
            &[],
            with(lists(vec![0, 1, 2, 6, 0, 1, 0, 1])),
            &at_out,
            "holds 6, outside [0, 6)",
        ),
        (
            "TopKAttention",
            &[],
            with(lists(vec![0, 1, 4, 4, 0, 1, 0, 1])),
            &at_out,
            "names key 4 more than once",
        ),
        (
            "TopKAttention",
            &[],
            with(i32_in("indices", &[1, 4, 2], vec![0; 8])),
            &at_out,
            "indices: element type int32",
        ),
        (
            "TopKAttention",
            &[],
            with(i64_in("indices", &[1, 5, 2], vec![0; 10])),
            &at_out,
            "indices: shape [1, 5, 2] must be",
        ),
        (
            "TopKAttention",
            &[("top_k", 3)],
            with(lists(vec![0; 8])),
            &at_out,
            "must equal the top_k attribute 3",
        ),
        (
            "MergeAttention",
            &[],
            merge(&[1, 2, 4]),
            &[("Y", elem::FLOAT)],
            "lse_a: shape (1, 2, 4) must be (batch, heads, seq)",
        ),
    ];
    for (op, attrs, inputs, outputs, want) in cases {
        let err = run(op, attrs, inputs, outputs, 1).expect_err(want);
        assert!(
            err.contains(want) && err.contains(&format!("ai.tessera.{op}")),
            "{op}: got {err:?}, want {want:?}"
        );
    }
}
