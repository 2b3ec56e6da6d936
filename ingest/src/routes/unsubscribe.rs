//! One-click unsubscribe from the email channel: the link every email carries, in its body and
//! in its `List-Unsubscribe` header.
//!
//! * `GET /v1/email/unsubscribe/{id}/{token}`: a confirmation page with one button. A GET never
//!   unsubscribes: mail scanners and link previews fetch links nobody clicked.
//! * `POST` to the same URL: unsubscribes. It is what the page's button sends and what a mail
//!   client sends for RFC 8058 one-click (`List-Unsubscribe=One-Click` as the form body, which
//!   is not needed: the URL says everything).
//!
//! No API token: the link is its own credential. `token` is the HMAC-SHA256 of the account id
//! under `privacy.unsubscribe_key` ([`meterline_schemas::contact`]), checked in constant time,
//! so a link unsubscribes only the account it was sent to. Unsubscribing records an
//! `email_unsubscribed` account event, acknowledged once Kafka holds it; the aggregator sets
//! `accounts.email_unsubscribed_at`, and the notifier sends that account no more email.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use meterline_schemas::domain::AccountEventType;
use meterline_schemas::{AccountEvent, AccountId};
use uuid::Uuid;

use super::produce_account_event;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

const BAD_LINK: &str =
    "Not an unsubscribe link: a bad account id, or a token that is not this account's";
const KAFKA_DOWN: &str = "Kafka unavailable; nothing recorded, retry";

/// The account the link names, once its token checks out.
fn check_link(state: &AppState, id: &str, token: &str) -> Result<AccountId, ApiError> {
    let account = AccountId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !state.unsubscribe.verify(account.as_str(), token) {
        return Err(ApiError::Forbidden(
            "token: not a valid unsubscribe link for this account (copy the whole link from the email)"
                .into(),
        ));
    }
    Ok(account)
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"robots\" content=\"noindex\"></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The confirmation page of an email's unsubscribe link: one button that unsubscribes
#[utoipa::path(
    get,
    path = "/v1/email/unsubscribe/{id}/{token}",
    operation_id = "unsubscribePage",
    security(),
    params(
        ("id" = AccountId, Path, description = "The account the email was sent to"),
        ("token" = String, Path, description = "The link's signature (64 hex characters)"),
    ),
    responses(
        (status = 200, description = "The confirmation page", body = String, content_type = "text/html"),
        (status = 400, description = BAD_LINK, body = ErrorBody),
        (status = 403, description = BAD_LINK, body = ErrorBody),
    )
)]
pub async fn confirm_page(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_link(&state, &id, &token)?;
    Ok(page(
        StatusCode::OK,
        "Unsubscribe from these emails?",
        "<p>You will get no more emails about your plan and its limits. Notices in the dashboard \
         stay.</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
         value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
    ))
}

/// Unsubscribes the account from email (RFC 8058 one-click): records an email_unsubscribed account event once Kafka holds it
#[utoipa::path(
    post,
    path = "/v1/email/unsubscribe/{id}/{token}",
    operation_id = "unsubscribe",
    security(),
    params(
        ("id" = AccountId, Path, description = "The account the email was sent to"),
        ("token" = String, Path, description = "The link's signature (64 hex characters)"),
    ),
    responses(
        (status = 200, description = "Unsubscribed", body = String, content_type = "text/html"),
        (status = 400, description = BAD_LINK, body = ErrorBody),
        (status = 403, description = BAD_LINK, body = ErrorBody),
        (status = 503, description = KAFKA_DOWN, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let account = check_link(&state, &id, &token)?;
    let event = AccountEvent::new(
        Uuid::new_v4().to_string(),
        Utc::now(),
        account.clone(),
        AccountEventType::EmailUnsubscribed,
    );
    produce_account_event(&state, &event, "the unsubscribe").await?;
    tracing::info!(account_id = %account, event_id = %event.event_id, "email unsubscribe recorded");
    Ok(page(
        StatusCode::OK,
        "You are unsubscribed",
        "<p>You will get no more emails about your plan and its limits.</p>",
    ))
}
