//! The one error type of the crate. Every refusal (of a spec, a mask, a
//! buffer, an FP8 conversion, an index list or a block selection) is an
//! [`Error`] that names the buffer ([`Tensor`]) or size ([`Size`]) and the
//! rule it broke; `Display` says both in one line.

use core::fmt;

/// Which buffer an error is about, by its ONNX input name where there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensor {
    /// The queries.
    Q,
    /// The keys.
    K,
    /// The values.
    V,
    /// The output `Y`.
    Y,
    /// The log-sum-exp output.
    Lse,
    /// The caller-provided scratch.
    Scratch,
    /// A dense mask.
    Mask,
    /// Per-batch valid key counts.
    KvLens,
    /// Segment ids.
    Segments,
    /// The indexer queries `(B, Sq, Hi, Di)`.
    IndexQ,
    /// The indexer keys `(B, Skv, Di)`.
    IndexK,
    /// The indexer head weights `(B, Sq, Hi)`.
    IndexW,
    /// The FP8 scales of `index_q`.
    IndexQScale,
    /// The FP8 scales of `index_k`.
    IndexKScale,
    /// One query tile's indexer scores `(rows, Skv)`.
    Scores,
    /// Indexer scores that turned out not finite.
    IndexScores,
    /// Top-k key indices.
    Indices,
    /// The duplicate-detection bitmap of an index list.
    Seen,
    /// Per-block min/max key summaries.
    Summaries,
    /// Per-block upper bounds of one query tile.
    BlockScores,
    /// The key tiles a block selector chose.
    SelectedTiles,
    /// FP8 scales.
    Scales,
    /// The source of an FP8 quantization.
    QuantizeSource,
    /// The destination of an FP8 quantization.
    QuantizeDestination,
    /// The destination of an FP8 dequantization.
    DequantizeDestination,
    /// The packed Kᵀ and V panels of one (batch, KV head).
    PackedKv,
}

impl Tensor {
    /// The name used in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Tensor::Q => "Q",
            Tensor::K => "K",
            Tensor::V => "V",
            Tensor::Y => "Y",
            Tensor::Lse => "softmax_lse",
            Tensor::Scratch => "scratch",
            Tensor::Mask => "attn_mask",
            Tensor::KvLens => "kv_lens",
            Tensor::Segments => "segment_ids",
            Tensor::IndexQ => "index_q",
            Tensor::IndexK => "index_k",
            Tensor::IndexW => "index_w",
            Tensor::IndexQScale => "index_q_scale",
            Tensor::IndexKScale => "index_k_scale",
            Tensor::Scores => "scores",
            Tensor::IndexScores => "index scores",
            Tensor::Indices => "indices",
            Tensor::Seen => "seen",
            Tensor::Summaries => "block summaries",
            Tensor::BlockScores => "block scores",
            Tensor::SelectedTiles => "selected tiles",
            Tensor::Scales => "scales",
            Tensor::QuantizeSource => "quantize source",
            Tensor::QuantizeDestination => "quantize destination",
            Tensor::DequantizeDestination => "dequantize destination",
            Tensor::PackedKv => "packed K/V panels",
        }
    }
}

/// Which size an [`Error::Zero`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Keys kept per query.
    TopK,
    /// Indexer heads `Hi`.
    IndexHeads,
    /// Indexer head dimension `Di`.
    IndexHeadDim,
    /// Elements per row of an FP8 conversion.
    RowLength,
    /// Elements sharing one FP8 scale.
    ScaleGroup,
    /// Keys per block summary.
    SummaryBlock,
}

impl Size {
    /// The name used in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Size::TopK => "top_k",
            Size::IndexHeads => "index heads",
            Size::IndexHeadDim => "index head dim",
            Size::RowLength => "row length",
            Size::ScaleGroup => "scale group size",
            Size::SummaryBlock => "summary block size",
        }
    }
}

/// Why a call was refused. Every variant names the input and the rule it
/// broke; `Display` says both in one line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error {
    /// `head_dim` or `v_head_dim` is zero.
    ZeroHeadDim,
    /// A head count is zero, or `q_heads` is not a multiple of `kv_heads`.
    HeadsNotDivisible {
        /// Query heads.
        q_heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// `scale` is not finite or not positive.
    BadScale(f32),
    /// `softcap` is negative or not finite (0 turns it off).
    BadSoftcap(f32),
    /// A window size below -1.
    WindowBelowMinusOne(isize),
    /// A size that must be at least 1 is 0.
    Zero {
        /// Which size.
        what: Size,
    },
    /// A size product overflows `usize`.
    Overflow(Tensor),
    /// A buffer is shorter than its shape needs.
    TooShort {
        /// Which buffer.
        tensor: Tensor,
        /// Elements needed.
        need: usize,
        /// Elements given.
        got: usize,
    },
    /// A buffer whose length is fixed by the shape has another length.
    WrongLength {
        /// Which buffer.
        tensor: Tensor,
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// A value that must be finite is NaN or infinite.
    NonFinite {
        /// Which buffer.
        tensor: Tensor,
        /// Flat element index of the first offender.
        at: usize,
    },
    /// `kv_lens[batch]` exceeds the key length.
    KvLenOutOfRange {
        /// Batch index.
        batch: usize,
        /// The value found.
        len: usize,
        /// The key length.
        kv_len: usize,
    },
    /// A tile request outside the spec.
    TileOutOfRange,
    /// An index list names a key outside `[0, kv_len)` (and is not the `-1`
    /// padding).
    IndexOutOfRange {
        /// Flat row of the index list (`(b·Hkv + h)·Sq + i`).
        row: usize,
        /// The value found.
        index: i64,
        /// The key length.
        kv_len: usize,
    },
    /// An index list names the same key twice.
    DuplicateIndex {
        /// Flat row of the index list.
        row: usize,
        /// The repeated key.
        index: i64,
    },
    /// The block size of the summaries differs from the attention key tile.
    BlockMismatch {
        /// Keys per summary block.
        summary: usize,
        /// Keys per attention tile (`BK`).
        tile: usize,
    },
    /// A key value does not fit the summary format, so its bound would be
    /// wrong; use a wider format (f32).
    SummaryOverflow {
        /// Flat index of the key element.
        at: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ZeroHeadDim => write!(f, "Q/K/V: head dimension must be at least 1"),
            Error::HeadsNotDivisible { q_heads, kv_heads } => write!(
                f,
                "K/V: q_num_heads ({q_heads}) must be a positive multiple of kv_num_heads ({kv_heads})"
            ),
            Error::BadScale(s) => write!(f, "scale must be finite and > 0, got {s}"),
            Error::BadSoftcap(c) => write!(f, "softcap must be finite and >= 0, got {c}"),
            Error::WindowBelowMinusOne(w) => {
                write!(f, "window size must be >= -1 (-1 = unbounded), got {w}")
            }
            Error::Zero { what } => write!(f, "{} must be at least 1, got 0", what.name()),
            Error::Overflow(t) => write!(f, "{}: size overflows the address space", t.name()),
            Error::TooShort { tensor, need, got } => {
                write!(f, "{}: needs {need} elements, got {got}", tensor.name())
            }
            Error::WrongLength { tensor, expected, got } => {
                write!(f, "{}: expected length {expected}, got {got}", tensor.name())
            }
            Error::NonFinite { tensor, at } => {
                write!(f, "{}: element {at} is not finite", tensor.name())
            }
            Error::KvLenOutOfRange { batch, len, kv_len } => write!(
                f,
                "kv_lens[{batch}] = {len} exceeds the key sequence length {kv_len}"
            ),
            Error::TileOutOfRange => write!(f, "tile index outside the spec"),
            Error::IndexOutOfRange { row, index, kv_len } => write!(
                f,
                "indices: row {row} holds {index}, outside [0, {kv_len}) (only -1 may pad)"
            ),
            Error::DuplicateIndex { row, index } => {
                write!(f, "indices: row {row} names key {index} more than once")
            }
            Error::BlockMismatch { summary, tile } => write!(
                f,
                "block summaries: block of {summary} keys must equal the attention key tile of {tile}"
            ),
            Error::SummaryOverflow { at } => write!(
                f,
                "K: element {at} is outside the range of the summary format; use f32 summaries"
            ),
        }
    }
}
