//! The PostgreSQL outbox (`notifications`), in the shape of zero-to-production's
//! `issue_delivery_worker`: a notification is queued in the same transaction that checks its
//! cooldown, and workers claim due rows with `FOR UPDATE SKIP LOCKED`, so any number of
//! workers share the queue without sending anything twice.
//!
//! A claim is a lease: the row is `sending` until `lease_until`. A worker that dies mid-send
//! leaves it there; when the lease runs out, HubSpot and local-sink rows go back to `pending`
//! (their sends are idempotent: the deal is found again by account id) and Slack and email rows
//! become `unconfirmed` for a person, because neither a Slack webhook nor an SMTP server can be
//! asked whether a message arrived and a second message is worse than a late one.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use meterline_schemas::SignalKind;
use serde::{Serialize, Serializer};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::route::{Cooldown, Destination, Previous, Verdict};
use crate::NotifyError;

/// Where a notification is: `notifications.status`, stored as its text ([`Self::as_str`]),
/// which the table's CHECK constraint lists. The statements below spell it in SQL where it is
/// a constant of the statement (so the partial indexes on `status` apply).
///
/// `pending` → `sending` → `sent`; after `notifier.max_attempts`: `dead`. A Slack row whose
/// sender died mid-send becomes `unconfirmed`. An email that is not to be sent (no contact
/// email, unsubscribed) is `skipped`, with the reason in `detail`; it holds no cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxStatus {
    Pending,
    Sending,
    Sent,
    Dead,
    Unconfirmed,
    Skipped,
}

impl OutboxStatus {
    pub const ALL: [OutboxStatus; 6] = [
        OutboxStatus::Pending,
        OutboxStatus::Sending,
        OutboxStatus::Sent,
        OutboxStatus::Dead,
        OutboxStatus::Unconfirmed,
        OutboxStatus::Skipped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sending => "sending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Dead => "dead",
            OutboxStatus::Unconfirmed => "unconfirmed",
            OutboxStatus::Skipped => "skipped",
        }
    }
}

/// Text that is not an [`OutboxStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of {list}", list = OutboxStatus::ALL.map(OutboxStatus::as_str).join(", "))]
pub struct UnknownOutboxStatus(pub String);

impl FromStr for OutboxStatus {
    type Err = UnknownOutboxStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutboxStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownOutboxStatus(s.to_owned()))
    }
}

impl TryFrom<String> for OutboxStatus {
    type Error = UnknownOutboxStatus;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for OutboxStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A notification to queue.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub account_id: String,
    pub destination: Destination,
    pub kind: SignalKind,
    pub signal_id: String,
    pub cooldown: Cooldown,
    pub at: DateTime<Utc>,
    pub score: i32,
    pub payload: Value,
    /// What routing decided beyond the message, for a person reading the outbox: why a deal
    /// has no company, or that an existing customer's growth went to the expansion route.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Queued {
    /// Queued with this id.
    Queued(i64),
    /// This signal already has a notification for this destination (a replay).
    Duplicate,
    /// Held back by a cooldown.
    Held(String),
}

/// Serialises decisions about one account across workers and instances for the transaction.
pub async fn lock_account(
    tx: &mut Transaction<'_, Postgres>,
    account: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('meterline-notifier:' || $1))")
        .bind(account)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues `n` unless it is a replay or a cooldown holds it. `status` is `pending` for rows a
/// worker sends, `sent` for notices (written in this same transaction).
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    n: &NewNotification,
    status: OutboxStatus,
    delivered_to: Option<&str>,
) -> Result<Queued, sqlx::Error> {
    let destination = n.destination.as_string();
    let seen: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM notifications WHERE destination = $1 AND signal_id = $2")
            .bind(&destination)
            .bind(&n.signal_id)
            .fetch_optional(&mut **tx)
            .await?;
    if seen.is_some() {
        return Ok(Queued::Duplicate);
    }
    // The latest notification of the class at or before this one's event time decides.
    let previous: Option<(DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT cooldown_at, score FROM notifications \
         WHERE account_id = $1 AND destination = $2 AND cooldown_class = $3 AND cooldown_at <= $4 \
           AND status <> 'skipped' \
         ORDER BY cooldown_at DESC LIMIT 1",
    )
    .bind(&n.account_id)
    .bind(&destination)
    .bind(&n.cooldown.class)
    .bind(n.at)
    .fetch_optional(&mut **tx)
    .await?;
    let previous = previous.map(|(at, score)| Previous { at, score });
    if let Verdict::Hold(why) = crate::route::verdict(&n.cooldown, previous, n.at, n.score) {
        return Ok(Queued::Held(why));
    }
    // A later one already sent (signals arriving out of order) holds this one too.
    let later: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT cooldown_at FROM notifications \
         WHERE account_id = $1 AND destination = $2 AND cooldown_class = $3 \
           AND cooldown_at > $4 AND cooldown_at < $5 AND status <> 'skipped' LIMIT 1",
    )
    .bind(&n.account_id)
    .bind(&destination)
    .bind(&n.cooldown.class)
    .bind(n.at)
    .bind(n.at + n.cooldown.period)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((at,)) = later {
        return Ok(Queued::Held(format!(
            "cooldown {}: a later one at {} is within the period",
            n.cooldown.class,
            at.to_rfc3339()
        )));
    }
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO notifications \
           (account_id, destination, kind, signal_id, cooldown_class, cooldown_at, score, payload, \
            status, delivered_to, sent_at, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $9 = 'sent' THEN now() END, $11) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&n.account_id)
    .bind(&destination)
    .bind(n.kind.as_str())
    .bind(&n.signal_id)
    .bind(&n.cooldown.class)
    .bind(n.at)
    .bind(n.score)
    .bind(&n.payload)
    .bind(status.as_str())
    .bind(delivered_to)
    .bind(&n.detail)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match id {
        Some((id,)) => Queued::Queued(id),
        // Same class and event time as one already queued (two plugin triggers of one pass).
        None => Queued::Held(format!(
            "cooldown {}: another at the same time",
            n.cooldown.class
        )),
    })
}

/// A claimed notification.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub account_id: String,
    pub destination: String,
    #[sqlx(try_from = "String")]
    pub kind: SignalKind,
    pub signal_id: String,
    pub payload: Value,
    pub attempts: i32,
}

/// Claims up to `limit` due notifications for `lease`.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE notifications SET status = 'sending', attempts = attempts + 1, \
             lease_until = now() + make_interval(secs => $2) \
         WHERE id IN (SELECT id FROM notifications \
                      WHERE status = 'pending' AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, account_id, destination, kind, signal_id, payload, attempts",
    )
    .bind(limit)
    .bind(lease.num_milliseconds() as f64 / 1000.0)
    .fetch_all(pool)
    .await
}

pub async fn mark_sent(pool: &PgPool, id: i64, delivered_to: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'sent', sent_at = now(), lease_until = NULL, \
             last_error = NULL, delivered_to = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(delivered_to)
    .execute(pool)
    .await?;
    Ok(())
}

/// Schedules another attempt at `next`. `counts` is false for rate limiting, which is the
/// service pacing us, not the notification failing.
pub async fn mark_retry(
    pool: &PgPool,
    id: i64,
    next: DateTime<Utc>,
    error: &str,
    counts: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'pending', next_attempt_at = $2, lease_until = NULL, \
             last_error = $3, attempts = CASE WHEN $4 THEN attempts ELSE attempts - 1 END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(next)
    .bind(error)
    .bind(counts)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that notification `id` was not sent, and why (an email whose account unsubscribed
/// or lost its contact email after it was queued).
pub async fn mark_skipped(pool: &PgPool, id: i64, why: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'skipped', lease_until = NULL, detail = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(why)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn mark_dead(pool: &PgPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'dead', lease_until = NULL, last_error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Settles rows whose sender died mid-send (lease run out). Returns (requeued, unconfirmed).
pub async fn recover_expired(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    let requeued = sqlx::query(
        "UPDATE notifications SET status = 'pending', next_attempt_at = now(), lease_until = NULL, \
             last_error = 'the sender stopped mid-send; sending again (idempotent destination)' \
         WHERE status = 'sending' AND lease_until < now() AND destination NOT LIKE 'slack:%' \
           AND destination <> 'email'",
    )
    .execute(pool)
    .await?
    .rows_affected();
    let unconfirmed = sqlx::query(
        "UPDATE notifications SET status = 'unconfirmed', lease_until = NULL, \
             last_error = 'the sender stopped mid-send; Slack or the mail server may or may not have the message. \
check the channel or the mail log, then `meterline notifications retry` if it is missing' \
         WHERE status = 'sending' AND lease_until < now() \
           AND (destination LIKE 'slack:%' OR destination = 'email')",
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((requeued, unconfirmed))
}

/// A notification as `meterline notifications list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub id: i64,
    pub account_id: String,
    pub destination: String,
    #[sqlx(try_from = "String")]
    pub kind: SignalKind,
    pub signal_id: String,
    #[sqlx(try_from = "String")]
    pub status: OutboxStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_to: Option<String>,
    /// What routing decided beyond the message (see [`NewNotification::detail`]).
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

pub async fn list(
    pool: &PgPool,
    status: Option<OutboxStatus>,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, account_id, destination, kind, signal_id, status, attempts, last_error, \
                delivered_to, detail, created_at, next_attempt_at, sent_at \
         FROM notifications \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR account_id = $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status.map(OutboxStatus::as_str))
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Puts dead or unconfirmed notifications back in the queue with fresh attempts: the ones named,
/// or every dead one when `ids` is empty. Returns the ids requeued.
pub async fn retry(pool: &PgPool, ids: &[i64]) -> Result<Vec<i64>, NotifyError> {
    let rows: Vec<(i64,)> = if ids.is_empty() {
        sqlx::query_as(
            "UPDATE notifications SET status = 'pending', attempts = 0, next_attempt_at = now() \
             WHERE status = 'dead' RETURNING id",
        )
        .fetch_all(pool)
        .await?
    } else {
        let found: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, status FROM notifications WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(pool)
                .await?;
        for id in ids {
            let Some((_, status)) = found.iter().find(|(f, _)| f == id) else {
                return Err(NotifyError::Invalid(format!(
                    "notification {id}: no such notification"
                )));
            };
            let status: OutboxStatus = status
                .parse()
                .map_err(|e| NotifyError::Invalid(format!("notification {id}: status {e}")))?;
            if !matches!(status, OutboxStatus::Dead | OutboxStatus::Unconfirmed) {
                return Err(NotifyError::Invalid(format!(
                    "notification {id}: is {status}; only dead or unconfirmed notifications are retried"
                )));
            }
        }
        sqlx::query_as(
            "UPDATE notifications SET status = 'pending', attempts = 0, next_attempt_at = now() \
             WHERE id = ANY($1) AND status IN ('dead', 'unconfirmed') RETURNING id",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?
    };
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are the `notifications.status` values (and its CHECK constraint): they must
    /// not change with the variants' names.
    #[test]
    fn statuses_keep_their_text_and_parse_back() {
        let text: Vec<&str> = OutboxStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            text,
            [
                "pending",
                "sending",
                "sent",
                "dead",
                "unconfirmed",
                "skipped"
            ]
        );
        for s in OutboxStatus::ALL {
            assert_eq!(s.as_str().parse::<OutboxStatus>(), Ok(s));
            assert_eq!(OutboxStatus::try_from(s.to_string()), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(format!("[{:<9}]", OutboxStatus::Sent), "[sent     ]");
        assert_eq!(
            "done".parse::<OutboxStatus>().unwrap_err().to_string(),
            "\"done\" is not one of pending, sending, sent, dead, unconfirmed, skipped"
        );
    }
}
