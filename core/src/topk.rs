//! Exact top-k selection by radix select: `O(S)` time, no sort, no heap.
//!
//! [`top_k`] picks the `k` largest entries of a score row, **ties to the
//! lower index**, and writes their indices in ascending index order (the
//! order a gather or a block-sparse loop wants), padding the rest of the
//! output with [`KeyIndex::NONE`] (`-1`). The same call selects tokens for
//! one query (indexer mode) and blocks for one query tile (training-free
//! mode).
//!
//! Entries equal to `-inf` (masked) or NaN are never selected; `-0.0` ranks
//! equal to `+0.0`.
//!
//! # Algorithm
//! Each score maps to a `u32` key whose unsigned order is the float order.
//! Up to four histogram passes over the row, one byte of the key at a time
//! (a 256-counter stack array), narrow the key of the k-th largest entry:
//! after each pass only entries that share the prefix found so far are
//! counted. A last pass writes every entry above the threshold and, in index
//! order, as many entries equal to it as are still needed.
//!
//! # Cost
//! At most 5 reads of the row (fewer when a byte already isolates the
//! threshold), 1 KiB of stack, no scratch. [`top_k_in_place`] turns the row
//! into keys first, so the later reads are plain integer scans.

/// An index type for selection output: `i32`, `i64` (ONNX `int64`) or
/// `usize` (tile lists). `NONE` pads rows that have fewer than `k` entries.
pub trait KeyIndex: Copy + PartialEq + core::fmt::Debug + Send + Sync + 'static {
    /// The padding value: `-1` (`usize::MAX` for `usize`).
    const NONE: Self;
    /// The index `i` (the caller keeps it in range of the type).
    fn from_usize(i: usize) -> Self;
    /// `Some(i)` for a real index, `None` for the padding; negative values
    /// other than `-1` come back as `Err` with the value.
    fn get(self) -> Result<Option<usize>, i64>;
}

impl KeyIndex for i32 {
    const NONE: Self = -1;
    #[inline(always)]
    fn from_usize(i: usize) -> Self {
        i as i32
    }
    #[inline(always)]
    fn get(self) -> Result<Option<usize>, i64> {
        match self {
            -1 => Ok(None),
            x if x < 0 => Err(x as i64),
            x => Ok(Some(x as usize)),
        }
    }
}

impl KeyIndex for i64 {
    const NONE: Self = -1;
    #[inline(always)]
    fn from_usize(i: usize) -> Self {
        i as i64
    }
    #[inline(always)]
    fn get(self) -> Result<Option<usize>, i64> {
        match self {
            -1 => Ok(None),
            x if x < 0 => Err(x),
            x => usize::try_from(x).map(Some).map_err(|_| x),
        }
    }
}

impl KeyIndex for usize {
    const NONE: Self = usize::MAX;
    #[inline(always)]
    fn from_usize(i: usize) -> Self {
        i
    }
    #[inline(always)]
    fn get(self) -> Result<Option<usize>, i64> {
        Ok((self != usize::MAX).then_some(self))
    }
}

/// The unsigned order key of a score; 0 for the unselectable (`-inf`, NaN).
/// Every selectable score has a key of at least `0x0080_0000`.
#[inline(always)]
pub fn order_key(x: f32) -> u32 {
    // Branch-free (selects), so scans over a row vectorise.
    let b = x.to_bits();
    let b = if b == 0x8000_0000 { 0 } else { b }; // -0 ranks as +0
    let key = b ^ ((((b as i32) >> 31) as u32) | 0x8000_0000);
    let unselectable = (b & 0x7FFF_FFFF) > 0x7F80_0000 || b == 0xFF80_0000; // NaN, -inf
    if unselectable {
        0
    } else {
        key
    }
}

/// Write the indices of the `out.len()` largest entries of `scores` (ties to
/// the lower index) into `out` in ascending order, pad with `I::NONE`, and
/// return how many were selected: `min(out.len(), selectable entries)`.
///
/// `I` must be able to hold `scores.len() - 1` (for `i32`, rows up to 2^31).
pub fn top_k<I: KeyIndex>(scores: &[f32], out: &mut [I]) -> usize {
    select(|| scores.iter().map(|&x| order_key(x)), out)
}

/// [`top_k`] for a score row the caller no longer needs: the row is first
/// overwritten by its order keys (as f32 bit patterns), so the later passes
/// read plain integers. Same result as [`top_k`]; about twice as fast on
/// long rows.
pub fn top_k_in_place<I: KeyIndex>(scores: &mut [f32], out: &mut [I]) -> usize {
    scores
        .iter_mut()
        .for_each(|x| *x = f32::from_bits(order_key(*x)));
    let keys: &[f32] = scores;
    select(|| keys.iter().map(|x| x.to_bits()), out)
}

/// The radix select over a re-iterable sequence of order keys (0 = not
/// selectable).
#[inline(always)]
fn select<I: KeyIndex, It: Iterator<Item = u32>>(keys: impl Fn() -> It, out: &mut [I]) -> usize {
    let k = out.len();
    if k == 0 {
        return 0;
    }
    // Pass 1: the top byte, and the number of selectable entries.
    // Key 0 (unselectable) lands in bucket 0 too; count it apart.
    let mut hist = [0u32; 256];
    let mut zeros = 0u32;
    for key in keys() {
        hist[(key >> 24) as usize] += 1;
        zeros += u32::from(key == 0);
    }
    hist[0] -= zeros;
    let valid = hist.iter().map(|&c| c as usize).sum::<usize>();
    if valid <= k {
        return emit(keys(), out, 0, 0, valid);
    }
    // Narrow the threshold byte by byte: `need` entries are still to be
    // taken from those whose key matches `prefix` under `mask`.
    let (mut prefix, mut mask, mut need) = (0u32, 0u32, k);
    let mut shift = 24;
    loop {
        let mut above = 0usize;
        let mut digit = 0u32;
        for d in (0..256).rev() {
            let c = hist[d] as usize;
            if above + c >= need {
                digit = d as u32;
                break;
            }
            above += c;
        }
        need -= above;
        prefix |= digit << shift;
        mask |= 0xFF << shift;
        if hist[digit as usize] as usize == need || shift == 0 {
            break; // the whole bucket is taken, or the threshold key is exact
        }
        shift -= 8;
        hist = [0u32; 256];
        for key in keys() {
            if key != 0 && key & mask == prefix {
                hist[((key >> shift) & 0xFF) as usize] += 1;
            }
        }
    }
    emit(keys(), out, prefix, mask, need)
}

/// The last pass: take every entry whose masked key is above `prefix`, and
/// the first `ties` entries equal to it (`mask = 0` takes every selectable
/// entry).
#[inline(always)]
fn emit<I: KeyIndex>(
    keys: impl Iterator<Item = u32>,
    out: &mut [I],
    prefix: u32,
    mask: u32,
    mut ties: usize,
) -> usize {
    let k = out.len();
    let mut n = 0usize;
    for (j, key) in keys.enumerate() {
        if n == k {
            break;
        }
        if key == 0 {
            continue;
        }
        let masked = key & mask;
        let take = if mask == 0 || masked > prefix {
            true
        } else if masked == prefix && ties > 0 {
            ties -= 1;
            true
        } else {
            false
        };
        if take {
            out[n] = I::from_usize(j);
            n += 1;
        }
    }
    out[n..].fill(I::NONE);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_is_monotone() {
        let xs = [
            f32::MIN,
            -1e30,
            -2.0,
            -1.0,
            -1e-40,
            0.0,
            1e-40,
            1.0,
            3.5,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        assert_eq!(order_key(f32::NEG_INFINITY), 0);
        assert_eq!(order_key(f32::NAN), 0);
        assert!(order_key(f32::MIN) >= 0x0080_0000);
    }

    #[test]
    fn small_cases() {
        let s = [1.0, 3.0, 3.0, f32::NEG_INFINITY, 2.0, 3.0];
        let mut out = [0i64; 2];
        assert_eq!(top_k(&s, &mut out), 2);
        assert_eq!(out, [1, 2]);
        let mut out = [0i32; 7];
        assert_eq!(top_k(&s, &mut out), 5);
        assert_eq!(out, [0, 1, 2, 4, 5, -1, -1]);
        let mut out = [0usize; 4];
        assert_eq!(top_k(&s, &mut out), 4);
        assert_eq!(out, [1, 2, 4, 5]);
    }
}
