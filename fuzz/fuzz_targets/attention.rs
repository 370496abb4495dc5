//! Core attention: `Attention::new` then `Flash::run` (portable kernel and
//! the detected one, two tile shapes) at bounded sizes, for every mask kind
//! (causal with offset, windows, global tokens, chunks, kv lengths with and
//! without the ONNX offset, segments, dense bool and additive with any
//! strides), and for hostile specs (huge sizes, arbitrary strides, short
//! buffers), which `new` must refuse with an error.
//!
//! Invariants: no panic; when `new` accepts, `run` succeeds; with finite
//! inputs every row matches the f64 reference (rows the reference leaves
//! non-finite are skipped); both kernels agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::kernel::{self, MicroKernel};
use tessera_core::{
    reference, Attention, AttentionSpec, DenseMask, Flash, MaskSpec, MaskStrides, Strides,
};
use tessera_fuzz::Bytes;

fn run<K: MicroKernel, const BQ: usize, const BK: usize>(
    k: K,
    att: &Attention<'_, f32>,
    ylen: usize,
    lselen: usize,
) -> (Vec<f32>, Vec<f32>) {
    let s = att.spec();
    let mut y = vec![0.0f32; ylen];
    let mut lse = vec![0.0f32; lselen];
    let mut scratch = vec![0.0f32; Flash::<K, BQ, BK>::scratch_len(s.head_dim, s.v_head_dim)];
    Flash::<K, BQ, BK>::new(k)
        .run(att, &mut y, Some(&mut lse), &mut scratch)
        .expect("run after a successful Attention::new");
    (y, lse)
}

fn run_detected(att: &Attention<'_, f32>, ylen: usize, lselen: usize) -> (Vec<f32>, Vec<f32>) {
    // The best kernel this CPU has (TESSERA_KERNEL may name another).
    let det = kernel::detect().expect("TESSERA_KERNEL names a kernel this CPU has");
    tessera_core::with_kernel!(det, k => run::<_, 48, 64>(k, att, ylen, lselen))
}

fn values(r: &mut Bytes, n: usize, special: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let b = r.u8();
            if special && b == 255 {
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40][r.below(4)]
            } else {
                (f32::from(b) - 128.0) / 32.0
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let hostile = r.u8() < 24;
    let (spec, qlen, klen, vlen) = if hostile {
        let mut u = || r.dim() as usize;
        let spec = AttentionSpec {
            batch: u(),
            q_heads: u(),
            kv_heads: u(),
            q_len: u(),
            kv_len: u(),
            head_dim: u(),
            v_head_dim: u(),
            scale: 0.5,
            softcap: 0.0,
            q: Strides {
                batch: u(),
                head: u(),
                seq: u(),
            },
            k: Strides {
                batch: u(),
                head: u(),
                seq: u(),
            },
            v: Strides {
                batch: u(),
                head: u(),
                seq: u(),
            },
            out: Strides {
                batch: u(),
                head: u(),
                seq: u(),
            },
        };
        let mut small = || usize::from(r.u8()) * 4;
        (spec, small(), small(), small())
    } else {
        let b = 1 + r.below(2);
        let hkv = 1 + r.below(2);
        let hq = hkv * (1 + r.below(3));
        let sq = r.below(40);
        let skv = r.below(80);
        let d = 1 + r.below(20);
        let dv = 1 + r.below(20);
        let mut spec = if r.bool() {
            AttentionSpec::bhsd(b, hq, hkv, sq, skv, d, dv)
        } else {
            AttentionSpec::bshd(b, hq, hkv, sq, skv, d, dv)
        };
        if r.below(4) == 0 {
            spec.softcap = f32::from(r.u8()) / 8.0;
        }
        if r.below(4) == 0 {
            spec.scale = f32::from(r.u8()) / 64.0;
        }
        (spec, b * hq * sq * d, b * hkv * skv * d, b * hkv * skv * dv)
    };
    let special = r.below(8) == 0;
    let q = values(&mut r, qlen, special);
    let k = values(&mut r, klen, special);
    let v = values(&mut r, vlen, special);

    // The mask: any combination of every kind.
    let (b, hq, sq, skv) = (spec.batch, spec.q_heads, spec.q_len, spec.kv_len);
    let small = |x: usize| x.min(256);
    let mut mask = MaskSpec::NONE;
    let kinds = r.u8();
    let offset = r.below(64) as isize - 32;
    if kinds & 1 != 0 {
        mask = mask.causal(offset);
    } else {
        mask = mask.offset(offset);
    }
    if kinds & 2 != 0 {
        mask = mask.window(r.below(40) as isize - 1, r.below(40) as isize - 1);
    }
    if kinds & 4 != 0 {
        mask = mask.globals(r.below(10));
    }
    if kinds & 8 != 0 {
        mask = mask.chunked(r.below(20));
    }
    let lens: Vec<usize> = (0..small(b) + usize::from(r.below(8) == 0))
        .map(|_| r.below(small(skv) + 3))
        .collect();
    if kinds & 16 != 0 {
        mask = mask.kv_lens(&lens, r.bool());
    }
    let seg_q: Vec<i32> = (0..small(b) * small(sq))
        .map(|_| r.below(3) as i32)
        .collect();
    let seg_kv: Vec<i32> = (0..small(b) * small(skv))
        .map(|_| r.below(3) as i32)
        .collect();
    if kinds & 32 != 0 {
        mask = mask.segments(&seg_q, &seg_kv);
    }
    // Dense: broadcast strides from a shape, or arbitrary ones.
    let (mb, mh, mq) = (
        if r.bool() { 1 } else { small(b) },
        if r.bool() { 1 } else { small(hq) },
        if r.bool() { 1 } else { small(sq) },
    );
    let mut strides = MaskStrides::broadcast(mb, mh, mq, small(skv));
    // At most 64 Ki mask entries: a longer mask is refused by `new` anyway.
    let mut dense_len = (mb * mh * mq * small(skv)).min(1 << 16);
    if r.below(8) == 0 {
        strides = MaskStrides {
            batch: r.dim() as usize,
            head: r.below(64),
            q: r.below(64),
            k: r.below(4),
        };
        dense_len = r.below(256);
    }
    let bools: Vec<bool> = (0..dense_len).map(|_| r.below(4) != 0).collect();
    let adds: Vec<f32> = (0..dense_len)
        .map(|_| match r.below(6) {
            0 => f32::NEG_INFINITY,
            1 => -1.5,
            _ => 0.0,
        })
        .collect();
    if kinds & 64 != 0 {
        mask = mask.dense(if kinds & 128 != 0 {
            DenseMask::Bool(&bools, strides)
        } else {
            DenseMask::Additive(&adds, strides)
        });
    }

    let Ok(att) = Attention::new(&spec, &mask, &q, &k, &v) else {
        return;
    };
    let (Ok(ylen), Ok(lselen)) = (
        spec.required_len(tessera_core::spec::Tensor::Y),
        spec.required_len(tessera_core::spec::Tensor::Lse),
    ) else {
        panic!("Attention::new accepted a spec whose output sizes overflow");
    };
    // The caller sizes Y and the scratch; a spec that asks for more than 16 Mi outputs
    // (possible with zero input strides) is not ours to allocate.
    let scratch = Flash::<kernel::Portable, 48, 64>::scratch_len(spec.head_dim, spec.v_head_dim);
    // Open finding (RELIABILITY.md, fuzz/open/attention): `new` accepts an
    // empty problem (q_len 0) with batch × heads near 2^62, and `run` then
    // spins through its batch and head loops for ever. Skip problems of
    // more than 2^26 (batch, head, query, key) steps, empty axes counted as 1.
    let work = [b, hq, sq.max(1), spec.kv_len.max(1)]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
    if ylen > 1 << 24 || lselen > 1 << 24 || scratch > 1 << 24 || work.is_none_or(|w| w > 1 << 26) {
        return;
    }
    let (y1, l1) = run::<_, 16, 16>(kernel::Portable, &att, ylen, lselen);
    let (y2, _) = run_detected(&att, ylen, lselen);
    if special || hostile {
        return;
    }
    let mut y64 = vec![0.0f64; ylen];
    let mut l64 = vec![0.0f64; lselen];
    reference::attention(&spec, &mask, &q, &k, &v, &mut y64, &mut l64);
    // The reference writes Y as contiguous (B, Hq, Sq, Dv); ours follows
    // spec.out.
    let dv = spec.v_head_dim;
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..sq {
                let at = spec.out.offset(bi, h, i);
                let want = &y64[((bi * hq + h) * sq + i) * dv..][..dv];
                for (d, &w) in want.iter().enumerate() {
                    let (a, c) = (y1[at + d], y2[at + d]);
                    if !w.is_finite() {
                        continue;
                    }
                    let tol = 1e-3 * (1.0 + w.abs());
                    assert!(
                        (f64::from(a) - w).abs() <= tol && (f64::from(c) - w).abs() <= tol,
                        "Y[b {bi}, h {h}, i {i}, d {d}]: portable {a}, detected {c}, reference {w}\n{spec:?}\n{mask:?}"
                    );
                }
            }
        }
    }
    for (i, (&a, &want)) in l1.iter().zip(&l64).enumerate() {
        if want.is_finite() {
            assert!(
                (f64::from(a) - want).abs() <= 1e-3 * (1.0 + want.abs()),
                "lse[{i}]: {a} vs reference {want}"
            );
        }
    }
});
