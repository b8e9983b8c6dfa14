//! The token budget against the GPU's memory, once the model is loaded and warmed up: the
//! model reports its free device memory and activation bytes per token, the budget is capped
//! to what fits (`model::cuda::host::memory`), the queue takes the capped budget, and the
//! model's activation buffers are reserved for it (halving on out-of-memory).

use super::queue::Queue;
use crate::model::cuda::host::memory::{cap_tokens, TokenCap};
use crate::model::{Model, ModelError};

/// What the check found (logged, and reported in the worker's loaded summary).
#[derive(Debug, Clone, Copy)]
pub struct MemoryCap {
    pub cap: TokenCap,
    /// The budget in force: the cap, or less when reserving buffers for it ran out of memory.
    pub effective: usize,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// The backend measured its activations (else the model estimated them from its shape).
    pub measured: bool,
}

/// Caps the queue's budget and reserves the model's buffers; `None` off the GPU. `floor`:
/// the longest input, which the budget must always take.
pub fn apply(model: &dyn Model, queue: &Queue, floor: usize) -> Option<MemoryCap> {
    let mem = model.device_memory()?;
    let per_token = mem.bytes_per_token?;
    let configured = queue.limits().max_batch_tokens;
    let cap = cap_tokens(
        configured,
        floor,
        mem.free_bytes.saturating_add(mem.reusable_bytes),
        per_token,
    );
    let mib = |b: u64| b >> 20;
    tracing::info!(
        configured,
        capped = cap.effective,
        fit_tokens = cap.fit,
        activation_bytes_per_token = per_token,
        measured = mem.measured,
        free_mib = mib(mem.free_bytes),
        total_mib = mib(mem.total_bytes),
        budget_mib = mib(cap.budget_bytes),
        "token budget checked against the GPU's free memory"
    );
    if cap.below_floor {
        tracing::warn!(
            fit_tokens = cap.fit,
            longest_input = floor,
            "the GPU's free memory holds less than one longest input; such inputs may fail"
        );
    }
    let mut tokens = cap.effective;
    loop {
        match model.reserve_tokens(tokens) {
            Ok(()) => break,
            Err(ModelError::OutOfMemory(e)) if (tokens / 2).max(floor) < tokens => {
                tokens = (tokens / 2).max(floor);
                tracing::warn!(error = %e, tokens, "reserving activation buffers ran out of memory: halving the budget");
            }
            Err(e) => {
                tracing::warn!(error = %e, "activation buffers not reserved; they grow on demand");
                break;
            }
        }
    }
    if tokens < configured {
        tracing::warn!(
            configured,
            tokens,
            "--max-batch-tokens capped to what fits the GPU's memory"
        );
    }
    queue.cap_max_batch_tokens(tokens);
    Some(MemoryCap {
        cap,
        effective: tokens,
        free_bytes: mem.free_bytes,
        total_bytes: mem.total_bytes,
        measured: mem.measured,
    })
}
