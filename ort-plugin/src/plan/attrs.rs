//! The attributes of the attention family (`Attention`, and the subset
//! `TopKAttention` shares): raw values as a node stores them, checked once
//! into [`Attrs`]. Pure, so every rule is unit-tested.

use tessera_schema::attention::attr::{
    IS_CAUSAL, KV_NUM_HEADS, LEFT_WINDOW_SIZE, NUM_GLOBAL_TOKENS, QK_MATMUL_OUTPUT_MODE,
    Q_NUM_HEADS, RIGHT_WINDOW_SIZE, SCALE, SOFTCAP, SOFTMAX_PRECISION,
};

use crate::attrs::attr_bool;
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
        let is_causal = attr_bool(IS_CAUSAL.as_str(), raw.is_causal)?;
        if let Some(s) = raw.scale {
            ensure!(
                s.is_finite() && s > 0.0,
                "{SCALE} must be finite and > 0, got {s}"
            );
        }
        let softcap = raw.softcap.unwrap_or(0.0);
        ensure!(
            softcap.is_finite() && softcap >= 0.0,
            "{SOFTCAP} must be finite and >= 0 (0 = off), got {softcap}"
        );
        let g = raw.num_global_tokens.unwrap_or(0);
        ensure!(g >= 0, "{NUM_GLOBAL_TOKENS} must be >= 0, got {g}");
        let qk_mode = qk_mode(raw.qk_matmul_output_mode)?;
        if let Some(p) = raw.softmax_precision {
            // float, float16, double, bfloat16 (ONNX TensorProto codes).
            ensure!(
                matches!(p, 1 | 10 | 11 | 16),
                "{SOFTMAX_PRECISION} must be a float type code (1 float, 10 float16, 11 double, 16 bfloat16), got {p}"
            );
        }
        Ok(Self {
            is_causal,
            scale: raw.scale,
            softcap,
            q_heads: heads(Q_NUM_HEADS.as_str(), raw.q_num_heads)?,
            kv_heads: heads(KV_NUM_HEADS.as_str(), raw.kv_num_heads)?,
            left_window: window(LEFT_WINDOW_SIZE.as_str(), raw.left_window_size)?,
            right_window: window(RIGHT_WINDOW_SIZE.as_str(), raw.right_window_size)?,
            global_tokens: usize::try_from(g)
                .map_err(|_| Error::invalid(format!("{NUM_GLOBAL_TOKENS} is too large")))?,
            qk_mode,
            softmax_precision: raw.softmax_precision,
        })
    }
}

/// A head count: absent, or >= 1.
fn heads(name: &str, v: Option<i64>) -> Result<Option<usize>> {
    match v {
        None => Ok(None),
        Some(h) if h >= 1 => usize::try_from(h)
            .map(Some)
            .map_err(|_| Error::invalid(format!("{name} = {h} is too large"))),
        Some(h) => Err(Error::invalid(format!("{name} must be >= 1, got {h}"))),
    }
}

/// A window size: -1 (absent) = unbounded, else >= 0.
fn window(name: &str, v: Option<i64>) -> Result<isize> {
    let w = v.unwrap_or(-1);
    ensure!(w >= -1, "{name} must be >= -1 (-1 = unbounded), got {w}");
    isize::try_from(w).map_err(|_| Error::invalid(format!("{name} = {w} is too large")))
}

/// `qk_matmul_output_mode` (absent = 0).
fn qk_mode(v: Option<i64>) -> Result<QkMode> {
    match v.unwrap_or(0) {
        0 | 1 => Ok(QkMode::Scores),
        2 => Ok(QkMode::WithBias),
        3 => Ok(QkMode::Softmax),
        m => Err(Error::invalid(format!(
            "{QK_MATMUL_OUTPUT_MODE} must be 0, 1, 2 or 3, got {m}"
        ))),
    }
}
