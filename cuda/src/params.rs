//! `#[repr(C)]` mirrors of the kernel parameter blocks in
//! `kernels/params.h`. Fields are in the same order, 8-byte fields first, so
//! the layouts carry no padding; the sizes are asserted here at compile time
//! and against each module's `tessera_abi_*` constant when it is loaded.

/// `TesseraFlashParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct FlashParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub y: u64,
    pub lse: u64,
    pub kv_lens: u64,
    pub mask: u64,
    pub q_batch: i64,
    pub q_head: i64,
    pub q_seq: i64,
    pub k_batch: i64,
    pub k_head: i64,
    pub k_seq: i64,
    pub v_batch: i64,
    pub v_head: i64,
    pub v_seq: i64,
    pub y_batch: i64,
    pub y_head: i64,
    pub y_seq: i64,
    pub m_batch: i64,
    pub m_head: i64,
    pub m_q: i64,
    pub m_k: i64,
    pub q_offset: i64,
    pub left_window: i64,
    pub right_window: i64,
    pub global_tokens: i64,
    pub chunk: i64,
    pub batch: i32,
    pub q_heads: i32,
    pub kv_heads: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub causal: i32,
    pub offset_from_kv_lens: i32,
    pub mask_is_bool: i32,
    pub scale: f32,
    pub softcap: f32,
}

/// `TesseraIndexerParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct IndexerParams {
    pub q: u64,
    pub k: u64,
    pub w: u64,
    pub scores: u64,
    pub kv_lens: u64,
    pub q_scale: u64,
    pub k_scale: u64,
    pub bad: u64,
    pub q_offset: i64,
    pub batch: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub heads: i32,
    pub dim: i32,
    pub causal: i32,
    pub offset_from_kv_lens: i32,
    pub pad_: i32,
}

/// `TesseraQuantizeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct QuantizeParams {
    pub src: u64,
    pub codes: u64,
    pub scales: u64,
    pub bad: u64,
    pub rows: i64,
    pub row_len: i32,
    pub pad_: i32,
}

/// `TesseraTopkParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct TopkParams {
    pub scores: u64,
    pub indices: u64,
    pub rows: i64,
    pub row_len: i64,
    pub k: i32,
    pub pad_: i32,
}

/// `TesseraSparseParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct SparseParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub y: u64,
    pub lse: u64,
    pub indices: u64,
    pub q_batch: i64,
    pub q_head: i64,
    pub q_seq: i64,
    pub k_batch: i64,
    pub k_head: i64,
    pub k_seq: i64,
    pub v_batch: i64,
    pub v_head: i64,
    pub v_seq: i64,
    pub y_batch: i64,
    pub y_head: i64,
    pub y_seq: i64,
    pub idx_batch: i64,
    pub idx_head: i64,
    pub idx_seq: i64,
    pub q_offset: i64,
    pub left_window: i64,
    pub global_tokens: i64,
    pub batch: i32,
    pub q_heads: i32,
    pub kv_heads: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub head_dim: i32,
    pub v_head_dim: i32,
    pub topk: i32,
    pub causal: i32,
    pub scale: f32,
    pub softcap: f32,
    pub pad_: i32,
}

/// `TesseraIndexCheckParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct IndexCheckParams {
    pub indices: u64,
    pub bad: u64,
    pub selected: u64,
    pub rows: i64,
    pub q_offset: i64,
    pub left_window: i64,
    pub global_tokens: i64,
    pub q_len: i32,
    pub kv_len: i32,
    pub topk: i32,
    pub width: i32,
    pub causal: i32,
    pub pad_: i32,
}

/// `TesseraMergeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct MergeParams {
    pub y_a: u64,
    pub lse_a: u64,
    pub y_b: u64,
    pub lse_b: u64,
    pub y: u64,
    pub lse: u64,
    pub rows: i64,
    pub dv: i32,
    pub pad_: i32,
}

/// A parameter block: its C name and the module constant holding its size.
pub trait KernelParams: Copy {
    /// The struct name in `params.h`.
    const C_NAME: &'static str;
    /// The `__constant__` int holding `sizeof` in the module.
    const ABI_SYMBOL: &'static str;
}

macro_rules! params {
    ($($t:ty, $c:literal, $abi:literal, $size:literal;)*) => {$(
        impl KernelParams for $t {
            const C_NAME: &'static str = $c;
            const ABI_SYMBOL: &'static str = $abi;
        }
        const _: () = assert!(core::mem::size_of::<$t>() == $size && core::mem::align_of::<$t>() == 8);
    )*};
}

params! {
    FlashParams, "TesseraFlashParams", "tessera_abi_flash", 264;
    IndexerParams, "TesseraIndexerParams", "tessera_abi_indexer", 104;
    QuantizeParams, "TesseraQuantizeParams", "tessera_abi_quantize", 48;
    TopkParams, "TesseraTopkParams", "tessera_abi_topk", 40;
    SparseParams, "TesseraSparseParams", "tessera_abi_sparse", 240;
    IndexCheckParams, "TesseraIndexCheckParams", "tessera_abi_index_check", 80;
    MergeParams, "TesseraMergeParams", "tessera_abi_merge", 64;
}

#[cfg(test)]
mod tests {
    /// The field names of a struct in params.h, in order.
    fn c_fields(header: &str, name: &str) -> Vec<String> {
        let start = header
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("{name} not in params.h"));
        let body = &header[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
        let mut fields = Vec::new();
        for line in body.lines() {
            let code = line.split("//").next().unwrap().trim();
            let Some(decl) = code.strip_suffix(';') else {
                continue;
            };
            let mut words = decl.split_whitespace().collect::<Vec<_>>();
            // "long long a, b" / "int a, b" / "tessera_ptr a, b": drop the type words.
            while words
                .first()
                .is_some_and(|w| !w.ends_with(',') && words.len() > 1 && is_type(w))
            {
                words.remove(0);
            }
            fields.extend(words.join(" ").split(',').map(|f| f.trim().to_string()));
        }
        fields
    }

    fn is_type(w: &str) -> bool {
        matches!(w, "long" | "int" | "float" | "tessera_ptr" | "unsigned")
    }

    /// The field names of a Rust mirror, from its Debug output.
    fn rust_fields(debug: &str) -> Vec<String> {
        let body = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
        body.split(',')
            .filter_map(|f| f.split(':').next())
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    }

    #[test]
    fn every_mirror_has_the_fields_of_params_h_in_the_same_order() {
        let header = include_str!("../kernels/params.h");
        let cases: [(&str, String); 7] = [
            (
                "TesseraQuantizeParams",
                format!("{:?}", super::QuantizeParams::default()),
            ),
            (
                "TesseraIndexCheckParams",
                format!("{:?}", super::IndexCheckParams::default()),
            ),
            (
                "TesseraFlashParams",
                format!("{:?}", super::FlashParams::default()),
            ),
            (
                "TesseraIndexerParams",
                format!("{:?}", super::IndexerParams::default()),
            ),
            (
                "TesseraTopkParams",
                format!("{:?}", super::TopkParams::default()),
            ),
            (
                "TesseraSparseParams",
                format!("{:?}", super::SparseParams::default()),
            ),
            (
                "TesseraMergeParams",
                format!("{:?}", super::MergeParams::default()),
            ),
        ];
        for (name, debug) in cases {
            assert_eq!(c_fields(header, name), rust_fields(&debug), "{name}");
        }
    }
}
