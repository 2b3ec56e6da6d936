//! Dashboard notices (written by the notifier into `dashboard_notices`):
//!
//! * `GET /v1/accounts/{id}/notice`: the account's current notice, or `null`. A notice is
//!   current until it is clicked or its cooldown period ends; one already reported shown is
//!   still answered here (the dashboard may show it again), while quota decisions carry a
//!   notice (`dashboard_notice`, [`crate::read::notices`]) only until it is reported shown.
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
use meterline_schemas::{AccountEvent, AccountId, FieldError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::produce_account_event;
use super::read::{authorize, field, postgres_down, read_path};
use crate::error::{ApiError, ErrorBody};
use crate::read::notices::DashboardNotice;
use crate::routes::openapi::{AuthErrors, BAD_IDS, UNAVAILABLE};
use crate::AppState;

/// The account's current notice: the fields a quota decision carries, and when it was reported
/// shown (null until then).
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Notice {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub notice: DashboardNotice,
    #[schema(required)]
    pub shown_at: Option<DateTime<Utc>>,
}

/// What `…/shown` and `…/clicked` record.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeEvent {
    NoticeShown,
    NoticeClicked,
}

impl NoticeEvent {
    fn account_event(self) -> AccountEventType {
        match self {
            NoticeEvent::NoticeShown => AccountEventType::NoticeShown,
            NoticeEvent::NoticeClicked => AccountEventType::NoticeClicked,
        }
    }
}

/// The account event recorded for a notice.
#[derive(Debug, Serialize, ToSchema)]
pub struct NoticeRecorded {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: NoticeEvent,
    pub notice_id: Uuid,
}

/// The account's current dashboard notice (an upgrade suggestion), or null (scope: read)
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/notice",
    operation_id = "getNotice",
    params(("id" = AccountId, Path, description = "The account")),
    responses(
        (status = 200, description = "The current notice, or null when there is none", body = Option<Notice>),
        (status = 400, description = BAD_IDS, body = ErrorBody),
        AuthErrors,
        (status = 503, description = UNAVAILABLE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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

/// Records a notice_shown account event for the notice once Kafka holds it (scope: read)
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/notices/{notice_id}/shown",
    operation_id = "noticeShown",
    params(
        ("id" = AccountId, Path, description = "The account"),
        ("notice_id" = Uuid, Path, description = "The notice"),
    ),
    responses(
        (status = 202, description = "Recorded", body = NoticeRecorded),
        (status = 400, description = BAD_IDS, body = ErrorBody),
        AuthErrors,
        (status = 404, description = NO_SUCH_NOTICE, body = ErrorBody),
        (status = 503, description = KAFKA_DOWN, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn shown(
    State(state): State<AppState>,
    Path((id, notice_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<NoticeRecorded>), ApiError> {
    record(&state, &id, &notice_id, &headers, NoticeEvent::NoticeShown).await
}

/// Records a notice_clicked account event for the notice once Kafka holds it (scope: read)
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/notices/{notice_id}/clicked",
    operation_id = "noticeClicked",
    params(
        ("id" = AccountId, Path, description = "The account"),
        ("notice_id" = Uuid, Path, description = "The notice"),
    ),
    responses(
        (status = 202, description = "Recorded", body = NoticeRecorded),
        (status = 400, description = BAD_IDS, body = ErrorBody),
        AuthErrors,
        (status = 404, description = NO_SUCH_NOTICE, body = ErrorBody),
        (status = 503, description = KAFKA_DOWN, body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn clicked(
    State(state): State<AppState>,
    Path((id, notice_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<NoticeRecorded>), ApiError> {
    record(
        &state,
        &id,
        &notice_id,
        &headers,
        NoticeEvent::NoticeClicked,
    )
    .await
}

const NO_SUCH_NOTICE: &str = "The account has no such notice";
const KAFKA_DOWN: &str = "Kafka unavailable; nothing recorded, retry";

async fn record(
    state: &AppState,
    id: &str,
    notice_id: &str,
    headers: &HeaderMap,
    event: NoticeEvent,
) -> Result<(StatusCode, Json<NoticeRecorded>), ApiError> {
    let kind = event.account_event();
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
    let event_id = Uuid::new_v4();
    let mut account_event = AccountEvent::new(event_id.to_string(), now, account.clone(), kind);
    account_event.notice_id = Some(notice.to_string());
    produce_account_event(
        state,
        &account_event,
        &format!("the {} event", kind.as_str()),
    )
    .await?;
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
        Json(NoticeRecorded {
            event_id,
            kind: event,
            notice_id: notice,
        }),
    ))
}
