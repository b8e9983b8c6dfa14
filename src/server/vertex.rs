//! Vertex AI: `POST /vertex` (and the route in `AIP_PREDICT_ROUTE`) takes
//! `{"instances": [...]}`, each instance a request of the model's own route, and answers
//! `{"predictions": [...]}` in the same order, as TEI does. `AIP_HEALTH_ROUTE` serves readiness
//! and `AIP_HTTP_PORT` moves the API port (see `ServeArgs::api_port`).

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{ApiError, ErrorKind};
use super::request::JsonBody;
use super::tei::{self, Answer};
use super::AppState;
use crate::inference::Timings;
use crate::model::Task;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"instances": [{"inputs": "What is Deep Learning?"}]}))]
pub struct VertexRequest {
    /// Each a request body of the model's route: `/embed` for an embedder, `/embed_sparse` for
    /// a sparse one, `/predict` for a classifier or reranker; `{"query", "texts"}` is `/rerank`.
    #[schema(value_type = Vec<Object>)]
    instances: Vec<Value>,
}

/// The Vertex routes Vertex AI asks for through its environment, when set.
#[derive(Debug, Default, Clone)]
pub struct AipRoutes {
    pub predict: Option<String>,
    pub health: Option<String>,
}

impl AipRoutes {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                // The router needs absolute paths; Vertex sends them so, be lenient otherwise.
                .map(|v| {
                    if v.starts_with('/') {
                        v
                    } else {
                        format!("/{v}")
                    }
                })
        };
        Self {
            predict: var("AIP_PREDICT_ROUTE"),
            health: var("AIP_HEALTH_ROUTE"),
        }
    }

    /// Refuses a path the router cannot take (captures and wildcards are axum syntax).
    pub fn check(&self) -> Result<(), String> {
        for (var, path) in [
            ("AIP_PREDICT_ROUTE", &self.predict),
            ("AIP_HEALTH_ROUTE", &self.health),
        ] {
            let Some(path) = path else { continue };
            let bad = path.contains(['{', '}', '*'])
                || path.split('/').any(|s| s.starts_with(':'))
                || path.contains("//");
            if bad {
                return Err(format!(
                    "{var} `{path}` is not a plain path (no `{{`, `}}`, `*`, `//` or `/:`)"
                ));
            }
        }
        Ok(())
    }

    /// Whether a table route is taken over by an AIP route (same path and method).
    pub fn replaces(&self, path: &str, methods: &[&str]) -> bool {
        (self.predict.as_deref() == Some(path) && methods.contains(&"POST"))
            || (self.health.as_deref() == Some(path) && methods.contains(&"GET"))
    }
}

async fn one(state: &AppState, task: Task, instance: Value) -> Result<Answer, ApiError> {
    // A rerank body is the only one that can be recognised safely, as in TEI.
    if instance.get("query").is_some() && instance.get("texts").is_some() {
        return tei::rerank_value(state, instance).await;
    }
    match task {
        Task::Classify | Task::Rerank => tei::predict_value(state, instance).await,
        Task::Sparse => tei::embed_sparse_value(state, instance).await,
        Task::Embed => tei::embed_value(state, instance).await,
    }
}

pub async fn predict(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<VertexRequest>,
) -> Response {
    let result = async {
        let started = Instant::now();
        let inference = state.inference()?;
        let n = req.instances.len();
        let max = inference.limits().max_client_batch_size;
        if n == 0 {
            return Err(ApiError::new(
                ErrorKind::Empty,
                "`instances` cannot be empty",
            ));
        }
        if n > max {
            return Err(ApiError::new(
                ErrorKind::Validation,
                format!("{n} instances > maximum allowed {max} (--max-client-batch-size)"),
            ));
        }
        let task = inference.info.model.task;
        let answers = futures::future::join_all(
            req.instances
                .into_iter()
                .map(|instance| one(&state, task, instance)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<Answer>, ApiError>>()?;
        // The request's timings: its inputs' sums, the slowest stage of any instance.
        let mut t = Timings::default();
        for a in &answers {
            let u = &a.timings;
            t.tokens += u.tokens;
            t.characters += u.characters;
            t.inputs += u.inputs;
            t.device += u.device;
            t.tokenization = t.tokenization.max(u.tokenization);
            t.queue = t.queue.max(u.queue);
            t.inference = t.inference.max(u.inference);
        }
        t.total = started.elapsed();
        let predictions: Vec<Value> = answers.into_iter().map(|a| a.body).collect();
        Ok(Answer {
            inference,
            timings: t,
            body: json!({ "predictions": predictions }),
        })
    }
    .await;
    match result {
        Ok(a) => a.into_response(),
        Err(e) => e.into_response(),
    }
}
