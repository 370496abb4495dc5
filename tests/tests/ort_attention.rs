//! `ai.tessera.Attention` through ONNX Runtime (the `ort` crate, loading
//! `libonnxruntime` from `ORT_DYLIB_PATH`) and the built plugin: numbers
//! against the f64 ONNX oracle, a table of bad inputs with the message each
//! must give, and threads over several sessions.

use std::sync::OnceLock;

use half::{bf16, f16};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use tessera_tests::onnx::{self, elem, Attr, Node};
use tessera_tests::oracle::{Mask, Problem};
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

/// Element type of a case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    Bf16,
}

impl Dt {
    fn code(self) -> i32 {
        match self {
            Dt::F32 => elem::FLOAT,
            Dt::F16 => elem::FLOAT16,
            Dt::Bf16 => elem::BFLOAT16,
        }
    }

    /// Round to the format (so the oracle sees exactly what the op sees).
    fn round(self, x: &[f32]) -> Vec<f32> {
        match self {
            Dt::F32 => x.to_vec(),
            Dt::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            Dt::Bf16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        }
    }

    fn tensor(self, shape: Vec<i64>, x: &[f32]) -> DynValue {
        match self {
            Dt::F32 => Tensor::from_array((shape, x.to_vec())).unwrap().into_dyn(),
            Dt::F16 => Tensor::from_array((
                shape,
                x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
            ))
            .unwrap()
            .into_dyn(),
            Dt::Bf16 => Tensor::from_array((
                shape,
                x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(),
            ))
            .unwrap()
            .into_dyn(),
        }
    }

    fn read(self, v: &DynValue) -> (Vec<i64>, Vec<f32>) {
        match self {
            Dt::F32 => {
                let (s, d) = v.try_extract_tensor::<f32>().unwrap();
                (s.to_vec(), d.to_vec())
            }
            Dt::F16 => {
                let (s, d) = v.try_extract_tensor::<f16>().unwrap();
                (s.to_vec(), d.iter().map(|x| x.to_f32()).collect())
            }
            Dt::Bf16 => {
                let (s, d) = v.try_extract_tensor::<bf16>().unwrap();
                (s.to_vec(), d.iter().map(|x| x.to_f32()).collect())
            }
        }
    }

    /// Error allowed against the f64 oracle: f32 accumulation, then one
    /// rounding to the output format.
    fn tol(self) -> f64 {
        match self {
            Dt::F32 => 2e-5,
            Dt::F16 => 2e-3,
            Dt::Bf16 => 1.6e-2,
        }
    }
}

/// One numeric case: a problem, its layout and type, and whether to ask
/// for present_key/present_value and softmax_lse.
struct Case {
    name: &'static str,
    p: Problem,
    three_d: bool,
    dt: Dt,
    presents: bool,
    lse: bool,
}

fn base(b: usize, hq: usize, hkv: usize, sq: usize, skv: usize, d: usize, dv: usize) -> Problem {
    Problem {
        batch: b,
        q_heads: hq,
        kv_heads: hkv,
        q_len: sq,
        kv_new: skv,
        head_dim: d,
        v_head_dim: dv,
        left: -1,
        right: -1,
        ..Default::default()
    }
}

/// `(B, H, S, X)` → `(B, S, H·X)`.
fn to_bshd(x: &[f32], b: usize, h: usize, s: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let src = ((bi * h + hi) * s + si) * d;
                let dst = ((bi * s + si) * h + hi) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}

/// Keys `[from, to)` of a `(B, H, T, X)` tensor.
fn seq_slice(
    x: &[f32],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    from: usize,
    to: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * h * (to - from) * d);
    for bh in 0..b * h {
        out.extend_from_slice(&x[(bh * t + from) * d..(bh * t + to) * d]);
    }
    out
}

fn run_case(env: &Environment, c: &Case, seed: u64) {
    let p = &c.p;
    let mut rng = Rng::new(seed);
    let t = p.total();
    let (b, hq, hkv, sq, d, dv) = (
        p.batch,
        p.q_heads,
        p.kv_heads,
        p.q_len,
        p.head_dim,
        p.v_head_dim,
    );
    let q = c.dt.round(&rng.vec(b * hq * sq * d));
    let k = c.dt.round(&rng.vec(b * hkv * t * d));
    let v = c.dt.round(&rng.vec(b * hkv * t * dv));
    let (want_y, want_lse) = p.attention(&q, &k, &v);

    let mut attrs = vec![("is_causal".to_string(), Attr::Int(p.causal as i64))];
    if let Some(s) = p.scale {
        attrs.push(("scale".into(), Attr::Float(s)));
    }
    if p.softcap > 0.0 {
        attrs.push(("softcap".into(), Attr::Float(p.softcap)));
    }
    attrs.push(("left_window_size".into(), Attr::Int(p.left)));
    attrs.push(("right_window_size".into(), Attr::Int(p.right)));
    attrs.push(("num_global_tokens".into(), Attr::Int(p.globals as i64)));
    if c.three_d {
        attrs.push(("q_num_heads".into(), Attr::Int(hq as i64)));
        attrs.push(("kv_num_heads".into(), Attr::Int(hkv as i64)));
    }
    let code = c.dt.code();
    let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::new();
    let mut inputs = vec![("Q", code), ("K", code), ("V", code)];
    let (k_new, v_new) = (
        seq_slice(&k, b, hkv, t, d, p.past, t),
        seq_slice(&v, b, hkv, t, dv, p.past, t),
    );
    if c.three_d {
        feeds.push((
            "Q".into(),
            c.dt.tensor(
                vec![b as i64, sq as i64, (hq * d) as i64],
                &to_bshd(&q, b, hq, sq, d),
            )
            .into(),
        ));
        feeds.push((
            "K".into(),
            c.dt.tensor(
                vec![b as i64, p.kv_new as i64, (hkv * d) as i64],
                &to_bshd(&k_new, b, hkv, p.kv_new, d),
            )
            .into(),
        ));
        feeds.push((
            "V".into(),
            c.dt.tensor(
                vec![b as i64, p.kv_new as i64, (hkv * dv) as i64],
                &to_bshd(&v_new, b, hkv, p.kv_new, dv),
            )
            .into(),
        ));
    } else {
        feeds.push((
            "Q".into(),
            c.dt.tensor(vec![b as i64, hq as i64, sq as i64, d as i64], &q)
                .into(),
        ));
        feeds.push((
            "K".into(),
            c.dt.tensor(
                vec![b as i64, hkv as i64, p.kv_new as i64, d as i64],
                &k_new,
            )
            .into(),
        ));
        feeds.push((
            "V".into(),
            c.dt.tensor(
                vec![b as i64, hkv as i64, p.kv_new as i64, dv as i64],
                &v_new,
            )
            .into(),
        ));
    }
    let mut node_in: Vec<String> = vec![
        "Q".into(),
        "K".into(),
        "V".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ];
    match &p.mask {
        Some(Mask::Bool(m, dims)) => {
            node_in[3] = "attn_mask".into();
            inputs.push(("attn_mask", elem::BOOL));
            let shape = dims.iter().map(|&x| x as i64).collect::<Vec<_>>();
            feeds.push((
                "attn_mask".into(),
                Tensor::from_array((shape, m.clone()))
                    .unwrap()
                    .into_dyn()
                    .into(),
            ));
        }
        Some(Mask::Float(m, dims)) => {
            node_in[3] = "attn_mask".into();
            inputs.push(("attn_mask", elem::FLOAT));
            let shape = dims.iter().map(|&x| x as i64).collect::<Vec<_>>();
            feeds.push((
                "attn_mask".into(),
                Tensor::from_array((shape, m.clone()))
                    .unwrap()
                    .into_dyn()
                    .into(),
            ));
        }
        None => {}
    }
    if p.past > 0 {
        node_in[4] = "past_key".into();
        node_in[5] = "past_value".into();
        inputs.push(("past_key", code));
        inputs.push(("past_value", code));
        let pk = seq_slice(&k, b, hkv, t, d, 0, p.past);
        let pv = seq_slice(&v, b, hkv, t, dv, 0, p.past);
        feeds.push((
            "past_key".into(),
            c.dt.tensor(vec![b as i64, hkv as i64, p.past as i64, d as i64], &pk)
                .into(),
        ));
        feeds.push((
            "past_value".into(),
            c.dt.tensor(vec![b as i64, hkv as i64, p.past as i64, dv as i64], &pv)
                .into(),
        ));
    }
    if let Some(n) = &p.nonpad {
        node_in[6] = "nonpad_kv_seqlen".into();
        inputs.push(("nonpad_kv_seqlen", elem::INT64));
        feeds.push((
            "nonpad_kv_seqlen".into(),
            Tensor::from_array((vec![b as i64], n.clone()))
                .unwrap()
                .into_dyn()
                .into(),
        ));
    }
    while node_in.last().is_some_and(|s| s.is_empty()) {
        node_in.pop();
    }
    let mut node_out: Vec<String> = vec!["Y".into()];
    let mut outputs = vec![("Y", code)];
    if c.presents || c.lse {
        node_out.extend(["present_key".into(), "present_value".into()]);
        if !c.presents {
            node_out[1].clear();
            node_out[2].clear();
        } else {
            outputs.extend([("present_key", code), ("present_value", code)]);
        }
    }
    if c.lse {
        node_out.push("softmax_lse".into());
        outputs.push(("softmax_lse", elem::FLOAT));
    }
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: node_in,
        outputs: node_out,
        attrs,
    };
    let model = onnx::model(&node, &inputs, &outputs, &[("", 21), ("ai.tessera", 1)]);
    let mut sess = session(env, &model, 2).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let out = sess
        .run(feeds)
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));

    let (shape, mut y) = c.dt.read(&out["Y"]);
    if c.three_d {
        assert_eq!(
            shape,
            vec![b as i64, sq as i64, (hq * dv) as i64],
            "{}",
            c.name
        );
        // (B, S, H·Dv) → (B, H, S, Dv) for the comparison.
        let mut bhsd = vec![0.0; y.len()];
        for bi in 0..b {
            for hi in 0..hq {
                for si in 0..sq {
                    let src = ((bi * sq + si) * hq + hi) * dv;
                    let dst = ((bi * hq + hi) * sq + si) * dv;
                    bhsd[dst..dst + dv].copy_from_slice(&y[src..src + dv]);
                }
            }
        }
        y = bhsd;
    } else {
        assert_eq!(
            shape,
            vec![b as i64, hq as i64, sq as i64, dv as i64],
            "{}",
            c.name
        );
    }
    let tol = c.dt.tol();
    for (i, (&g, &w)) in y.iter().zip(&want_y).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{}: Y[{i}] = {g}, want {w}",
            c.name
        );
    }
    if c.lse {
        let (_, l) = Dt::F32.read(&out["softmax_lse"]);
        for (i, (&g, &w)) in l.iter().zip(&want_lse).enumerate() {
            let ok = (g == f32::NEG_INFINITY && w == f64::NEG_INFINITY)
                || (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs());
            assert!(ok, "{}: lse[{i}] = {g}, want {w}", c.name);
        }
    }
    if c.presents {
        let (s, pk) = c.dt.read(&out["present_key"]);
        assert_eq!(
            s,
            vec![b as i64, hkv as i64, t as i64, d as i64],
            "{}: present_key shape",
            c.name
        );
        assert_eq!(pk, k, "{}: present_key = past ++ K", c.name);
        let (_, pv) = c.dt.read(&out["present_value"]);
        assert_eq!(pv, v, "{}: present_value = past ++ V", c.name);
    }
}

fn numeric_cases() -> Vec<Case> {
    let mut rng = Rng::new(7);
    let mut cases = Vec::new();
    let c = |name, p, three_d, dt| Case {
        name,
        p,
        three_d,
        dt,
        presents: false,
        lse: true,
    };
    cases.push(c(
        "4d gqa dv!=d",
        base(2, 4, 2, 37, 53, 16, 24),
        false,
        Dt::F32,
    ));
    cases.push(c(
        "3d causal",
        Problem {
            causal: true,
            ..base(2, 6, 3, 45, 45, 8, 8)
        },
        true,
        Dt::F32,
    ));
    cases.push(c(
        "window+globals",
        Problem {
            causal: true,
            left: 5,
            right: 0,
            globals: 2,
            ..base(1, 2, 1, 70, 70, 16, 16)
        },
        false,
        Dt::F32,
    ));
    cases.push(c(
        "bidirectional window",
        Problem {
            left: 3,
            right: 7,
            ..base(1, 2, 2, 40, 50, 8, 8)
        },
        false,
        Dt::F32,
    ));
    cases.push(c(
        "softcap+scale",
        Problem {
            softcap: 1.5,
            scale: Some(0.7),
            ..base(1, 2, 1, 20, 33, 8, 8)
        },
        false,
        Dt::F32,
    ));
    let (sq, t) = (9, 30);
    let bool_mask: Vec<bool> = (0..sq * t).map(|_| rng.below(4) != 0).collect();
    cases.push(c(
        "bool mask (Sq, T) + causal",
        Problem {
            causal: true,
            mask: Some(Mask::Bool(bool_mask, [1, 1, sq, t])),
            ..base(2, 2, 1, sq, t, 8, 8)
        },
        false,
        Dt::F32,
    ));
    let float_mask: Vec<f32> = (0..2 * 3 * 20).map(|_| rng.uniform() * 2.0).collect();
    cases.push(c(
        "float mask (B,1,Sq,<T) padded",
        Problem {
            mask: Some(Mask::Float(float_mask, [2, 1, 3, 20])),
            ..base(2, 2, 2, 3, 25, 8, 8)
        },
        false,
        Dt::F32,
    ));
    cases.push(Case {
        presents: true,
        ..c(
            "past+present decode",
            Problem {
                causal: true,
                past: 20,
                ..base(2, 4, 2, 3, 3, 8, 8)
            },
            false,
            Dt::F32,
        )
    });
    cases.push(c(
        "nonpad external cache",
        Problem {
            causal: true,
            nonpad: Some(vec![40, 17]),
            ..base(2, 2, 1, 4, 40, 8, 8)
        },
        false,
        Dt::F32,
    ));
    cases.push(c(
        "decode split-KV",
        Problem {
            causal: true,
            past: 3000,
            ..base(1, 2, 1, 1, 1, 64, 64)
        },
        false,
        Dt::F32,
    ));
    cases.push(c(
        "prefill many tiles",
        Problem {
            causal: true,
            ..base(1, 3, 1, 200, 200, 32, 32)
        },
        false,
        Dt::F32,
    ));
    cases.push(c(
        "f16",
        Problem {
            causal: true,
            ..base(2, 4, 2, 37, 53, 16, 16)
        },
        false,
        Dt::F16,
    ));
    cases.push(c("bf16 3d", base(1, 4, 4, 20, 20, 8, 8), true, Dt::Bf16));
    cases
}

#[test]
fn matches_the_f64_onnx_oracle() {
    let Some(env) = env() else { return };
    for (i, c) in numeric_cases().iter().enumerate() {
        run_case(env, c, 100 + i as u64);
    }
}

/// Random shapes and random rules: every combination of layout, GQA,
/// causal, windows, globals, masks, cache, padding and element type that
/// the generator draws must match the oracle.
#[test]
fn random_problems_match_the_oracle() {
    let Some(env) = env() else { return };
    let mut rng = Rng::new(2024);
    for n in 0..40 {
        let kv_heads = 1 + rng.below(3);
        let q_heads = kv_heads * (1 + rng.below(3));
        let d = [4, 8, 16, 64][rng.below(4)];
        let dv = if rng.below(3) == 0 {
            [8, 24][rng.below(2)]
        } else {
            d
        };
        let mut p = base(
            1 + rng.below(2),
            q_heads,
            kv_heads,
            1 + rng.below(90),
            1 + rng.below(150),
            d,
            dv,
        );
        p.causal = rng.below(2) == 0;
        p.left = [-1, -1, 0, 3, 17][rng.below(5)];
        p.right = [-1, -1, 0, 5][rng.below(4)];
        p.globals = [0, 0, 1, 4][rng.below(4)];
        p.softcap = [0.0, 0.0, 2.0][rng.below(3)];
        match rng.below(4) {
            0 => p.past = 1 + rng.below(70),
            1 => {
                p.nonpad = Some(
                    (0..p.batch)
                        .map(|_| rng.below(p.kv_new + 1) as i64)
                        .collect(),
                )
            }
            _ => {}
        }
        let t = p.total();
        p.mask = match rng.below(4) {
            0 => {
                let dims = [1, 1, p.q_len, t - rng.below(t.min(3))];
                Some(Mask::Bool(
                    (0..dims[2] * dims[3]).map(|_| rng.below(5) != 0).collect(),
                    dims,
                ))
            }
            1 => {
                let dims = [
                    p.batch,
                    if rng.below(2) == 0 { 1 } else { q_heads },
                    p.q_len,
                    t,
                ];
                Some(Mask::Float(
                    (0..dims.iter().product::<usize>())
                        .map(|_| rng.uniform() * 3.0)
                        .collect(),
                    dims,
                ))
            }
            _ => None,
        };
        let dt = [Dt::F32, Dt::F32, Dt::F16, Dt::Bf16][rng.below(4)];
        let three_d = rng.below(3) == 0;
        let c = Case {
            name: "random",
            p,
            three_d,
            dt,
            presents: rng.below(2) == 0,
            lse: true,
        };
        eprintln!("random case {n}: {:?} 3d={three_d} {:?}", c.dt, c.p);
        run_case(env, &c, 1000 + n);
    }
}

/// A bad-input case: the model, its feeds, and the text the error must hold.
struct Bad {
    name: &'static str,
    attrs: Vec<(&'static str, Attr)>,
    /// (name, element type, shape) for Q, K, V and extras, in node order.
    inputs: Vec<(&'static str, i32, Vec<i64>)>,
    want: &'static str,
}

fn zeros(dt: i32, shape: &[i64]) -> DynValue {
    let n: i64 = shape.iter().product();
    let n = n as usize;
    let shape = shape.to_vec();
    match dt {
        elem::FLOAT => Tensor::from_array((shape, vec![0.5f32; n]))
            .unwrap()
            .into_dyn(),
        elem::FLOAT16 => Tensor::from_array((shape, vec![f16::from_f32(0.5); n]))
            .unwrap()
            .into_dyn(),
        elem::INT32 => Tensor::from_array((shape, vec![1i32; n]))
            .unwrap()
            .into_dyn(),
        elem::INT64 => Tensor::from_array((shape, vec![9i64; n]))
            .unwrap()
            .into_dyn(),
        elem::DOUBLE => Tensor::from_array((shape, vec![0.5f64; n]))
            .unwrap()
            .into_dyn(),
        elem::BOOL => Tensor::from_array((shape, vec![true; n]))
            .unwrap()
            .into_dyn(),
        other => panic!("no test tensor for element type {other}"),
    }
}

fn run_bad(env: &Environment, bad: &Bad) -> String {
    let slots = [
        "Q",
        "K",
        "V",
        "attn_mask",
        "past_key",
        "past_value",
        "nonpad_kv_seqlen",
    ];
    let mut node_in = vec![String::new(); 7];
    for (name, _, _) in &bad.inputs {
        let i = slots.iter().position(|s| s == name).unwrap();
        node_in[i] = name.to_string();
    }
    while node_in.last().is_some_and(|s| s.is_empty()) {
        node_in.pop();
    }
    let attrs = bad
        .attrs
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: node_in,
        outputs: vec!["Y".into()],
        attrs,
    };
    let graph_in: Vec<(&str, i32)> = bad.inputs.iter().map(|(n, t, _)| (*n, *t)).collect();
    let y_type = bad.inputs[0].1;
    let model = onnx::model(
        &node,
        &graph_in,
        &[("Y", y_type)],
        &[("", 21), ("ai.tessera", 1)],
    );
    let mut sess = match session(env, &model, 1) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let feeds: Vec<(String, SessionInputValue<'_>)> = bad
        .inputs
        .iter()
        .map(|(n, t, s)| (n.to_string(), zeros(*t, s).into()))
        .collect();
    let msg = match sess.run(feeds) {
        Ok(_) => String::from("no error"),
        Err(e) => e.to_string(),
    };
    msg
}

#[test]
fn bad_inputs_fail_with_a_message_naming_input_and_rule() {
    let Some(env) = env() else { return };
    const F: i32 = elem::FLOAT;
    let qkv = |q: Vec<i64>, k: Vec<i64>, v: Vec<i64>| vec![("Q", F, q), ("K", F, k), ("V", F, v)];
    let ok = || qkv(vec![1, 2, 4, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8]);
    let with = |mut v: Vec<(&'static str, i32, Vec<i64>)>, extra: (&'static str, i32, Vec<i64>)| {
        v.push(extra);
        v
    };
    let table = vec![
        Bad {
            name: "wrong rank",
            attrs: vec![],
            inputs: qkv(vec![2, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8]),
            want: "Q: rank must be 3",
        },
        Bad {
            name: "K rank differs",
            attrs: vec![],
            inputs: qkv(vec![1, 2, 4, 8], vec![1, 5, 16], vec![1, 2, 5, 8]),
            want: "K: rank 3 must equal Q's rank 4",
        },
        Bad {
            name: "heads do not divide",
            attrs: vec![],
            inputs: qkv(vec![1, 3, 4, 8], vec![1, 2, 5, 8], vec![1, 2, 5, 8]),
            want: "q_num_heads (3) must be a positive multiple of kv_num_heads (2)",
        },
        Bad {
            name: "3-D heads do not divide",
            attrs: vec![
                ("q_num_heads", Attr::Int(3)),
                ("kv_num_heads", Attr::Int(3)),
            ],
            inputs: qkv(vec![1, 4, 16], vec![1, 5, 15], vec![1, 5, 15]),
            want: "Q: hidden size 16 is not a multiple of q_num_heads 3",
        },
        Bad {
            name: "D mismatch",
            attrs: vec![],
            inputs: qkv(vec![1, 2, 4, 8], vec![1, 2, 5, 7], vec![1, 2, 5, 8]),
            want: "D mismatch",
        },
        Bad {
            name: "bad mask shape",
            attrs: vec![],
            inputs: with(ok(), ("attn_mask", F, vec![3, 5])),
            want: "attn_mask: shape (3, 5) does not broadcast",
        },
        Bad {
            name: "mask longer than keys",
            attrs: vec![],
            inputs: with(ok(), ("attn_mask", F, vec![4, 6])),
            want: "attn_mask: last axis 6",
        },
        Bad {
            name: "mask dtype",
            attrs: vec![],
            inputs: with(ok(), ("attn_mask", elem::INT32, vec![4, 5])),
            want: "attn_mask: element type int32 is not supported",
        },
        Bad {
            name: "K dtype differs from Q",
            attrs: vec![],
            inputs: vec![
                ("Q", F, vec![1, 2, 4, 8]),
                ("K", elem::FLOAT16, vec![1, 2, 5, 8]),
                ("V", F, vec![1, 2, 5, 8]),
            ],
            want: "K: element type float16 must equal Q's float",
        },
        Bad {
            name: "Q dtype unsupported",
            attrs: vec![],
            inputs: vec![
                ("Q", elem::DOUBLE, vec![1, 2, 4, 8]),
                ("K", elem::DOUBLE, vec![1, 2, 5, 8]),
                ("V", elem::DOUBLE, vec![1, 2, 5, 8]),
            ],
            want: "tensor(double)",
        },
        Bad {
            name: "window below -1",
            attrs: vec![("left_window_size", Attr::Int(-2))],
            inputs: ok(),
            want: "left_window_size must be >= -1",
        },
        Bad {
            name: "size overflow",
            attrs: vec![],
            inputs: qkv(
                vec![0, 1 << 40, 1 << 30, 8],
                vec![0, 1, 1, 8],
                vec![0, 1, 1, 8],
            ),
            want: "overflows the address space",
        },
        Bad {
            name: "nonpad out of range",
            attrs: vec![],
            inputs: with(ok(), ("nonpad_kv_seqlen", elem::INT64, vec![1])),
            want: "nonpad_kv_seqlen[0] = 9 must be within [0, 5]",
        },
        Bad {
            name: "past without past_value",
            attrs: vec![],
            inputs: with(ok(), ("past_key", F, vec![1, 2, 3, 8])),
            want: "past_key and past_value must be given together",
        },
        Bad {
            name: "3-D without head counts",
            attrs: vec![],
            inputs: qkv(vec![1, 4, 16], vec![1, 5, 16], vec![1, 5, 16]),
            want: "3-D inputs need the q_num_heads and kv_num_heads",
        },
        Bad {
            name: "bad qk mode",
            attrs: vec![("qk_matmul_output_mode", Attr::Int(7))],
            inputs: ok(),
            want: "qk_matmul_output_mode must be 0, 1, 2 or 3",
        },
    ];
    let mut failures = Vec::new();
    for bad in &table {
        let msg = run_bad(env, bad);
        if !msg.contains(bad.want) {
            failures.push(format!(
                "{}: got {msg:?}, want it to contain {:?}",
                bad.name, bad.want
            ));
        } else if !msg.contains("Attention") && !msg.contains("Type") {
            failures.push(format!(
                "{}: message does not name the op: {msg:?}",
                bad.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases wrong:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn sessions_on_many_threads_give_identical_results() {
    let Some(env) = env() else { return };
    let p = Problem {
        causal: true,
        left: 40,
        right: 0,
        ..base(1, 4, 2, 130, 130, 32, 32)
    };
    let mut rng = Rng::new(3);
    let q = rng.vec(4 * 130 * 32);
    let k = rng.vec(2 * 130 * 32);
    let v = rng.vec(2 * 130 * 32);
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: vec!["Q".into(), "K".into(), "V".into()],
        outputs: vec!["Y".into()],
        attrs: vec![
            ("is_causal".into(), Attr::Int(1)),
            ("left_window_size".into(), Attr::Int(p.left)),
        ],
    };
    let model = onnx::model(
        &node,
        &[("Q", elem::FLOAT), ("K", elem::FLOAT), ("V", elem::FLOAT)],
        &[("Y", elem::FLOAT)],
        &[("", 21), ("ai.tessera", 1)],
    );
    let run = |sess: &mut Session| -> Vec<f32> {
        let out = sess
            .run(ort::inputs![
                "Q" => Tensor::from_array((vec![1i64, 4, 130, 32], q.clone())).unwrap(),
                "K" => Tensor::from_array((vec![1i64, 2, 130, 32], k.clone())).unwrap(),
                "V" => Tensor::from_array((vec![1i64, 2, 130, 32], v.clone())).unwrap(),
            ])
            .unwrap();
        out["Y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let single = run(&mut session(env, &model, 1).unwrap());
    let (want, _) = p.attention(&q, &k, &v);
    assert!(single
        .iter()
        .zip(&want)
        .all(|(&g, &w)| (g as f64 - w).abs() < 2e-5 * (1.0 + w.abs())));
    // Several sessions, each on its own thread with a 2-thread pool, plus
    // one session shared by 8 threads (ort's `run` takes `&mut`, so the
    // shared one is behind a mutex; Python's test runs one session
    // concurrently without a lock).
    let shared = std::sync::Mutex::new(session(env, &model, 2).unwrap());
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..8 {
            let (model, shared, single, run) = (&model, &shared, &single, &run);
            handles.push(s.spawn(move || {
                let mut own = session(env, model, 2).unwrap();
                for _ in 0..3 {
                    assert_eq!(
                        &run(&mut own),
                        single,
                        "thread {t}: own session differs from single-threaded run"
                    );
                    let y = run(&mut shared.lock().unwrap());
                    assert_eq!(&y, single, "thread {t}: shared session differs");
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
}
