//! `GET /openapi.json`: the OpenAPI 3.1 document for every public endpoint. It is a file
//! (`ingest/openapi.json`) so that it reads as a reference; a test checks it against
//! [`crate::app::PUBLIC_ROUTES`] and against the live router.

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
