//! Shared helpers for Tessera's cross-crate integration tests:
//! - [`onnx`]: a minimal ONNX protobuf writer, enough for one-node models;
//! - [`oracle`]: an f64 attention written straight from the ONNX rules,
//!   sharing no code with `tessera-core`'s mask machinery;
//! - [`Rng`]: a small deterministic generator for test data;
//! - [`plugin_path`] / [`ort_dylib`]: where the plugin and ORT live.

pub mod onnx;
pub mod oracle;

use std::path::PathBuf;

/// The plugin: `$TESSERA_ORT_LIB`, or `target/release/libtessera_ort.so`
/// (build it with `cargo build --release -p tessera-ort`).
pub fn plugin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_ORT_LIB") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    target.join("release").join("libtessera_ort.so")
}

/// `$ORT_DYLIB_PATH` (the full `libonnxruntime.so.1.x.y` path), or `None`.
/// With `TESSERA_REQUIRE_ORT=1` (set by `scripts/test.d/20-ort.sh`) a missing
/// runtime or plugin is a failure, not a skip.
pub fn ort_dylib() -> Option<PathBuf> {
    let required = std::env::var("TESSERA_REQUIRE_ORT").is_ok_and(|v| v == "1");
    let path = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    match path {
        Some(p) if p.exists() && plugin_path().exists() => Some(p),
        _ if required => panic!(
            "ORT_DYLIB_PATH ({:?}) or the plugin ({:?}) is missing; run scripts/test.sh ort",
            std::env::var_os("ORT_DYLIB_PATH"),
            plugin_path()
        ),
        _ => {
            eprintln!(
                "skipping: set ORT_DYLIB_PATH and build the plugin (scripts/test.sh ort does both)"
            );
            None
        }
    }
}

/// xorshift64*: deterministic, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in `[-1, 1)`.
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
