//! The CUDA kernels, compiled as host C++ against the CPU emulator
//! (`--features emulate`), checked against tessera-core's f64 reference on
//! random data: outputs are poisoned with NaN first, NaN never passes.
//! Every launch goes through the same `plan` validation and parameter blocks
//! as a GPU launch; only the driver call differs.
//!
//! One module per kernel family, mirroring `kernels/*.cu`; `support` holds
//! the random data and the error measure they share.

mod flash;
mod indexer;
mod indexer_op;
mod merge;
mod sparse;
mod support;
mod topk;
