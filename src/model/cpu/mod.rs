//! The native CPU backend: F32 models without a tensor library (see `bert.rs` for why).

pub mod amx;
pub mod bert;
pub mod kernels;
pub mod matmul;
