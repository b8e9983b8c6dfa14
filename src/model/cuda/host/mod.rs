//! Host-side logic of the fused CUDA backend (`src/model/cuda/fused/`), compiled with and
//! without the `cuda` feature (module `model::cuda::host`) so `cargo test` checks it on any
//! machine: which launches a linear layer's epilogue becomes (`steps`), the activation
//! buffer pool's bookkeeping (`pool`), the relative position bias table (`bias`), the device
//! memory arithmetic behind the token-budget cap (`memory`), and the synthetic models of the
//! whole-model self-check (`synth`).

pub mod bias;
pub mod memory;
pub mod pool;
pub mod steps;
pub mod synth;
