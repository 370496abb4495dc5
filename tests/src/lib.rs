//! Shared helpers for Tessera's cross-crate integration tests.
