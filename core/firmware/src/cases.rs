//! The conformance cases: inputs and f64-reference outputs generated on the
//! host by `build.rs`.

use tessera_core::{f16, AttentionSpec, MaskSpec, Strides};

/// Q, K, V of one case in their storage format.
#[derive(Clone, Copy, Debug)]
pub enum Input {
    /// f32 storage.
    F32 {
        /// Queries.
        q: &'static [f32],
        /// Keys.
        k: &'static [f32],
        /// Values.
        v: &'static [f32],
    },
    /// f16 storage (math in f32).
    F16 {
        /// Queries.
        q: &'static [f16],
        /// Keys.
        k: &'static [f16],
        /// Values.
        v: &'static [f16],
    },
}

/// One conformance case.
#[derive(Debug)]
pub struct Case {
    /// What it covers.
    pub name: &'static str,
    /// Sizes, strides, scale, softcap.
    pub spec: AttentionSpec,
    /// The mask.
    pub mask: MaskSpec<'static>,
    /// Q, K, V.
    pub input: Input,
    /// Expected `Y` as contiguous `(B, Hq, Sq, Dv)` (f64 reference, rounded to f32).
    pub y: &'static [f32],
    /// Expected lse `(B, Hq, Sq)`; `-inf` for rows that see no key.
    pub lse: &'static [f32],
    /// `max |V|`, the scale of the `Y` tolerance.
    pub v_amp: f32,
    /// For the merge case: compute keys `0..cut` and `cut..Skv` apart, then merge.
    pub split: Option<usize>,
}

include!(concat!(env!("OUT_DIR"), "/cases.rs"));
