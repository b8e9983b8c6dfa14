//! The token budget that fits the GPU: after the model is loaded and warmed up, the worker
//! asks the model for its device memory (free bytes, and what one token of a batch costs) and
//! caps `--max-batch-tokens` so a full batch uses at most 85 % of what is free, minus a margin
//! for the allocator, cuBLAS and the driver. An out-of-memory batch still splits and retries
//! (batching/worker.rs); the cap makes that the exception.

/// Share of the free memory a full batch may use.
pub const USABLE_FRACTION: f64 = 0.85;
/// Kept free beyond that share (allocator slack, cuBLAS / cuBLASLt handles, the driver).
pub const MARGIN_BYTES: u64 = 512 << 20;

pub use crate::model::device::DeviceMemory;

/// The outcome, logged by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCap {
    pub configured: usize,
    /// What the queue uses: `min(configured, fit)`, never below `floor`.
    pub effective: usize,
    /// Tokens whose activations fit the budget.
    pub fit: u64,
    pub budget_bytes: u64,
    pub bytes_per_token: u64,
    /// Fewer tokens fit than one longest input: the budget stays at the floor (such an input
    /// may still run out of memory; the worker then fails that input alone).
    pub below_floor: bool,
}

/// Caps `configured` to what `available_bytes` (free + reusable) holds at `bytes_per_token`;
/// `floor` is the longest single input (the queue must be able to take one).
pub fn cap_tokens(
    configured: usize,
    floor: usize,
    available_bytes: u64,
    bytes_per_token: u64,
) -> TokenCap {
    let budget = ((available_bytes as f64 * USABLE_FRACTION) as u64).saturating_sub(MARGIN_BYTES);
    let fit = budget / bytes_per_token.max(1);
    let floor = floor.min(configured).max(1);
    let fit_usize = usize::try_from(fit).unwrap_or(usize::MAX);
    let effective = configured.min(fit_usize).max(floor);
    TokenCap {
        configured,
        effective,
        fit,
        budget_bytes: budget,
        bytes_per_token,
        below_floor: fit_usize < floor,
    }
}

/// A model's shape, for the estimate of backends that do not measure their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    /// Longest input (attention is quadratic in it on the reference backend).
    pub max_len: usize,
    pub dtype_bytes: usize,
}

/// Activation bytes per token of the reference (candle) backend, conservatively: a dozen
/// hidden-wide tensors (QKV, per-bucket gathers and copies, residuals), two intermediate-wide
/// ones (the product and its activation), and three `[heads, len]` score rows per token
/// (scores, the mask add, softmax) with the length buckets' padding (up to ~25 %).
pub fn reference_bytes_per_token(s: &Shape) -> u64 {
    let dense = 12 * s.hidden + 2 * s.intermediate;
    let scores = 3 * s.heads * s.max_len * 5 / 4;
    ((dense + scores) * s.dtype_bytes) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_budget_that_fits_is_kept() {
        // 100 GiB free, 40 KiB per token: ~2.2 M tokens fit, 16384 asked for.
        let c = cap_tokens(16384, 512, 100 * GIB, 40 << 10);
        assert_eq!(c.effective, 16384);
        assert!(!c.below_floor);
        let want_budget = (100.0 * GIB as f64 * 0.85) as u64 - (512 << 20);
        assert_eq!(c.budget_bytes, want_budget);
        assert_eq!(c.fit, want_budget / (40 << 10));
    }

    #[test]
    fn an_absurd_budget_is_capped_to_the_memory() {
        let c = cap_tokens(100_000_000, 512, 10 * GIB, 1 << 20);
        // (10 GiB * 0.85 - 512 MiB) / 1 MiB = 8192.
        assert_eq!(c.fit, 8192);
        assert_eq!(c.effective, 8192);
        assert!(c.fit * c.bytes_per_token <= c.budget_bytes);
    }

    #[test]
    fn the_cap_never_goes_below_one_longest_input() {
        let c = cap_tokens(16384, 512, GIB, 1 << 20);
        assert_eq!(c.fit, 358); // (0.85 GiB - 0.5 GiB) / 1 MiB
        assert_eq!(c.effective, 512);
        assert!(c.below_floor);
        // Nothing free at all.
        let none = cap_tokens(16384, 512, 0, 1 << 10);
        assert_eq!((none.fit, none.effective), (0, 512));
        // The floor never raises a smaller configured budget.
        assert_eq!(cap_tokens(100, 512, 0, 1).effective, 100);
    }

    #[test]
    fn the_reference_estimate_grows_with_the_longest_input() {
        let s = Shape {
            hidden: 1024,
            intermediate: 4096,
            heads: 16,
            max_len: 512,
            dtype_bytes: 2,
        };
        let b = reference_bytes_per_token(&s);
        assert_eq!(
            b,
            ((12 * 1024 + 2 * 4096) + 3 * 16 * 512 * 5 / 4) as u64 * 2
        );
        let short = reference_bytes_per_token(&Shape { max_len: 64, ..s });
        assert!(short < b);
    }
}
