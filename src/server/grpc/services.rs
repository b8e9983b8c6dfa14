//! The `tei.v1` methods: each reads its message, calls the inference API exactly as the TEI
//! HTTP route does (`tei.rs`), and writes the answer in TEI's gRPC shape. A streaming method
//! runs the same per-message handler as its unary twin.
//!
//! One concern, over 500 lines on purpose: one method per `tei.v1` RPC, as `tei.rs` has one
//! handler per route.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::pb;
use super::{reject, Grpc, ResponseStream};
use crate::inference::{Direction, EmbedRequest, TextOptions, Timings};
use crate::model::Task;
use crate::priority::Priority;
use crate::server::errors::{ApiError, ErrorKind};
use crate::server::tei::rank;
use crate::tokenize::Input;

type Answer<T> = Result<Response<T>, Status>;

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn timing_of(t: &Timings) -> Option<pb::Metadata> {
    Some(pb::Metadata {
        compute_chars: u32_of(t.characters),
        compute_tokens: u32_of(t.tokens),
        total_time_ns: ns(t.total),
        tokenization_time_ns: ns(t.tokenization),
        queue_time_ns: ns(t.queue),
        inference_time_ns: ns(t.inference),
    })
}

/// How a message's text is tokenised. `truncate = false` is proto3's "not set": the server's
/// `--auto-truncate` decides, as for an HTTP body without `truncate`.
fn text_options(
    truncate: bool,
    direction: i32,
    prompt_name: Option<String>,
) -> Result<TextOptions, ApiError> {
    let direction = match pb::TruncationDirection::try_from(direction) {
        Ok(pb::TruncationDirection::Right) => Direction::Right,
        Ok(pb::TruncationDirection::Left) => Direction::Left,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::Validation,
                format!("unknown truncation_direction {direction}"),
            )
            .param("truncation_direction"))
        }
    };
    Ok(TextOptions {
        truncate: truncate.then_some(true),
        direction,
        prompt_name,
    })
}

fn predictions(v: Vec<crate::inference::LabelScore>) -> Vec<pb::Prediction> {
    v.into_iter()
        .map(|p| pb::Prediction {
            score: p.score,
            label: p.label,
        })
        .collect()
}

/// Adds one message's timings to a stream's total.
fn add_timings(total: &mut Timings, t: &Timings) {
    total.tokenization += t.tokenization;
    total.queue += t.queue;
    total.inference += t.inference;
    total.tokens += t.tokens;
    total.characters += t.characters;
    total.device += t.device;
}

/// The per-message work, shared by unary and streaming methods.
impl Grpc {
    async fn embed_one(&self, r: pb::EmbedRequest) -> Result<pb::EmbedResponse, ApiError> {
        let inference = self.state.inference()?;
        let out = inference
            .embed(
                EmbedRequest {
                    inputs: vec![Input::Text(r.inputs)],
                    text: text_options(r.truncate, r.truncation_direction, r.prompt_name)?,
                    normalize: r.normalize.unwrap_or(true),
                    dimensions: r.dimensions.map(|d| d as usize),
                },
                Priority::Online,
            )
            .await?;
        Ok(pb::EmbedResponse {
            embeddings: out.vectors.into_iter().next().unwrap_or_default(),
            metadata: timing_of(&out.timings),
        })
    }

    async fn embed_sparse_one(
        &self,
        r: pb::EmbedSparseRequest,
    ) -> Result<pb::EmbedSparseResponse, ApiError> {
        let inference = self.state.inference()?;
        let (sparse, t) = inference
            .embed_sparse(
                vec![Input::Text(r.inputs)],
                text_options(r.truncate, r.truncation_direction, r.prompt_name)?,
                Priority::Online,
            )
            .await?;
        Ok(pb::EmbedSparseResponse {
            sparse_embeddings: sparse
                .into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(|(index, value)| pb::SparseValue { index, value })
                .collect(),
            metadata: timing_of(&t),
        })
    }

    async fn embed_all_one(
        &self,
        r: pb::EmbedAllRequest,
    ) -> Result<pb::EmbedAllResponse, ApiError> {
        let inference = self.state.inference()?;
        let (tokens, t) = inference
            .embed_all(
                vec![Input::Text(r.inputs)],
                text_options(r.truncate, r.truncation_direction, r.prompt_name)?,
                Priority::Online,
            )
            .await?;
        Ok(pb::EmbedAllResponse {
            token_embeddings: tokens
                .into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(|embeddings| pb::TokenEmbedding { embeddings })
                .collect(),
            metadata: timing_of(&t),
        })
    }

    async fn predict_inputs(
        &self,
        input: Input,
        truncate: bool,
        raw_scores: bool,
        direction: i32,
    ) -> Result<pb::PredictResponse, ApiError> {
        let inference = self.state.inference()?;
        let (results, t) = inference
            .predict(
                vec![input],
                text_options(truncate, direction, None)?,
                raw_scores,
                Priority::Online,
            )
            .await?;
        Ok(pb::PredictResponse {
            predictions: predictions(results.into_iter().next().unwrap_or_default()),
            metadata: timing_of(&t),
        })
    }

    async fn predict_one(&self, r: pb::PredictRequest) -> Result<pb::PredictResponse, ApiError> {
        self.predict_inputs(
            Input::Text(r.inputs),
            r.truncate,
            r.raw_scores,
            r.truncation_direction,
        )
        .await
    }

    /// `inputs`: `[text]` or `[text, text_pair]`, as the HTTP route's pair form.
    async fn predict_pair_one(
        &self,
        r: pb::PredictPairRequest,
    ) -> Result<pb::PredictResponse, ApiError> {
        let mut inputs = r.inputs;
        let input = match inputs.len() {
            1 => Input::Text(inputs.remove(0)),
            2 => {
                let b = inputs.remove(1);
                Input::Pair(inputs.remove(0), b)
            }
            0 => {
                return Err(
                    ApiError::new(ErrorKind::Empty, "`inputs` cannot be empty").param("inputs")
                )
            }
            n => {
                return Err(ApiError::new(
                    ErrorKind::Validation,
                    format!("`inputs` must be one text or a pair of texts, got {n} texts"),
                )
                .param("inputs"))
            }
        };
        self.predict_inputs(input, r.truncate, r.raw_scores, r.truncation_direction)
            .await
    }

    async fn rerank_all(&self, r: pb::RerankRequest) -> Result<pb::RerankResponse, ApiError> {
        let inference = self.state.inference()?;
        let (scores, t) = inference
            .rerank(
                &r.query,
                r.texts.clone(),
                None,
                text_options(r.truncate, r.truncation_direction, None)?,
                r.raw_scores,
                Priority::Online,
            )
            .await?;
        let ranks = rank(scores)
            .into_iter()
            .map(|(index, score)| pb::Rank {
                index: u32_of(index),
                text: r.return_text.then(|| r.texts.get(index).cloned()).flatten(),
                score,
            })
            .collect();
        Ok(pb::RerankResponse {
            ranks,
            metadata: timing_of(&t),
        })
    }

    async fn tokenize_one(&self, r: pb::EncodeRequest) -> Result<pb::EncodeResponse, ApiError> {
        let inference = self.state.inference()?;
        let inputs =
            inference.apply_prompt(vec![Input::Text(r.inputs)], r.prompt_name.as_deref())?;
        let text = match inputs.into_iter().next() {
            Some(Input::Text(t)) if !t.is_empty() => t,
            _ => {
                return Err(
                    ApiError::new(ErrorKind::Empty, "`inputs` cannot be empty").param("inputs")
                )
            }
        };
        let tokens = inference
            .tokenize(vec![text], r.add_special_tokens)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|t| pb::SimpleToken {
                id: t.id,
                text: t.text,
                special: t.special,
                start: t.start.map(u32_of),
                stop: t.stop.map(u32_of),
            })
            .collect();
        Ok(pb::EncodeResponse { tokens })
    }

    async fn decode_one(&self, r: pb::DecodeRequest) -> Result<pb::DecodeResponse, ApiError> {
        let inference = self.state.inference()?;
        let text = inference
            .decode(vec![r.ids], r.skip_special_tokens)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(pb::DecodeResponse { text })
    }

    fn info_now(&self) -> Result<pb::InfoResponse, ApiError> {
        let inference = self.state.inference()?;
        let cfg = &self.state.cfg;
        let i = &inference.info;
        let model_type = match i.model.task {
            Task::Embed | Task::Sparse => pb::ModelType::Embedding,
            Task::Classify => pb::ModelType::Classifier,
            Task::Rerank => pb::ModelType::Reranker,
        };
        Ok(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            sha: None,
            docker_label: None,
            model_id: cfg.model.model_id.clone(),
            model_sha: Some(cfg.model.revision.clone()),
            model_dtype: i.model.dtype.to_string(),
            model_type: model_type as i32,
            max_concurrent_requests: u32_of(cfg.max_concurrent_requests),
            max_input_length: u32_of(i.max_input_length),
            max_batch_tokens: u32_of(inference.token_budget()),
            max_batch_requests: cfg.max_batch_requests.map(u32_of),
            max_client_batch_size: u32_of(cfg.max_client_batch_size),
            tokenization_workers: u32_of(cfg.tokenization_workers()),
        })
    }
}

/// A streaming method over its per-message handler.
macro_rules! stream_of {
    ($self:ident, $route:literal, $request:ident, $one:ident) => {{
        let (metadata, _, input) = $request.into_parts();
        let this = $self.clone();
        $self.pipeline($route, &metadata, input, move |m| {
            let this = this.clone();
            async move { this.$one(m).await }
        })
    }};
}

/// A unary method over its per-message handler.
macro_rules! unary_of {
    ($self:ident, $route:literal, $request:ident, $one:ident) => {{
        let (metadata, _, m) = $request.into_parts();
        $self.unary($route, &metadata, $self.$one(m)).await
    }};
}

#[tonic::async_trait]
impl pb::info_server::Info for Grpc {
    async fn info(&self, request: Request<pb::InfoRequest>) -> Answer<pb::InfoResponse> {
        let metadata = request.metadata().clone();
        self.unary("/tei.v1.Info/Info", &metadata, async { self.info_now() })
            .await
    }
}

#[tonic::async_trait]
impl pb::embed_server::Embed for Grpc {
    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Answer<pb::EmbedResponse> {
        unary_of!(self, "/tei.v1.Embed/Embed", request, embed_one)
    }

    type EmbedStreamStream = ResponseStream<pb::EmbedResponse>;

    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedRequest>>,
    ) -> Answer<Self::EmbedStreamStream> {
        stream_of!(self, "/tei.v1.Embed/EmbedStream", request, embed_one)
    }

    async fn embed_sparse(
        &self,
        request: Request<pb::EmbedSparseRequest>,
    ) -> Answer<pb::EmbedSparseResponse> {
        unary_of!(self, "/tei.v1.Embed/EmbedSparse", request, embed_sparse_one)
    }

    type EmbedSparseStreamStream = ResponseStream<pb::EmbedSparseResponse>;

    async fn embed_sparse_stream(
        &self,
        request: Request<Streaming<pb::EmbedSparseRequest>>,
    ) -> Answer<Self::EmbedSparseStreamStream> {
        stream_of!(
            self,
            "/tei.v1.Embed/EmbedSparseStream",
            request,
            embed_sparse_one
        )
    }

    async fn embed_all(
        &self,
        request: Request<pb::EmbedAllRequest>,
    ) -> Answer<pb::EmbedAllResponse> {
        unary_of!(self, "/tei.v1.Embed/EmbedAll", request, embed_all_one)
    }

    type EmbedAllStreamStream = ResponseStream<pb::EmbedAllResponse>;

    async fn embed_all_stream(
        &self,
        request: Request<Streaming<pb::EmbedAllRequest>>,
    ) -> Answer<Self::EmbedAllStreamStream> {
        stream_of!(self, "/tei.v1.Embed/EmbedAllStream", request, embed_all_one)
    }
}

#[tonic::async_trait]
impl pb::predict_server::Predict for Grpc {
    async fn predict(&self, request: Request<pb::PredictRequest>) -> Answer<pb::PredictResponse> {
        unary_of!(self, "/tei.v1.Predict/Predict", request, predict_one)
    }

    async fn predict_pair(
        &self,
        request: Request<pb::PredictPairRequest>,
    ) -> Answer<pb::PredictResponse> {
        unary_of!(
            self,
            "/tei.v1.Predict/PredictPair",
            request,
            predict_pair_one
        )
    }

    type PredictStreamStream = ResponseStream<pb::PredictResponse>;

    async fn predict_stream(
        &self,
        request: Request<Streaming<pb::PredictRequest>>,
    ) -> Answer<Self::PredictStreamStream> {
        stream_of!(self, "/tei.v1.Predict/PredictStream", request, predict_one)
    }

    type PredictPairStreamStream = ResponseStream<pb::PredictResponse>;

    async fn predict_pair_stream(
        &self,
        request: Request<Streaming<pb::PredictPairRequest>>,
    ) -> Answer<Self::PredictPairStreamStream> {
        stream_of!(
            self,
            "/tei.v1.Predict/PredictPairStream",
            request,
            predict_pair_one
        )
    }
}

#[tonic::async_trait]
impl pb::rerank_server::Rerank for Grpc {
    async fn rerank(&self, request: Request<pb::RerankRequest>) -> Answer<pb::RerankResponse> {
        unary_of!(self, "/tei.v1.Rerank/Rerank", request, rerank_all)
    }

    /// Each message is one (query, text) pair scored as it arrives (through the same rerank
    /// call as `Rerank`, one text each); the ranking of all of them comes at the end.
    /// `raw_scores` and `return_text` are read from the first message.
    async fn rerank_stream(
        &self,
        request: Request<Streaming<pb::RerankStreamRequest>>,
    ) -> Answer<pb::RerankResponse> {
        const ROUTE: &str = "/tei.v1.Rerank/RerankStream";
        let started = Instant::now();
        let (metadata, _, input) = request.into_parts();
        let first: Arc<OnceLock<(bool, bool)>> = Arc::new(OnceLock::new());
        let this = self.clone();
        let flags = first.clone();
        let scored = self.pipeline(
            ROUTE,
            &metadata,
            input,
            move |m: pb::RerankStreamRequest| {
                let this = this.clone();
                let (raw_scores, _) = *flags.get_or_init(|| (m.raw_scores, m.return_text));
                async move {
                    let inference = this.state.inference()?;
                    let (scores, t) = inference
                        .rerank(
                            &m.query,
                            vec![m.text.clone()],
                            None,
                            text_options(m.truncate, m.truncation_direction, None)?,
                            raw_scores,
                            Priority::Online,
                        )
                        .await?;
                    Ok((scores.into_iter().next().unwrap_or_default(), m.text, t))
                }
            },
        )?;
        let mut scored = scored.into_inner();
        let (mut scores, mut texts, mut total) = (Vec::new(), Vec::new(), Timings::default());
        while let Some(item) = scored.next().await {
            let (score, text, t) = item?;
            scores.push(score);
            texts.push(text);
            add_timings(&mut total, &t);
        }
        if scores.is_empty() {
            let e = ApiError::new(ErrorKind::Empty, "the stream sent no (query, text) pair")
                .param("texts");
            return Err(reject(&self.state, ROUTE, started, e));
        }
        total.total = started.elapsed();
        let return_text = first.get().is_some_and(|f| f.1);
        let ranks = rank(scores)
            .into_iter()
            .map(|(index, score)| pb::Rank {
                index: u32_of(index),
                text: return_text
                    .then(|| texts.get_mut(index).map(std::mem::take))
                    .flatten(),
                score,
            })
            .collect();
        Ok(Response::new(pb::RerankResponse {
            ranks,
            metadata: timing_of(&total),
        }))
    }
}

#[tonic::async_trait]
impl pb::tokenize_server::Tokenize for Grpc {
    async fn tokenize(&self, request: Request<pb::EncodeRequest>) -> Answer<pb::EncodeResponse> {
        unary_of!(self, "/tei.v1.Tokenize/Tokenize", request, tokenize_one)
    }

    type TokenizeStreamStream = ResponseStream<pb::EncodeResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::EncodeRequest>>,
    ) -> Answer<Self::TokenizeStreamStream> {
        stream_of!(
            self,
            "/tei.v1.Tokenize/TokenizeStream",
            request,
            tokenize_one
        )
    }

    async fn decode(&self, request: Request<pb::DecodeRequest>) -> Answer<pb::DecodeResponse> {
        unary_of!(self, "/tei.v1.Tokenize/Decode", request, decode_one)
    }

    type DecodeStreamStream = ResponseStream<pb::DecodeResponse>;

    async fn decode_stream(
        &self,
        request: Request<Streaming<pb::DecodeRequest>>,
    ) -> Answer<Self::DecodeStreamStream> {
        stream_of!(self, "/tei.v1.Tokenize/DecodeStream", request, decode_one)
    }
}
