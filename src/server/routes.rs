//! Every route of the main port in one table: the router is built from it, and the OpenAPI
//! document is checked against it (tests/openapi.rs), so neither can drift from the other.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};

use super::{cohere, docs, jobs, openai, probes, tei, vertex, AppState, FILE_UPLOAD_LIMIT};

/// Who may call a route, and what is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes, metrics and the API description: never behind the API key, never refused while
    /// draining.
    Public,
    /// Behind the API key, counted in the request metrics, refused once the drain closed the
    /// listener.
    Inference,
}

/// One path of the main port.
pub struct Route {
    pub path: &'static str,
    /// Upper-case HTTP methods, as the handler below answers them.
    pub methods: &'static [&'static str],
    pub access: Access,
    handler: fn() -> MethodRouter<AppState>,
}

impl Route {
    pub fn handler(&self) -> MethodRouter<AppState> {
        (self.handler)()
    }
}

const fn route(
    path: &'static str,
    methods: &'static [&'static str],
    access: Access,
    handler: fn() -> MethodRouter<AppState>,
) -> Route {
    Route {
        path,
        methods,
        access,
        handler,
    }
}

use Access::{Inference, Public};

const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];

pub const ROUTES: &[Route] = &[
    route("/health", GET, Public, || get(probes::health)),
    route("/live", GET, Public, || get(probes::health)),
    route("/ready", GET, Public, || get(probes::ready)),
    route("/ping", GET, Public, || get(probes::ready)),
    route("/metrics", GET, Public, || get(probes::metrics)),
    route("/api-doc/openapi.json", GET, Public, || {
        get(docs::openapi_json)
    }),
    route("/docs", GET, Public, || get(docs::page)),
    route("/v1/embeddings", POST, Inference, || {
        post(openai::embeddings)
    }),
    route("/embeddings", POST, Inference, || post(openai::embeddings)),
    route("/v1/models", GET, Inference, || get(openai::models)),
    route("/embed", POST, Inference, || post(tei::embed)),
    route("/embed_all", POST, Inference, || post(tei::embed_all)),
    route("/embed_sparse", POST, Inference, || post(tei::embed_sparse)),
    route("/embed_multi_vector", POST, Inference, || {
        post(tei::embed_multi_vector)
    }),
    route("/rerank", POST, Inference, || post(tei::rerank)),
    route("/v1/rerank", POST, Inference, || post(tei::rerank_cohere)),
    route("/v2/rerank", POST, Inference, || post(tei::rerank_cohere)),
    route("/v1/embed", POST, Inference, || post(cohere::embed_v1)),
    route("/v2/embed", POST, Inference, || post(cohere::embed_v2)),
    route("/predict", POST, Inference, || post(tei::predict)),
    route("/similarity", POST, Inference, || post(tei::similarity)),
    route("/vertex", POST, Inference, || post(vertex::predict)),
    route("/invocations", POST, Inference, || post(tei::invocations)),
    route("/", POST, Inference, || post(tei::invocations)),
    // TEI's health check is on `GET /` too.
    route("/", GET, Public, || get(probes::health)),
    route("/tokenize", POST, Inference, || post(tei::tokenize)),
    route("/decode", POST, Inference, || post(tei::decode)),
    route("/info", GET, Inference, || get(tei::info)),
    route("/v1/files", &["GET", "POST"], Inference, || {
        post(jobs::upload)
            .layer(DefaultBodyLimit::max(FILE_UPLOAD_LIMIT))
            .get(jobs::list_files)
    }),
    route("/v1/files/{id}", &["GET", "DELETE"], Inference, || {
        get(jobs::get_file).delete(jobs::delete_file)
    }),
    route("/v1/files/{id}/content", GET, Inference, || {
        get(jobs::file_content)
    }),
    route("/v1/batches", &["GET", "POST"], Inference, || {
        post(jobs::create_batch).get(jobs::list_batches)
    }),
    route("/v1/batches/{id}", GET, Inference, || get(jobs::get_batch)),
    route("/v1/batches/{id}/cancel", POST, Inference, || {
        post(jobs::cancel_batch)
    }),
];

/// `(METHOD, path)` of every route, for the OpenAPI check.
pub fn list() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(move |m| (*m, r.path)))
        .collect()
}
