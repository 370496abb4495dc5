//! Shape rules of `ai.tessera.Attention`: from the input shapes and the
//! attributes to the sizes of one call, or an error that names the input and
//! the rule. Pure: no ORT, no data, so every rule is unit-tested here.

use tessera_core::{default_scale, AttentionSpec, Strides};

use crate::error::{ensure, Error, Result};

/// `qk_matmul_output_mode`, as the ONNX backend test data defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkMode {
    /// 0 and 1: the scaled (and softcapped, when `softcap > 0`) scores.
    Scores,
    /// 2: scores plus the mask bias (`-inf` where masked).
    WithBias,
    /// 3: softmax probabilities (a fully masked row is 0).
    Softmax,
}

/// The node's attributes, read once at session creation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attrs {
    /// `is_causal`.
    pub is_causal: bool,
    /// `scale`; `None` = `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// `softcap`; 0 = off.
    pub softcap: f32,
    /// `q_num_heads` (required for 3-D inputs).
    pub q_heads: Option<usize>,
    /// `kv_num_heads` (required for 3-D inputs).
    pub kv_heads: Option<usize>,
    /// `left_window_size`; -1 = unbounded.
    pub left_window: isize,
    /// `right_window_size`; -1 = unbounded.
    pub right_window: isize,
    /// `num_global_tokens`.
    pub global_tokens: usize,
    /// `qk_matmul_output_mode`.
    pub qk_mode: QkMode,
    /// `softmax_precision` (ONNX element type code), accepted and documented:
    /// the softmax always runs in f32, at least as precise as f16/bf16/f32.
    pub softmax_precision: Option<i64>,
}

impl Default for Attrs {
    fn default() -> Self {
        Self {
            is_causal: false,
            scale: None,
            softcap: 0.0,
            q_heads: None,
            kv_heads: None,
            left_window: -1,
            right_window: -1,
            global_tokens: 0,
            qk_mode: QkMode::Scores,
            softmax_precision: None,
        }
    }
}

/// Raw attribute values, as the node stores them (`None` = not set).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RawAttrs {
    /// `is_causal`
    pub is_causal: Option<i64>,
    /// `scale`
    pub scale: Option<f32>,
    /// `softcap`
    pub softcap: Option<f32>,
    /// `q_num_heads`
    pub q_num_heads: Option<i64>,
    /// `kv_num_heads`
    pub kv_num_heads: Option<i64>,
    /// `left_window_size`
    pub left_window_size: Option<i64>,
    /// `right_window_size`
    pub right_window_size: Option<i64>,
    /// `num_global_tokens`
    pub num_global_tokens: Option<i64>,
    /// `qk_matmul_output_mode`
    pub qk_matmul_output_mode: Option<i64>,
    /// `softmax_precision`
    pub softmax_precision: Option<i64>,
}

impl Attrs {
    /// Check every attribute and build the typed set.
    pub fn parse(raw: &RawAttrs) -> Result<Self> {
        let is_causal = match raw.is_causal.unwrap_or(0) {
            0 => false,
            1 => true,
            v => return Err(Error::invalid(format!("is_causal must be 0 or 1, got {v}"))),
        };
        if let Some(s) = raw.scale {
            ensure!(
                s.is_finite() && s > 0.0,
                "scale must be finite and > 0, got {s}"
            );
        }
        let softcap = raw.softcap.unwrap_or(0.0);
        ensure!(
            softcap.is_finite() && softcap >= 0.0,
            "softcap must be finite and >= 0 (0 = off), got {softcap}"
        );
        let heads = |name: &str, v: Option<i64>| -> Result<Option<usize>> {
            match v {
                None => Ok(None),
                Some(h) if h >= 1 => usize::try_from(h)
                    .map(Some)
                    .map_err(|_| Error::invalid(format!("{name} = {h} is too large"))),
                Some(h) => Err(Error::invalid(format!("{name} must be >= 1, got {h}"))),
            }
        };
        let window = |name: &str, v: Option<i64>| -> Result<isize> {
            let w = v.unwrap_or(-1);
            ensure!(w >= -1, "{name} must be >= -1 (-1 = unbounded), got {w}");
            isize::try_from(w).map_err(|_| Error::invalid(format!("{name} = {w} is too large")))
        };
        let g = raw.num_global_tokens.unwrap_or(0);
        ensure!(g >= 0, "num_global_tokens must be >= 0, got {g}");
        let qk_mode = match raw.qk_matmul_output_mode.unwrap_or(0) {
            0 | 1 => QkMode::Scores,
            2 => QkMode::WithBias,
            3 => QkMode::Softmax,
            m => {
                return Err(Error::invalid(format!(
                    "qk_matmul_output_mode must be 0, 1, 2 or 3, got {m}"
                )))
            }
        };
        if let Some(p) = raw.softmax_precision {
            // float, float16, double, bfloat16 (ONNX TensorProto codes).
            ensure!(
                matches!(p, 1 | 10 | 11 | 16),
                "softmax_precision must be a float type code (1 float, 10 float16, 11 double, 16 bfloat16), got {p}"
            );
        }
        Ok(Self {
            is_causal,
            scale: raw.scale,
            softcap,
            q_heads: heads("q_num_heads", raw.q_num_heads)?,
            kv_heads: heads("kv_num_heads", raw.kv_num_heads)?,
            left_window: window("left_window_size", raw.left_window_size)?,
            right_window: window("right_window_size", raw.right_window_size)?,
            global_tokens: usize::try_from(g)
                .map_err(|_| Error::invalid("num_global_tokens is too large"))?,
            qk_mode,
            softmax_precision: raw.softmax_precision,
        })
    }
}

/// Memory layout of Q, K, V and Y.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 4-D `(B, H, S, D)`.
    Bhsd,
    /// 3-D `(B, S, H·D)`.
    Bshd,
}

/// Shapes of the inputs of one call (`None` = input left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct Shapes<'a> {
    /// Q
    pub q: &'a [i64],
    /// K
    pub k: &'a [i64],
    /// V
    pub v: &'a [i64],
    /// attn_mask
    pub mask: Option<&'a [i64]>,
    /// past_key
    pub past_key: Option<&'a [i64]>,
    /// past_value
    pub past_value: Option<&'a [i64]>,
    /// nonpad_kv_seqlen
    pub nonpad: Option<&'a [i64]>,
}

/// The sizes of one call, all checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Layout of Q, K, V and Y.
    pub layout: Layout,
    /// `B`
    pub batch: usize,
    /// `Hq`
    pub q_heads: usize,
    /// `Hkv`
    pub kv_heads: usize,
    /// `Sq`
    pub q_len: usize,
    /// New keys in K.
    pub kv_new: usize,
    /// Keys in `past_key` (0 without a cache).
    pub past: usize,
    /// `D`
    pub head_dim: usize,
    /// `Dv`
    pub v_head_dim: usize,
    /// Mask dims right-aligned to `(B, Hq, Sq, kv)`, 1 where broadcast; the
    /// last is the mask's own key length (`<=` total; the rest is masked).
    pub mask: Option<[usize; 4]>,
    /// Whether `past_key`/`past_value` are given.
    pub has_past: bool,
}

fn dim(shape: &[i64], i: usize) -> usize {
    // Runtime shapes are never negative; a negative one is refused by `dims`.
    shape.get(i).map_or(0, |&d| usize::try_from(d).unwrap_or(0))
}

fn fmt_shape(s: &[i64]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("({})", parts.join(", "))
}

/// Largest element count the plugin accepts: any element (8 bytes at most)
/// times it still fits in `isize`, so byte offsets never overflow.
const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

/// Refuse negative dims and shapes whose element count (zero dims counted as
/// 1, so layout arithmetic is safe even for empty tensors) overflows.
fn check_dims(name: &str, shape: &[i64]) -> Result<()> {
    let mut n = 1usize;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            Error::invalid(format!(
                "{name}: negative dimension in shape {}",
                fmt_shape(shape)
            ))
        })?;
        n = n
            .checked_mul(d.max(1))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{name}: shape {} has a size that overflows the address space",
                    fmt_shape(shape)
                ))
            })?;
    }
    Ok(())
}

fn product(name: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| {
            acc.checked_mul(d.max(1)).filter(|&n| n <= MAX_ELEMENTS)
        })
        .ok_or_else(|| Error::invalid(format!("{name}: size {dims:?} overflows the address space")))
}

impl Plan {
    /// Check the shapes against the attributes.
    pub fn new(attrs: &Attrs, s: &Shapes<'_>) -> Result<Self> {
        for (name, shape) in [
            ("Q", Some(s.q)),
            ("K", Some(s.k)),
            ("V", Some(s.v)),
            ("attn_mask", s.mask),
            ("past_key", s.past_key),
            ("past_value", s.past_value),
            ("nonpad_kv_seqlen", s.nonpad),
        ] {
            if let Some(shape) = shape {
                check_dims(name, shape)?;
            }
        }
        let rank = s.q.len();
        ensure!(rank == 3 || rank == 4, "Q: rank must be 3 (batch, seq, heads*head_size) or 4 (batch, heads, seq, head_size), got rank {rank} {}", fmt_shape(s.q));
        ensure!(
            s.k.len() == rank,
            "K: rank {} must equal Q's rank {rank}",
            s.k.len()
        );
        ensure!(
            s.v.len() == rank,
            "V: rank {} must equal Q's rank {rank}",
            s.v.len()
        );
        let batch = dim(s.q, 0);
        ensure!(
            dim(s.k, 0) == batch,
            "K: batch size {} must equal Q's batch size {batch}",
            dim(s.k, 0)
        );
        ensure!(
            dim(s.v, 0) == batch,
            "V: batch size {} must equal Q's batch size {batch}",
            dim(s.v, 0)
        );

        let (layout, q_heads, kv_heads, q_len, kv_new, head_dim, v_head_dim);
        if rank == 4 {
            layout = Layout::Bhsd;
            (q_heads, q_len, head_dim) = (dim(s.q, 1), dim(s.q, 2), dim(s.q, 3));
            (kv_heads, kv_new) = (dim(s.k, 1), dim(s.k, 2));
            ensure!(
                dim(s.k, 3) == head_dim,
                "K: head size {} (K.shape[3]) must equal Q's head size {head_dim} (D mismatch)",
                dim(s.k, 3)
            );
            ensure!(
                dim(s.v, 1) == kv_heads,
                "V: {} heads (V.shape[1]) must equal K's {kv_heads}",
                dim(s.v, 1)
            );
            ensure!(
                dim(s.v, 2) == kv_new,
                "V: sequence length {} must equal K's {kv_new}",
                dim(s.v, 2)
            );
            v_head_dim = dim(s.v, 3);
            if let Some(h) = attrs.q_heads {
                ensure!(
                    h == q_heads,
                    "q_num_heads = {h} contradicts Q.shape[1] = {q_heads}"
                );
            }
            if let Some(h) = attrs.kv_heads {
                ensure!(
                    h == kv_heads,
                    "kv_num_heads = {h} contradicts K.shape[1] = {kv_heads}"
                );
            }
        } else {
            layout = Layout::Bshd;
            let (Some(hq), Some(hkv)) = (attrs.q_heads, attrs.kv_heads) else {
                return Err(Error::invalid(
                    "Q: 3-D inputs need the q_num_heads and kv_num_heads attributes",
                ));
            };
            (q_heads, kv_heads) = (hq, hkv);
            (q_len, kv_new) = (dim(s.q, 1), dim(s.k, 1));
            ensure!(
                dim(s.v, 1) == kv_new,
                "V: sequence length {} must equal K's {kv_new}",
                dim(s.v, 1)
            );
            let (hid_q, hid_k, hid_v) = (dim(s.q, 2), dim(s.k, 2), dim(s.v, 2));
            ensure!(
                hid_q % hq == 0,
                "Q: hidden size {hid_q} is not a multiple of q_num_heads {hq}"
            );
            ensure!(
                hid_k % hkv == 0,
                "K: hidden size {hid_k} is not a multiple of kv_num_heads {hkv}"
            );
            ensure!(
                hid_v % hkv == 0,
                "V: hidden size {hid_v} is not a multiple of kv_num_heads {hkv}"
            );
            head_dim = hid_q / hq;
            ensure!(hid_k / hkv == head_dim, "K: head size {} (hidden {hid_k} / kv_num_heads {hkv}) must equal Q's head size {head_dim} (D mismatch)", hid_k / hkv);
            v_head_dim = hid_v / hkv;
        }
        ensure!(head_dim >= 1, "Q: head size must be at least 1");
        ensure!(v_head_dim >= 1, "V: head size must be at least 1");
        ensure!(
            kv_heads >= 1 && q_heads >= 1 && q_heads % kv_heads == 0,
            "K: q_num_heads ({q_heads}) must be a positive multiple of kv_num_heads ({kv_heads})"
        );

        let has_past = match (s.past_key, s.past_value) {
            (None, None) => false,
            (Some(_), Some(_)) => true,
            _ => {
                return Err(Error::invalid(
                    "past_key and past_value must be given together",
                ))
            }
        };
        let mut past = 0;
        if let (Some(pk), Some(pv)) = (s.past_key, s.past_value) {
            ensure!(s.nonpad.is_none(), "nonpad_kv_seqlen cannot be combined with past_key/past_value (ONNX external-cache rule)");
            ensure!(
                pk.len() == 4,
                "past_key: rank must be 4 (batch, kv_num_heads, past_seq, head_size), got {}",
                fmt_shape(pk)
            );
            ensure!(
                pv.len() == 4,
                "past_value: rank must be 4 (batch, kv_num_heads, past_seq, v_head_size), got {}",
                fmt_shape(pv)
            );
            past = dim(pk, 2);
            let want_k = [batch, kv_heads, past, head_dim];
            ensure!((0..4).all(|i| dim(pk, i) == want_k[i]), "past_key: shape {} must be (batch, kv_num_heads, past_seq, head_size) = {want_k:?}", fmt_shape(pk));
            let want_v = [batch, kv_heads, past, v_head_dim];
            ensure!((0..4).all(|i| dim(pv, i) == want_v[i]), "past_value: shape {} must be (batch, kv_num_heads, past_seq, v_head_size) = {want_v:?}", fmt_shape(pv));
        }
        let total = past
            .checked_add(kv_new)
            .ok_or_else(|| Error::invalid("past_key: past + new sequence length overflows"))?;
        if let Some(n) = s.nonpad {
            ensure!(
                n.len() == 1 && dim(n, 0) == batch,
                "nonpad_kv_seqlen: shape {} must be (batch,) = ({batch},)",
                fmt_shape(n)
            );
        }
        let mask = match s.mask {
            None => None,
            Some(m) => {
                ensure!(
                    (1..=4).contains(&m.len()),
                    "attn_mask: rank must be 1 to 4, got {}",
                    fmt_shape(m)
                );
                let mut d = [1usize; 4];
                for (slot, &x) in d[4 - m.len()..].iter_mut().zip(m) {
                    *slot = usize::try_from(x).unwrap_or(0);
                }
                let target = [batch, q_heads, q_len, total];
                let names = [
                    "batch",
                    "q_num_heads",
                    "q_sequence_length",
                    "total_sequence_length",
                ];
                for i in 0..3 {
                    ensure!(
                        d[i] == 1 || d[i] == target[i],
                        "attn_mask: shape {} does not broadcast to (batch, q_num_heads, q_seq, total_kv_seq) = {target:?}: its {} axis is {} (must be 1 or {})",
                        fmt_shape(m), names[i], d[i], target[i]
                    );
                }
                ensure!(
                    d[3] <= total && (d[3] >= 1 || total == 0),
                    "attn_mask: last axis {} must be between 1 and the total key length {total} (shorter masks are padded as masked)",
                    d[3]
                );
                Some(d)
            }
        };
        let plan = Self {
            layout,
            batch,
            q_heads,
            kv_heads,
            q_len,
            kv_new,
            past,
            head_dim,
            v_head_dim,
            mask,
            has_past,
        };
        // Every tensor the call touches or writes must be addressable.
        product("Y", &[batch, q_heads, q_len, v_head_dim])?;
        product("present_key", &[batch, kv_heads, total, head_dim])?;
        product("present_value", &[batch, kv_heads, total, v_head_dim])?;
        product("qk_matmul_output", &[batch, q_heads, q_len, total])?;
        product("Q", &[q_heads, head_dim])?;
        product("V", &[kv_heads, v_head_dim])?;
        Ok(plan)
    }

    /// Keys seen: past plus new.
    pub const fn kv_total(&self) -> usize {
        self.past + self.kv_new
    }

    /// Strides of a `(heads, seq, dim)` tensor in this plan's layout.
    pub fn strides(&self, heads: usize, seq: usize, dim: usize) -> Strides {
        match self.layout {
            Layout::Bhsd => Strides::bhsd(heads, seq, dim),
            Layout::Bshd => Strides::bshd(heads, seq, dim),
        }
    }

    /// The core spec of a call with no cache: Q, K, V and Y read and written
    /// in place in this plan's layout (`scale` defaults to `1/√D`; no softcap).
    pub fn cacheless_spec(&self, scale: Option<f32>) -> AttentionSpec {
        let (hq, hkv, sq, skv) = (self.q_heads, self.kv_heads, self.q_len, self.kv_new);
        let (d, dv) = (self.head_dim, self.v_head_dim);
        AttentionSpec {
            batch: self.batch,
            q_heads: hq,
            kv_heads: hkv,
            q_len: sq,
            kv_len: skv,
            head_dim: d,
            v_head_dim: dv,
            scale: scale.unwrap_or_else(|| default_scale(d)),
            softcap: 0.0,
            q: self.strides(hq, sq, d),
            k: self.strides(hkv, skv, d),
            v: self.strides(hkv, skv, dv),
            out: self.strides(hq, sq, dv),
        }
    }

    /// Shape of Y.
    pub fn y_dims(&self) -> Vec<i64> {
        match self.layout {
            Layout::Bhsd => dims(&[self.batch, self.q_heads, self.q_len, self.v_head_dim]),
            Layout::Bshd => dims(&[self.batch, self.q_len, self.q_heads * self.v_head_dim]),
        }
    }

    /// Shape of present_key.
    pub fn present_key_dims(&self) -> Vec<i64> {
        dims(&[self.batch, self.kv_heads, self.kv_total(), self.head_dim])
    }

    /// Shape of present_value.
    pub fn present_value_dims(&self) -> Vec<i64> {
        dims(&[self.batch, self.kv_heads, self.kv_total(), self.v_head_dim])
    }

    /// Shape of softmax_lse.
    pub fn lse_dims(&self) -> Vec<i64> {
        dims(&[self.batch, self.q_heads, self.q_len])
    }

    /// Shape of qk_matmul_output.
    pub fn qk_dims(&self) -> Vec<i64> {
        dims(&[self.batch, self.q_heads, self.q_len, self.kv_total()])
    }
}

fn dims(d: &[usize]) -> Vec<i64> {
    // Every size was checked to fit in usize with room for 8-byte elements,
    // so it fits in i64.
    d.iter().map(|&x| x as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attrs {
        Attrs::default()
    }

    fn plan(a: &Attrs, q: &[i64], k: &[i64], v: &[i64]) -> Result<Plan> {
        Plan::new(
            a,
            &Shapes {
                q,
                k,
                v,
                ..Default::default()
            },
        )
    }

    #[test]
    fn four_d_gqa_sizes() {
        let p = plan(&attrs(), &[2, 9, 4, 8], &[2, 3, 6, 8], &[2, 3, 6, 10]).unwrap();
        assert_eq!(
            (
                p.batch,
                p.q_heads,
                p.kv_heads,
                p.q_len,
                p.kv_new,
                p.head_dim,
                p.v_head_dim
            ),
            (2, 9, 3, 4, 6, 8, 10)
        );
        assert_eq!(p.y_dims(), vec![2, 9, 4, 10]);
        assert_eq!(p.qk_dims(), vec![2, 9, 4, 6]);
    }

    #[test]
    fn three_d_sizes() {
        let a = Attrs {
            q_heads: Some(4),
            kv_heads: Some(1),
            ..attrs()
        };
        let p = plan(&a, &[2, 4, 32], &[2, 6, 8], &[2, 6, 6]).unwrap();
        assert_eq!(
            (p.q_heads, p.kv_heads, p.head_dim, p.v_head_dim, p.layout),
            (4, 1, 8, 6, Layout::Bshd)
        );
        assert_eq!(p.y_dims(), vec![2, 4, 24]);
    }

    /// Each bad shape is refused with a message naming the input and rule.
    #[test]
    fn bad_shapes_name_the_input_and_rule() {
        let a3 = Attrs {
            q_heads: Some(3),
            kv_heads: Some(2),
            ..attrs()
        };
        let cases: &[(&Attrs, Shapes<'_>, &str)] = &[
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4],
                    k: &[2, 3, 4],
                    v: &[2, 3, 4],
                    ..Default::default()
                },
                "Q: 3-D inputs need",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8, 1],
                    k: &[2, 3, 4, 8],
                    v: &[2, 3, 4, 8],
                    ..Default::default()
                },
                "Q: rank must be 3",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 4],
                    v: &[2, 3, 4, 8],
                    ..Default::default()
                },
                "K: rank 3 must equal",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 2, 4, 8],
                    v: &[2, 2, 4, 8],
                    ..Default::default()
                },
                "must be a positive multiple of kv_num_heads (2)",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 4, 7],
                    v: &[2, 3, 4, 8],
                    ..Default::default()
                },
                "K: head size 7",
            ),
            (
                &a3,
                Shapes {
                    q: &[2, 4, 24],
                    k: &[2, 4, 16],
                    v: &[2, 4, 16],
                    ..Default::default()
                },
                "multiple of kv_num_heads",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 4, 8],
                    ..Default::default()
                },
                "V: sequence length 4",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 5, 8],
                    mask: Some(&[2, 4, 5]),
                    ..Default::default()
                },
                "attn_mask: shape (2, 4, 5) does not broadcast",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 5, 8],
                    mask: Some(&[4, 6]),
                    ..Default::default()
                },
                "attn_mask: last axis 6",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 5, 8],
                    past_key: Some(&[2, 3, 1, 8]),
                    ..Default::default()
                },
                "past_key and past_value must be given together",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 5, 8],
                    past_key: Some(&[2, 3, 1, 8]),
                    past_value: Some(&[2, 3, 2, 8]),
                    ..Default::default()
                },
                "past_value: shape (2, 3, 2, 8)",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[2, 3, 4, 8],
                    k: &[2, 3, 5, 8],
                    v: &[2, 3, 5, 8],
                    nonpad: Some(&[3]),
                    ..Default::default()
                },
                "nonpad_kv_seqlen: shape (3)",
            ),
            (
                &attrs(),
                Shapes {
                    q: &[0, 1 << 40, 1 << 30, 8],
                    k: &[0, 1, 1, 8],
                    v: &[0, 1, 1, 8],
                    ..Default::default()
                },
                "overflows",
            ),
        ];
        for (a, s, want) in cases {
            let err = Plan::new(a, s).unwrap_err();
            assert!(
                err.message.contains(want),
                "{s:?}: got {:?}, want {want:?}",
                err.message
            );
        }
    }

    #[test]
    fn bad_attributes_are_refused() {
        let cases: &[(RawAttrs, &str)] = &[
            (
                RawAttrs {
                    left_window_size: Some(-2),
                    ..Default::default()
                },
                "left_window_size must be >= -1",
            ),
            (
                RawAttrs {
                    right_window_size: Some(-5),
                    ..Default::default()
                },
                "right_window_size must be >= -1",
            ),
            (
                RawAttrs {
                    is_causal: Some(2),
                    ..Default::default()
                },
                "is_causal must be 0 or 1",
            ),
            (
                RawAttrs {
                    scale: Some(f32::NAN),
                    ..Default::default()
                },
                "scale must be finite",
            ),
            (
                RawAttrs {
                    softcap: Some(-1.0),
                    ..Default::default()
                },
                "softcap must be finite and >= 0",
            ),
            (
                RawAttrs {
                    q_num_heads: Some(0),
                    ..Default::default()
                },
                "q_num_heads must be >= 1",
            ),
            (
                RawAttrs {
                    qk_matmul_output_mode: Some(4),
                    ..Default::default()
                },
                "qk_matmul_output_mode must be 0, 1, 2 or 3",
            ),
            (
                RawAttrs {
                    softmax_precision: Some(6),
                    ..Default::default()
                },
                "softmax_precision must be a float type",
            ),
            (
                RawAttrs {
                    num_global_tokens: Some(-1),
                    ..Default::default()
                },
                "num_global_tokens must be >= 0",
            ),
        ];
        for (raw, want) in cases {
            let err = Attrs::parse(raw).unwrap_err();
            assert!(err.message.contains(want), "{raw:?}: got {:?}", err.message);
        }
        assert!(Attrs::parse(&RawAttrs {
            left_window_size: Some(-1),
            softmax_precision: Some(11),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn masks_broadcast_right_aligned() {
        let s = |m: &'static [i64]| Shapes {
            q: &[2, 3, 4, 8],
            k: &[2, 3, 6, 8],
            v: &[2, 3, 6, 8],
            mask: Some(m),
            ..Default::default()
        };
        assert_eq!(
            Plan::new(&attrs(), &s(&[6])).unwrap().mask,
            Some([1, 1, 1, 6])
        );
        assert_eq!(
            Plan::new(&attrs(), &s(&[4, 6])).unwrap().mask,
            Some([1, 1, 4, 6])
        );
        assert_eq!(
            Plan::new(&attrs(), &s(&[3, 4, 6])).unwrap().mask,
            Some([1, 3, 4, 6])
        );
        assert_eq!(
            Plan::new(&attrs(), &s(&[2, 1, 4, 3])).unwrap().mask,
            Some([2, 1, 4, 3])
        );
    }
}
