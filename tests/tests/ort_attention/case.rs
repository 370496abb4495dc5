//! One numeric case through ORT: its random inputs and the f64 oracle's
//! outputs, the one-node model and feeds that pose it, and the checks of Y,
//! softmax_lse and the presents against the oracle.

use half::{bf16, f16};
use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor};
use tessera_tests::onnx::{self, elem, Attr, Node};
use tessera_tests::oracle::{Mask, Problem};
use tessera_tests::Rng;

use crate::session;

/// Element type of a case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dt {
    F32,
    F16,
    Bf16,
}

impl Dt {
    pub fn code(self) -> i32 {
        match self {
            Dt::F32 => elem::FLOAT,
            Dt::F16 => elem::FLOAT16,
            Dt::Bf16 => elem::BFLOAT16,
        }
    }

    /// Round to the format (so the oracle sees exactly what the op sees).
    pub fn round(self, x: &[f32]) -> Vec<f32> {
        match self {
            Dt::F32 => x.to_vec(),
            Dt::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            Dt::Bf16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        }
    }

    pub fn tensor(self, shape: Vec<i64>, x: &[f32]) -> DynValue {
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

    pub fn read(self, v: &DynValue) -> (Vec<i64>, Vec<f32>) {
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
    pub fn tol(self) -> f64 {
        match self {
            Dt::F32 => 2e-5,
            Dt::F16 => 2e-3,
            Dt::Bf16 => 1.6e-2,
        }
    }
}

/// One numeric case: a problem, its layout and type, and whether to ask
/// for present_key/present_value and softmax_lse.
pub struct Case {
    pub name: &'static str,
    pub p: Problem,
    pub three_d: bool,
    pub dt: Dt,
    pub presents: bool,
    pub lse: bool,
}

pub fn base(
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    skv: usize,
    d: usize,
    dv: usize,
) -> Problem {
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

/// Swaps the two middle axes: `(B, H, S, X)` → `(B, S, H·X)`, and with
/// `h` and `s` exchanged, back.
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

/// Runs one case in a fresh session and checks every output it asks for.
pub fn run_case(env: &Environment, c: &Case, seed: u64) {
    let data = Data::draw(c, seed);
    let mut graph = Graph::new();
    feed_qkv(&mut graph, c, &data);
    feed_optional(&mut graph, c, &data);
    let (node_out, outputs) = outputs(c);
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: graph.node_inputs(),
        outputs: node_out,
        attrs: attributes(c),
    };
    let model = onnx::model(
        &node,
        &graph.inputs,
        &outputs,
        &[("", 21), ("ai.tessera", 1)],
    );
    let mut sess = session(env, &model, 2).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let out = sess
        .run(graph.feeds)
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    check_y(c, &out["Y"], &data.want_y);
    if c.lse {
        check_lse(c, &out["softmax_lse"], &data.want_lse);
    }
    if c.presents {
        check_presents(c, &out["present_key"], &out["present_value"], &data);
    }
}

/// `(B, Hq, Hkv, Sq, D, Dv, T)` of a problem, `T` counting past and new keys.
fn dims(p: &Problem) -> (usize, usize, usize, usize, usize, usize, usize) {
    (
        p.batch,
        p.q_heads,
        p.kv_heads,
        p.q_len,
        p.head_dim,
        p.v_head_dim,
        p.total(),
    )
}

/// A case's inputs in BHSD over all `T` keys (past ++ new), rounded to its
/// element type, and the oracle's Y and lse on them.
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    want_y: Vec<f64>,
    want_lse: Vec<f64>,
}

impl Data {
    fn draw(c: &Case, seed: u64) -> Self {
        let p = &c.p;
        let mut rng = Rng::new(seed);
        let (b, hq, hkv, sq, d, dv, t) = dims(p);
        let q = c.dt.round(&rng.vec(b * hq * sq * d));
        let k = c.dt.round(&rng.vec(b * hkv * t * d));
        let v = c.dt.round(&rng.vec(b * hkv * t * dv));
        let (want_y, want_lse) = p.attention(&q, &k, &v);
        Self {
            q,
            k,
            v,
            want_y,
            want_lse,
        }
    }
}

/// The node's attributes: the problem's rules, and the head counts of a
/// 3-D case.
fn attributes(c: &Case) -> Vec<(String, Attr)> {
    let p = &c.p;
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
        attrs.push(("q_num_heads".into(), Attr::Int(p.q_heads as i64)));
        attrs.push(("kv_num_heads".into(), Attr::Int(p.kv_heads as i64)));
    }
    attrs
}

/// The node's input slots, the graph's inputs and the feeds, kept in step.
struct Graph {
    slots: [String; 7],
    inputs: Vec<(&'static str, i32)>,
    feeds: Vec<(String, SessionInputValue<'static>)>,
}

impl Graph {
    fn new() -> Self {
        Self {
            slots: Default::default(),
            inputs: Vec::new(),
            feeds: Vec::new(),
        }
    }

    /// Feeds `value` as input `name` of element type `code` in node slot `slot`.
    fn add(&mut self, slot: usize, name: &'static str, code: i32, value: DynValue) {
        self.slots[slot] = name.into();
        self.inputs.push((name, code));
        self.feeds.push((name.into(), value.into()));
    }

    /// The node's inputs, trailing empty slots left out.
    fn node_inputs(&self) -> Vec<String> {
        let mut node_in = self.slots.to_vec();
        while node_in.last().is_some_and(|s| s.is_empty()) {
            node_in.pop();
        }
        node_in
    }
}

/// Q, and the new keys and values (past left out), in BHSD or in BSH·D.
fn feed_qkv(graph: &mut Graph, c: &Case, data: &Data) {
    let p = &c.p;
    let (b, hq, hkv, sq, d, dv, t) = dims(p);
    let code = c.dt.code();
    let (k_new, v_new) = (
        seq_slice(&data.k, b, hkv, t, d, p.past, t),
        seq_slice(&data.v, b, hkv, t, dv, p.past, t),
    );
    let n = p.kv_new;
    let tensors = if c.three_d {
        [
            (vec![b, sq, hq * d], to_bshd(&data.q, b, hq, sq, d)),
            (vec![b, n, hkv * d], to_bshd(&k_new, b, hkv, n, d)),
            (vec![b, n, hkv * dv], to_bshd(&v_new, b, hkv, n, dv)),
        ]
    } else {
        [
            (vec![b, hq, sq, d], data.q.clone()),
            (vec![b, hkv, n, d], k_new),
            (vec![b, hkv, n, dv], v_new),
        ]
    };
    for (slot, (name, (shape, x))) in ["Q", "K", "V"].into_iter().zip(tensors).enumerate() {
        let shape = shape.iter().map(|&x| x as i64).collect();
        graph.add(slot, name, code, c.dt.tensor(shape, &x));
    }
}

/// The optional inputs the problem has: attn_mask, past_key/past_value
/// (the first `past` keys), nonpad_kv_seqlen.
fn feed_optional(graph: &mut Graph, c: &Case, data: &Data) {
    let p = &c.p;
    let (b, hkv, d, dv, t) = (p.batch, p.kv_heads, p.head_dim, p.v_head_dim, p.total());
    let code = c.dt.code();
    let dims = |dims: &[usize; 4]| dims.iter().map(|&x| x as i64).collect::<Vec<_>>();
    match &p.mask {
        Some(Mask::Bool(m, shape)) => {
            let m = Tensor::from_array((dims(shape), m.clone())).unwrap();
            graph.add(3, "attn_mask", elem::BOOL, m.into_dyn());
        }
        Some(Mask::Float(m, shape)) => {
            let m = Tensor::from_array((dims(shape), m.clone())).unwrap();
            graph.add(3, "attn_mask", elem::FLOAT, m.into_dyn());
        }
        None => {}
    }
    if p.past > 0 {
        let pk = seq_slice(&data.k, b, hkv, t, d, 0, p.past);
        let pv = seq_slice(&data.v, b, hkv, t, dv, 0, p.past);
        let shape = |x: usize| vec![b as i64, hkv as i64, p.past as i64, x as i64];
        graph.add(4, "past_key", code, c.dt.tensor(shape(d), &pk));
        graph.add(5, "past_value", code, c.dt.tensor(shape(dv), &pv));
    }
    if let Some(n) = &p.nonpad {
        let n = Tensor::from_array((vec![b as i64], n.clone())).unwrap();
        graph.add(6, "nonpad_kv_seqlen", elem::INT64, n.into_dyn());
    }
}

/// The node's outputs (empty names for the presents and
/// `qk_matmul_output` when asked only to reach softmax_lse's slot 4) and
/// the graph's outputs.
fn outputs(c: &Case) -> (Vec<String>, Vec<(&'static str, i32)>) {
    let code = c.dt.code();
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
        // Slot 3 is ONNX's qk_matmul_output, not asked for here.
        node_out.extend([String::new(), "softmax_lse".into()]);
        outputs.push(("softmax_lse", elem::FLOAT));
    }
    (node_out, outputs)
}

/// Y has the input layout's shape and matches the oracle within the
/// element type's tolerance.
fn check_y(c: &Case, y: &DynValue, want_y: &[f64]) {
    let p = &c.p;
    let (b, hq, sq, dv) = (p.batch, p.q_heads, p.q_len, p.v_head_dim);
    let (shape, mut y) = c.dt.read(y);
    if c.three_d {
        assert_eq!(
            shape,
            vec![b as i64, sq as i64, (hq * dv) as i64],
            "{}",
            c.name
        );
        // (B, S, H·Dv) → (B, H, S, Dv) for the comparison.
        y = to_bshd(&y, b, sq, hq, dv);
    } else {
        assert_eq!(
            shape,
            vec![b as i64, hq as i64, sq as i64, dv as i64],
            "{}",
            c.name
        );
    }
    let tol = c.dt.tol();
    for (i, (&g, &w)) in y.iter().zip(want_y).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{}: Y[{i}] = {g}, want {w}",
            c.name
        );
    }
}

/// softmax_lse matches the oracle; a row with no key is `-inf` in both.
fn check_lse(c: &Case, lse: &DynValue, want_lse: &[f64]) {
    let (_, l) = Dt::F32.read(lse);
    for (i, (&g, &w)) in l.iter().zip(want_lse).enumerate() {
        let ok = (g == f32::NEG_INFINITY && w == f64::NEG_INFINITY)
            || (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs());
        assert!(ok, "{}: lse[{i}] = {g}, want {w}", c.name);
    }
}

/// present_key/present_value are past ++ new, exactly.
fn check_presents(c: &Case, present_key: &DynValue, present_value: &DynValue, data: &Data) {
    let p = &c.p;
    let (s, pk) = c.dt.read(present_key);
    assert_eq!(
        s,
        vec![
            p.batch as i64,
            p.kv_heads as i64,
            p.total() as i64,
            p.head_dim as i64
        ],
        "{}: present_key shape",
        c.name
    );
    assert_eq!(pk, data.k, "{}: present_key = past ++ K", c.name);
    let (_, pv) = c.dt.read(present_value);
    assert_eq!(pv, data.v, "{}: present_value = past ++ V", c.name);
}
