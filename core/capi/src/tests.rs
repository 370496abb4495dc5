//! Host tests of the C API: every entry point against the f64 reference,
//! and every refusal by its status code.

use super::*;
use tessera_core::reference;

fn filled(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0 + 1.0 / 4096.0
        })
        .collect()
}

fn spec() -> TesseraSpec {
    TesseraSpec {
        batch: 2,
        q_heads: 4,
        kv_heads: 2,
        q_len: 37,
        kv_len: 45,
        head_dim: 12,
        v_head_dim: 20,
        scale: 0.0,
        softcap: 0.0,
        layout: 0,
        causal: 1,
        q_offset: 8,
        left_window: 9,
        right_window: -1,
        global_tokens: 2,
    }
}

struct Bufs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    y: Vec<f32>,
    lse: Vec<f32>,
    scratch: Vec<f32>,
}

fn bufs(s: &TesseraSpec) -> Bufs {
    let (b, hq, hk, sq, skv, d, dv) = (
        s.batch as usize,
        s.q_heads as usize,
        s.kv_heads as usize,
        s.q_len as usize,
        s.kv_len as usize,
        s.head_dim as usize,
        s.v_head_dim as usize,
    );
    Bufs {
        q: filled(b * hq * sq * d, 3),
        k: filled(b * hk * skv * d, 5),
        v: filled(b * hk * skv * dv, 7),
        y: vec![f32::NAN; b * hq * sq * dv],
        lse: vec![f32::NAN; b * hq * sq],
        scratch: vec![f32::NAN; tessera_scratch_len(s.head_dim, s.v_head_dim)],
    }
}

fn call(s: &TesseraSpec, x: &mut Bufs) -> i32 {
    // SAFETY: every pointer comes with its own vector's length.
    unsafe {
        tessera_attention_f32(
            s,
            x.q.as_ptr(),
            x.q.len(),
            x.k.as_ptr(),
            x.k.len(),
            x.v.as_ptr(),
            x.v.len(),
            x.y.as_mut_ptr(),
            x.y.len(),
            x.lse.as_mut_ptr(),
            x.lse.len(),
            x.scratch.as_mut_ptr(),
            x.scratch.len(),
        )
    }
}

#[test]
fn attention_matches_the_f64_reference() {
    for layout in [0, 1] {
        let s = TesseraSpec {
            layout,
            softcap: 4.0,
            scale: 0.4,
            ..spec()
        };
        let mut x = bufs(&s);
        assert_eq!(call(&s, &mut x), TESSERA_OK);
        let (spec, mask) = spec_of(&s).unwrap();
        let mut y = vec![0.0f64; x.y.len()];
        let mut lse = vec![0.0f64; x.lse.len()];
        reference::attention(&spec, &mask, &x.q, &x.k, &x.v, &mut y, &mut lse);
        let dv = s.v_head_dim as usize;
        for bh in 0..(s.batch * s.q_heads) as usize {
            let (b, h) = (bh / s.q_heads as usize, bh % s.q_heads as usize);
            for i in 0..s.q_len as usize {
                let row = bh * s.q_len as usize + i;
                let got = &x.y[spec.out.offset(b, h, i)..][..dv];
                for (g, w) in got.iter().zip(&y[row * dv..][..dv]) {
                    assert!(
                        (*g as f64 - w).abs() <= 2e-5,
                        "layout {layout} y[{row}]: {g} vs {w}"
                    );
                }
                let (g, w) = (x.lse[row] as f64, lse[row]);
                assert!(
                    g == w || (g - w).abs() <= 2e-5 * w.abs().max(1.0),
                    "lse[{row}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn every_invalid_spec_is_refused_with_its_code() {
    type Breaker = fn(&mut TesseraSpec);
    let cases: [(Breaker, i32); 9] = [
        (|s| s.head_dim = 0, TESSERA_ERR_HEAD_DIM),
        (|s| s.v_head_dim = 0, TESSERA_ERR_HEAD_DIM),
        (|s| s.kv_heads = 3, TESSERA_ERR_HEADS),
        (|s| s.kv_heads = 0, TESSERA_ERR_HEADS),
        (|s| s.scale = -1.0, TESSERA_ERR_SCALE),
        (|s| s.scale = f32::NAN, TESSERA_ERR_SCALE),
        (|s| s.softcap = f32::INFINITY, TESSERA_ERR_SOFTCAP),
        (|s| s.left_window = -2, TESSERA_ERR_WINDOW),
        (|s| s.layout = 2, TESSERA_ERR_LAYOUT),
    ];
    for (break_it, code) in cases {
        let good = spec();
        let mut x = bufs(&good);
        let mut s = good;
        break_it(&mut s);
        assert_eq!(call(&s, &mut x), code, "{s:?}");
        assert!(x.y.iter().all(|v| v.is_nan()), "nothing written on error");
    }
}

#[test]
fn bad_buffers_are_refused() {
    let s = spec();
    let mut x = bufs(&s);
    x.scratch.pop();
    assert_eq!(call(&s, &mut x), TESSERA_ERR_TOO_SHORT);
    let mut x = bufs(&s);
    x.k.pop();
    assert_eq!(call(&s, &mut x), TESSERA_ERR_TOO_SHORT);
    let mut x = bufs(&s);
    x.lse.push(0.0);
    assert_eq!(call(&s, &mut x), TESSERA_ERR_LENGTH);
    let mut x = bufs(&s);
    // SAFETY: null pointers are what is being tested; nothing is read.
    let r = unsafe {
        tessera_attention_f32(
            &s,
            core::ptr::null(),
            0,
            x.k.as_ptr(),
            x.k.len(),
            x.v.as_ptr(),
            x.v.len(),
            x.y.as_mut_ptr(),
            x.y.len(),
            core::ptr::null_mut(),
            0,
            x.scratch.as_mut_ptr(),
            x.scratch.len(),
        )
    };
    assert_eq!(r, TESSERA_ERR_NULL);
    // SAFETY: a null spec is refused before anything is read.
    let r = unsafe {
        tessera_attention_f32(
            core::ptr::null(),
            x.q.as_ptr(),
            x.q.len(),
            x.k.as_ptr(),
            x.k.len(),
            x.v.as_ptr(),
            x.v.len(),
            x.y.as_mut_ptr(),
            x.y.len(),
            core::ptr::null_mut(),
            0,
            x.scratch.as_mut_ptr(),
            x.scratch.len(),
        )
    };
    assert_eq!(r, TESSERA_ERR_NULL);
    // y inside q: refused as overlapping.
    let q_ptr = x.q.as_mut_ptr();
    // SAFETY: y aliases q on purpose; the overlap check refuses it first.
    let r = unsafe {
        tessera_attention_f32(
            &s,
            x.q.as_ptr(),
            x.q.len(),
            x.k.as_ptr(),
            x.k.len(),
            x.v.as_ptr(),
            x.v.len(),
            q_ptr,
            x.y.len(),
            core::ptr::null_mut(),
            0,
            x.scratch.as_mut_ptr(),
            x.scratch.len(),
        )
    };
    assert_eq!(r, TESSERA_ERR_OVERLAP);
    // A misaligned scratch pointer.
    let bytes = x.scratch.as_mut_ptr() as *mut u8;
    // SAFETY: the misaligned pointer is refused before it is used.
    let r = unsafe {
        tessera_attention_f32(
            &s,
            x.q.as_ptr(),
            x.q.len(),
            x.k.as_ptr(),
            x.k.len(),
            x.v.as_ptr(),
            x.v.len(),
            x.y.as_mut_ptr(),
            x.y.len(),
            core::ptr::null_mut(),
            0,
            bytes.add(1) as *mut f32,
            x.scratch.len() - 1,
        )
    };
    assert_eq!(r, TESSERA_ERR_ALIGN);
}

#[test]
fn merge_of_key_halves_equals_the_whole() {
    // Dense, one KV head: keys 0..c and c..S are contiguous halves.
    let whole = TesseraSpec {
        batch: 1,
        kv_heads: 1,
        causal: 0,
        left_window: -1,
        global_tokens: 0,
        ..spec()
    };
    let mut x = bufs(&whole);
    assert_eq!(call(&whole, &mut x), TESSERA_OK);
    let (d, dv, c) = (whole.head_dim as usize, whole.v_head_dim as usize, 17usize);
    let mut parts = Vec::new();
    for (start, len) in [(0, c), (c, whole.kv_len as usize - c)] {
        let s = TesseraSpec {
            kv_len: len as u32,
            ..whole
        };
        let mut p = bufs(&s);
        p.q.clone_from(&x.q);
        p.k = x.k[start * d..(start + len) * d].to_vec();
        p.v = x.v[start * dv..(start + len) * dv].to_vec();
        assert_eq!(call(&s, &mut p), TESSERA_OK);
        parts.push(p);
    }
    let rows = x.lse.len();
    let (mut y, mut lse) = (vec![f32::NAN; x.y.len()], vec![f32::NAN; rows]);
    // SAFETY: every buffer holds rows·dv or rows floats.
    let r = unsafe {
        tessera_merge_f32(
            parts[0].y.as_ptr(),
            parts[0].lse.as_ptr(),
            parts[1].y.as_ptr(),
            parts[1].lse.as_ptr(),
            y.as_mut_ptr(),
            lse.as_mut_ptr(),
            rows,
            dv as u32,
        )
    };
    assert_eq!(r, TESSERA_OK);
    for (a, b) in y.iter().zip(&x.y).chain(lse.iter().zip(&x.lse)) {
        assert!((a - b).abs() <= 2e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    // SAFETY: v_head_dim 0 is refused before any pointer is read.
    let r = unsafe {
        tessera_merge_f32(
            y.as_ptr(),
            lse.as_ptr(),
            y.as_ptr(),
            lse.as_ptr(),
            y.as_mut_ptr(),
            lse.as_mut_ptr(),
            rows,
            0,
        )
    };
    assert_eq!(r, TESSERA_ERR_HEAD_DIM);
}

#[test]
fn header_constants_match() {
    let h = include_str!("../include/tessera.h");
    for (name, value) in [
        ("TESSERA_BQ", BQ as i64),
        ("TESSERA_BK", BK as i64),
        ("TESSERA_DV_ALIGN", tessera_core::DV_ALIGN as i64),
        ("TESSERA_ERR_NULL", TESSERA_ERR_NULL as i64),
        ("TESSERA_ERR_INTERNAL", TESSERA_ERR_INTERNAL as i64),
        ("TESSERA_ERR_LENGTH", TESSERA_ERR_LENGTH as i64),
    ] {
        let line = h
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} missing"));
        let text = line
            .split_whitespace()
            .nth(2)
            .unwrap()
            .trim_matches(|c| c == '(' || c == ')');
        assert_eq!(text.parse::<i64>().unwrap(), value, "{name}");
    }
    for code in TESSERA_ERR_INTERNAL..=TESSERA_OK {
        // SAFETY: the returned pointer is a static C string.
        let name = unsafe { core::ffi::CStr::from_ptr(tessera_status_name(code)) };
        assert_ne!(name.to_str().unwrap(), "unknown status", "{code}");
    }
}
