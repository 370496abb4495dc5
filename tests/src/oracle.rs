//! f64 attention written straight from the ONNX `Attention` rules (with the
//! ONNX-main windows and Tessera's global tokens), independent of
//! `tessera-core`: the test oracle for the plugin.
//!
//! Layouts: Q `(B, Hq, Sq, D)`, K `(B, Hkv, T, D)` and V `(B, Hkv, T, Dv)`
//! with the past already in front (`T = past + new`); Y `(B, Hq, Sq, Dv)`.

/// A dense mask right-aligned to `(B, Hq, Sq, T)`: `dims` with 1 where
/// broadcast; keys at or past `dims[3]` are masked.
#[derive(Clone, Debug)]
pub enum Mask {
    /// `true` = attend.
    Bool(Vec<bool>, [usize; 4]),
    /// Added to the score.
    Float(Vec<f32>, [usize; 4]),
}

/// One attention problem.
#[derive(Clone, Debug, Default)]
pub struct Problem {
    /// B
    pub batch: usize,
    /// Hq
    pub q_heads: usize,
    /// Hkv
    pub kv_heads: usize,
    /// Sq
    pub q_len: usize,
    /// New keys.
    pub kv_new: usize,
    /// Cached keys in front.
    pub past: usize,
    /// D
    pub head_dim: usize,
    /// Dv
    pub v_head_dim: usize,
    /// is_causal
    pub causal: bool,
    /// scale (default 1/sqrt(D))
    pub scale: Option<f32>,
    /// softcap (0 = off)
    pub softcap: f32,
    /// left window (-1 = unbounded)
    pub left: i64,
    /// right window (-1 = unbounded)
    pub right: i64,
    /// global tokens
    pub globals: usize,
    /// attn_mask
    pub mask: Option<Mask>,
    /// nonpad_kv_seqlen
    pub nonpad: Option<Vec<i64>>,
}

impl Problem {
    /// Keys in total.
    pub fn total(&self) -> usize {
        self.past + self.kv_new
    }

    fn bias(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let t = self.total();
        let (n, offset) = match &self.nonpad {
            Some(l) => (l[b] as usize, l[b] - self.q_len as i64),
            None => (t, self.past as i64),
        };
        if j >= n {
            return f64::NEG_INFINITY;
        }
        let (p, jj) = (i as i64 + offset, j as i64);
        if self.causal && jj > p {
            return f64::NEG_INFINITY;
        }
        let g = self.globals as i64;
        let global = jj < g || (0..g).contains(&p);
        if !global
            && ((self.left >= 0 && jj < p - self.left) || (self.right >= 0 && jj > p + self.right))
        {
            return f64::NEG_INFINITY;
        }
        let at = |d: &[usize; 4]| {
            if j >= d[3] {
                return None;
            }
            let idx = [b, h, i, j];
            Some((0..4).fold(0, |acc, a| acc * d[a] + if d[a] == 1 { 0 } else { idx[a] }))
        };
        match &self.mask {
            None => 0.0,
            Some(Mask::Bool(m, d)) => match at(d) {
                Some(x) if m[x] => 0.0,
                _ => f64::NEG_INFINITY,
            },
            Some(Mask::Float(m, d)) => at(d).map_or(f64::NEG_INFINITY, |x| m[x] as f64),
        }
    }

    /// `(Y, lse)`: Y `(B, Hq, Sq, Dv)`, lse `(B, Hq, Sq)`; a row that sees
    /// nothing gives 0 and `-inf`.
    pub fn attention(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (t, d, dv) = (self.total(), self.head_dim, self.v_head_dim);
        let scale = self.scale.unwrap_or(1.0 / (d as f32).sqrt()) as f64;
        let group = self.q_heads / self.kv_heads;
        let mut y = vec![0.0; self.batch * self.q_heads * self.q_len * dv];
        let mut lse = vec![f64::NEG_INFINITY; self.batch * self.q_heads * self.q_len];
        for b in 0..self.batch {
            for h in 0..self.q_heads {
                let hk = h / group;
                for i in 0..self.q_len {
                    let qr = &q[((b * self.q_heads + h) * self.q_len + i) * d..][..d];
                    let s: Vec<f64> = (0..t)
                        .map(|j| {
                            let kr = &k[((b * self.kv_heads + hk) * t + j) * d..][..d];
                            let mut x = scale
                                * qr.iter()
                                    .zip(kr)
                                    .map(|(a, c)| *a as f64 * *c as f64)
                                    .sum::<f64>();
                            if self.softcap > 0.0 {
                                let c = self.softcap as f64;
                                x = c * (x / c).tanh();
                            }
                            x + self.bias(b, h, i, j)
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let row = (b * self.q_heads + h) * self.q_len + i;
                    if m == f64::NEG_INFINITY {
                        continue;
                    }
                    let mut l = 0.0;
                    for (j, &x) in s.iter().enumerate() {
                        let p = (x - m).exp();
                        l += p;
                        let vr = &v[((b * self.kv_heads + hk) * t + j) * dv..][..dv];
                        for (o, &x) in y[row * dv..][..dv].iter_mut().zip(vr) {
                            *o += p * x as f64;
                        }
                    }
                    y[row * dv..][..dv].iter_mut().for_each(|o| *o /= l);
                    lse[row] = m + l.ln();
                }
            }
        }
        (y, lse)
    }
}
