//! Deterministic, never-zero test data generated on the target.

/// xorshift32.
#[derive(Clone, Debug)]
pub struct Rng(u32);

impl Rng {
    /// A generator; a zero seed is replaced (xorshift must not start at 0).
    pub const fn new(seed: u32) -> Self {
        Self(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// Uniform in `[-1, 1)`, never exactly 0.
    pub fn value(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        let v = (x >> 8) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }

    /// Fill a buffer.
    pub fn fill(&mut self, buf: &mut [f32]) {
        buf.iter_mut().for_each(|x| *x = self.value());
    }
}
