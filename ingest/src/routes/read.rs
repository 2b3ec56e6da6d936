//! `GET /v1/accounts/{id}/usage` and `POST /v1/quota/check`: the read path's endpoints.
//!
//! Both need a token with the `read` scope; a token scoped to one account reads only that one.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::{DateTime, Utc};
use meterline_schemas::limits::{
    decide, limit_statuses, restricted_view, Decision, LimitStatus, QuotaRequest,
};
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{AccountId, FieldError, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ErrorBody};
use crate::read::{records_for, DashboardNotice, ReadPath};
use crate::routes::openapi::{AuthErrors, BAD_INPUT, UNAVAILABLE};
use crate::AppState;

/// Authenticates a caller with the `read` scope (401 / 403 before any input is looked at).
pub(crate) async fn authenticate_read(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.tokens.authenticate(auth).await?;
    principal.require(Scope::Read)?;
    Ok(principal)
}

/// Authenticates and checks the caller may read `account`.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    account: &AccountId,
) -> Result<Principal, ApiError> {
    let principal = authenticate_read(state, headers).await?;
    may_read(principal, account)
}

/// A token limited to one account reads only that one.
pub(crate) fn may_read(principal: Principal, account: &AccountId) -> Result<Principal, ApiError> {
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Include this session's per-session limits.
    pub session_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateUsage {
    /// A sliding 60-second estimate.
    pub rolling: f64,
    /// `-1`: unlimited.
    pub limit: f64,
}

/// Where an account stands against every limit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageReport {
    pub account_id: String,
    pub plan: Plan,
    pub as_of: DateTime<Utc>,
    pub limits: Vec<LimitStatus>,
    pub requests_per_minute: RateUsage,
    pub month: crate::read::hot_state::MonthDimensions,
}

/// Where an account stands against every limit (scope: read)
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/usage",
    operation_id = "getUsage",
    params(("id" = AccountId, Path, description = "The account"), UsageQuery),
    responses(
        (status = 200, description = "The account's usage", body = UsageReport),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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
        let hot_started = Instant::now();
        let (raw, month) = tokio::try_join!(
            read.hot.usage(account.as_str(), session, now),
            read.hot.month_dimensions(account.as_str(), now),
        )
        .map_err(redis_down)?;
        state
            .metrics
            .hot_state_seconds
            .with_label_values(&["usage"])
            .observe(hot_started.elapsed().as_secs_f64());
        let snapshot = raw.snapshot(&read.quota, tier, now);
        // A suspected account sees the stricter limits its decisions are made against.
        let restricted = restricted_view(&read.review, tier, &profile);
        let (tier, profile) = match &restricted {
            Some((t, p)) => (t, p),
            None => (tier, &*profile),
        };
        let report = UsageReport {
            account_id: account.as_str().to_owned(),
            plan: profile.plan,
            as_of: now,
            limits: limit_statuses(
                &read.quota,
                tier,
                profile,
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

/// `POST /v1/quota/check`'s body, every field optional so a missing one is named. In the
/// OpenAPI document it is `QuotaCheck`, with the rules `validate` applies.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = QuotaCheck, description = "A request the gateway is about to serve")]
pub struct QuotaCheckInput {
    #[schema(value_type = AccountId)]
    pub account_id: Option<String>,
    /// The model the gateway is about to call; at least one character that is not white space
    /// as `str::trim` counts it (Unicode's White_Space). The pattern names those characters:
    /// JSON Schema's `\S` would let U+0085 through, which Schemathesis found.
    #[schema(
        value_type = String,
        min_length = 1,
        max_length = 128,
        pattern = r"[^\x09-\x0D\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub model: Option<String>,
    /// Absent or null: 0.
    #[serde(default, deserialize_with = "token_count")]
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    pub estimated_input_tokens: Option<u64>,
    /// Absent or null: 0.
    #[serde(default, deserialize_with = "token_count")]
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    pub estimated_output_tokens: Option<u64>,
    #[schema(max_length = 256)]
    pub session_id: Option<String>,
}

/// A token estimate: a whole number, which JSON may also spell `1200.0`.
fn token_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        // Exactly representable whole numbers only (below 2^53).
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => {
            Ok(Some(f as u64))
        }
        _ => Err(D::Error::custom(format!(
            "{n} is not a whole number of tokens"
        ))),
    }
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
    // Characters, not bytes, as the OpenAPI document's maxLength counts them.
    if model.chars().count() > 128 {
        return Err(FieldError::new("model", "longer than 128 characters"));
    }
    let session_id = input.session_id.filter(|s| !s.is_empty());
    if session_id.as_ref().is_some_and(|s| s.chars().count() > 256) {
        return Err(FieldError::new("session_id", "longer than 256 characters"));
    }
    for (field, v) in [
        ("estimated_input_tokens", input.estimated_input_tokens),
        ("estimated_output_tokens", input.estimated_output_tokens),
    ] {
        if v.is_some_and(|t| t > meterline_schemas::usage::MAX_TOKENS) {
            return Err(FieldError::new(
                field,
                format!("more than {}", meterline_schemas::usage::MAX_TOKENS),
            ));
        }
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

/// The answer to a quota check: the decision, for the account asked about, with the account's
/// unseen dashboard notice when it has one.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaDecision {
    pub account_id: String,
    #[serde(flatten)]
    pub decision: Decision,
    /// The account's most recent dashboard notice that is current (not clicked, not expired)
    /// and not yet shown; absent when there is none. The check does not mark it shown: the
    /// gateway shows it, then calls `POST /v1/accounts/{id}/notices/{notice_id}/shown`, and
    /// later decisions leave it out. (`GET /v1/accounts/{id}/notice` keeps answering a shown
    /// notice until it is clicked or expires.)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub dashboard_notice: Option<DashboardNotice>,
}

/// Decide what to do with a request (scope: read)
///
/// `limit_reached` is a 200 with a structured body, never a bare 429.
#[utoipa::path(
    post,
    path = "/v1/quota/check",
    operation_id = "checkQuota",
    request_body = QuotaCheckInput,
    responses(
        (status = 200, description = "The decision; `limit_reached` is a 200 with a structured body, never a bare 429", body = QuotaDecision),
        (status = 400, description = BAD_INPUT, body = ErrorBody),
        AuthErrors,
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn quota_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<QuotaDecision>, ApiError> {
    let started = Instant::now();
    // Who is asking comes first: no token is a 401 whatever the body holds.
    let principal = authenticate_read(&state, &headers).await?;
    let body = std::str::from_utf8(&body)
        .map_err(|e| ApiError::BadRequest(format!("body: not UTF-8 ({e})")))?;
    let input: QuotaCheckInput = from_json_naming_field(body).map_err(field)?;
    let (account, request) = validate(input).map_err(field)?;
    may_read(principal, &account)?;
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
        state
            .metrics
            .hot_state_seconds
            .with_label_values(&["quota_check"])
            .observe((read_hot - profiled).as_secs_f64());
        if read_hot > SLOW_CHECK {
            tracing::warn!(
                auth_ms = authorized.as_secs_f64() * 1e3,
                profile_ms = (profiled - authorized).as_secs_f64() * 1e3,
                redis_ms = (read_hot - profiled).as_secs_f64() * 1e3,
                "slow quota check"
            );
        }
        let snapshot = raw.snapshot(&read.quota, tier, now);
        let mut decision = decide(
            &read.quota,
            &read.review,
            tier,
            &profile,
            &snapshot,
            &request,
            now,
        );
        read.friction.annotate(&mut decision, now);
        // From memory (`read::notices`), kept fresh by PostgreSQL notifications.
        let dashboard_notice = read
            .notices
            .current(account.as_str(), now)
            .map(|n| (*n).clone());
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
        Ok(Json(QuotaDecision {
            account_id: account.as_str().to_owned(),
            decision,
            dashboard_notice,
        }))
    }
    .instrument(span)
    .await
}

/// The scorer's latest scores for an account, each with its inputs and reasons (scope: read)
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/scores",
    operation_id = "getScores",
    params(("id" = AccountId, Path, description = "The account")),
    responses(
        (status = 200, description = "Scores", body = Scores),
        (status = 400, description = "Bad account id", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "Not scored yet", body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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

/// `GET /v1/accounts/{id}/scores`' body, for the OpenAPI document: the scorer's `Scores` as it
/// stored them (the scorer crate owns that type; this one only describes it).
#[derive(Serialize, ToSchema)]
#[schema(
    description = "The scorer's latest scores for an account, each with its inputs and reasons"
)]
pub struct Scores {
    pub account_id: String,
    pub scored_at: DateTime<Utc>,
    pub plan: String,
    pub deal_readiness: Score,
    pub pql: Score,
    pub abuse: Score,
    pub abuse_suspected: bool,
    #[schema(value_type = Option<Object>)]
    pub power_user: Option<Value>,
    pub limits: Vec<LimitProximity>,
    #[schema(value_type = Vec<Object>, required = false)]
    pub plugin_triggers: Vec<Value>,
    #[schema(required = false)]
    pub plugins_desired: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub rate_limit_sustained: Option<Value>,
    #[schema(value_type = Vec<Object>, required = false)]
    pub shared_keys: Vec<Value>,
    #[schema(value_type = Vec<Object>, required = false)]
    pub multi_accounts: Vec<Value>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// What the rules deliberately did not count or raise, and why (a public email domain, a
    /// signal outside its plan scope, a key used by a fleet).
    #[schema(required = false)]
    pub notes: Vec<String>,
}

/// A 0-100 score with the reasons it adds up from.
#[derive(Serialize, ToSchema)]
pub struct Score {
    #[schema(minimum = 0, maximum = 100)]
    pub value: u32,
    pub reasons: Vec<ScoreReason>,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreReason {
    pub rule: String,
    pub points: u32,
    pub detail: String,
}

/// A limit, with how the account approaches it.
#[derive(Serialize, ToSchema)]
pub struct LimitProximity {
    #[serde(flatten)]
    pub status: LimitStatus,
    #[schema(required = false)]
    pub shape: Option<ApproachShape>,
    #[schema(required = false)]
    pub hours_to_limit: Option<f64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApproachShape {
    Trajectory,
    Collision,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<QuotaCheckInput, FieldError> {
        from_json_naming_field(body)
    }

    #[test]
    fn token_estimates_are_whole_numbers_however_json_spells_them() {
        let i = parse(r#"{"account_id":"a","model":"m","estimated_input_tokens":1200.0,"estimated_output_tokens":null}"#).unwrap();
        assert_eq!(i.estimated_input_tokens, Some(1200));
        assert_eq!(i.estimated_output_tokens, None);
        for bad in ["1.5", "-3", "1e300"] {
            let err = parse(&format!(
                r#"{{"account_id":"a","model":"m","estimated_input_tokens":{bad}}}"#
            ))
            .unwrap_err();
            assert_eq!(err.field, "estimated_input_tokens", "{bad}: {err}");
        }
    }

    /// The OpenAPI document's `model` pattern accepts exactly the models `validate` accepts.
    /// Rust's regex reads `\s` as `trim` does, so this cannot catch a class other engines read
    /// otherwise; `tests/openapi.rs` bars those from every pattern.
    #[test]
    fn the_model_pattern_accepts_what_the_server_accepts() {
        let (_, doc) = crate::app::api(true);
        let doc = serde_json::to_value(&doc).unwrap();
        let pattern = doc["components"]["schemas"]["QuotaCheck"]["properties"]["model"]["pattern"]
            .as_str()
            .expect("a pattern");
        let pattern = regex::Regex::new(pattern).unwrap();
        let server = |model: &str| {
            let body = serde_json::json!({"account_id": "a", "model": model}).to_string();
            validate(parse(&body).unwrap()).is_ok()
        };
        let mut models: Vec<String> = (0..=0x3000_u32)
            .chain([0xFEFF, 0x1_F600])
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        models.extend(["gpt-4o", " padded ", "\u{85}x", "", " \t\n"].map(String::from));
        for model in &models {
            assert_eq!(pattern.is_match(model), server(model), "model {model:?}");
        }
    }

    #[test]
    fn lengths_are_counted_in_characters_and_token_estimates_are_bounded() {
        let model = "é".repeat(128);
        let ok = parse(&format!(r#"{{"account_id":"a","model":"{model}"}}"#)).unwrap();
        assert!(validate(ok).is_ok());
        let long = parse(&format!(r#"{{"account_id":"a","model":"{model}é"}}"#)).unwrap();
        assert_eq!(validate(long).unwrap_err().field, "model");
        let huge =
            parse(r#"{"account_id":"a","model":"m","estimated_output_tokens":1099511627777}"#)
                .unwrap();
        assert_eq!(validate(huge).unwrap_err().field, "estimated_output_tokens");
    }
}
