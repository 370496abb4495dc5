//! The measured image: f32 attention with every mask kind and nothing else.
//! No formatting code; the status says whether the call succeeded. Mask
//! parameters are read through `read_volatile`, so the compiler cannot
//! specialise the kernel for one mask and every mask path stays in the image.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};

#[cfg(m55)]
use tessera_core::kernel::Helium as Kernel;
#[cfg(not(m55))]
use tessera_core::kernel::Scalar as Kernel;
use tessera_core::{Attention, AttentionSpec, DenseMask, Flash, MaskSpec, MaskStrides};
use tessera_firmware::data::Rng;

const S: usize = 64;
const D: usize = 32;
type F = Flash<Kernel, 32, 32>;

struct Buffers {
    q: [f32; S * D],
    k: [f32; S * D],
    v: [f32; S * D],
    y: [f32; S * D],
    lse: [f32; S],
    scratch: [f32; F::scratch_len(D, D)],
    segments: [i32; S],
    dense: [bool; S * S],
}

// In .bss, so that the mask data is not counted as code.
static mut BUFFERS: Buffers = Buffers {
    q: [0.0; S * D],
    k: [0.0; S * D],
    v: [0.0; S * D],
    y: [0.0; S * D],
    lse: [0.0; S],
    scratch: [0.0; F::scratch_len(D, D)],
    segments: [0; S],
    dense: [false; S * S],
};

/// Mask knobs: causal, offset, left, right, globals, chunk, segments, dense.
static KNOBS: [i32; 8] = [1, 0, 16, 0, 2, 0, 1, 1];
static KV_LENS: [usize; 1] = [S];

fn knob(i: usize) -> i32 {
    // SAFETY: reading an element of a static array.
    unsafe { addr_of!(KNOBS[i]).read_volatile() }
}

#[no_mangle]
extern "C" fn tessera_main() -> i32 {
    // SAFETY: runs once, single-threaded; the only reference to BUFFERS.
    let b = unsafe { &mut *addr_of_mut!(BUFFERS) };
    let mut rng = Rng::new(knob(0) as u32 + 1);
    rng.fill(&mut b.q);
    rng.fill(&mut b.k);
    rng.fill(&mut b.v);
    b.dense.fill(true);
    let spec = AttentionSpec::bhsd(1, 1, 1, S, S, D, D).with_softcap(knob(1) as f32);
    let mut mask = MaskSpec::NONE
        .window(knob(2) as isize, knob(3) as isize)
        .globals(knob(4) as usize)
        .chunked(knob(5) as usize);
    if knob(0) != 0 {
        mask = mask.causal(knob(1) as isize);
    }
    if knob(6) != 0 {
        mask = mask
            .segments(&b.segments, &b.segments)
            .kv_lens(&KV_LENS, false);
    }
    if knob(7) != 0 {
        mask = mask.dense(DenseMask::Bool(
            &b.dense,
            MaskStrides::broadcast(1, 1, S, S),
        ));
    }
    let Ok(att) = Attention::new(&spec, &mask, &b.q, &b.k, &b.v) else {
        return 2;
    };
    match F::new(Kernel).run(&att, &mut b.y, Some(&mut b.lse), &mut b.scratch) {
        Ok(_) if b.y.iter().all(|x| x.is_finite()) => 0,
        _ => 1,
    }
}
