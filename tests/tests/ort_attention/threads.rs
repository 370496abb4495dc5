//! Sessions on many threads, each with its own pool or one shared behind
//! a lock, give the single-threaded result bit for bit.

use ort::session::Session;
use ort::value::Tensor;
use tessera_tests::onnx::{self, elem, Attr, Node};
use tessera_tests::oracle::Problem;
use tessera_tests::Rng;

use crate::case::base;
use crate::{env, session};

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
