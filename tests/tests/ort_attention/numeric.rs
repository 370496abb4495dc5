//! The numeric cases: a fixed table covering each rule, layout, cache form
//! and element type, and random problems drawn over all of them together.

use tessera_tests::oracle::{Mask, Problem};
use tessera_tests::Rng;

use crate::case::{base, run_case, Case, Dt};
use crate::env;

/// A case asking for softmax_lse and not for the presents.
fn case(name: &'static str, p: Problem, three_d: bool, dt: Dt) -> Case {
    Case {
        name,
        p,
        three_d,
        dt,
        presents: false,
        lse: true,
    }
}

/// The fixed cases, in the order that seeds them.
fn numeric_cases() -> Vec<Case> {
    let mut rng = Rng::new(7);
    let mut cases = rule_cases();
    cases.extend(mask_cases(&mut rng));
    cases.extend(cache_cases());
    cases.extend(size_and_type_cases());
    cases
}

/// GQA with Dv != D, the 3-D layout, windows, globals, softcap and scale.
fn rule_cases() -> Vec<Case> {
    vec![
        case(
            "4d gqa dv!=d",
            base(2, 4, 2, 37, 53, 16, 24),
            false,
            Dt::F32,
        ),
        case(
            "3d causal",
            Problem {
                causal: true,
                ..base(2, 6, 3, 45, 45, 8, 8)
            },
            true,
            Dt::F32,
        ),
        case(
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
        ),
        case(
            "bidirectional window",
            Problem {
                left: 3,
                right: 7,
                ..base(1, 2, 2, 40, 50, 8, 8)
            },
            false,
            Dt::F32,
        ),
        case(
            "softcap+scale",
            Problem {
                softcap: 1.5,
                scale: Some(0.7),
                ..base(1, 2, 1, 20, 33, 8, 8)
            },
            false,
            Dt::F32,
        ),
    ]
}

/// A bool mask over (Sq, T) and a float mask shorter than the keys.
fn mask_cases(rng: &mut Rng) -> Vec<Case> {
    let (sq, t) = (9, 30);
    let bool_mask: Vec<bool> = (0..sq * t).map(|_| rng.below(4) != 0).collect();
    let float_mask: Vec<f32> = (0..2 * 3 * 20).map(|_| rng.uniform() * 2.0).collect();
    vec![
        case(
            "bool mask (Sq, T) + causal",
            Problem {
                causal: true,
                mask: Some(Mask::Bool(bool_mask, [1, 1, sq, t])),
                ..base(2, 2, 1, sq, t, 8, 8)
            },
            false,
            Dt::F32,
        ),
        case(
            "float mask (B,1,Sq,<T) padded",
            Problem {
                mask: Some(Mask::Float(float_mask, [2, 1, 3, 20])),
                ..base(2, 2, 2, 3, 25, 8, 8)
            },
            false,
            Dt::F32,
        ),
    ]
}

/// The past/present cache, the external cache, and long decode.
fn cache_cases() -> Vec<Case> {
    vec![
        Case {
            presents: true,
            ..case(
                "past+present decode",
                Problem {
                    causal: true,
                    past: 20,
                    ..base(2, 4, 2, 3, 3, 8, 8)
                },
                false,
                Dt::F32,
            )
        },
        case(
            "nonpad external cache",
            Problem {
                causal: true,
                nonpad: Some(vec![40, 17]),
                ..base(2, 2, 1, 4, 40, 8, 8)
            },
            false,
            Dt::F32,
        ),
        case(
            "decode split-KV",
            Problem {
                causal: true,
                past: 3000,
                ..base(1, 2, 1, 1, 1, 64, 64)
            },
            false,
            Dt::F32,
        ),
    ]
}

/// Many tiles, f16, and bf16 in 3-D.
fn size_and_type_cases() -> Vec<Case> {
    vec![
        case(
            "prefill many tiles",
            Problem {
                causal: true,
                ..base(1, 3, 1, 200, 200, 32, 32)
            },
            false,
            Dt::F32,
        ),
        case(
            "f16",
            Problem {
                causal: true,
                ..base(2, 4, 2, 37, 53, 16, 16)
            },
            false,
            Dt::F16,
        ),
        case("bf16 3d", base(1, 4, 4, 20, 20, 8, 8), true, Dt::Bf16),
    ]
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
