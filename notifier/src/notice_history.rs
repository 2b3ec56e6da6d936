//! Copies dashboard notices to ClickHouse `notice_history`, so the growth team can tell the
//! notice funnel per kind: ClickHouse's `notice_shown` / `notice_clicked` account events name
//! only the notice, and its kind lives here in PostgreSQL `dashboard_notices`.
//!
//! The copy is an outbox read: notices whose `history_recorded_at` is empty are inserted into
//! ClickHouse in batches, and `history_recorded_at` is set only once the insert succeeded.
//! Nothing is lost: a failed insert leaves the batch unmarked and it is tried again on the next
//! round (after the notifier's backoff). Nothing is counted twice: a crash between the insert and
//! the mark copies the batch again, with the same values (the row is built from the notice alone),
//! and `notice_history` is a ReplacingMergeTree on `notice_id`, which folds the copies.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Notifier, NotifyError};

/// How often the task looks for new notices.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Notices per ClickHouse insert.
pub const BATCH: i64 = 500;

/// A row of ClickHouse `notice_history` (migrations/clickhouse/0012_growth_report.sql).
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct NoticeHistoryRow {
    pub notice_id: String,
    pub account_id: String,
    pub kind: String,
    /// Unix seconds (`DateTime('UTC')`).
    pub created_at: u32,
}

/// Copies every notice not yet in ClickHouse; returns how many were copied. Stops at the first
/// failure, leaving that batch (and the rest) for the next call.
pub async fn copy_pending(pg: &PgPool, ch: &clickhouse::Client) -> Result<usize, NotifyError> {
    let mut copied = 0;
    loop {
        let batch: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT notice_id, account_id, kind, created_at FROM dashboard_notices \
              WHERE history_recorded_at IS NULL ORDER BY created_at, notice_id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(pg)
        .await?;
        if batch.is_empty() {
            return Ok(copied);
        }
        let mut insert = ch.insert::<NoticeHistoryRow>("notice_history").await?;
        for (notice_id, account_id, kind, created_at) in &batch {
            insert
                .write(&NoticeHistoryRow {
                    notice_id: notice_id.to_string(),
                    account_id: account_id.clone(),
                    kind: kind.clone(),
                    created_at: u32::try_from(created_at.timestamp()).unwrap_or(0),
                })
                .await?;
        }
        insert.end().await?;
        crate::failpoint("notice_history_after_insert");
        let ids: Vec<Uuid> = batch.iter().map(|(id, ..)| *id).collect();
        sqlx::query(
            "UPDATE dashboard_notices SET history_recorded_at = now() WHERE notice_id = ANY($1)",
        )
        .bind(&ids)
        .execute(pg)
        .await?;
        copied += batch.len();
        if (batch.len() as i64) < BATCH {
            return Ok(copied);
        }
    }
}

/// Runs [`copy_pending`] every [`INTERVAL`] until `shutdown`; after a failure it tries again
/// with the notifier's backoff (from 200 ms up to `notifier.backoff_max_ms`).
pub async fn run(n: Notifier, shutdown: CancellationToken) {
    let max = Duration::from_millis(n.config.backoff_max_ms);
    let mut delays = crate::backoff(Duration::from_millis(200), max).build();
    loop {
        let wait = match copy_pending(&n.pg, &n.clickhouse).await {
            Ok(copied) => {
                if copied > 0 {
                    tracing::debug!(copied, "notices copied to ClickHouse notice_history");
                }
                delays = crate::backoff(Duration::from_millis(200), max).build();
                INTERVAL
            }
            Err(e) => {
                let wait = delays.next().unwrap_or(max);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "copying notices to ClickHouse failed; they stay pending");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
