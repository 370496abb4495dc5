//! Measurements on the target, one line each:
//! `measure <case> kernel=<k> BQ=<bq> BK=<bk> S=<s> D=<d> pairs=<visible pairs> macs=<..> scratch_bytes=<..> formula_bytes=<..> stack_bytes=<..>`.
//! Each attention call sits between the count markers (`marks`), in the
//! order printed, so that `tools/insn_count.c` can attach an exact
//! instruction count to each line; the first region is an empty call, the
//! markers' own overhead.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

#[cfg(hard_float)]
use tessera_core::kernel::Portable;
use tessera_core::kernel::{MicroKernel, Scalar};
use tessera_core::{Attention, AttentionSpec, Flash, MaskSpec};
use tessera_firmware::data::Rng;
use tessera_firmware::marks::counted;
use tessera_firmware::stack::high_water;
use tessera_firmware::{print, print_u64};

const S_MAX: usize = 4096;
const D: usize = 32;
const N: usize = S_MAX * D;
const SCRATCH: usize = 16384;

struct Buffers {
    q: [f32; N],
    k: [f32; N],
    v: [f32; N],
    y: [f32; N],
    scratch: [f32; SCRATCH],
}

static mut BUFFERS: Buffers = Buffers {
    q: [0.0; N],
    k: [0.0; N],
    v: [0.0; N],
    y: [0.0; N],
    scratch: [0.0; SCRATCH],
};

fn field(name: &str, value: u64) {
    print(" ");
    print(name);
    print("=");
    print_u64(value);
}

/// The scratch formula of the README, written out independently of
/// `Flash::scratch_len`: `BQ·D + D·BK + BK·Dvp + BQ·BK + BQ·Dvp + 2·BQ` f32s.
const fn formula_bytes(bq: usize, bk: usize, d: usize, dv: usize) -> usize {
    let dvp = dv.div_ceil(16) * 16;
    4 * (bq * d + d * bk + bk * dvp + bq * bk + bq * dvp + 2 * bq)
}

/// Visible (query, key) pairs of a causal window `left` over `s` tokens
/// (`left < 0`: plain causal; `None`: dense).
fn visible_pairs(s: usize, window: Option<isize>) -> u64 {
    match window {
        None => (s * s) as u64,
        Some(l) => (0..s).map(|i| if l < 0 { i + 1 } else { (i + 1).min(l as usize + 1) } as u64).sum(),
    }
}

fn measure<K: MicroKernel, const BQ: usize, const BK: usize>(
    kernel: K,
    name: &str,
    s: usize,
    window: Option<isize>,
    b: &mut Buffers,
) -> bool {
    let spec = AttentionSpec::bhsd(1, 1, 1, s, s, D, D);
    let mask = match window {
        None => MaskSpec::NONE,
        Some(l) => MaskSpec::NONE.causal(0).window(l, 0),
    };
    let n = s * D;
    let Ok(att) = Attention::new(&spec, &mask, &b.q[..n], &b.k[..n], &b.v[..n]) else {
        return false;
    };
    let need = Flash::<K, BQ, BK>::scratch_len(D, D);
    let f = Flash::<K, BQ, BK>::new(kernel);
    let (y, scratch) = (&mut b.y[..n], &mut b.scratch[..need]);
    let (result, stack) = high_water(|| counted(|| f.run(&att, y, None, scratch)));
    let pairs = visible_pairs(s, window);
    print("measure ");
    print(name);
    print(" kernel=");
    print(K::NAME);
    field("BQ", BQ as u64);
    field("BK", BK as u64);
    field("S", s as u64);
    field("D", D as u64);
    field("pairs", pairs);
    field("macs", pairs * 2 * D as u64);
    field("scratch_bytes", 4 * need as u64);
    field("formula_bytes", formula_bytes(BQ, BK, D, D) as u64);
    field("stack_bytes", stack as u64);
    print(if result.is_ok() && y.iter().all(|x| x.is_finite()) {
        " ok\n"
    } else {
        " FAILED\n"
    });
    result.is_ok() && 4 * need == formula_bytes(BQ, BK, D, D)
}

#[no_mangle]
extern "C" fn tessera_main() -> i32 {
    // SAFETY: runs once, single-threaded; the only reference to BUFFERS.
    let b = unsafe { &mut *addr_of_mut!(BUFFERS) };
    let mut rng = Rng::new(0x5eed);
    rng.fill(&mut b.q);
    rng.fill(&mut b.k);
    rng.fill(&mut b.v);
    counted(|| ());
    print("measure empty-region\n");
    let mut ok = true;
    // Soft-float RV32IMAC runs ~60x more instructions per MAC: only the
    // headline cases there.
    #[cfg(hard_float)]
    {
        ok &= measure::<_, 8, 32>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 16, 16>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 16, 32>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 32, 16>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 32, 32>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 64, 32>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 16, 32>(Portable, "dense", 256, None, b);
        #[cfg(m55)]
        {
            use tessera_core::kernel::Helium;
            ok &= measure::<_, 16, 32>(Helium, "dense", 256, None, b);
            ok &= measure::<_, 32, 32>(Helium, "dense", 256, None, b);
            ok &= measure::<_, 64, 32>(Helium, "dense", 256, None, b);
            ok &= measure::<_, 32, 32>(Helium, "causal", 256, Some(-1), b);
            ok &= measure::<_, 32, 32>(Helium, "window64", 1024, Some(63), b);
            ok &= measure::<_, 32, 32>(Helium, "window64", 4096, Some(63), b);
        }
        ok &= measure::<_, 32, 32>(Scalar, "causal", 256, Some(-1), b);
        ok &= measure::<_, 32, 32>(Scalar, "window64", 1024, Some(63), b);
        ok &= measure::<_, 32, 32>(Scalar, "window64", 4096, Some(63), b);
        ok &= measure::<_, 16, 16>(Scalar, "window64", 1024, Some(63), b);
        ok &= measure::<_, 16, 16>(Scalar, "window64", 4096, Some(63), b);
    }
    #[cfg(not(hard_float))]
    {
        ok &= measure::<_, 32, 32>(Scalar, "dense", 256, None, b);
        ok &= measure::<_, 32, 32>(Scalar, "window64", 1024, Some(63), b);
    }
    i32::from(!ok)
}
