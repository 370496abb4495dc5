//! The shape of one attention call: sizes, strides, scale and softcap.

use crate::error::Error;
/// The buffers a spec sizes are named by the crate's one [`Tensor`] enum
/// (re-exported here for `spec::Tensor` users).
pub use crate::error::Tensor;

/// Element strides of a rank-4 view `(batch, head, seq, dim)`. The `dim`
/// stride is always 1, so a row of one head is contiguous; everything else is
/// free, which makes BHSD and BSHD (and any slice of a larger buffer) views of
/// the same data, with nothing copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// Elements between consecutive batches.
    pub batch: usize,
    /// Elements between consecutive heads.
    pub head: usize,
    /// Elements between consecutive sequence positions.
    pub seq: usize,
}

impl Strides {
    /// Contiguous `(B, H, S, D)`.
    pub const fn bhsd(heads: usize, seq: usize, dim: usize) -> Self {
        Self {
            batch: heads * seq * dim,
            head: seq * dim,
            seq: dim,
        }
    }

    /// Contiguous `(B, S, H, D)`, which is also ONNX's 3-D `(B, S, H·D)`.
    pub const fn bshd(heads: usize, seq: usize, dim: usize) -> Self {
        Self {
            batch: seq * heads * dim,
            head: dim,
            seq: heads * dim,
        }
    }

    /// Offset of element `(b, h, s, 0)`. The caller keeps the indices in range.
    #[inline(always)]
    pub const fn offset(&self, b: usize, h: usize, s: usize) -> usize {
        b * self.batch + h * self.head + s * self.seq
    }

    /// The shortest slice that holds a `(batch, heads, seq, dim)` view with
    /// these strides, or `None` when the size overflows `usize`.
    pub fn required_len(
        &self,
        batch: usize,
        heads: usize,
        seq: usize,
        dim: usize,
    ) -> Option<usize> {
        if batch == 0 || heads == 0 || seq == 0 || dim == 0 {
            return Some(0);
        }
        let last = (batch - 1)
            .checked_mul(self.batch)?
            .checked_add((heads - 1).checked_mul(self.head)?)?
            .checked_add((seq - 1).checked_mul(self.seq)?)?
            .checked_add(dim - 1)?;
        last.checked_add(1)
    }
}

/// The shape of one attention call.
///
/// Query head `h` reads KV head `h / (q_heads / kv_heads)` (repeat-interleave
/// GQA). Scores are `scale · q·k`, then `softcap · tanh(x / softcap)` when
/// `softcap > 0`, then the mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Batch size `B`.
    pub batch: usize,
    /// Query heads `Hq`.
    pub q_heads: usize,
    /// Key/value heads `Hkv`; divides `Hq`.
    pub kv_heads: usize,
    /// Query length `Sq`.
    pub q_len: usize,
    /// Key/value length `Skv`.
    pub kv_len: usize,
    /// Q/K head size `D`.
    pub head_dim: usize,
    /// V/Y head size `Dv`.
    pub v_head_dim: usize,
    /// Score scale; `1/sqrt(D)` by default.
    pub scale: f32,
    /// Softcap `c`; 0 turns it off.
    pub softcap: f32,
    /// Strides of Q `(B, Hq, Sq, D)`.
    pub q: Strides,
    /// Strides of K `(B, Hkv, Skv, D)`.
    pub k: Strides,
    /// Strides of V `(B, Hkv, Skv, Dv)`.
    pub v: Strides,
    /// Strides of Y `(B, Hq, Sq, Dv)`.
    pub out: Strides,
}

impl AttentionSpec {
    /// A spec with contiguous BHSD tensors, `scale = 1/sqrt(D)` and no softcap.
    #[allow(clippy::too_many_arguments)]
    pub fn bhsd(
        batch: usize,
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
        v_head_dim: usize,
    ) -> Self {
        Self {
            batch,
            q_heads,
            kv_heads,
            q_len,
            kv_len,
            head_dim,
            v_head_dim,
            scale: default_scale(head_dim),
            softcap: 0.0,
            q: Strides::bhsd(q_heads, q_len, head_dim),
            k: Strides::bhsd(kv_heads, kv_len, head_dim),
            v: Strides::bhsd(kv_heads, kv_len, v_head_dim),
            out: Strides::bhsd(q_heads, q_len, v_head_dim),
        }
    }

    /// The same sizes with contiguous BSHD tensors (ONNX's 3-D layout).
    #[allow(clippy::too_many_arguments)]
    pub fn bshd(
        batch: usize,
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
        v_head_dim: usize,
    ) -> Self {
        Self {
            q: Strides::bshd(q_heads, q_len, head_dim),
            k: Strides::bshd(kv_heads, kv_len, head_dim),
            v: Strides::bshd(kv_heads, kv_len, v_head_dim),
            out: Strides::bshd(q_heads, q_len, v_head_dim),
            ..Self::bhsd(
                batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim,
            )
        }
    }

    /// Replace the scale.
    pub const fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    /// Set the softcap (0 = off).
    pub const fn with_softcap(mut self, softcap: f32) -> Self {
        self.softcap = softcap;
        self
    }

    /// Query heads per KV head. Only meaningful after [`validate`](Self::validate).
    #[inline(always)]
    pub const fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// The KV head that query head `h` reads.
    #[inline(always)]
    pub const fn kv_head(&self, h: usize) -> usize {
        h / self.group()
    }

    /// Check the sizes and the scalars (not the buffers).
    pub fn validate(&self) -> Result<(), Error> {
        if self.head_dim == 0 || self.v_head_dim == 0 {
            return Err(Error::ZeroHeadDim);
        }
        if self.q_heads == 0 || self.kv_heads == 0 || self.q_heads % self.kv_heads != 0 {
            return Err(Error::HeadsNotDivisible {
                q_heads: self.q_heads,
                kv_heads: self.kv_heads,
            });
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::BadScale(self.scale));
        }
        if !(self.softcap.is_finite() && self.softcap >= 0.0) {
            return Err(Error::BadSoftcap(self.softcap));
        }
        Ok(())
    }

    /// Elements a Q/K/V/Y buffer must hold, checked for overflow.
    pub fn required_len(&self, tensor: Tensor) -> Result<usize, Error> {
        let (s, heads, seq, dim) = match tensor {
            Tensor::Q => (self.q, self.q_heads, self.q_len, self.head_dim),
            Tensor::K => (self.k, self.kv_heads, self.kv_len, self.head_dim),
            Tensor::V => (self.v, self.kv_heads, self.kv_len, self.v_head_dim),
            Tensor::Y => (self.out, self.q_heads, self.q_len, self.v_head_dim),
            Tensor::Lse => {
                return self
                    .batch
                    .checked_mul(self.q_heads)
                    .and_then(|x| x.checked_mul(self.q_len))
                    .ok_or(Error::Overflow(tensor))
            }
            _ => return Ok(0),
        };
        s.required_len(self.batch, heads, seq, dim)
            .ok_or(Error::Overflow(tensor))
    }

    /// Check the outputs of a whole-problem run: `Y` long enough, and `lse`,
    /// when given, exactly `(B, Hq, Sq)`.
    pub(crate) fn check_outputs(&self, y: usize, lse: Option<usize>) -> Result<(), Error> {
        self.check_len(Tensor::Y, y)?;
        if let Some(got) = lse {
            let need = self.required_len(Tensor::Lse)?;
            if got != need {
                return Err(Error::WrongLength {
                    tensor: Tensor::Lse,
                    expected: need,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Check that a buffer is long enough for `tensor`.
    pub fn check_len(&self, tensor: Tensor, got: usize) -> Result<(), Error> {
        let need = self.required_len(tensor)?;
        if got < need {
            return Err(Error::TooShort { tensor, need, got });
        }
        Ok(())
    }
}

/// `1/sqrt(head_dim)`, the default score scale.
pub fn default_scale(head_dim: usize) -> f32 {
    1.0 / sqrt(head_dim.max(1) as f32)
}

#[cfg(not(miri))]
fn sqrt(x: f32) -> f32 {
    libm::sqrtf(x)
}

/// Miri cannot run libm's x86 `sqrtss` asm; Newton's method in f64 rounds to
/// the same f32.
#[cfg(miri)]
fn sqrt(x: f32) -> f32 {
    let x = x as f64;
    let mut r = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..64 {
        r = 0.5 * (r + x / r);
    }
    r as f32
}
