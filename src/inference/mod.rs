//! The inference API: the one entry point every caller uses — the HTTP routes (OpenAI, TEI,
//! Cohere dialects), the job runner and `spotinfer batch`. It validates, admits (online work
//! only), tokenises (texts and pairs), submits to the queue with the outputs each input wants,
//! and shapes the model's outputs (normalisation, Matryoshka, softmax / sigmoid, sorting).
//!
//! Callers speak their own dialect on top (`protocol/` renders OpenAI's and TEI's shapes for
//! the HTTP routes and job output lines alike); nothing here knows HTTP beyond status numbers.
//!
//! Over 500 lines on purpose: one method per operation (embed, sparse, multi-vector, predict,
//! rerank, similarity, tokenize, decode) sharing one submit-and-collect path; the helpers they
//! share live in `inputs.rs` already (admission is `batching::admission`: the
//! slot travels with each queued input).

pub mod error;
pub mod inputs;
pub mod quantize;
pub mod start;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenizers::TruncationDirection;

use self::error::{ApiError, ErrorKind};
use crate::batching::{Admission, AdmissionGuard, InferError, Queue, WorkerHealth};
use crate::metrics::Metrics;
use crate::model::pooling::finish_embedding;
use crate::model::template::{self, RerankTemplate};
use crate::model::{ModelSummary, Output, Task, Want};
use crate::priority::Priority;
use crate::tokenize::{EncodeOptions, Input, TokenInfo, TokenizerPool};

pub use start::{start, StartOptions};

/// What the server runs, for /info, logs and responses: the loaded model and what this
/// server was told about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// What the model is (family, task, sizes, heads), as the worker loaded it.
    #[serde(flatten)]
    pub model: ModelSummary,
    pub model_id: String,
    pub served_model_name: String,
    pub revision: String,
    pub source: String,
    pub device: String,
    pub max_input_length: usize,
    pub prompts: HashMap<String, String>,
    /// Prepended to every embedded text that names no prompt (`--default-prompt`,
    /// `--default-prompt-name`, or the model's `default_prompt_name`).
    pub default_prompt: Option<String>,
    pub normalize_default: bool,
}

/// Per-request limits that do not depend on the caller.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
}

/// How a request's texts are tokenised.
#[derive(Debug, Clone, Default)]
pub struct TextOptions {
    /// None: `--auto-truncate`.
    pub truncate: Option<bool>,
    pub direction: Direction,
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Right,
    Left,
}

/// Where the time of one request went, and how much it carried (TEI's `x-*` headers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub tokenization: Duration,
    /// Mean over its inputs of the time each waited in the queue (as TEI reports it).
    pub queue: Duration,
    /// Mean over its inputs of their device batches' compute time.
    pub inference: Duration,
    pub total: Duration,
    pub tokens: usize,
    pub characters: usize,
    /// Inputs the request carried (TEI's metrics tell one from several).
    pub inputs: usize,
    /// Device time its inputs cost: each device batch's time shared by tokens.
    pub device: Duration,
}

/// An embedding request (OpenAI `/v1/embeddings`, TEI `/embed`, job lines).
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub inputs: Vec<Input>,
    pub text: TextOptions,
    pub normalize: bool,
    pub dimensions: Option<usize>,
}

pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub timings: Timings,
}

/// One prediction: a label and its score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// The loaded model behind the queue, and everything needed to talk to it.
pub struct Inference {
    pub info: ModelInfo,
    tokenizers: TokenizerPool,
    queue: Arc<Queue>,
    pub health: Arc<WorkerHealth>,
    admission: Arc<Admission>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    /// `--quantization-ranges` for int8 / uint8 outputs.
    pub quantization_ranges: Option<quantize::Ranges>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

fn chars_of(inputs: &[Input]) -> usize {
    inputs
        .iter()
        .map(|i| match i {
            Input::Text(t) => t.chars().count(),
            Input::Pair(a, b) => a.chars().count() + b.chars().count(),
            Input::Prompted { body, .. } => body.chars().count(),
            Input::Ids(_) => 0,
        })
        .sum()
}

impl Inference {
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The device batch's token budget in force.
    pub fn token_budget(&self) -> usize {
        self.queue.token_budget()
    }

    /// Online inputs take a slot of `--max-concurrent-requests` (429 beyond it); job lines
    /// do not. The slots are held until each input is answered or dropped, not by the caller.
    fn admit(&self, n: usize, priority: Priority) -> Result<Option<AdmissionGuard>, ApiError> {
        if priority == Priority::Job {
            return Ok(None);
        }
        let admitted = self.admission.try_admit(n).or_else(|| {
            // Slots held by inputs of vanished clients are freed before refusing a live one.
            (self.queue.drop_abandoned() > 0)
                .then(|| self.admission.try_admit(n))
                .flatten()
        });
        admitted.map(Some).ok_or_else(|| {
            self.metrics
                .rejected_total
                .with_label_values(&["overloaded"])
                .inc();
            ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model is overloaded: more than {} inputs in flight (--max-concurrent-requests)",
                    self.admission.max()
                ),
            )
        })
    }

    fn check_count(&self, n: usize, field: &'static str) -> Result<(), ApiError> {
        if n == 0 {
            return Err(
                ApiError::new(ErrorKind::Empty, format!("`{field}` cannot be empty")).param(field),
            );
        }
        if n > self.limits.max_client_batch_size {
            return Err(ApiError::new(
                ErrorKind::Validation,
                format!(
                    "batch size {n} > maximum allowed batch size {} (--max-client-batch-size)",
                    self.limits.max_client_batch_size
                ),
            )
            .param(field));
        }
        Ok(())
    }

    /// The route needs an output this model does not give: TEI's 424, with TEI's message
    /// (`what`, e.g. "Model is not an embedding model") and what the model is.
    fn require(&self, want: Want, what: &str) -> Result<(), ApiError> {
        if want.within(self.info.model.available) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorKind::WrongModel,
            format!(
                "{what} ({} serves task {})",
                self.info.model.architecture,
                self.info.model.task.as_str()
            ),
        ))
    }

    fn encode_options(&self, t: &TextOptions) -> EncodeOptions {
        EncodeOptions {
            truncate: t.truncate.unwrap_or(self.limits.auto_truncate),
            direction: match t.direction {
                Direction::Right => TruncationDirection::Right,
                Direction::Left => TruncationDirection::Left,
            },
            add_special_tokens: true,
        }
    }

    /// Prepends the named prompt (or the default one) to every text, as TEI does.
    pub fn apply_prompt(
        &self,
        inputs: Vec<Input>,
        prompt_name: Option<&str>,
    ) -> Result<Vec<Input>, ApiError> {
        let prompt = match prompt_name {
            Some(name) => Some(self.info.prompts.get(name).ok_or_else(|| {
                let mut known: Vec<&String> = self.info.prompts.keys().collect();
                known.sort();
                ApiError::new(
                    ErrorKind::Validation,
                    format!("prompt_name `{name}` is not in the model's prompts {known:?}"),
                )
                .param("prompt_name")
            })?),
            None => self.info.default_prompt.as_ref(),
        };
        let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
            return Ok(inputs);
        };
        inputs
            .into_iter()
            .map(|i| match i {
                Input::Text(t) => Ok(Input::Text(format!("{prompt}{t}"))),
                Input::Ids(_) if prompt_name.is_none() => Ok(i),
                _ => Err(
                    ApiError::new(ErrorKind::Validation, "prompt_name needs text inputs")
                        .param("prompt_name"),
                ),
            })
            .collect()
    }

    /// Admit, tokenise, queue at `priority` wanting `want`, collect one output per input.
    async fn compute(
        &self,
        inputs: Vec<Input>,
        opts: EncodeOptions,
        want: Want,
        priority: Priority,
    ) -> Result<(Vec<Output>, Timings), ApiError> {
        let admitted = self.admit(inputs.len(), priority)?;
        let started = Instant::now();
        let characters = chars_of(&inputs);
        let n_inputs = inputs.len();
        // Spans only with --otlp-endpoint: none of this runs otherwise.
        let traced = crate::otel::enabled();
        let (encoded, admitted) = if traced {
            use tracing::Instrument;
            let span = tracing::info_span!(
                "tokenize",
                spotinfer.inputs = n_inputs,
                spotinfer.tokens = tracing::field::Empty
            );
            let (encoded, admitted) = self
                .tokenizers
                .encode_all(inputs, opts, priority, admitted)
                .instrument(span.clone())
                .await?;
            span.record(
                "spotinfer.tokens",
                encoded.iter().map(|e| e.ids.len()).sum::<usize>(),
            );
            (encoded, admitted)
        } else {
            self.tokenizers
                .encode_all(inputs, opts, priority, admitted)
                .await?
        };
        let tokenization = started.elapsed();
        let tokens = encoded.iter().map(|e| e.ids.len()).sum();
        let predict = want.scores;
        let tei = &self.metrics.tei;
        tei.inputs_submitted(predict, encoded.iter().map(|e| e.ids.len()));
        let submitted = traced.then(std::time::SystemTime::now);
        let mut batches: Vec<crate::otel::BatchUse> = Vec::new();
        let receivers = self.queue.submit(encoded, want, priority, admitted);
        let mut outputs = Vec::with_capacity(receivers.len());
        let mut timings = Timings {
            tokenization,
            tokens,
            characters,
            inputs: receivers.len(),
            ..Timings::default()
        };
        let n = receivers.len().max(1) as u32;
        let (mut queue, mut inference) = (Duration::ZERO, Duration::ZERO);
        let mut each = Vec::with_capacity(receivers.len());
        for rx in receivers {
            let answer = rx.await.unwrap_or(Err(InferError::WorkerStopped))?;
            queue += answer.queue_time;
            inference += answer.compute_time;
            timings.device += answer.device_share;
            each.push((answer.queue_time, answer.compute_time));
            if traced {
                match batches.iter_mut().find(|b| b.id == answer.batch.id) {
                    Some(b) => b.inputs += 1,
                    None => batches.push(crate::otel::BatchUse {
                        id: answer.batch.id,
                        size: answer.batch.size,
                        tokens: answer.batch.tokens,
                        queue_time: answer.queue_time,
                        compute_time: answer.compute_time,
                        inputs: 1,
                    }),
                }
            }
            outputs.push(answer.output);
        }
        if let Some(at) = submitted {
            crate::otel::set_attribute("spotinfer.model", self.info.served_model_name.clone());
            crate::otel::set_attribute("spotinfer.inputs", n_inputs as i64);
            crate::otel::set_attribute("spotinfer.tokens", tokens as i64);
            crate::otel::record_batches(&self.info.served_model_name, at, n_inputs, &batches);
        }
        timings.queue = queue / n;
        timings.inference = inference / n;
        timings.total = started.elapsed();
        for (queue, compute) in each {
            tei.input_done(
                predict,
                crate::metrics::InputTimes {
                    total: timings.total.as_secs_f64(),
                    tokenization: tokenization.as_secs_f64(),
                    queue: queue.as_secs_f64(),
                    inference: compute.as_secs_f64(),
                },
            );
        }
        Ok((outputs, timings))
    }

    /// Pooled vectors, normalised and truncated as asked.
    pub async fn embed(&self, req: EmbedRequest, priority: Priority) -> Result<Embedded, ApiError> {
        self.require(Want::POOLED, "Model is not an embedding model")?;
        self.check_count(req.inputs.len(), "input")?;
        if let Some(d) = req.dimensions {
            let max = self.info.model.output_size;
            if d == 0 || d > max {
                return Err(ApiError::new(
                    ErrorKind::Validation,
                    format!("dimensions must be between 1 and {max}, got {d}"),
                )
                .param("dimensions"));
            }
        }
        let inputs = self.apply_prompt(req.inputs, req.text.prompt_name.as_deref())?;
        let opts = self.encode_options(&req.text);
        let (outputs, timings) = self.compute(inputs, opts, Want::POOLED, priority).await?;
        let vectors = outputs
            .into_iter()
            .map(|o| finish_embedding(o.pooled.unwrap_or_default(), req.dimensions, req.normalize))
            .collect();
        Ok(Embedded { vectors, timings })
    }

    /// Every token's last hidden state (`/embed_all`).
    pub async fn embed_all(
        &self,
        inputs: Vec<Input>,
        text: TextOptions,
        priority: Priority,
    ) -> Result<(Vec<Vec<Vec<f32>>>, Timings), ApiError> {
        self.require(Want::TOKENS, "Model is not an embedding model")?;
        self.check_count(inputs.len(), "inputs")?;
        let inputs = self.apply_prompt(inputs, text.prompt_name.as_deref())?;
        let (outputs, timings) = self
            .compute(inputs, self.encode_options(&text), Want::TOKENS, priority)
            .await?;
        let h = self.info.model.hidden_size.max(1);
        let tokens = outputs
            .into_iter()
            .map(|o| {
                o.tokens
                    .unwrap_or_default()
                    .chunks_exact(h)
                    .map(<[f32]>::to_vec)
                    .collect()
            })
            .collect();
        Ok((tokens, timings))
    }

    /// Term weights `(token id, weight)` (`/embed_sparse`).
    pub async fn embed_sparse(
        &self,
        inputs: Vec<Input>,
        text: TextOptions,
        priority: Priority,
    ) -> Result<(Vec<Vec<(u32, f32)>>, Timings), ApiError> {
        self.require(
            Want::SPARSE,
            "Model is not an embedding model with SPLADE pooling",
        )?;
        self.check_count(inputs.len(), "inputs")?;
        let inputs = self.apply_prompt(inputs, text.prompt_name.as_deref())?;
        let (outputs, timings) = self
            .compute(inputs, self.encode_options(&text), Want::SPARSE, priority)
            .await?;
        Ok((
            outputs
                .into_iter()
                .map(|o| o.sparse.unwrap_or_default())
                .collect(),
            timings,
        ))
    }

    /// bge-m3's dense, sparse and ColBERT outputs from one forward pass, each when asked.
    pub async fn embed_multi(
        &self,
        inputs: Vec<Input>,
        text: TextOptions,
        want: Want,
        priority: Priority,
    ) -> Result<(Vec<Output>, Timings), ApiError> {
        self.require(
            want,
            "Model has no bge-m3 heads (sparse_linear.pt / colbert_linear.pt)",
        )?;
        self.check_count(inputs.len(), "inputs")?;
        let inputs = self.apply_prompt(inputs, text.prompt_name.as_deref())?;
        let (mut outputs, timings) = self
            .compute(inputs, self.encode_options(&text), want, priority)
            .await?;
        for o in &mut outputs {
            if let Some(v) = o.pooled.take() {
                o.pooled = Some(finish_embedding(v, None, true));
            }
        }
        Ok((outputs, timings))
    }

    /// Labels with scores, highest first (`/predict`): softmax over labels, or a sigmoid for a
    /// one-label model; raw logits with `raw_scores`.
    pub async fn predict(
        &self,
        inputs: Vec<Input>,
        text: TextOptions,
        raw_scores: bool,
        priority: Priority,
    ) -> Result<(Vec<Vec<LabelScore>>, Timings), ApiError> {
        self.require(Want::SCORES, "Model is not a classifier model")?;
        self.check_count(inputs.len(), "inputs")?;
        let (outputs, timings) = self
            .compute(inputs, self.encode_options(&text), Want::SCORES, priority)
            .await?;
        let labels = &self.info.model.labels;
        let results = outputs
            .into_iter()
            .map(|o| {
                let logits = o.scores.unwrap_or_default();
                let scores = if raw_scores {
                    logits
                } else if logits.len() == 1 {
                    vec![sigmoid(logits[0])]
                } else {
                    softmax(&logits)
                };
                let mut v: Vec<LabelScore> = scores
                    .into_iter()
                    .enumerate()
                    .map(|(i, score)| LabelScore {
                        label: labels
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("LABEL_{i}")),
                        score,
                    })
                    .collect();
                // Highest first; ties in reverse label order, as TEI sorts.
                v.reverse();
                v.sort_by(|a, b| b.score.total_cmp(&a.score));
                v
            })
            .collect();
        Ok((results, timings))
    }

    /// One relevance score per text, in input order: sigmoid of the reranker's logit (raw
    /// with `raw_scores`). N texts are N inputs under `--max-client-batch-size`.
    /// `instruction` is the task a Qwen3-Reranker judges relevance for (its default when
    /// None); other rerankers ignore it.
    #[allow(clippy::too_many_arguments)]
    pub async fn rerank(
        &self,
        query: &str,
        texts: Vec<String>,
        instruction: Option<&str>,
        text: TextOptions,
        raw_scores: bool,
        priority: Priority,
    ) -> Result<(Vec<f32>, Timings), ApiError> {
        if texts.is_empty() {
            return Err(ApiError::new(ErrorKind::Empty, "`texts` cannot be empty").param("texts"));
        }
        if self.info.model.task != Task::Rerank {
            return Err(ApiError::new(
                ErrorKind::WrongModel,
                format!(
                    "model is not a re-ranker model ({} serves task {})",
                    self.info.model.architecture,
                    self.info.model.task.as_str()
                ),
            ));
        }
        self.check_count(texts.len(), "texts")?;
        if query.is_empty() {
            return Err(ApiError::new(ErrorKind::Empty, "`query` is empty").param("query"));
        }
        let inputs = match self.info.model.rerank_template {
            RerankTemplate::YesNoPrompt => texts
                .into_iter()
                .map(|t| {
                    let p = template::yes_no_prompt(instruction, query, &t);
                    Input::Prompted {
                        prefix: p.prefix,
                        body: p.body,
                        suffix: p.suffix,
                    }
                })
                .collect(),
            RerankTemplate::Pair => texts
                .into_iter()
                .map(|t| Input::Pair(query.to_string(), t))
                .collect(),
        };
        let (outputs, timings) = self
            .compute(inputs, self.encode_options(&text), Want::SCORES, priority)
            .await?;
        let scores = outputs
            .into_iter()
            .map(|o| {
                let logit = o.scores.and_then(|s| s.first().copied()).unwrap_or(0.0);
                if raw_scores {
                    logit
                } else {
                    sigmoid(logit)
                }
            })
            .collect();
        Ok((scores, timings))
    }

    /// Cosine similarity of each sentence to the source sentence (`/similarity`).
    pub async fn similarity(
        &self,
        source: String,
        sentences: Vec<String>,
        text: TextOptions,
        priority: Priority,
    ) -> Result<(Vec<f32>, Timings), ApiError> {
        if sentences.is_empty() {
            return Err(
                ApiError::new(ErrorKind::Empty, "`inputs.sentences` cannot be empty")
                    .param("sentences"),
            );
        }
        let mut inputs = vec![Input::Text(source)];
        inputs.extend(sentences.into_iter().map(Input::Text));
        // TEI counts the source sentence too.
        self.check_count(inputs.len(), "sentences")?;
        let out = self.embed_normalized(inputs, text, priority).await?;
        let (first, rest) = out
            .vectors
            .split_first()
            .ok_or_else(|| ApiError::new(ErrorKind::Empty, "no sentences").param("sentences"))?;
        let scores = rest
            .iter()
            .map(|v| v.iter().zip(first).map(|(a, b)| a * b).sum())
            .collect();
        Ok((scores, out.timings))
    }

    /// `embed` with normalisation (cosines become dot products); the caller checked the count.
    async fn embed_normalized(
        &self,
        inputs: Vec<Input>,
        text: TextOptions,
        priority: Priority,
    ) -> Result<Embedded, ApiError> {
        self.require(Want::POOLED, "Model is not an embedding model")?;
        let inputs = self.apply_prompt(inputs, text.prompt_name.as_deref())?;
        let (outputs, timings) = self
            .compute(inputs, self.encode_options(&text), Want::POOLED, priority)
            .await?;
        Ok(Embedded {
            vectors: outputs
                .into_iter()
                .map(|o| finish_embedding(o.pooled.unwrap_or_default(), None, true))
                .collect(),
            timings,
        })
    }

    /// Tokens with their text and offsets (`/tokenize`). Admitted like inference: each text
    /// holds a slot until its tokens are made (or the work is dropped, its caller gone).
    pub async fn tokenize(
        &self,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<TokenInfo>>, ApiError> {
        self.check_count(texts.len(), "inputs")?;
        let admitted = self.admit(texts.len(), Priority::Online)?;
        Ok(self
            .tokenizers
            .run(move |tk| {
                let _admitted = admitted;
                texts
                    .iter()
                    .map(|t| tk.tokens(t, add_special_tokens))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?)
    }

    /// Texts of token id sequences (`/decode`): one input per sequence, under
    /// `--max-client-batch-size` and admitted like `tokenize`.
    pub async fn decode(
        &self,
        seqs: Vec<Vec<u32>>,
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, ApiError> {
        self.check_count(seqs.len(), "ids")?;
        let admitted = self.admit(seqs.len(), Priority::Online)?;
        Ok(self
            .tokenizers
            .run(move |tk| {
                let _admitted = admitted;
                seqs.iter()
                    .map(|ids| tk.decode(ids, skip_special_tokens))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_sigmoid_or_softmax() {
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        let s = softmax(&[1.0, 2.0, 3.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[2] - 0.665_240_9).abs() < 1e-6);
        assert_eq!(chars_of(&[Input::Pair("ab".into(), "é".into())]), 3);
    }
}
