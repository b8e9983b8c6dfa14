//! `/api-doc/openapi.json` and `/docs`, a reference page rendered in the browser from that
//! document. The page is one HTML file compiled into the binary: nothing is fetched from
//! anywhere but this server, at build time or at run time.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

const PAGE: &str = include_str!("assets/docs.html");

/// The OpenAPI document, rendered once by the router from the route table (`openapi.rs`) and
/// handed to the handler, so this module needs nothing of the table.
#[derive(Clone)]
pub struct ApiDocument(pub Arc<str>);

pub async fn openapi_json(Extension(doc): Extension<ApiDocument>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
}

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Only this server's own script and document, whatever the page is embedded in.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}
