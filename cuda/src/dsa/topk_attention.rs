//! `TopKAttention`'s index mode as launches: check the lists (writing
//! `selected_indices`), then the gather kernel; a bad list is read back to
//! name its entry like the CPU op.

use tessera_core::spec::AttentionSpec;
use tessera_core::Error;

use super::{Device, ALIGN, FLAG_BYTE, FLAG_CLEAR};
use crate::error::CudaError;
use crate::plan::{self, AttentionBuffers, DevicePtr, Dtype, KeyLists, SparseRules};

/// One `TopKAttention` call with an `indices` input.
#[derive(Clone, Copy, Debug)]
pub struct TopKCall {
    /// Sizes, strides and scale (softcap 0).
    pub spec: AttentionSpec,
    /// f16 or bf16.
    pub dtype: Dtype,
    /// The lists, contiguous `(B, L, Sq, k)` with `L` = 1 (shared) or `Hkv`.
    pub lists: KeyLists,
    /// Causal rule, window and sinks.
    pub rules: SparseRules,
}

/// Device buffers of a `TopKAttention` call.
#[derive(Clone, Copy, Debug)]
pub struct TopKIo {
    /// Q, K, V, Y and the optional lse.
    pub attention: AttentionBuffers,
    /// i64 `selected_indices (B, Hkv, Sq, width)` and its width, if requested.
    pub selected: Option<(DevicePtr, usize)>,
}

impl TopKCall {
    /// Bytes of device scratch [`topk_attention`]: two flags.
    pub const fn scratch_bytes(&self) -> usize {
        ALIGN
    }

    /// Lists per batch: 1 when shared by every head, else `Hkv`.
    fn list_heads(&self) -> usize {
        if self.lists.head == 0 {
            1
        } else {
            self.spec.kv_heads
        }
    }
}

/// The width of `selected_indices` for lists of `k` entries under `rules`:
/// `k + min(window + 1 + sinks, Skv)`, or `k` when nothing is kept — the
/// CPU op's rule.
pub fn selected_width(k: usize, kv_len: usize, rules: &SparseRules) -> usize {
    if rules.left_window.is_none() && rules.global_tokens == 0 {
        return k;
    }
    let window = rules
        .left_window
        .map_or(0, |w| w.saturating_add(1).min(kv_len));
    k + window
        .saturating_add(rules.global_tokens.min(kv_len))
        .min(kv_len)
}

/// Run `TopKAttention` (index mode) on `dev`. Lists that name a key outside
/// `[0, Skv)` (other than `-1`) or one key twice are refused with the CPU
/// op's message for the lowest such row (the row is read back to name the
/// entry). `scratch` holds [`TopKCall::scratch_bytes`] bytes.
///
/// Cost: one check launch over the lists (`O(k + kept + Skv/32)` per row),
/// `B·Hkv` more when shared lists fill a per-head `selected_indices`, one
/// gather launch, one stream synchronisation.
pub fn topk_attention<D: Device>(
    dev: &D,
    call: &TopKCall,
    io: &TopKIo,
    scratch: DevicePtr,
) -> Result<(), CudaError> {
    let s = &call.spec;
    let k = call.lists.top_k;
    let lh = call.list_heads();
    let rows = s.batch * lh * s.q_len;
    if rows == 0 || s.q_heads == 0 {
        return Ok(());
    }
    let (bad, spare) = (scratch, DevicePtr(scratch.0 + 8));
    dev.fill(scratch, FLAG_BYTE, 16)?;
    let per_head_selected = io.selected.filter(|_| lh == s.kv_heads);
    dev.launch(&plan::index_check(
        rows,
        s.q_len,
        s.kv_len,
        k,
        &call.rules,
        call.lists.ptr,
        bad,
        per_head_selected,
    )?)?;
    if let (Some((sel, width)), None) = (io.selected, per_head_selected) {
        // Shared lists, per-head output: the same rows for every KV head.
        for b in 0..s.batch {
            for hk in 0..s.kv_heads {
                let row0 = ((b * s.kv_heads + hk) * s.q_len * width * 8) as u64;
                dev.launch(&plan::index_check(
                    s.q_len,
                    s.q_len,
                    s.kv_len,
                    k,
                    &call.rules,
                    DevicePtr(call.lists.ptr.0 + (b * s.q_len * k * 8) as u64),
                    spare,
                    Some((DevicePtr(sel.0 + row0), width)),
                )?)?;
            }
        }
    }
    dev.launch(&plan::sparse_attention(
        s,
        call.dtype,
        &call.lists,
        &call.rules,
        &io.attention,
    )?)?;
    let mut flag = [0i64];
    dev.read_i64(bad, &mut flag)?;
    if flag[0] == FLAG_CLEAR {
        return Ok(());
    }
    let row = usize::try_from(flag[0])
        .ok()
        .filter(|&r| r < rows)
        .ok_or_else(|| CudaError::invalid("indices", "a list is out of range or repeats a key"))?;
    let mut entries = vec![0i64; k];
    dev.read_i64(
        DevicePtr(call.lists.ptr.0 + (row * k * 8) as u64),
        &mut entries,
    )?;
    // The CPU op numbers rows (b·Hkv + hk)·Sq + i; a shared list is hk 0's.
    let (b, h, i) = (row / (lh * s.q_len), row / s.q_len % lh, row % s.q_len);
    let cpu_row = (b * s.kv_heads + h) * s.q_len + i;
    Err(list_error(&entries, cpu_row, s.kv_len))
}

/// The CPU op's error for the first bad entry of a list row.
fn list_error(entries: &[i64], row: usize, kv_len: usize) -> CudaError {
    let mut seen = std::collections::HashSet::new();
    let e = entries.iter().find_map(|&j| match j {
        -1 => None,
        j if j < 0 || j >= kv_len as i64 => Some(Error::IndexOutOfRange {
            row,
            index: j,
            kv_len,
        }),
        j if !seen.insert(j) => Some(Error::DuplicateIndex { row, index: j }),
        _ => None,
    });
    let message = e.map_or_else(
        || format!("row {row} was reported bad by the GPU but reads back valid"),
        |e| e.to_string(),
    );
    CudaError::invalid(
        "indices",
        message
            .strip_prefix("indices: ")
            .unwrap_or(&message)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_width_is_the_cpu_rule() {
        let none = SparseRules::default();
        assert_eq!(selected_width(7, 100, &none), 7);
        let keep = SparseRules {
            left_window: Some(10),
            global_tokens: 3,
            ..none
        };
        assert_eq!(selected_width(7, 100, &keep), 7 + 14);
        assert_eq!(selected_width(7, 5, &keep), 7 + 5);
        let w = SparseRules {
            left_window: Some(0),
            ..none
        };
        assert_eq!(selected_width(2, 100, &w), 3);
    }

    #[test]
    fn list_errors_name_the_row_and_the_entry_like_the_cpu_op() {
        let e = list_error(&[3, -1, 9, 3], 5, 10).to_string();
        assert_eq!(e, "indices: row 5 names key 3 more than once");
        let e = list_error(&[1, 12], 2, 10).to_string();
        assert_eq!(
            e,
            "indices: row 2 holds 12, outside [0, 10) (only -1 may pad)"
        );
        let e = list_error(&[-4], 0, 10).to_string();
        assert!(e.contains("holds -4"), "{e}");
    }
}
