//! The embedding path shared by the OpenAI and TEI routes: validate, admit, tokenise, queue,
//! finish (Matryoshka truncation, normalisation).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokenizers::TruncationDirection;

use super::errors::{ApiError, ErrorKind};
use super::AppState;
use crate::batching::Priority;
use crate::engine::Engine;
use crate::model::pooling::finish_embedding;
use crate::tokenize::{EncodeOptions, Input};

/// Admission control: counts inputs (not requests) in flight, like TEI's
/// `--max-concurrent-requests`.
pub struct Admission {
    inflight: AtomicUsize,
    max: usize,
}

pub struct AdmissionGuard {
    admission: Arc<Admission>,
    n: usize,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.admission.inflight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            max,
        })
    }

    pub fn try_admit(self: &Arc<Self>, n: usize) -> Option<AdmissionGuard> {
        let mut cur = self.inflight.load(Ordering::Acquire);
        loop {
            if cur + n > self.max {
                return None;
            }
            match self
                .inflight
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(AdmissionGuard {
                        admission: self.clone(),
                        n,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

pub struct EmbedParams {
    pub inputs: Vec<Input>,
    pub truncate: Option<bool>,
    pub direction: TruncationDirection,
    pub prompt_name: Option<String>,
    pub normalize: bool,
    pub dimensions: Option<usize>,
}

pub struct EmbedOutput {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// The engine, or 503 while the model loads.
pub fn engine(state: &AppState) -> Result<Arc<Engine>, ApiError> {
    state.engine.get().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "the model is still loading; retry shortly",
        )
    })
}

/// Per-request limits that do not depend on the caller.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
}

impl RequestLimits {
    pub fn from_state(state: &AppState) -> Self {
        Self {
            max_client_batch_size: state.cfg.max_client_batch_size,
            auto_truncate: state.cfg.auto_truncate,
        }
    }
}

/// Checks what can be checked before any work: input count and dimensions.
fn validate(engine: &Engine, limits: RequestLimits, p: &EmbedParams) -> Result<(), ApiError> {
    let n = p.inputs.len();
    if n == 0 {
        return Err(ApiError::new(ErrorKind::Empty, "no inputs").param("input"));
    }
    if n > limits.max_client_batch_size {
        return Err(ApiError::new(
            ErrorKind::Validation,
            format!(
                "batch size {n} > maximum allowed batch size {} (--max-client-batch-size)",
                limits.max_client_batch_size
            ),
        )
        .param("input"));
    }
    let hidden = engine.info.hidden_size;
    if let Some(d) = p.dimensions {
        if d == 0 || d > hidden {
            return Err(ApiError::new(
                ErrorKind::Validation,
                format!("dimensions must be between 1 and {hidden}, got {d}"),
            )
            .param("dimensions"));
        }
    }
    Ok(())
}

/// An online request: validate, admit (429 beyond --max-concurrent-requests), compute.
pub async fn run(state: &AppState, p: EmbedParams) -> Result<EmbedOutput, ApiError> {
    let engine = engine(state)?;
    let limits = RequestLimits::from_state(state);
    validate(&engine, limits, &p)?;
    let _admitted = state.admission.try_admit(p.inputs.len()).ok_or_else(|| {
        state
            .metrics
            .rejected_total
            .with_label_values(&["overloaded"])
            .inc();
        ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "model is overloaded: more than {} inputs in flight (--max-concurrent-requests)",
                state.cfg.max_concurrent_requests
            ),
        )
    })?;
    compute(&engine, limits, p, Priority::Online).await
}

/// Tokenise, queue at `priority`, finish. Batch-job lines come here directly (no admission:
/// the job runner bounds its own lines in flight).
pub async fn compute(
    engine: &Engine,
    limits: RequestLimits,
    p: EmbedParams,
    priority: Priority,
) -> Result<EmbedOutput, ApiError> {
    validate(engine, limits, &p)?;
    let n = p.inputs.len();
    let inputs = apply_prompt(engine, p.inputs, p.prompt_name.as_deref())?;
    let opts = EncodeOptions {
        truncate: p.truncate.unwrap_or(limits.auto_truncate),
        direction: p.direction,
        add_special_tokens: true,
    };
    let encoded = engine.encode(inputs, opts, priority).await?;
    let prompt_tokens = encoded.iter().map(|e| e.ids.len()).sum();
    let results = engine.embed_encoded(encoded, priority).await;
    let mut vectors = Vec::with_capacity(n);
    for r in results {
        vectors.push(finish_embedding(r?, p.dimensions, p.normalize));
    }
    Ok(EmbedOutput {
        vectors,
        prompt_tokens,
    })
}

/// Prepends the named prompt from config_sentence_transformers.json, as TEI does.
pub fn apply_prompt(
    engine: &Engine,
    inputs: Vec<Input>,
    prompt_name: Option<&str>,
) -> Result<Vec<Input>, ApiError> {
    let Some(name) = prompt_name else {
        return Ok(inputs);
    };
    let prompt = engine.info.prompts.get(name).ok_or_else(|| {
        let mut known: Vec<&String> = engine.info.prompts.keys().collect();
        known.sort();
        ApiError::new(
            ErrorKind::Validation,
            format!("prompt_name `{name}` is not in the model's prompts {known:?}"),
        )
        .param("prompt_name")
    })?;
    inputs
        .into_iter()
        .map(|i| match i {
            Input::Text(t) => Ok(Input::Text(format!("{prompt}{t}"))),
            Input::Ids(_) => Err(ApiError::new(
                ErrorKind::Validation,
                "prompt_name cannot be combined with token id inputs",
            )
            .param("prompt_name")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_inputs_and_releases_on_drop() {
        let a = Admission::new(10);
        let g1 = a.try_admit(6).unwrap();
        assert!(a.try_admit(5).is_none());
        let g2 = a.try_admit(4).unwrap();
        drop(g1);
        assert!(a.try_admit(6).is_some());
        drop(g2);
        assert_eq!(a.inflight.load(Ordering::Acquire), 0);
    }
}
