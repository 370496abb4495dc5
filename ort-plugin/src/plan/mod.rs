//! Input planning for the attention family (`Attention`, `TopKAttention`,
//! and their CUDA kernels): from the input shapes and the attributes to the
//! checked sizes of one call, or an error that names the input and the
//! rule. Pure: no ORT, no data, so every rule is unit-tested here.
//!
//! [`Plan::new`] runs the rules in order: every dim addressable, ranks and
//! batch, the head geometry of the layout, the cache, `nonpad_kv_seqlen`,
//! the mask's broadcast, and the sizes of the outputs.

mod attrs;
#[cfg(test)]
mod tests;

pub use attrs::{Attrs, QkMode, RawAttrs};

use tessera_core::{default_scale, AttentionSpec, Strides};
use tessera_schema::attention::attr::{KV_NUM_HEADS, Q_NUM_HEADS};
use tessera_schema::attention::input::{
    ATTN_MASK, K, NONPAD_KV_SEQLEN, PAST_KEY, PAST_VALUE, Q, V,
};
use tessera_schema::attention::output::{PRESENT_KEY, PRESENT_VALUE, QK_MATMUL_OUTPUT, Y};

use crate::error::{ensure, Error, Result};
use crate::shape::{checked_dims, fmt_shape, onnx_dims, product};

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

impl<'a> Shapes<'a> {
    /// Q, K and V with every optional input left out.
    pub fn qkv(q: &'a [i64], k: &'a [i64], v: &'a [i64]) -> Self {
        Self {
            q,
            k,
            v,
            ..Default::default()
        }
    }
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
    // Runtime shapes are never negative; a negative one is refused by
    // `checked_dims` before any rule reads it.
    shape.get(i).map_or(0, |&d| usize::try_from(d).unwrap_or(0))
}

/// Heads, lengths and head sizes of Q, K and V in one layout.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    layout: Layout,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_new: usize,
    head_dim: usize,
    v_head_dim: usize,
}

impl Plan {
    /// Check the shapes against the attributes.
    pub fn new(attrs: &Attrs, s: &Shapes<'_>) -> Result<Self> {
        addressable_inputs(s)?;
        let batch = ranks_and_batch(s)?;
        let g = if s.q.len() == 4 {
            geometry_4d(attrs, s)?
        } else {
            geometry_3d(attrs, s)?
        };
        check_heads(&g)?;
        let (has_past, past) = cache(s, batch, &g)?;
        let total = past.checked_add(g.kv_new).ok_or_else(|| {
            Error::invalid(format!("{PAST_KEY}: past + new sequence length overflows"))
        })?;
        if let Some(n) = s.nonpad {
            ensure!(
                n.len() == 1 && dim(n, 0) == batch,
                "{NONPAD_KV_SEQLEN}: shape {} must be (batch,) = ({batch},)",
                fmt_shape(n)
            );
        }
        let mask = match s.mask {
            None => None,
            Some(m) => Some(mask_dims(m, [batch, g.q_heads, g.q_len, total])?),
        };
        let plan = Self {
            layout: g.layout,
            batch,
            q_heads: g.q_heads,
            kv_heads: g.kv_heads,
            q_len: g.q_len,
            kv_new: g.kv_new,
            past,
            head_dim: g.head_dim,
            v_head_dim: g.v_head_dim,
            mask,
            has_past,
        };
        plan.addressable_outputs()?;
        Ok(plan)
    }

    /// Every tensor the call touches or writes must be addressable.
    fn addressable_outputs(&self) -> Result<()> {
        let (b, hq, hkv, sq) = (self.batch, self.q_heads, self.kv_heads, self.q_len);
        let (d, dv, total) = (self.head_dim, self.v_head_dim, self.kv_total());
        product(Y.as_str(), &[b, hq, sq, dv])?;
        product(PRESENT_KEY.as_str(), &[b, hkv, total, d])?;
        product(PRESENT_VALUE.as_str(), &[b, hkv, total, dv])?;
        product(QK_MATMUL_OUTPUT.as_str(), &[b, hq, sq, total])?;
        product(Q.as_str(), &[hq, d])?;
        product(V.as_str(), &[hkv, dv])?;
        Ok(())
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
            Layout::Bhsd => onnx_dims(&[self.batch, self.q_heads, self.q_len, self.v_head_dim]),
            Layout::Bshd => onnx_dims(&[self.batch, self.q_len, self.q_heads * self.v_head_dim]),
        }
    }

    /// Shape of present_key.
    pub fn present_key_dims(&self) -> Vec<i64> {
        onnx_dims(&[self.batch, self.kv_heads, self.kv_total(), self.head_dim])
    }

    /// Shape of present_value.
    pub fn present_value_dims(&self) -> Vec<i64> {
        onnx_dims(&[self.batch, self.kv_heads, self.kv_total(), self.v_head_dim])
    }

    /// Shape of softmax_lse.
    pub fn lse_dims(&self) -> Vec<i64> {
        onnx_dims(&[self.batch, self.q_heads, self.q_len])
    }

    /// Shape of qk_matmul_output.
    pub fn qk_dims(&self) -> Vec<i64> {
        onnx_dims(&[self.batch, self.q_heads, self.q_len, self.kv_total()])
    }
}

/// Refuse negative dims and shapes whose element count overflows.
fn addressable_inputs(s: &Shapes<'_>) -> Result<()> {
    for (name, shape) in [
        (Q, Some(s.q)),
        (K, Some(s.k)),
        (V, Some(s.v)),
        (ATTN_MASK, s.mask),
        (PAST_KEY, s.past_key),
        (PAST_VALUE, s.past_value),
        (NONPAD_KV_SEQLEN, s.nonpad),
    ] {
        if let Some(shape) = shape {
            checked_dims(name.as_str(), shape)?;
        }
    }
    Ok(())
}

/// Q is 3-D or 4-D, K and V share its rank and batch: the batch size.
fn ranks_and_batch(s: &Shapes<'_>) -> Result<usize> {
    let rank = s.q.len();
    ensure!(rank == 3 || rank == 4, "{Q}: rank must be 3 (batch, seq, heads*head_size) or 4 (batch, heads, seq, head_size), got rank {rank} {}", fmt_shape(s.q));
    let kv = [(K, s.k), (V, s.v)];
    for (name, shape) in kv {
        ensure!(
            shape.len() == rank,
            "{name}: rank {} must equal {Q}'s rank {rank}",
            shape.len()
        );
    }
    let batch = dim(s.q, 0);
    for (name, shape) in kv {
        ensure!(
            dim(shape, 0) == batch,
            "{name}: batch size {} must equal {Q}'s batch size {batch}",
            dim(shape, 0)
        );
    }
    Ok(batch)
}

/// `(B, H, S, D)` inputs: heads from the shapes, checked against the
/// head attributes when set.
fn geometry_4d(attrs: &Attrs, s: &Shapes<'_>) -> Result<Geometry> {
    let (q_heads, q_len, head_dim) = (dim(s.q, 1), dim(s.q, 2), dim(s.q, 3));
    let (kv_heads, kv_new) = (dim(s.k, 1), dim(s.k, 2));
    ensure!(
        dim(s.k, 3) == head_dim,
        "{K}: head size {} (K.shape[3]) must equal {Q}'s head size {head_dim} (D mismatch)",
        dim(s.k, 3)
    );
    ensure!(
        dim(s.v, 1) == kv_heads,
        "{V}: {} heads (V.shape[1]) must equal {K}'s {kv_heads}",
        dim(s.v, 1)
    );
    ensure!(
        dim(s.v, 2) == kv_new,
        "{V}: sequence length {} must equal {K}'s {kv_new}",
        dim(s.v, 2)
    );
    if let Some(h) = attrs.q_heads {
        ensure!(
            h == q_heads,
            "{Q_NUM_HEADS} = {h} contradicts Q.shape[1] = {q_heads}"
        );
    }
    if let Some(h) = attrs.kv_heads {
        ensure!(
            h == kv_heads,
            "{KV_NUM_HEADS} = {h} contradicts K.shape[1] = {kv_heads}"
        );
    }
    Ok(Geometry {
        layout: Layout::Bhsd,
        q_heads,
        kv_heads,
        q_len,
        kv_new,
        head_dim,
        v_head_dim: dim(s.v, 3),
    })
}

/// `(B, S, H·D)` inputs: heads from the attributes, head sizes from the
/// hidden sizes.
fn geometry_3d(attrs: &Attrs, s: &Shapes<'_>) -> Result<Geometry> {
    let (Some(hq), Some(hkv)) = (attrs.q_heads, attrs.kv_heads) else {
        return Err(Error::invalid(format!(
            "{Q}: 3-D inputs need the {Q_NUM_HEADS} and {KV_NUM_HEADS} attributes"
        )));
    };
    let (q_len, kv_new) = (dim(s.q, 1), dim(s.k, 1));
    ensure!(
        dim(s.v, 1) == kv_new,
        "{V}: sequence length {} must equal {K}'s {kv_new}",
        dim(s.v, 1)
    );
    let (hid_q, hid_k, hid_v) = (dim(s.q, 2), dim(s.k, 2), dim(s.v, 2));
    ensure!(
        hid_q % hq == 0,
        "{Q}: hidden size {hid_q} is not a multiple of {Q_NUM_HEADS} {hq}"
    );
    ensure!(
        hid_k % hkv == 0,
        "{K}: hidden size {hid_k} is not a multiple of {KV_NUM_HEADS} {hkv}"
    );
    ensure!(
        hid_v % hkv == 0,
        "{V}: hidden size {hid_v} is not a multiple of {KV_NUM_HEADS} {hkv}"
    );
    let head_dim = hid_q / hq;
    ensure!(hid_k / hkv == head_dim, "{K}: head size {} (hidden {hid_k} / {KV_NUM_HEADS} {hkv}) must equal {Q}'s head size {head_dim} (D mismatch)", hid_k / hkv);
    Ok(Geometry {
        layout: Layout::Bshd,
        q_heads: hq,
        kv_heads: hkv,
        q_len,
        kv_new,
        head_dim,
        v_head_dim: hid_v / hkv,
    })
}

/// Head sizes are at least 1, and query heads a multiple of KV heads.
fn check_heads(g: &Geometry) -> Result<()> {
    let (q_heads, kv_heads) = (g.q_heads, g.kv_heads);
    ensure!(g.head_dim >= 1, "{Q}: head size must be at least 1");
    ensure!(g.v_head_dim >= 1, "{V}: head size must be at least 1");
    ensure!(
        kv_heads >= 1 && q_heads >= 1 && q_heads % kv_heads == 0,
        "{K}: {Q_NUM_HEADS} ({q_heads}) must be a positive multiple of {KV_NUM_HEADS} ({kv_heads})"
    );
    Ok(())
}

/// `(has_past, past length)`: `past_key` and `past_value` come together,
/// 4-D, shaped like K and V with `P` positions, never with
/// `nonpad_kv_seqlen`.
fn cache(s: &Shapes<'_>, batch: usize, g: &Geometry) -> Result<(bool, usize)> {
    let (pk, pv) = match (s.past_key, s.past_value) {
        (None, None) => return Ok((false, 0)),
        (Some(pk), Some(pv)) => (pk, pv),
        _ => {
            return Err(Error::invalid(format!(
                "{PAST_KEY} and {PAST_VALUE} must be given together"
            )))
        }
    };
    ensure!(s.nonpad.is_none(), "{NONPAD_KV_SEQLEN} cannot be combined with {PAST_KEY}/{PAST_VALUE} (ONNX external-cache rule)");
    ensure!(
        pk.len() == 4,
        "{PAST_KEY}: rank must be 4 (batch, kv_num_heads, past_seq, head_size), got {}",
        fmt_shape(pk)
    );
    ensure!(
        pv.len() == 4,
        "{PAST_VALUE}: rank must be 4 (batch, kv_num_heads, past_seq, v_head_size), got {}",
        fmt_shape(pv)
    );
    let past = dim(pk, 2);
    let want_k = [batch, g.kv_heads, past, g.head_dim];
    ensure!(
        (0..4).all(|i| dim(pk, i) == want_k[i]),
        "{PAST_KEY}: shape {} must be (batch, kv_num_heads, past_seq, head_size) = {want_k:?}",
        fmt_shape(pk)
    );
    let want_v = [batch, g.kv_heads, past, g.v_head_dim];
    ensure!(
        (0..4).all(|i| dim(pv, i) == want_v[i]),
        "{PAST_VALUE}: shape {} must be (batch, kv_num_heads, past_seq, v_head_size) = {want_v:?}",
        fmt_shape(pv)
    );
    Ok((true, past))
}

/// The mask's dims right-aligned to `target` = `(B, Hq, Sq, total)`, each
/// leading one 1 or the target's, the last between 1 and `total`.
fn mask_dims(m: &[i64], target: [usize; 4]) -> Result<[usize; 4]> {
    ensure!(
        (1..=4).contains(&m.len()),
        "{ATTN_MASK}: rank must be 1 to 4, got {}",
        fmt_shape(m)
    );
    let mut d = [1usize; 4];
    for (slot, &x) in d[4 - m.len()..].iter_mut().zip(m) {
        *slot = usize::try_from(x).unwrap_or(0);
    }
    let names = [
        "batch",
        Q_NUM_HEADS.as_str(),
        "q_sequence_length",
        "total_sequence_length",
    ];
    for i in 0..3 {
        ensure!(
            d[i] == 1 || d[i] == target[i],
            "{ATTN_MASK}: shape {} does not broadcast to (batch, q_num_heads, q_seq, total_kv_seq) = {target:?}: its {} axis is {} (must be 1 or {})",
            fmt_shape(m), names[i], d[i], target[i]
        );
    }
    let total = target[3];
    ensure!(
        d[3] <= total && (d[3] >= 1 || total == 0),
        "{ATTN_MASK}: last axis {} must be between 1 and the total key length {total} (shorter masks are padded as masked)",
        d[3]
    );
    Ok(d)
}
