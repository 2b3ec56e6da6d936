//! `POST /v1/events` and `POST /v1/account-events`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{
    avro, usage_codec, AccountEventInput, FieldError, IpHasher, SchemaError, UsageEventInput,
};
use serde::{de::DeserializeOwned, Serialize};
use utoipa::ToSchema;

use crate::app::TopicSchema;
use crate::auth::Scope;
use crate::body::{self, Item};
use crate::error::{ApiError, ErrorBody};
use crate::producer::OutgoingRecord;
use crate::routes::openapi::{AuthErrors, BAD_INPUT, UNAVAILABLE};
use crate::AppState;

/// An event of the batch that was not accepted, by its index in the batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rejection {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[schema(example = "occurred_at: more than 5 minutes in the future")]
    pub error: String,
}

/// The answer to a batch: how many events Kafka holds, and which were refused and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

/// One kind of event the endpoint takes: how to validate it and what its Kafka key is.
trait EventKind {
    const NAME: &'static str;
    type Input: DeserializeOwned;
    type Event: Serialize;
    fn validate(
        input: Self::Input,
        now: DateTime<Utc>,
        hasher: &IpHasher,
    ) -> Result<Self::Event, FieldError>;
    fn key(event: &Self::Event) -> &str;
    fn topic(state: &AppState) -> &TopicSchema;
    fn encode(topic: &TopicSchema, event: &Self::Event) -> Result<Vec<u8>, SchemaError> {
        avro::encode(topic.schema_id, &topic.schema, event)
    }
}

struct Usage;
impl EventKind for Usage {
    const NAME: &'static str = "usage";
    type Input = UsageEventInput;
    type Event = meterline_schemas::UsageEvent;
    fn validate(
        i: Self::Input,
        now: DateTime<Utc>,
        h: &IpHasher,
    ) -> Result<Self::Event, FieldError> {
        i.validate(now, h)
    }
    fn key(e: &Self::Event) -> &str {
        e.account_id.as_str()
    }
    fn topic(state: &AppState) -> &TopicSchema {
        &state.usage
    }
    /// Every usage event goes through here: the hand-written codec writes the bytes
    /// apache-avro would, several times faster. The topic's schema is the bundled v1 schema
    /// (registered at start-up), which is what the codec implements.
    fn encode(topic: &TopicSchema, event: &Self::Event) -> Result<Vec<u8>, SchemaError> {
        Ok(usage_codec::encode(topic.schema_id, event))
    }
}

struct Account;
impl EventKind for Account {
    const NAME: &'static str = "account";
    type Input = AccountEventInput;
    type Event = meterline_schemas::AccountEvent;
    fn validate(
        i: Self::Input,
        now: DateTime<Utc>,
        h: &IpHasher,
    ) -> Result<Self::Event, FieldError> {
        i.validate(now, h)
    }
    fn key(e: &Self::Event) -> &str {
        e.account_id.as_str()
    }
    fn topic(state: &AppState) -> &TopicSchema {
        &state.account
    }
}

/// Post usage events (scope: ingest)
///
/// A JSON array of events, or NDJSON (one event object per line). Each event is validated on
/// its own: the valid ones are accepted, the others listed by index with the field and the
/// reason.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "postUsageEvents",
    request_body(
        description = "A JSON array of events, or NDJSON: one event object per line",
        content(
            (Vec<UsageEventInput> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = ACCEPTED, body = Accepted),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = UNSUPPORTED, body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn post_usage_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle::<Usage>(&state, &headers, body, "/v1/events").await
}

/// Post account lifecycle events (scope: ingest)
///
/// A JSON array of events, or NDJSON (one event object per line), validated one by one like
/// usage events.
#[utoipa::path(
    post,
    path = "/v1/account-events",
    operation_id = "postAccountEvents",
    request_body(
        description = "A JSON array of events, or NDJSON: one event object per line",
        content(
            (Vec<AccountEventInput> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = ACCEPTED, body = Accepted),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = UNSUPPORTED, body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn post_account_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle::<Account>(&state, &headers, body, "/v1/account-events").await
}

const ACCEPTED: &str = "Kafka holds every accepted event; invalid ones are listed by index";
const TOO_LARGE: &str = "Body or event count over the limit";
const UNSUPPORTED: &str = "Content type is neither JSON nor NDJSON";
const RATE_LIMITED: &str = "The token is over its event rate limit (ingest.rate_limit_events_per_sec); nothing from the request was accepted. Retry after the Retry-After seconds.";

async fn handle<K: EventKind>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: &'static str,
) -> Response {
    let started = Instant::now();
    let response = match ingest::<K>(state, headers, body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    };
    let m = &state.metrics;
    m.requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    m.request_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `429` for a token over its event budget; `what` says how far the request got ("was read",
/// "was accepted").
fn rate_limited(state: &AppState, token: &str, wait: std::time::Duration, what: &str) -> ApiError {
    ApiError::RateLimited {
        reason: format!(
            "token {token:?} is over its rate limit of {} events/s; nothing from this request {what}, retry after {:.1} s",
            state.config.rate_limit_events_per_sec,
            wait.as_secs_f64()
        ),
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

#[tracing::instrument(name = "ingest_batch", skip_all, fields(kind = K::NAME, gateway, events, accepted))]
async fn ingest<K: EventKind>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.tokens.authenticate(auth).await?;
    principal.require(Scope::Ingest)?;
    tracing::Span::current().record("gateway", principal.name.as_str());
    if let Some(wait) = state
        .rate_limit
        .exhausted(&principal.name, std::time::Instant::now())
    {
        return Err(rate_limited(state, &principal.name, wait, "was read"));
    }

    let framing = body::framing(headers)?;
    // Reserve the body's bytes (as declared, or the most a body may be) before reading it:
    // many large bodies at once would otherwise take as much memory as clients care to send.
    let max = state.config.max_body_bytes as u64;
    let declared = body::declared_length(headers).unwrap_or(max).min(max);
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let _body_permit = state
        .body_budget
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| ApiError::Unavailable {
            reason: format!(
                "request bodies in flight already hold ingest.max_inflight_body_bytes ({} bytes); nothing from this request was read, retry it",
                state.config.max_inflight_body_bytes
            ),
            retry_after_secs: state.config.retry_after_secs,
        })?;
    let bytes = body::read_limited(
        headers,
        body,
        state.config.max_body_bytes,
        std::time::Duration::from_millis(state.config.body_read_timeout_ms),
    )
    .await?;
    let items = body::split(framing, &bytes, state.config.max_events)?;
    tracing::Span::current().record("events", items.len());
    if let Err(wait) = state.rate_limit.take(
        &principal.name,
        items.len() as u64,
        std::time::Instant::now(),
    ) {
        return Err(rate_limited(state, &principal.name, wait, "was accepted"));
    }

    let now = Utc::now();
    let topic = K::topic(state);
    let mut records = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let json = match item {
            Item::Json(j) => *j,
            Item::Unparseable(reason) => {
                rejected.push(Rejection {
                    index,
                    event_id: None,
                    error: reason.clone(),
                });
                continue;
            }
        };
        let outcome = from_json_naming_field::<K::Input>(json)
            .and_then(|input| K::validate(input, now, &state.ip_hasher));
        match outcome {
            Ok(event) => {
                let payload = K::encode(topic, &event)
                    .map_err(|e| ApiError::Internal(format!("avro encoding: {e}")))?;
                records.push(OutgoingRecord {
                    key: K::key(&event).to_owned(),
                    payload,
                });
            }
            Err(e) => rejected.push(Rejection {
                index,
                event_id: body::event_id_of(json),
                error: e.to_string(),
            }),
        }
    }

    let m = &state.metrics;
    m.events
        .with_label_values(&[K::NAME, "rejected"])
        .inc_by(rejected.len() as u64);
    if !records.is_empty() {
        if let Err(e) = state.producer.produce_all(&topic.topic, &records).await {
            m.events
                .with_label_values(&[K::NAME, "unavailable"])
                .inc_by(records.len() as u64);
            tracing::warn!(error = %e, "kafka did not take the batch; answering 503");
            return Err(ApiError::Unavailable {
                reason: format!("kafka: {e}; nothing from this request was acknowledged, retry it"),
                retry_after_secs: state.config.retry_after_secs,
            });
        }
    }
    m.events
        .with_label_values(&[K::NAME, "accepted"])
        .inc_by(records.len() as u64);
    tracing::Span::current().record("accepted", records.len());
    Ok(Accepted {
        accepted: records.len(),
        rejected,
    })
}
