//! CUDA kernels for Tessera. The kernels arrive with the CUDA issue; without
//! the `cuda` feature nothing here needs nvcc.
