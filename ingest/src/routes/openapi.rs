//! `GET /openapi.json`: the OpenAPI 3.1 document for every endpoint the router serves. It is
//! generated (utoipa) from the handlers' `#[utoipa::path]` annotations and the types they take
//! and answer with, by the same list of routes that builds the router ([`crate::app::api`]), so
//! a route cannot be served without being documented or documented without being served.
//!
//! This module also holds what the operations share: the document's header (title, security
//! scheme), the descriptions of the common error answers and the 401/403 pair.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::AppState;

/// The document's header; the paths and their schemas are added route by route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meterline",
        description = "Usage metering for an AI gateway's free tier: event ingest, and the read path gateways and account holders use to see where an account stands against its limits."
    ),
    servers((url = "http://127.0.0.1:8080")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The `bearer` security scheme every operation needs unless it says otherwise.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`meterline gateways add NAME` (ingest) or `meterline tokens add NAME --scope read [--account ID]`",
                    ))
                    .build(),
            ),
        );
    }
}

pub(crate) const BAD_INPUT: &str = "Bad input; `error` names the field and the reason";
pub(crate) const BAD_IDS: &str = "Bad account id or notice id";
pub(crate) const UNAVAILABLE: &str =
    "A backing service is unavailable; retry after `Retry-After` seconds";

/// 401 and 403, which every operation behind a token can answer.
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// Missing, unknown or revoked token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the scope, or is scoped to another account
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// This document
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    security(),
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    // Rendered once per shape of the router: with and without the read path.
    static DOCUMENTS: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let read = state.read.is_some();
    let text = DOCUMENTS[usize::from(read)].get_or_init(|| {
        crate::app::api(read)
            .1
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], text.as_str())
}
