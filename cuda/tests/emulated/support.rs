//! What every family's tests share: a seeded generator, host buffers as
//! device addresses, and the relative error against the f64 reference.

use tessera_core::Element;
use tessera_cuda::plan::DevicePtr;

/// xorshift64*, with a roughly normal `normal()`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.7 - 3.4
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn addr<T>(v: &[T]) -> DevicePtr {
    DevicePtr(v.as_ptr() as u64)
}

/// The address of an output buffer (the kernel writes through it).
pub fn out<T>(v: &mut [T]) -> DevicePtr {
    DevicePtr(v.as_mut_ptr() as u64)
}

pub fn fill<T: Element>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.normal())).collect()
}

/// max |got - want| / max |want| over finite entries; infinities must match
/// exactly and NaN fails.
pub fn rel_err(got: &[f64], want: &[f64]) -> Result<f64, String> {
    let mut err = 0.0f64;
    let mut scale = 1e-30f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() {
            return Err(format!("NaN at {i}"));
        }
        if w.is_infinite() || g.is_infinite() {
            if g != w {
                return Err(format!("at {i}: got {g}, want {w}"));
            }
            continue;
        }
        err = err.max((g - w).abs());
        scale = scale.max(w.abs());
    }
    Ok(err / scale)
}
