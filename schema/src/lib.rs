//! # tessera-schema
//!
//! The names of Tessera's ONNX ops (domain `ai.tessera`, version 1): each
//! op's type name, its inputs and outputs in slot order, and its attributes.
//! The ORT plugin registers these names and the `tessera` graph tool writes
//! them, so no other crate spells an op or an attribute as a literal.
//!
//! Every name is a [`Name`]: ORT reads it as a C string ([`Name::c`]), the
//! graph tool as a Rust string ([`Name::as_str`]). Both views are `const`.
//!
//! `no_std`, no dependencies, no code that runs: a table of constants.
#![no_std]

use core::ffi::CStr;

/// One name of the schema: an op type, a port or an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Name(&'static CStr);

impl Name {
    /// A name from a C string literal that is also valid UTF-8 (checked at
    /// compile time where the constant is used).
    pub const fn new(c: &'static CStr) -> Self {
        assert!(
            core::str::from_utf8(c.to_bytes()).is_ok(),
            "schema names are UTF-8"
        );
        Self(c)
    }

    /// The name as ORT's C API wants it (NUL-terminated).
    pub const fn c(self) -> &'static CStr {
        self.0
    }

    /// The name as a Rust string.
    pub const fn as_str(self) -> &'static str {
        match core::str::from_utf8(self.0.to_bytes()) {
            Ok(s) => s,
            Err(_) => panic!("schema names are UTF-8"),
        }
    }
}

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The custom-op domain.
pub const DOMAIN: Name = Name::new(c"ai.tessera");

/// The domain's opset version.
pub const VERSION: i64 = 1;

/// `ai.tessera.Attention`: ONNX `Attention` (opset 23/24) with windows,
/// global tokens and an extra `softmax_lse` output after ONNX's four.
pub mod attention {
    use super::Name;

    /// The op type.
    pub const OP: Name = Name::new(c"Attention");

    /// Inputs, by slot.
    pub mod input {
        use super::Name;
        /// Slot 0: queries.
        pub const Q: Name = Name::new(c"Q");
        /// Slot 1: keys.
        pub const K: Name = Name::new(c"K");
        /// Slot 2: values.
        pub const V: Name = Name::new(c"V");
        /// Slot 3: bool (true = attend) or additive float mask.
        pub const ATTN_MASK: Name = Name::new(c"attn_mask");
        /// Slot 4: the internal cache's past keys.
        pub const PAST_KEY: Name = Name::new(c"past_key");
        /// Slot 5: the internal cache's past values.
        pub const PAST_VALUE: Name = Name::new(c"past_value");
        /// Slot 6: valid keys per batch (external cache).
        pub const NONPAD_KV_SEQLEN: Name = Name::new(c"nonpad_kv_seqlen");
        /// Every input in slot order.
        pub const ALL: [Name; 7] = [Q, K, V, ATTN_MASK, PAST_KEY, PAST_VALUE, NONPAD_KV_SEQLEN];
    }

    /// Outputs, by slot: ONNX's four, then `softmax_lse`.
    pub mod output {
        use super::Name;
        /// Slot 0: the attention output.
        pub const Y: Name = Name::new(c"Y");
        /// Slot 1: past and new keys.
        pub const PRESENT_KEY: Name = Name::new(c"present_key");
        /// Slot 2: past and new values.
        pub const PRESENT_VALUE: Name = Name::new(c"present_value");
        /// Slot 3: the scores, at the stage `qk_matmul_output_mode` names.
        pub const QK_MATMUL_OUTPUT: Name = Name::new(c"qk_matmul_output");
        /// Slot 4: f32 `(B, Hq, Sq)` log-sum-exp of each row (natural log).
        pub const SOFTMAX_LSE: Name = Name::new(c"softmax_lse");
        /// Every output in slot order.
        pub const ALL: [Name; 5] = [Y, PRESENT_KEY, PRESENT_VALUE, QK_MATMUL_OUTPUT, SOFTMAX_LSE];
    }

    /// Attributes.
    pub mod attr {
        use super::Name;
        /// int 0/1: causal alignment (ONNX errata: `j <= i + offset`).
        pub const IS_CAUSAL: Name = Name::new(c"is_causal");
        /// float: the score scale (default `1/sqrt(D)`).
        pub const SCALE: Name = Name::new(c"scale");
        /// float: `c·tanh(x/c)` before the mask (0 = off).
        pub const SOFTCAP: Name = Name::new(c"softcap");
        /// int: query heads (3-D inputs).
        pub const Q_NUM_HEADS: Name = Name::new(c"q_num_heads");
        /// int: key/value heads (3-D inputs).
        pub const KV_NUM_HEADS: Name = Name::new(c"kv_num_heads");
        /// int: keys seen to the left of the query's position (-1 = all).
        pub const LEFT_WINDOW_SIZE: Name = Name::new(c"left_window_size");
        /// int: keys seen to the right of the query's position (-1 = all).
        pub const RIGHT_WINDOW_SIZE: Name = Name::new(c"right_window_size");
        /// int: leading positions that see and are seen by every token.
        pub const NUM_GLOBAL_TOKENS: Name = Name::new(c"num_global_tokens");
        /// int: which stage output 3 holds (ONNX's rule).
        pub const QK_MATMUL_OUTPUT_MODE: Name = Name::new(c"qk_matmul_output_mode");
        /// int: ONNX's softmax precision (accumulation is always f32).
        pub const SOFTMAX_PRECISION: Name = Name::new(c"softmax_precision");
    }
}

/// `ai.tessera.LightningIndexer`: FP8 index scores and the top-k keys per
/// query, as in DeepSeek-V3.2's DSA.
pub mod lightning_indexer {
    use super::Name;

    /// The op type.
    pub const OP: Name = Name::new(c"LightningIndexer");

    /// Inputs, by slot.
    pub mod input {
        use super::Name;
        /// Slot 0: `(B, Sq, Hi, Di)` index queries.
        pub const INDEX_Q: Name = Name::new(c"index_q");
        /// Slot 1: `(B, Skv, Di)` index keys.
        pub const INDEX_K: Name = Name::new(c"index_k");
        /// Slot 2: `(B, Sq, Hi)` head weights.
        pub const INDEX_W: Name = Name::new(c"index_w");
        /// Every input in slot order.
        pub const ALL: [Name; 3] = [INDEX_Q, INDEX_K, INDEX_W];
    }

    /// Outputs, by slot.
    pub mod output {
        use super::Name;
        /// Slot 0: `(B, Sq, top_k)` int64 key indices, `-1` padded.
        pub const INDICES: Name = Name::new(c"indices");
        /// Every output in slot order.
        pub const ALL: [Name; 1] = [INDICES];
    }

    /// Attributes.
    pub mod attr {
        use super::Name;
        /// int >= 1: keys kept per query.
        pub const TOP_K: Name = Name::new(c"top_k");
        /// int 0/1: only keys at or before the query (bottom-right aligned).
        pub const IS_CAUSAL: Name = Name::new(c"is_causal");
        /// string: `e4m3`, `e5m2` or `f32`.
        pub const FORMAT: Name = Name::new(c"format");
    }
}

/// `ai.tessera.TopKAttention`: attention over the selected keys only, from
/// an index list or from the training-free block selector.
pub mod topk_attention {
    use super::Name;

    /// The op type.
    pub const OP: Name = Name::new(c"TopKAttention");

    /// Inputs, by slot.
    pub mod input {
        use super::Name;
        /// Slot 0: queries.
        pub const Q: Name = Name::new(c"Q");
        /// Slot 1: keys.
        pub const K: Name = Name::new(c"K");
        /// Slot 2: values.
        pub const V: Name = Name::new(c"V");
        /// Slot 3 (optional): key lists from `LightningIndexer`; absent =
        /// training-free block selection.
        pub const INDICES: Name = Name::new(c"indices");
        /// Every input in slot order.
        pub const ALL: [Name; 4] = [Q, K, V, INDICES];
    }

    /// Outputs, by slot.
    pub mod output {
        use super::Name;
        /// Slot 0: the attention output.
        pub const Y: Name = Name::new(c"Y");
        /// Slot 1: the keys each row attended, sorted, `-1` padded.
        pub const SELECTED_INDICES: Name = Name::new(c"selected_indices");
        /// Slot 2: f32 log-sum-exp of each row.
        pub const SOFTMAX_LSE: Name = Name::new(c"softmax_lse");
        /// Every output in slot order.
        pub const ALL: [Name; 3] = [Y, SELECTED_INDICES, SOFTMAX_LSE];
    }

    /// Attributes.
    pub mod attr {
        use super::Name;
        /// int >= 1: keys kept per query (training-free: rounded to blocks).
        pub const TOP_K: Name = Name::new(c"top_k");
        /// int 0/1: causal (bottom-right aligned).
        pub const IS_CAUSAL: Name = Name::new(c"is_causal");
        /// float: the score scale (default `1/sqrt(D)`).
        pub const SCALE: Name = Name::new(c"scale");
        /// int: query heads (3-D inputs).
        pub const Q_NUM_HEADS: Name = Name::new(c"q_num_heads");
        /// int: key/value heads (3-D inputs).
        pub const KV_NUM_HEADS: Name = Name::new(c"kv_num_heads");
        /// int: the recent keys always kept (-1 = none forced).
        pub const LEFT_WINDOW_SIZE: Name = Name::new(c"left_window_size");
        /// int: the leading sink keys always kept.
        pub const NUM_GLOBAL_TOKENS: Name = Name::new(c"num_global_tokens");
    }
}

/// `ai.tessera.MergeAttention`: two partial results over disjoint key sets
/// combined exactly through their log-sum-exp.
pub mod merge_attention {
    use super::Name;

    /// The op type.
    pub const OP: Name = Name::new(c"MergeAttention");

    /// Inputs, by slot.
    pub mod input {
        use super::Name;
        /// Slot 0: the first part's output.
        pub const Y_A: Name = Name::new(c"Y_a");
        /// Slot 1: the first part's log-sum-exp.
        pub const LSE_A: Name = Name::new(c"lse_a");
        /// Slot 2: the second part's output.
        pub const Y_B: Name = Name::new(c"Y_b");
        /// Slot 3: the second part's log-sum-exp.
        pub const LSE_B: Name = Name::new(c"lse_b");
        /// Every input in slot order.
        pub const ALL: [Name; 4] = [Y_A, LSE_A, Y_B, LSE_B];
    }

    /// Outputs, by slot.
    pub mod output {
        use super::Name;
        /// Slot 0: the merged output.
        pub const Y: Name = Name::new(c"Y");
        /// Slot 1: the merged log-sum-exp.
        pub const LSE: Name = Name::new(c"lse");
        /// Every output in slot order.
        pub const ALL: [Name; 2] = [Y, LSE];
    }
}

/// The op types of the domain, for tools that list or match them.
pub const OPS: [Name; 4] = [
    attention::OP,
    lightning_indexer::OP,
    topk_attention::OP,
    merge_attention::OP,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_views_agree() {
        for op in OPS {
            assert_eq!(op.c().to_str().unwrap(), op.as_str());
        }
        assert_eq!(attention::output::ALL[4].as_str(), "softmax_lse");
        assert_eq!(attention::output::ALL[3].as_str(), "qk_matmul_output");
        assert!(DOMAIN == "ai.tessera");
    }

    #[test]
    fn port_names_are_unique_per_op() {
        fn unique(names: &[Name]) -> bool {
            names
                .iter()
                .enumerate()
                .all(|(i, a)| names[i + 1..].iter().all(|b| a != b))
        }
        assert!(unique(&attention::input::ALL));
        assert!(unique(&attention::output::ALL));
        assert!(unique(&lightning_indexer::input::ALL));
        assert!(unique(&topk_attention::input::ALL));
        assert!(unique(&topk_attention::output::ALL));
        assert!(unique(&merge_attention::input::ALL));
        assert!(unique(&OPS));
    }
}
