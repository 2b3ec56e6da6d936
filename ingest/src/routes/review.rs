//! The review queue over HTTP, for trust-and-safety tools (the same as `meterline review`):
//!
//! * `GET /v1/review[?state=…&limit=…]`: accounts in review with score, reasons, since when
//!   and state;
//! * `GET /v1/review/{id}`: one account's review with its evidence (the abuse score's reasons
//!   and inputs) and its review history;
//! * `POST /v1/review/{id}/confirm` and `…/clear` with `{"actor", "reason"}` (both required):
//!   record the decision as an account event, acknowledged once Kafka holds it (`202`); the
//!   read path follows within seconds.
//!
//! All need a token with the `admin` scope (`meterline tokens add NAME --scope admin`); a token
//! limited to one account sees and decides only that account. See [`crate::read::review`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use meterline_schemas::review::ReviewState;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{AccountId, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::read::{field, may_read, postgres_down, read_path};
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::read::review::{self, ReviewDetail, ReviewEntry, ReviewError, Verdict};
use crate::routes::openapi::{AuthErrors, BAD_INPUT, UNAVAILABLE};
use crate::AppState;

async fn authenticate_admin(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.tokens.authenticate(auth).await?;
    principal.require(Scope::Admin)?;
    Ok(principal)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only accounts in this state: suspected, auto_denied, confirmed or cleared.
    #[param(value_type = Option<ReviewState>)]
    pub state: Option<String>,
    /// At most this many (default 100, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Accounts in review, most recent first (scope: admin)
#[utoipa::path(
    get,
    path = "/v1/review",
    operation_id = "listReview",
    params(ListQuery),
    responses(
        (status = 200, description = "Accounts in review", body = Vec<ReviewEntry>),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Vec<ReviewEntry>>, ApiError> {
    let principal = authenticate_admin(&state, &headers).await?;
    // A query string that does not parse is bad input like any other: a JSON error.
    let Query(q) = q.map_err(|e| field(FieldError::new("query", e.body_text())))?;
    let filter = q
        .state
        .as_deref()
        .map(|s| {
            ReviewState::parse(s).ok_or_else(|| {
                field(FieldError::new(
                    "state",
                    format!("{s:?} is not one of suspected, auto_denied, confirmed, cleared"),
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(field(FieldError::new(
            "limit",
            format!("{limit} is not between 1 and 1000"),
        )));
    }
    let pool = read_path(&state)?.directory.pool();
    let rows = review::list(pool, filter, principal.account_id.as_deref(), limit)
        .await
        .map_err(postgres_down)?;
    Ok(Json(rows))
}

/// One account's review: state, evidence (abuse reasons and inputs) and history (scope: admin)
#[utoipa::path(
    get,
    path = "/v1/review/{id}",
    operation_id = "showReview",
    params(("id" = AccountId, Path, description = "The account")),
    responses(
        (status = 200, description = "The account's review", body = ReviewDetail),
        (status = 400, description = "Bad account id", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "Unknown account", body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ReviewDetail>, ApiError> {
    let account = AccountId::parse(&id).map_err(field)?;
    may_read(authenticate_admin(&state, &headers).await?, &account)?;
    let pool = read_path(&state)?.directory.pool();
    review::show(pool, &account)
        .await
        .map_err(postgres_down)?
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "account_id: {:?} is unknown and has not been scored",
                account.as_str()
            ))
        })
}

/// A person's decision: who and why, both required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReviewDecision)]
pub struct DecisionInput {
    /// Who decides (an email, a handle); 1 to 128 characters, no control characters, not
    /// only spaces (it is trimmed).
    #[schema(value_type = String, min_length = 1, max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$")]
    pub actor: Option<String>,
    /// Why; 1 to 2,000 characters, no control characters but line breaks and tabs, not only
    /// spaces (it is trimmed).
    #[schema(value_type = String, min_length = 1, max_length = 2000, pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$")]
    pub reason: Option<String>,
}

/// The account event that records a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionRecorded {
    pub event_id: Uuid,
    /// review_confirmed or review_cleared.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = AccountId)]
    pub account_id: String,
    pub actor: String,
    pub reason: String,
    /// The abuse score at the decision (a clearance's baseline).
    #[schema(required)]
    pub abuse_score: Option<i64>,
}

const KAFKA_DOWN: &str = "Kafka unavailable; nothing recorded, retry";

/// Confirms abuse: quota checks answer deny within seconds (scope: admin)
#[utoipa::path(
    post,
    path = "/v1/review/{id}/confirm",
    operation_id = "confirmReview",
    params(("id" = AccountId, Path, description = "The account")),
    request_body = DecisionInput,
    responses(
        (status = 202, description = "Recorded (Kafka holds the decision)", body = DecisionRecorded),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 503, description = KAFKA_DOWN, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<DecisionRecorded>), ApiError> {
    record(&state, &id, &headers, &body, Verdict::Confirm).await
}

/// Clears an account in review (scope: admin)
///
/// Normal limits again; the scorer does not flag it again in the same episode unless its
/// abuse score rises by `review.rescore_margin`.
#[utoipa::path(
    post,
    path = "/v1/review/{id}/clear",
    operation_id = "clearReview",
    params(("id" = AccountId, Path, description = "The account")),
    request_body = DecisionInput,
    responses(
        (status = 202, description = "Recorded (Kafka holds the decision)", body = DecisionRecorded),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 404, description = "The account is not in review", body = ErrorBody),
        (status = 503, description = KAFKA_DOWN, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn clear(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<DecisionRecorded>), ApiError> {
    record(&state, &id, &headers, &body, Verdict::Clear).await
}

async fn record(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
    verdict: Verdict,
) -> Result<(StatusCode, Json<DecisionRecorded>), ApiError> {
    let principal = authenticate_admin(state, headers).await?;
    let account = AccountId::parse(id).map_err(field)?;
    may_read(principal.clone(), &account)?;
    let body = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("body: not UTF-8 ({e})")))?;
    let input: DecisionInput = from_json_naming_field(body).map_err(field)?;
    let actor = input
        .actor
        .ok_or_else(|| field(FieldError::required("actor")))?;
    let reason = input
        .reason
        .ok_or_else(|| field(FieldError::required("reason")))?;
    let pool = read_path(state)?.directory.pool();
    let event = review::decide(
        pool,
        &state.producer,
        &state.account,
        &account,
        verdict,
        &actor,
        &reason,
    )
    .await
    .map_err(|e| {
        let message = e.to_string();
        match e {
            ReviewError::Field(f) => field(f),
            ReviewError::NotInReview(_) => ApiError::NotFound(message),
            ReviewError::Postgres(e) => postgres_down(e),
            ReviewError::Kafka(_) => ApiError::Unavailable {
                reason: message,
                retry_after_secs: state.config.retry_after_secs,
            },
            ReviewError::Encode(_) => ApiError::Internal(message),
        }
    })?;
    tracing::info!(account_id = %account, token = %principal.name, kind = event.kind.as_str(), "review decision via HTTP");
    Ok((
        StatusCode::ACCEPTED,
        Json(DecisionRecorded {
            event_id: Uuid::parse_str(&event.event_id).unwrap_or_default(),
            kind: event.kind.as_str().to_owned(),
            account_id: account.as_str().to_owned(),
            actor: event.actor.unwrap_or_default(),
            reason: event.reason.unwrap_or_default(),
            abuse_score: event.abuse_score,
        }),
    ))
}
