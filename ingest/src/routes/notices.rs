//! Dashboard notices (written by the notifier into `dashboard_notices`):
//!
//! * `GET /v1/accounts/{id}/notice`: the account's current notice, or `null`. A notice is
//!   current until it is clicked or its cooldown period ends.
//! * `POST /v1/accounts/{id}/notices/{notice_id}/shown` and `…/clicked`: record a
//!   `notice_shown` / `notice_clicked` account event (acknowledged once Kafka holds it, like any
//!   event) so the growth team can measure conversion, and mark the notice.
//!
//! All need a token with the `read` scope, the one the dashboard holds.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use meterline_schemas::domain::AccountEventType;
use meterline_schemas::{avro, AccountEvent, AccountId, FieldError};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::read::{authorize, field, postgres_down, read_path};
use crate::error::ApiError;
use crate::producer::OutgoingRecord;
use crate::AppState;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Notice {
    pub notice_id: Uuid,
    pub kind: String,
    pub message: String,
    pub upgrade_url: String,
    /// The plan that lifts the limit.
    pub plan: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub shown_at: Option<DateTime<Utc>>,
}

pub async fn current(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Option<Notice>>, ApiError> {
    let account = AccountId::parse(&id).map_err(field)?;
    authorize(&state, &headers, &account).await?;
    let pool = read_path(&state)?.directory.pool();
    let notice: Option<Notice> = sqlx::query_as(
        "SELECT notice_id, kind, message, upgrade_url, plan, created_at, expires_at, shown_at \
         FROM dashboard_notices \
         WHERE account_id = $1 AND clicked_at IS NULL AND expires_at > now() \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(account.as_str())
    .fetch_optional(pool)
    .await
    .map_err(postgres_down)?;
    Ok(Json(notice))
}

pub async fn shown(
    State(state): State<AppState>,
    Path((id, notice_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    record(
        &state,
        &id,
        &notice_id,
        &headers,
        AccountEventType::NoticeShown,
    )
    .await
}

pub async fn clicked(
    State(state): State<AppState>,
    Path((id, notice_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    record(
        &state,
        &id,
        &notice_id,
        &headers,
        AccountEventType::NoticeClicked,
    )
    .await
}

async fn record(
    state: &AppState,
    id: &str,
    notice_id: &str,
    headers: &HeaderMap,
    kind: AccountEventType,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let account = AccountId::parse(id).map_err(field)?;
    let notice = Uuid::parse_str(notice_id).map_err(|_| {
        field(FieldError::new(
            "notice_id",
            format!("{notice_id:?} is not a UUID"),
        ))
    })?;
    authorize(state, headers, &account).await?;
    let pool = read_path(state)?.directory.pool();
    let exists: Option<(Uuid,)> = sqlx::query_as(
        "SELECT notice_id FROM dashboard_notices WHERE notice_id = $1 AND account_id = $2",
    )
    .bind(notice)
    .bind(account.as_str())
    .fetch_optional(pool)
    .await
    .map_err(postgres_down)?;
    if exists.is_none() {
        return Err(ApiError::NotFound(format!(
            "notice_id: account {:?} has no notice {notice}",
            account.as_str()
        )));
    }
    let now = Utc::now();
    let event = AccountEvent {
        event_id: Uuid::new_v4().to_string(),
        occurred_at: now.timestamp_micros(),
        received_at: now.timestamp_micros(),
        account_id: account.clone(),
        kind,
        plan: None,
        seats: None,
        email_domain: None,
        company_size: None,
        signup_ip_hash: None,
        device_id: None,
        browser_signature: None,
        notice_id: Some(notice.to_string()),
    };
    let topic = &state.account;
    let payload = avro::encode(topic.schema_id, &topic.schema, &event)
        .map_err(|e| ApiError::Internal(format!("avro encoding: {e}")))?;
    let record = OutgoingRecord {
        key: account.as_str().to_owned(),
        payload,
    };
    if let Err(e) = state.producer.produce_all(&topic.topic, &[record]).await {
        return Err(ApiError::Unavailable {
            reason: format!(
                "kafka: {e}; the {} event was not recorded, retry it",
                kind.as_str()
            ),
            retry_after_secs: state.config.retry_after_secs,
        });
    }
    // Kafka holds the event; the notice's own marks are a convenience for the dashboard.
    let column = match kind {
        AccountEventType::NoticeClicked => "clicked_at",
        _ => "shown_at",
    };
    sqlx::query(&format!(
        "UPDATE dashboard_notices SET {column} = COALESCE({column}, $2) WHERE notice_id = $1"
    ))
    .bind(notice)
    .bind(now)
    .execute(pool)
    .await
    .map_err(postgres_down)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event.event_id, "type": kind.as_str(), "notice_id": notice})),
    ))
}
