//! `GET /v1/accounts/{id}/usage` and `POST /v1/quota/check`: the read path's endpoints.
//!
//! Both need a token with the `read` scope; a token scoped to one account reads only that one.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::{DateTime, Utc};
use meterline_schemas::limits::{decide, limit_statuses, LimitStatus, QuotaRequest};
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{AccountId, FieldError, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::read::{records_for, ReadPath};
use crate::AppState;

/// Authenticates and checks the caller may read `account`.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    account: &AccountId,
) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.tokens.authenticate(auth).await?;
    principal.require(Scope::Read)?;
    if let Some(own) = &principal.account_id {
        if own != account.as_str() {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may read only account {own:?}",
                principal.name
            )));
        }
    }
    Ok(principal)
}

pub(crate) fn read_path(state: &AppState) -> Result<&ReadPath, ApiError> {
    state
        .read
        .as_ref()
        .ok_or_else(|| ApiError::Internal("read path not configured".into()))
}

pub(crate) fn field(e: FieldError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn redis_down(e: redis::RedisError) -> ApiError {
    tracing::warn!(error = %e, "hot state unavailable");
    ApiError::Unavailable {
        reason: "hot state (Redis) unavailable; retry shortly".into(),
        retry_after_secs: 1,
    }
}

pub(crate) fn postgres_down(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "account directory unavailable");
    ApiError::Unavailable {
        reason: "account directory (PostgreSQL) unavailable; retry shortly".into(),
        retry_after_secs: 1,
    }
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    pub session_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RateUsage {
    /// A sliding 60-second estimate.
    pub rolling: f64,
    /// `-1`: unlimited.
    pub limit: f64,
}

#[derive(Debug, Serialize)]
pub struct UsageReport {
    pub account_id: String,
    pub plan: Plan,
    pub as_of: DateTime<Utc>,
    pub limits: Vec<LimitStatus>,
    pub requests_per_minute: RateUsage,
    pub month: crate::read::hot_state::MonthDimensions,
}

pub async fn usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<UsageQuery>,
    headers: HeaderMap,
) -> Result<Json<UsageReport>, ApiError> {
    let started = Instant::now();
    let account = AccountId::parse(&id).map_err(field)?;
    authorize(&state, &headers, &account).await?;
    let read = read_path(&state)?;
    let span = tracing::debug_span!("usage", account_id = %account.as_str());
    // Instrumented, not entered: an entered span would stay current on this thread across
    // the awaits and tag other requests' events with this account.
    async {
        let now = Utc::now();
        let profile = read
            .directory
            .profile(&account)
            .await
            .map_err(postgres_down)?;
        let tier = read.tiers.get(profile.plan);
        let session = q.session_id.as_deref().filter(|s| !s.is_empty());
        let (raw, month) = tokio::try_join!(
            read.hot.usage(account.as_str(), session, now),
            read.hot.month_dimensions(account.as_str(), now),
        )
        .map_err(redis_down)?;
        let snapshot = raw.snapshot(&read.quota, tier, now);
        let report = UsageReport {
            account_id: account.as_str().to_owned(),
            plan: profile.plan,
            as_of: now,
            limits: limit_statuses(
                &read.quota,
                tier,
                &profile,
                &snapshot,
                session.is_some(),
                now,
            ),
            requests_per_minute: RateUsage {
                rolling: (snapshot.rolling_rpm() * 1e6).round() / 1e6,
                limit: profile.requests_per_minute(tier),
            },
            month,
        };
        state
            .metrics
            .request_seconds
            .with_label_values(&["usage"])
            .observe(started.elapsed().as_secs_f64());
        Ok(Json(report))
    }
    .instrument(span)
    .await
}

/// `POST /v1/quota/check`'s body, every field optional so a missing one is named.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaCheckInput {
    pub account_id: Option<String>,
    pub model: Option<String>,
    pub estimated_input_tokens: Option<u64>,
    pub estimated_output_tokens: Option<u64>,
    pub session_id: Option<String>,
}

fn validate(input: QuotaCheckInput) -> Result<(AccountId, QuotaRequest), FieldError> {
    let account = AccountId::parse(
        input
            .account_id
            .as_deref()
            .ok_or_else(|| FieldError::new("account_id", "required"))?,
    )?;
    let model = input
        .model
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| FieldError::new("model", "required"))?;
    if model.len() > 128 {
        return Err(FieldError::new("model", "longer than 128 characters"));
    }
    let session_id = input.session_id.filter(|s| !s.is_empty());
    if session_id.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(FieldError::new("session_id", "longer than 256 characters"));
    }
    Ok((
        account,
        QuotaRequest {
            model,
            estimated_input_tokens: input.estimated_input_tokens.unwrap_or(0),
            estimated_output_tokens: input.estimated_output_tokens.unwrap_or(0),
            session_id,
        },
    ))
}

/// A check slower than this is logged with where its time went.
const SLOW_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

pub async fn quota_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let input: QuotaCheckInput = from_json_naming_field(&body).map_err(field)?;
    let (account, request) = validate(input).map_err(field)?;
    authorize(&state, &headers, &account).await?;
    let authorized = started.elapsed();
    let read = read_path(&state)?;
    let span = tracing::debug_span!("quota_check", account_id = %account.as_str());
    // Instrumented, not entered: an entered span would stay current on this thread across
    // the awaits and tag other requests' events with this account.
    async {
        let now = Utc::now();
        let profile = read
            .directory
            .profile(&account)
            .await
            .map_err(postgres_down)?;
        let profiled = started.elapsed();
        let tier = read.tiers.get(profile.plan);
        let raw = read
            .hot
            .usage(account.as_str(), request.session_id.as_deref(), now)
            .await
            .map_err(redis_down)?;
        let read_hot = started.elapsed();
        if read_hot > SLOW_CHECK {
            tracing::warn!(
                auth_ms = authorized.as_secs_f64() * 1e3,
                profile_ms = (profiled - authorized).as_secs_f64() * 1e3,
                redis_ms = (read_hot - profiled).as_secs_f64() * 1e3,
                "slow quota check"
            );
        }
        let snapshot = raw.snapshot(&read.quota, tier, now);
        let decision = decide(&read.quota, tier, &profile, &snapshot, &request, now);
        for rec in records_for(
            account.as_str(),
            &request.model,
            request.session_id.as_deref(),
            &decision,
            now,
        ) {
            read.recorder.record(rec, now.timestamp());
        }
        let kind = serde_json::to_value(decision.decision).unwrap_or_default();
        state
            .metrics
            .decisions
            .with_label_values(&[kind.as_str().unwrap_or("unknown")])
            .inc();
        state
            .metrics
            .request_seconds
            .with_label_values(&["quota_check"])
            .observe(started.elapsed().as_secs_f64());
        let mut body = serde_json::to_value(&decision)
            .map_err(|e| ApiError::Internal(format!("encoding decision: {e}")))?;
        body["account_id"] = Value::from(account.as_str());
        Ok(Json(body))
    }
    .instrument(span)
    .await
}

/// `GET /v1/accounts/{id}/scores`: the scorer's latest scores, each with its inputs and reasons.
pub async fn scores(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let account = AccountId::parse(&id).map_err(field)?;
    authorize(&state, &headers, &account).await?;
    let read = read_path(&state)?;
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT scores FROM account_scores WHERE account_id = $1")
            .bind(account.as_str())
            .fetch_optional(read.directory.pool())
            .await
            .map_err(postgres_down)?;
    row.map(|(v,)| Json(v)).ok_or_else(|| {
        ApiError::NotFound(format!(
            "account_id: {:?} has not been scored yet",
            account.as_str()
        ))
    })
}
