//! Operations.
//!
//! * `GET /console/notifications[?status=]`: the notifier's outbox
//!   (`meterline_notifier::outbox::list`), newest first, with a retry form on each dead or
//!   unconfirmed row;
//! * `POST /console/notifications/{id}/retry`: queues it again with fresh attempts
//!   (`meterline_notifier::outbox::retry`, as `meterline notifications retry ID`);
//! * `GET /console/health`: pipeline health from the stores and Kafka (see [`health_figures`]);
//! * `GET /console/audit`: the latest console actions, who did what, on what, why, and how it
//!   ended (`console_audit`).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use meterline_notifier::outbox::{self, OutboxStatus};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::{when, when_opt, Fields};
use crate::audit::{self, Entry};
use crate::error::{ConsoleError, Result};
use crate::kafka::PartitionLag;
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    pub status: Option<String>,
    pub done: Option<String>,
}

/// `GET /console/notifications`.
pub async fn outbox(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<OutboxQuery>,
) -> Result<Page> {
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<OutboxStatus>()
                .map_err(|e| ConsoleError::BadRequest(format!("status: {e}")))
        })
        .transpose()?;
    let rows = outbox::list(&state.pool, status, None, 200).await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM notifications GROUP BY status ORDER BY status",
    )
    .fetch_all(&state.pool)
    .await?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|n| {
            let retryable = matches!(n.status, OutboxStatus::Dead | OutboxStatus::Unconfirmed);
            context! {
                id => n.id,
                account_id => n.account_id,
                destination => n.destination,
                kind => n.kind.as_str(),
                status => n.status.as_str(),
                attempts => n.attempts,
                last_error => n.last_error,
                delivered_to => n.delivered_to,
                detail => n.detail,
                created_at => when(n.created_at),
                sent_at => when_opt(n.sent_at),
                retryable,
            }
        })
        .collect();
    let done = q
        .done
        .as_deref()
        .and_then(|d| d.parse::<i64>().ok())
        .map(|id| format!("Notification {id} queued again."));
    render(
        "outbox.html",
        context! {
            session,
            title => "Notifications",
            rows,
            counts,
            status => status.map(OutboxStatus::as_str),
            statuses => OutboxStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            done,
        },
    )
}

/// `POST /console/notifications/{id}/retry`.
pub async fn retry(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response> {
    audit::admit(
        &state,
        &session,
        fields.get("csrf").map(String::as_str),
        Entry {
            action: "notification_retry",
            target: Some(&id),
            ..Default::default()
        },
    )
    .await?;
    let n: i64 = id
        .parse()
        .map_err(|_| ConsoleError::BadRequest(format!("id: {id:?} is not a notification id")))?;
    let account: Option<(String,)> =
        sqlx::query_as("SELECT account_id FROM notifications WHERE id = $1")
            .bind(n)
            .fetch_optional(&state.pool)
            .await?;
    let result = outbox::retry(&state.pool, &[n]).await;
    let outcome = match &result {
        Ok(_) => "done".to_owned(),
        Err(e) => format!("failed: {e}"),
    };
    audit::record(
        &state,
        Entry {
            actor: &session.name,
            action: "notification_retry",
            account_id: account.as_ref().map(|(a,)| a.as_str()),
            target: Some(&id),
            outcome: &outcome,
            ..Default::default()
        },
    )
    .await?;
    result.map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
    Ok(Redirect::to(&format!("/console/notifications?done={n}")).into_response())
}

#[derive(Debug, Row, Deserialize)]
struct Freshness {
    /// Seconds since the epoch of the newest usage event written; 0: none.
    latest: u32,
    /// Usage events that occurred in the last five whole minutes.
    recent: u64,
}

/// One figure of the health page; `value` is `None` when the console cannot see it.
#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: &'static str,
    pub value: Option<String>,
    pub note: String,
}

/// What the console can tell about the pipeline:
///
/// * hot-state freshness: the newest usage event in ClickHouse `usage_events` (the aggregator
///   writes ClickHouse just before Redis, so Redis is at most one batch behind it);
/// * events per second: usage events that occurred in the last five whole minutes
///   (`usage_minute`), per second;
/// * consumer lag per partition and the records in the dead-letter topic, from Kafka
///   ([`crate::kafka`]);
/// * the notifier's rejected signals and dead notifications (PostgreSQL).
///
/// A source that cannot be read is shown as such, with the reason, never as zero.
pub async fn health_figures(
    state: &ConsoleState,
    now: DateTime<Utc>,
) -> Result<(Vec<Figure>, Vec<PartitionLag>)> {
    let minute = now.timestamp() - now.timestamp() % 60;
    let f: Freshness = state
        .clickhouse
        .query(
            "SELECT toUInt32((SELECT max(occurred_at) FROM usage_events)) AS latest, \
                    (SELECT sum(requests) FROM usage_minute WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?)) AS recent",
        )
        .bind(minute - 300)
        .bind(minute)
        .fetch_one()
        .await?;
    let (rejected, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notifier_rejected_signals), \
                (SELECT count(*) FROM notifications WHERE status = 'dead')",
    )
    .fetch_one(&state.pool)
    .await?;
    let fresh = match DateTime::from_timestamp(i64::from(f.latest), 0) {
        Some(t) if f.latest > 0 => Some(format!(
            "{} ({} s ago)",
            when(t),
            (now - t).num_seconds().max(0)
        )),
        _ => Some("no usage event yet".into()),
    };
    let kafka = match &state.kafka {
        Some(probe) => probe.read().await,
        None => Err("no Kafka configured for the console".into()),
    };
    let (lag, dlq, partitions) = match kafka {
        Ok(k) => (
            Some(k.partitions.iter().map(|p| p.lag).sum::<i64>().to_string()),
            Some(k.dead_lettered.to_string()),
            k.partitions,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health page: Kafka not readable");
            (None, None, Vec::new())
        }
    };
    let figures = vec![
        Figure {
            name: "Hot-state freshness",
            value: fresh,
            note: "newest usage event in ClickHouse; the aggregator writes Redis right after it"
                .into(),
        },
        Figure {
            name: "Events per second",
            value: Some(format!("{:.2}", f.recent as f64 / 300.0)),
            note: "usage events that occurred in the last five whole minutes".into(),
        },
        Figure {
            name: "Consumer lag (all partitions)",
            value: lag,
            note: "the aggregator group's uncommitted records; per partition below".into(),
        },
        Figure {
            name: "Dead-lettered records",
            value: dlq,
            note: "records the aggregator could not decode, held in the dead-letter topic".into(),
        },
        Figure {
            name: "Rejected signals (notifier)",
            value: Some(rejected.to_string()),
            note: "signal records the notifier could not decode (notifier_rejected_signals)".into(),
        },
        Figure {
            name: "Dead notifications",
            value: Some(dead.to_string()),
            note: "retry them from the notifications page".into(),
        },
    ];
    Ok((figures, partitions))
}

/// `GET /console/health`.
pub async fn health(State(state): State<ConsoleState>, session: Session) -> Result<Page> {
    let (figures, partitions) = health_figures(&state, Utc::now()).await?;
    render(
        "health.html",
        context! { session, title => "Pipeline health", figures, partitions },
    )
}

/// `GET /console/audit`: the latest 500 console actions, newest first.
pub async fn audit_trail(State(state): State<ConsoleState>, session: Session) -> Result<Page> {
    let rows: Vec<_> = audit::recent(&state.pool, None, 500)
        .await?
        .into_iter()
        .map(|a| context! { at => when(a.at), a })
        .collect();
    render(
        "audit.html",
        context! { session, title => "Audit trail", rows },
    )
}
