//! The OpenAPI 3.1 document served at `/api-doc/openapi.json`: one operation per route of the
//! route table (tests/openapi.rs checks that they are the same set), request schemas derived
//! from the request types the handlers parse, an example request for each operation (the test
//! sends every one), and both error shapes: TEI's `{"error","error_type"}` and OpenAI's
//! `{"error":{...}}`.
//!
//! One concern, over 500 lines on purpose: the document is one table of operations and
//! examples, read (and diffed) as one.

use serde_json::{json, Map, Value};
use utoipa::{OpenApi, ToSchema};

use super::routes::{Access, ROUTES};

/// TEI's error body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TeiError {
    error: String,
    /// `Validation`, `Empty`, `Overloaded`, `Unhealthy`, `Backend`, `Unauthorized`,
    /// `PayloadTooLarge`.
    error_type: String,
}

/// OpenAI's error detail.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OpenAiErrorDetail {
    message: String,
    #[schema(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// OpenAI's error body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(OpenApi)]
#[openapi(components(schemas(
    super::tei::Inputs,
    TeiError,
    OpenAiError,
    OpenAiErrorDetail,
    crate::protocol::openai::EmbeddingsBody,
    super::tei::EmbedBody,
    super::tei::InputsBody,
    super::tei::MultiBody,
    super::tei::RerankBody,
    super::tei::CohereBody,
    super::cohere::EmbedBody,
    super::cohere::CohereInput,
    super::tei::PredictBody,
    super::tei::SimilarityBody,
    super::tei::TokenizeBody,
    super::tei::DecodeBody,
    super::vertex::VertexRequest,
    super::jobs::CreateBatch,
    crate::jobs::FileObject,
    crate::jobs::BatchObject,
)))]
struct Schemas;

/// Which error shape a route answers with.
#[derive(Clone, Copy)]
enum Errors {
    Tei,
    OpenAi,
    None,
}

struct Op {
    summary: &'static str,
    tag: &'static str,
    /// (content type, schema, example)
    request: Option<(&'static str, Value, Value)>,
    /// (content type, schema)
    response: (&'static str, Value),
    errors: Errors,
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn number() -> Value {
    json!({"type": "number"})
}

fn object(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

const JSON: &str = "application/json";
const QUESTION: &str = "What is Deep Learning?";

fn sparse() -> Value {
    array(object(
        json!({"index": {"type": "integer"}, "value": number()}),
    ))
}

fn label_scores() -> Value {
    array(object(
        json!({"label": {"type": "string"}, "score": number()}),
    ))
}

fn ranks() -> Value {
    array(object(json!({
        "index": {"type": "integer"},
        "score": number(),
        "text": {"type": "string"},
    })))
}

fn openai_embeddings() -> Value {
    object(json!({
        "object": {"type": "string"},
        "data": array(object(json!({
            "object": {"type": "string"},
            "embedding": {"oneOf": [array(number()), {"type": "string", "description": "base64 little-endian float32"}]},
            "index": {"type": "integer"},
        }))),
        "model": {"type": "string"},
        "usage": object(json!({"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}})),
    }))
}

/// Cohere's embed answer: `embeddings_floats` (v1 without `embedding_types`) or
/// `embeddings_by_type` (one array of vectors per requested type).
fn cohere_embed_response() -> Value {
    object(json!({
        "id": {"type": "string"},
        "response_type": {"type": "string", "enum": ["embeddings_floats", "embeddings_by_type"]},
        "embeddings": {"oneOf": [
            array(array(number())),
            {"type": "object", "additionalProperties": {"type": "array"}},
        ]},
        "texts": array(json!({"type": "string"})),
        "meta": any_object(),
    }))
}

fn any_object() -> Value {
    json!({"type": "object"})
}

/// The JSONL line of the batch example: one embeddings request.
pub const BATCH_LINE: &str = r#"{"custom_id":"request-1","method":"POST","url":"/v1/embeddings","body":{"input":"What is Deep Learning?"}}"#;

/// The operation of `method path`; None for a route this table does not describe.
fn operation(method: &str, path: &str) -> Option<Op> {
    let tei = |summary, tag, body: &str, example: Value, response: Value| Op {
        summary,
        tag,
        request: Some((JSON, schema(body), example)),
        response: (JSON, response),
        errors: Errors::Tei,
    };
    let get = |summary, tag, response: (&'static str, Value), errors| Op {
        summary,
        tag,
        request: None,
        response,
        errors,
    };
    let embed_example = json!({"inputs": QUESTION, "normalize": true});
    let cohere_example = json!({
        "query": QUESTION,
        "documents": ["Deep Learning is a branch of machine learning.", "Cheese is made from milk."],
        "top_n": 2,
    });
    let cohere_response = object(json!({
        "id": {"type": "string"},
        "model": {"type": "string"},
        "results": array(object(json!({
            "index": {"type": "integer"},
            "relevance_score": number(),
            "document": any_object(),
        }))),
        "meta": any_object(),
        "usage": any_object(),
    }));
    let openai_example = json!({"input": [QUESTION, "Deep Learning is a branch of machine learning."], "model": "embedder"});
    let probe = || {
        (
            JSON,
            object(json!({"status": {"type": "string"}, "state": {"type": "string"}})),
        )
    };
    let ready = || {
        (
            JSON,
            object(json!({"state": {"type": "string"}, "ready": {"type": "boolean"}})),
        )
    };
    let list = |item: Value| object(json!({"object": {"type": "string"}, "data": array(item)}));
    Some(match (method, path) {
        ("GET", "/health" | "/live" | "/") => get(
            "Liveness: the process answers and the device worker is alive",
            "Probes",
            probe(),
            Errors::None,
        ),
        ("GET", "/ready") => get("Readiness: 200 once the model is loaded and until the drain", "Probes", ready(), Errors::None),
        ("GET", "/ping") => get("SageMaker health check: 200 when ready", "Probes", ready(), Errors::None),
        ("GET", "/metrics") => get(
            "Prometheus metrics (text exposition format)",
            "Probes",
            ("text/plain", json!({"type": "string"})),
            Errors::None,
        ),
        ("GET", "/api-doc/openapi.json") => get("This document", "Docs", (JSON, any_object()), Errors::None),
        ("GET", "/docs") => get("API reference page", "Docs", ("text/html", json!({"type": "string"})), Errors::None),
        ("POST", "/v1/embeddings" | "/embeddings") => Op {
            summary: "OpenAI embeddings",
            tag: "OpenAI",
            request: Some((JSON, schema("EmbeddingsBody"), openai_example)),
            response: (JSON, openai_embeddings()),
            errors: Errors::OpenAi,
        },
        ("GET", "/v1/models") => get(
            "OpenAI model list: the served model",
            "OpenAI",
            (JSON, list(object(json!({"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}})))),
            Errors::OpenAi,
        ),
        ("POST", "/embed") => tei("Pooled embeddings", "TEI", "EmbedBody", embed_example, array(array(number()))),
        ("POST", "/embed_all") => tei(
            "Every token's last hidden state",
            "TEI",
            "InputsBody",
            json!({"inputs": QUESTION}),
            array(array(array(number()))),
        ),
        ("POST", "/embed_sparse") => tei(
            "Sparse (SPLADE) term weights; needs a sparse model",
            "TEI",
            "InputsBody",
            json!({"inputs": QUESTION}),
            array(sparse()),
        ),
        ("POST", "/embed_multi_vector") => tei(
            "bge-m3: ColBERT vectors, and its dense and sparse outputs; needs bge-m3",
            "TEI",
            "MultiBody",
            json!({"inputs": QUESTION, "return_dense": true, "return_sparse": true}),
            array(object(json!({"multi_vector": array(array(number())), "dense": array(number()), "sparse": sparse()}))),
        ),
        ("POST", "/rerank") => tei(
            "Rank texts by relevance to a query; needs a reranker",
            "TEI",
            "RerankBody",
            json!({"query": QUESTION, "texts": ["Deep Learning is a branch of machine learning.", "Cheese is made from milk."], "return_text": true}),
            ranks(),
        ),
        ("POST", "/v1/rerank") => tei("Cohere v1 / Jina rerank; needs a reranker", "Cohere", "CohereBody", cohere_example, cohere_response),
        ("POST", "/v2/rerank") => tei("Cohere v2 rerank; needs a reranker", "Cohere", "CohereBody", cohere_example, cohere_response),
        ("POST", "/v1/embed") => tei(
            "Cohere v1 embed: float or quantized (int8, uint8, binary, ubinary, base64) vectors",
            "Cohere",
            "CohereEmbedBody",
            json!({"texts": [QUESTION], "input_type": "search_query", "embedding_types": ["float", "int8", "ubinary"]}),
            cohere_embed_response(),
        ),
        ("POST", "/v2/embed") => tei(
            "Cohere v2 embed: float or quantized (int8, uint8, binary, ubinary, base64) vectors",
            "Cohere",
            "CohereEmbedBody",
            json!({"texts": [QUESTION, "Deep Learning is a branch of machine learning."], "input_type": "search_document", "embedding_types": ["float", "binary"]}),
            cohere_embed_response(),
        ),
        ("POST", "/predict") => tei(
            "Classify a text or a text pair; needs a classifier (or a reranker)",
            "TEI",
            "PredictBody",
            json!({"inputs": "I like you. I love you."}),
            json!({"oneOf": [label_scores(), array(label_scores())]}),
        ),
        ("POST", "/similarity") => tei(
            "Cosine similarity of a sentence to others",
            "TEI",
            "SimilarityBody",
            json!({"inputs": {"source_sentence": QUESTION, "sentences": ["Deep Learning is a branch of machine learning.", "Cheese is made from milk."]}}),
            array(number()),
        ),
        ("POST", "/vertex") => tei(
            "Vertex AI prediction: each instance is a request of the model's route",
            "Vertex AI",
            "VertexRequest",
            json!({"instances": [{"inputs": QUESTION}, {"inputs": "Deep Learning is a branch of machine learning."}]}),
            object(json!({"predictions": array(json!({}))})),
        ),
        ("POST", "/invocations" | "/") => tei(
            "The model's own route (SageMaker): /embed, /embed_sparse, /rerank or /predict by task; \
             a `{source_sentence, sentences}` body is /similarity on an embedder",
            "TEI",
            "EmbedBody",
            json!({"inputs": QUESTION}),
            json!({}),
        ),
        ("POST", "/tokenize") => tei(
            "Token ids and offsets",
            "TEI",
            "TokenizeBody",
            json!({"inputs": QUESTION}),
            array(array(object(json!({"id": {"type": "integer"}, "text": {"type": "string"}, "special": {"type": "boolean"}, "start": {"type": ["integer", "null"]}, "stop": {"type": ["integer", "null"]}})))),
        ),
        ("POST", "/decode") => tei(
            "Token ids back to text",
            "TEI",
            "DecodeBody",
            json!({"ids": [2, 1124, 3]}),
            array(json!({"type": "string"})),
        ),
        ("GET", "/info") => get("What is served, and the limits in force", "TEI", (JSON, any_object()), Errors::Tei),
        ("GET", "/v1/files") => get("OpenAI Files: list", "Batches", (JSON, list(schema("FileObject"))), Errors::OpenAi),
        ("POST", "/v1/files") => Op {
            summary: "OpenAI Files: upload a batch input (JSONL, one request a line)",
            tag: "Batches",
            request: Some((
                "multipart/form-data",
                object(json!({"purpose": {"type": "string"}, "file": {"type": "string", "format": "binary"}})),
                json!({"purpose": "batch", "file": BATCH_LINE}),
            )),
            response: (JSON, schema("FileObject")),
            errors: Errors::OpenAi,
        },
        ("GET", "/v1/files/{id}") => get("OpenAI Files: one file", "Batches", (JSON, schema("FileObject")), Errors::OpenAi),
        ("DELETE", "/v1/files/{id}") => get(
            "OpenAI Files: delete",
            "Batches",
            (JSON, object(json!({"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}}))),
            Errors::OpenAi,
        ),
        ("GET", "/v1/files/{id}/content") => get(
            "OpenAI Files: the bytes (a batch's output JSONL)",
            "Batches",
            ("application/octet-stream", json!({"type": "string", "format": "binary"})),
            Errors::OpenAi,
        ),
        ("GET", "/v1/batches") => get("OpenAI Batches: list", "Batches", (JSON, list(schema("BatchObject"))), Errors::OpenAi),
        ("POST", "/v1/batches") => Op {
            summary: "OpenAI Batches: create a job from an uploaded file",
            tag: "Batches",
            request: Some((
                JSON,
                schema("CreateBatch"),
                json!({"input_file_id": "file-abc123", "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            )),
            response: (JSON, schema("BatchObject")),
            errors: Errors::OpenAi,
        },
        ("GET", "/v1/batches/{id}") => get("OpenAI Batches: one job", "Batches", (JSON, schema("BatchObject")), Errors::OpenAi),
        ("POST", "/v1/batches/{id}/cancel") => get("OpenAI Batches: cancel", "Batches", (JSON, schema("BatchObject")), Errors::OpenAi),
        _ => return None,
    })
}

fn error_responses(errors: Errors) -> Map<String, Value> {
    let (body, examples): (&str, Vec<(&str, &str, Value)>) = match errors {
        Errors::None => return Map::new(),
        Errors::Tei => (
            "TeiError",
            vec![
                (
                    "400",
                    "Empty input",
                    json!({"error": "`inputs` cannot be empty", "error_type": "Empty"}),
                ),
                (
                    "401",
                    "Missing or wrong API key",
                    json!({"error": "missing or wrong API key: send `Authorization: Bearer <key>`", "error_type": "Unauthorized"}),
                ),
                (
                    "413",
                    "Body over --payload-limit",
                    json!({"error": "the request body is larger than --payload-limit", "error_type": "PayloadTooLarge"}),
                ),
                (
                    "422",
                    "Input not acceptable",
                    json!({"error": "batch size 64 > maximum allowed batch size 32 (--max-client-batch-size)", "error_type": "Validation"}),
                ),
                (
                    "424",
                    "The model cannot serve this route",
                    json!({"error": "Model is not a reranker model", "error_type": "Backend"}),
                ),
                (
                    "429",
                    "Overloaded",
                    json!({"error": "model is overloaded", "error_type": "Overloaded"}),
                ),
                (
                    "503",
                    "Loading or draining",
                    json!({"error": "the model is still loading; retry shortly", "error_type": "Unhealthy"}),
                ),
            ],
        ),
        Errors::OpenAi => (
            "OpenAiError",
            vec![
                (
                    "400",
                    "Bad request",
                    json!({"error": {"message": "`input` cannot be empty", "type": "invalid_request_error", "param": "input", "code": "empty_input"}}),
                ),
                (
                    "401",
                    "Missing or wrong API key",
                    json!({"error": {"message": "missing or wrong API key", "type": "authentication_error", "param": null, "code": "invalid_api_key"}}),
                ),
                (
                    "404",
                    "No such file or batch",
                    json!({"error": {"message": "no file file-abc123", "type": "not_found_error", "param": null, "code": null}}),
                ),
                (
                    "422",
                    "Input not acceptable",
                    json!({"error": {"message": "dimensions must be between 1 and 384, got 0", "type": "invalid_request_error", "param": "dimensions", "code": null}}),
                ),
                (
                    "429",
                    "Overloaded",
                    json!({"error": {"message": "model is overloaded", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}),
                ),
                (
                    "503",
                    "Loading or draining",
                    json!({"error": {"message": "the model is still loading; retry shortly", "type": "server_error", "param": null, "code": "service_unavailable"}}),
                ),
            ],
        ),
    };
    examples
        .into_iter()
        .map(|(status, description, example)| {
            (
                status.to_string(),
                json!({
                    "description": description,
                    "content": {JSON: {"schema": schema(body), "example": example}},
                }),
            )
        })
        .collect()
}

fn operation_json(method: &str, path: &str, access: Access, op: Op) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "Success", "content": {op.response.0: {"schema": op.response.1}}}),
    );
    responses.extend(error_responses(op.errors));
    let mut o = json!({
        "summary": op.summary,
        "operationId": format!("{}{}", method.to_lowercase(), path.replace(['/', '{', '}', '.', '-'], "_")),
        "tags": [op.tag],
        "responses": responses,
    });
    if let Some((content_type, schema, example)) = op.request {
        o["requestBody"] = json!({
            "required": true,
            "content": {content_type: {"schema": schema, "example": example}},
        });
    }
    if path.contains("{id}") {
        o["parameters"] = json!([{
            "name": "id", "in": "path", "required": true,
            "schema": {"type": "string"},
            "example": if path.starts_with("/v1/files") { "file-abc123" } else { "batch_abc123" },
        }]);
    }
    if access == Access::Inference {
        o["security"] = json!([{"bearer": []}, {}]);
    }
    o
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        for method in route.methods {
            let Some(op) = operation(method, route.path) else {
                continue;
            };
            let item = paths
                .entry(route.path.to_string())
                .or_insert_with(|| json!({}));
            item[method.to_lowercase()] = operation_json(method, route.path, route.access, op);
        }
    }
    let mut components = serde_json::to_value(Schemas::openapi().components).unwrap_or_default();
    components["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": "--api-key, when set"},
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "spotinfer",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Embeddings, reranking and classification with OpenAI-, TEI- and Cohere-compatible routes.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_route_is_described() {
        let doc = document();
        for (method, path) in super::super::routes::list() {
            assert!(
                doc["paths"][path][method.to_lowercase()].is_object(),
                "{method} {path} is not in the document"
            );
        }
    }
}
