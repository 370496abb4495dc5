//! Helpers shared by the fuzz targets: a byte reader that never fails (it
//! yields zeros once the input runs out), so every input is a valid test.

/// Reads small values off the fuzzer's bytes.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A value in `0..n` (`n >= 1`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }

    /// A boolean.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Eight bytes, little-endian.
    pub fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = self.u8());
        i64::from_le_bytes(b)
    }

    /// Four bytes as an f32 bit pattern (NaN, ±inf and subnormals included).
    pub fn f32(&mut self) -> f32 {
        let mut b = [0u8; 4];
        b.iter_mut().for_each(|x| *x = self.u8());
        f32::from_le_bytes(b)
    }

    /// A dim a hostile model could declare: mostly small, sometimes 0,
    /// negative, huge (2^62, i64::MAX) or any 64-bit value.
    pub fn dim(&mut self) -> i64 {
        match self.u8() {
            0..=199 => i64::from(self.u8() % 9),
            200..=219 => -1,
            220..=229 => 1 << 62,
            230..=239 => i64::MAX,
            240..=247 => i64::MIN,
            _ => self.i64(),
        }
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
