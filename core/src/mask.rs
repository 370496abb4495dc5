//! The mask algebra: which keys each query sees, and how a whole
//! (q-tile, kv-tile) pair classifies as [`TileClass::Empty`], `Full` or
//! `Partial`.
//!
//! # Rules
//! For query row `i` of batch `b` the position is `p = i + offset(b)`, where
//! `offset(b) = q_offset + (kv_lens[b] - q_len if offset_from_kv_lens)`. Let
//! `n = kv_lens[b]` (or `kv_len`). Key `j` is visible iff all of:
//! - `j < n`;
//! - causal: `j <= p` (so a negative offset masks the leading rows);
//! - global or local:
//!   - global: `j < G` (a global / sink key), or `0 <= p < G` (a global query);
//!   - local: `p - left <= j <= p + right` (`-1` = unbounded) and, with a
//!     chunk size `C`, `floor(j / C) == floor(p / C)`;
//! - segments: `seg_q[b][i] == seg_kv[b][j]`;
//! - a dense bool mask is true at `(b, h, i, j)`.
//!
//! A dense additive mask is added to the score after the softcap; `-inf`
//! masks. Global tokens are exempt from the window and the chunk, never from
//! causality, padding, segments or a dense mask: with `causal` they are
//! attention sinks.
//!
//! # Cost
//! The structural part (causal, window, chunk, global, lengths) of a row is
//! two intervals, [`RowSpan`]; a tile is classified in `O(rows)` from them.
//! Segment ids and dense masks make every visited tile `Partial`.

use crate::error::{Error, Tensor};

/// How a (q-tile, kv-tile) pair is treated by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileClass {
    /// No query in the tile sees any key in it: the tile is never loaded.
    Empty,
    /// Every query sees every key: no per-element test.
    Full,
    /// Mixed: tested element by element.
    Partial,
}

/// Element strides of a dense mask broadcast to `(B, Hq, Sq, Skv)`; a zero
/// stride broadcasts that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MaskStrides {
    /// Batch stride.
    pub batch: usize,
    /// Query-head stride.
    pub head: usize,
    /// Query-row stride.
    pub q: usize,
    /// Key stride.
    pub k: usize,
}

impl MaskStrides {
    /// Strides of a contiguous mask of shape `(b, h, q, k)` broadcast to the
    /// full shape: an axis of size 1 gets stride 0.
    pub const fn broadcast(b: usize, h: usize, q: usize, k: usize) -> Self {
        let sk = if k == 1 { 0 } else { 1 };
        let sq = if q == 1 { 0 } else { k };
        let sh = if h == 1 { 0 } else { q * k };
        let sb = if b == 1 { 0 } else { h * q * k };
        Self {
            batch: sb,
            head: sh,
            q: sq,
            k: sk,
        }
    }

    #[inline(always)]
    const fn offset(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        b * self.batch + h * self.head + i * self.q + j * self.k
    }
}

/// A dense mask view.
#[derive(Clone, Copy, Debug)]
pub enum DenseMask<'a> {
    /// `true` = attend.
    Bool(&'a [bool], MaskStrides),
    /// Added to the score; `-inf` masks.
    Additive(&'a [f32], MaskStrides),
}

/// Segment ids of packed documents: a query sees only keys of its segment.
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    /// `(B, Sq)` contiguous.
    pub q: &'a [i32],
    /// `(B, Skv)` contiguous.
    pub kv: &'a [i32],
}

/// A composable mask. Start from [`MaskSpec::NONE`] and add rules.
#[derive(Clone, Copy, Debug)]
pub struct MaskSpec<'a> {
    /// Causal: key `j` visible only when `j <= p`.
    pub causal: bool,
    /// Added to every query index to get its position.
    pub q_offset: isize,
    /// Valid keys per batch (`nonpad_kv_seqlen`); keys at or past it are masked.
    pub kv_lens: Option<&'a [usize]>,
    /// Also add `kv_lens[b] - q_len` to the offset (ONNX external-cache rule).
    pub offset_from_kv_lens: bool,
    /// Keys before `p - left_window` are masked; `-1` = unbounded.
    pub left_window: isize,
    /// Keys after `p + right_window` are masked; `-1` = unbounded.
    pub right_window: isize,
    /// Number of global / sink tokens at the start of the sequence.
    pub global_tokens: usize,
    /// Chunked local attention (Llama-4): chunk size, 0 = off.
    pub chunk: usize,
    /// Packed-document segment ids.
    pub segments: Option<Segments<'a>>,
    /// A dense bool or additive mask.
    pub dense: Option<DenseMask<'a>>,
}

impl Default for MaskSpec<'_> {
    fn default() -> Self {
        Self::NONE
    }
}

impl<'a> MaskSpec<'a> {
    /// Every key visible.
    pub const NONE: MaskSpec<'static> = MaskSpec {
        causal: false,
        q_offset: 0,
        kv_lens: None,
        offset_from_kv_lens: false,
        left_window: -1,
        right_window: -1,
        global_tokens: 0,
        chunk: 0,
        segments: None,
        dense: None,
    };

    /// Causal with the given offset.
    pub const fn causal(mut self, offset: isize) -> Self {
        self.causal = true;
        self.q_offset = offset;
        self
    }

    /// Position offset without causality (windows still use it).
    pub const fn offset(mut self, offset: isize) -> Self {
        self.q_offset = offset;
        self
    }

    /// Sliding window, `-1` = unbounded on that side.
    pub const fn window(mut self, left: isize, right: isize) -> Self {
        self.left_window = left;
        self.right_window = right;
        self
    }

    /// Global tokens.
    pub const fn globals(mut self, n: usize) -> Self {
        self.global_tokens = n;
        self
    }

    /// Chunked local attention.
    pub const fn chunked(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Valid keys per batch; `align` applies the ONNX external-cache offset.
    pub const fn kv_lens(mut self, lens: &'a [usize], align: bool) -> Self {
        self.kv_lens = Some(lens);
        self.offset_from_kv_lens = align;
        self
    }

    /// Segment ids.
    pub const fn segments(mut self, q: &'a [i32], kv: &'a [i32]) -> Self {
        self.segments = Some(Segments { q, kv });
        self
    }

    /// A dense mask.
    pub const fn dense(mut self, mask: DenseMask<'a>) -> Self {
        self.dense = Some(mask);
        self
    }

    /// Check the mask against the sizes of a spec.
    pub fn validate(
        &self,
        batch: usize,
        q_heads: usize,
        q_len: usize,
        kv_len: usize,
    ) -> Result<(), Error> {
        for w in [self.left_window, self.right_window] {
            if w < -1 {
                return Err(Error::WindowBelowMinusOne(w));
            }
        }
        if let Some(lens) = self.kv_lens {
            if lens.len() != batch {
                return Err(Error::WrongLength {
                    tensor: Tensor::KvLens,
                    expected: batch,
                    got: lens.len(),
                });
            }
            if let Some((b, &len)) = lens.iter().enumerate().find(|(_, &l)| l > kv_len) {
                return Err(Error::KvLenOutOfRange {
                    batch: b,
                    len,
                    kv_len,
                });
            }
        }
        if let Some(seg) = self.segments {
            let need_q = batch
                .checked_mul(q_len)
                .ok_or(Error::Overflow(Tensor::Segments))?;
            let need_k = batch
                .checked_mul(kv_len)
                .ok_or(Error::Overflow(Tensor::Segments))?;
            if seg.q.len() != need_q {
                return Err(Error::WrongLength {
                    tensor: Tensor::Segments,
                    expected: need_q,
                    got: seg.q.len(),
                });
            }
            if seg.kv.len() != need_k {
                return Err(Error::WrongLength {
                    tensor: Tensor::Segments,
                    expected: need_k,
                    got: seg.kv.len(),
                });
            }
        }
        if let Some(dense) = self.dense {
            let (len, s) = match dense {
                DenseMask::Bool(m, s) => (m.len(), s),
                DenseMask::Additive(m, s) => (m.len(), s),
            };
            if batch > 0 && q_heads > 0 && q_len > 0 && kv_len > 0 {
                let last = (|| {
                    (batch - 1)
                        .checked_mul(s.batch)?
                        .checked_add((q_heads - 1).checked_mul(s.head)?)?
                        .checked_add((q_len - 1).checked_mul(s.q)?)?
                        .checked_add((kv_len - 1).checked_mul(s.k)?)?
                        .checked_add(1)
                })()
                .ok_or(Error::Overflow(Tensor::Mask))?;
                if len < last {
                    return Err(Error::TooShort {
                        tensor: Tensor::Mask,
                        need: last,
                        got: len,
                    });
                }
            }
        }
        Ok(())
    }

    /// True when only the structural rules apply (no segments, no dense mask),
    /// so `Full` tiles need no per-element test.
    #[inline]
    pub const fn is_structural(&self) -> bool {
        self.segments.is_none() && self.dense.is_none()
    }

    /// Position offset of batch `b`.
    #[inline]
    pub fn batch_offset(&self, b: usize, q_len: usize) -> isize {
        let mut off = self.q_offset;
        if let (true, Some(l)) = (self.offset_from_kv_lens, self.kv_lens) {
            off += l[b] as isize - q_len as isize;
        }
        off
    }

    /// Valid keys of batch `b`.
    #[inline]
    pub fn batch_kv_len(&self, b: usize, kv_len: usize) -> usize {
        match self.kv_lens {
            Some(l) => l[b],
            None => kv_len,
        }
    }

    /// The structural visible set of one query row.
    #[inline]
    pub fn row_span(&self, position: isize, valid_keys: usize) -> RowSpan {
        let p = position;
        let mut cap = valid_keys as isize - 1;
        if self.causal {
            cap = cap.min(p);
        }
        let g = self.global_tokens as isize;
        if p >= 0 && p < g {
            return RowSpan {
                lo: 0,
                hi: cap,
                global_hi: -1,
            };
        }
        let mut lo = if self.left_window >= 0 {
            p - self.left_window
        } else {
            0
        };
        let mut hi = if self.right_window >= 0 {
            p.saturating_add(self.right_window)
        } else {
            cap
        };
        if self.chunk > 0 {
            let c = self.chunk as isize;
            let start = p.div_euclid(c) * c;
            lo = lo.max(start);
            hi = hi.min(start + c - 1);
        }
        RowSpan {
            lo: lo.max(0),
            hi: hi.min(cap),
            global_hi: (g - 1).min(cap),
        }
    }

    /// The full element test: structural span, segments and dense bool mask.
    /// The additive mask is applied separately.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn visible(
        &self,
        span: &RowSpan,
        b: usize,
        h: usize,
        i: usize,
        j: usize,
        q_len: usize,
        kv_len: usize,
    ) -> bool {
        span.contains(j as isize) && self.extra_visible(b, h, i, j, q_len, kv_len)
    }

    /// The element test for a `Partial` tile beyond the structural span:
    /// segments and the dense bool mask. The additive mask is applied
    /// separately, by [`bias`](Self::bias).
    #[inline]
    pub fn extra_visible(
        &self,
        b: usize,
        h: usize,
        i: usize,
        j: usize,
        q_len: usize,
        kv_len: usize,
    ) -> bool {
        if let Some(seg) = self.segments {
            if seg.q[b * q_len + i] != seg.kv[b * kv_len + j] {
                return false;
            }
        }
        if let Some(DenseMask::Bool(m, s)) = self.dense {
            if !m[s.offset(b, h, i, j)] {
                return false;
            }
        }
        true
    }

    /// The additive mask term at `(b, h, i, j)`, or 0.
    #[inline]
    pub fn bias(&self, b: usize, h: usize, i: usize, j: usize) -> f32 {
        match self.dense {
            Some(DenseMask::Additive(m, s)) => m[s.offset(b, h, i, j)],
            _ => 0.0,
        }
    }

    /// Classify keys `[j0, j1)` against a block of row spans.
    #[inline]
    pub fn classify<S: core::borrow::Borrow<RowSpan>>(
        &self,
        spans: impl IntoIterator<Item = S>,
        j0: usize,
        j1: usize,
    ) -> TileClass {
        let (a, z) = (j0 as isize, j1 as isize - 1);
        let mut any = false;
        let mut all = true;
        for s in spans {
            let s = s.borrow();
            any |= s.intersects(a, z);
            all &= s.covers(a, z);
        }
        if !any {
            TileClass::Empty
        } else if all && self.is_structural() {
            TileClass::Full
        } else {
            TileClass::Partial
        }
    }
}

/// The structurally visible keys of one row: `[lo, hi] ∪ [0, global_hi]`,
/// inclusive; an interval with `hi < lo` is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSpan {
    /// First key of the local interval.
    pub lo: isize,
    /// Last key of the local interval.
    pub hi: isize,
    /// Last global key seen (`-1` = none).
    pub global_hi: isize,
}

impl RowSpan {
    /// A row that sees nothing (padding rows of a tile).
    pub const EMPTY: RowSpan = RowSpan {
        lo: 0,
        hi: -1,
        global_hi: -1,
    };

    /// Is key `j` in the span?
    #[inline(always)]
    pub const fn contains(&self, j: isize) -> bool {
        (j >= self.lo && j <= self.hi) || j <= self.global_hi
    }

    /// Does the span meet `[a, z]`?
    #[inline]
    pub const fn intersects(&self, a: isize, z: isize) -> bool {
        let local = self.lo <= self.hi && self.lo <= z && self.hi >= a;
        let global = self.global_hi >= a;
        local || global
    }

    /// Does the span cover all of `[a, z]`?
    #[inline]
    pub fn covers(&self, a: isize, z: isize) -> bool {
        let local = self.lo <= self.hi && self.lo <= a && self.hi >= z;
        let global = self.global_hi >= z;
        // The two intervals merge when the local one starts inside or right
        // after the global one.
        let merged =
            self.lo <= self.hi && self.lo <= self.global_hi + 1 && self.hi.max(self.global_hi) >= z;
        local || global || merged
    }

    /// The lowest and highest key seen, or `None` when empty.
    #[inline]
    pub fn bounds(&self) -> Option<(isize, isize)> {
        let local = (self.lo <= self.hi).then_some((self.lo, self.hi));
        let global = (self.global_hi >= 0).then_some((0, self.global_hi));
        match (local, global) {
            (Some(l), Some(g)) => Some((0, l.1.max(g.1))),
            (l, g) => l.or(g),
        }
    }
}
