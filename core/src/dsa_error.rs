//! Errors of the DSA-style sparse path: FP8 conversion with scales, the
//! lightning indexer, top-k selection, gather attention and the block
//! selector. Every variant names the buffer (by its ONNX input name where
//! there is one) and the rule it broke; `Display` says both in one line.

use core::fmt;

use crate::spec::SpecError;

/// Why an FP8, indexer, top-k or sparse-attention call was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DsaError {
    /// The attention spec, mask or Q/K/V buffers were refused.
    Spec(SpecError),
    /// A buffer is shorter than its shape needs.
    TooShort {
        /// Which buffer (`"index_q"`, `"indices"`, `"scratch"`, ...).
        buffer: &'static str,
        /// Elements needed.
        need: usize,
        /// Elements given.
        got: usize,
    },
    /// A buffer whose length is fixed by the shape has another length.
    WrongLength {
        /// Which buffer.
        buffer: &'static str,
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// A size that must be at least 1 is 0.
    Zero {
        /// Which size (`"top_k"`, `"index heads"`, `"row length"`, ...).
        what: &'static str,
    },
    /// A size product overflows `usize`.
    Overflow {
        /// Which buffer.
        buffer: &'static str,
    },
    /// A value that must be finite is NaN or infinite.
    NonFinite {
        /// Which buffer.
        buffer: &'static str,
        /// Flat element index of the first offender.
        at: usize,
    },
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

impl From<SpecError> for DsaError {
    fn from(e: SpecError) -> Self {
        DsaError::Spec(e)
    }
}

impl fmt::Display for DsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DsaError::Spec(e) => e.fmt(f),
            DsaError::TooShort { buffer, need, got } => write!(f, "{buffer}: needs {need} elements, got {got}"),
            DsaError::WrongLength { buffer, expected, got } => {
                write!(f, "{buffer}: expected length {expected}, got {got}")
            }
            DsaError::Zero { what } => write!(f, "{what} must be at least 1, got 0"),
            DsaError::Overflow { buffer } => write!(f, "{buffer}: size overflows the address space"),
            DsaError::NonFinite { buffer, at } => write!(f, "{buffer}: element {at} is not finite"),
            DsaError::IndexOutOfRange { row, index, kv_len } => write!(
                f,
                "indices: row {row} holds {index}, outside [0, {kv_len}) (only -1 may pad)"
            ),
            DsaError::DuplicateIndex { row, index } => {
                write!(f, "indices: row {row} names key {index} more than once")
            }
            DsaError::BlockMismatch { summary, tile } => write!(
                f,
                "block summaries: block of {summary} keys must equal the attention key tile of {tile}"
            ),
            DsaError::SummaryOverflow { at } => write!(
                f,
                "K: element {at} is outside the range of the summary format; use f32 summaries"
            ),
        }
    }
}
