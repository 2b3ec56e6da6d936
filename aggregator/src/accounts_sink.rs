//! Account events into PostgreSQL: the `accounts` table always holds each account's current
//! plan, seats, profile and signup time, and its review state. Event ids are recorded in
//! `account_events` in the same transaction, which makes this sink exactly-once on its own.
//!
//! Review events ([`meterline_schemas::review`]) move `review_state` by these rules, so that
//! whatever order they race in, a person's decision is never undone by an older automatic one:
//!
//! * a state only moves to one from an event at least as new as the one that set it;
//! * the scorer's `review_suspected` never replaces `confirmed` or `auto_denied`, its
//!   `review_auto_denied` never replaces `confirmed`, and `review_expired` only ends
//!   `suspected`;
//! * a person's `review_confirmed` and `review_cleared` replace anything.
//!
//! Every review event counts in `review_seq`, applied or not, so the scorer's next move gets a
//! new event id.
//!
//! The contact email (`signup`, `profile_updated`) is a profile field like the email domain.
//! An `email_unsubscribed` event sets `email_unsubscribed_at` to the first unsubscribe, and
//! nothing clears it: the notifier sends that account no more email.

use std::collections::HashSet;

use chrono::{TimeZone, Utc};
use meterline_schemas::review::{state_after, ReviewState};
use meterline_schemas::{AccountEvent, AccountEventType};
use sqlx::PgPool;

use crate::decode::Decoded;
use crate::SinkError;

#[derive(Clone)]
pub struct AccountsSink {
    pool: PgPool,
}

fn ts(micros: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

impl AccountsSink {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The ids among `ids` that have already been applied.
    pub async fn already_applied(&self, ids: &[String]) -> Result<HashSet<String>, SinkError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT event_id::text FROM account_events WHERE event_id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Applies new events in order, in one transaction.
    pub async fn apply(&self, events: &[&Decoded<AccountEvent>]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in events {
            let e = &d.event;
            let occurred = ts(e.occurred_at);
            let inserted = sqlx::query(
                "INSERT INTO account_events (event_id, account_id, type, occurred_at, received_at, payload)
                 VALUES ($1::uuid, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&e.event_id)
            .bind(e.account_id.as_str())
            .bind(e.kind.as_str())
            .bind(occurred)
            .bind(ts(e.received_at))
            .bind(sqlx::types::Json(e))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                continue;
            }
            // Each change carries its own event time, and a field only moves to a value from
            // an event at least as new as the one that set it, so late events cannot undo
            // newer ones. Account events may be of any age (an imported customer history), so
            // the profile fields follow the same rule, measured against the newest event
            // applied (`last_event_at`): an older event only fills a field still empty.
            let plan_at = e.plan.map(|_| occurred);
            let seats_at = e.seats.map(|_| occurred);
            let signed_up = (e.kind == AccountEventType::Signup).then_some(occurred);
            let churned = (e.kind == AccountEventType::Churned).then_some(occurred);
            let unsubscribed = (e.kind == AccountEventType::EmailUnsubscribed).then_some(occurred);
            sqlx::query(
                "INSERT INTO accounts (account_id, plan, plan_changed_at, seats, seats_changed_at, email_domain,
                    company_size, signup_ip_hash, device_id, browser_signature, signed_up_at, churned_at, last_event_at,
                    contact_email, email_unsubscribed_at)
                 VALUES ($1, COALESCE($2, 'free'), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (account_id) DO UPDATE SET
                    plan = CASE WHEN EXCLUDED.plan_changed_at IS NOT NULL
                                 AND (accounts.plan_changed_at IS NULL OR EXCLUDED.plan_changed_at >= accounts.plan_changed_at)
                               THEN EXCLUDED.plan ELSE accounts.plan END,
                    plan_changed_at = GREATEST(accounts.plan_changed_at, EXCLUDED.plan_changed_at),
                    seats = CASE WHEN EXCLUDED.seats_changed_at IS NOT NULL
                                  AND (accounts.seats_changed_at IS NULL OR EXCLUDED.seats_changed_at >= accounts.seats_changed_at)
                                THEN EXCLUDED.seats ELSE accounts.seats END,
                    seats_changed_at = GREATEST(accounts.seats_changed_at, EXCLUDED.seats_changed_at),
                    email_domain = CASE WHEN accounts.email_domain IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.email_domain, accounts.email_domain) ELSE accounts.email_domain END,
                    company_size = CASE WHEN accounts.company_size IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.company_size, accounts.company_size) ELSE accounts.company_size END,
                    signup_ip_hash = CASE WHEN accounts.signup_ip_hash IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.signup_ip_hash, accounts.signup_ip_hash) ELSE accounts.signup_ip_hash END,
                    device_id = CASE WHEN accounts.device_id IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.device_id, accounts.device_id) ELSE accounts.device_id END,
                    browser_signature = CASE WHEN accounts.browser_signature IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.browser_signature, accounts.browser_signature) ELSE accounts.browser_signature END,
                    signed_up_at = LEAST(accounts.signed_up_at, EXCLUDED.signed_up_at),
                    churned_at = GREATEST(accounts.churned_at, EXCLUDED.churned_at),
                    contact_email = CASE WHEN accounts.contact_email IS NULL OR COALESCE(EXCLUDED.last_event_at >= accounts.last_event_at, TRUE)
                               THEN COALESCE(EXCLUDED.contact_email, accounts.contact_email) ELSE accounts.contact_email END,
                    email_unsubscribed_at = LEAST(accounts.email_unsubscribed_at, EXCLUDED.email_unsubscribed_at),
                    last_event_at = GREATEST(accounts.last_event_at, EXCLUDED.last_event_at),
                    updated_at = now()",
            )
            .bind(e.account_id.as_str())
            .bind(e.plan.map(|p| p.as_str()))
            .bind(plan_at)
            .bind(e.seats)
            .bind(seats_at)
            .bind(e.email_domain.as_deref())
            .bind(e.company_size)
            .bind(e.signup_ip_hash.as_deref())
            .bind(e.device_id.as_deref())
            .bind(e.browser_signature.as_deref())
            .bind(signed_up)
            .bind(churned)
            .bind(occurred)
            .bind(e.contact_email.as_ref().map(|c| c.expose()))
            .bind(unsubscribed)
            .execute(&mut *tx)
            .await?;
            if let Some(state) = state_after(e.kind) {
                apply_review(&mut tx, e, state, occurred).await?;
            }
            if e.kind == AccountEventType::Signup {
                // In the signup's transaction: an account is assigned exactly when its signup
                // is applied, and a replay finds it assigned already.
                for (experiment, variant) in
                    crate::experiments::store::assign_at_signup(&mut tx, e.account_id.as_str())
                        .await?
                {
                    tracing::info!(account_id = %e.account_id, %experiment, %variant, "assigned to experiment");
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn pending_assignments(
        &self,
        limit: i64,
    ) -> Result<Vec<crate::experiments::store::PendingAssignment>, SinkError> {
        Ok(crate::experiments::store::pending_assignments(&self.pool, limit).await?)
    }

    pub async fn mark_recorded(
        &self,
        done: &[crate::experiments::store::PendingAssignment],
    ) -> Result<(), SinkError> {
        Ok(crate::experiments::store::mark_recorded(&self.pool, done).await?)
    }
}

/// Applies one review event to the account's row (created by the upsert just before).
async fn apply_review(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    e: &AccountEvent,
    state: Option<ReviewState>,
    occurred: chrono::DateTime<Utc>,
) -> Result<(), SinkError> {
    sqlx::query("UPDATE accounts SET review_seq = review_seq + 1 WHERE account_id = $1")
        .bind(e.account_id.as_str())
        .execute(&mut **tx)
        .await?;
    // The states each kind may replace (NULL: not in review).
    let replaces: &[&str] = match e.kind {
        AccountEventType::ReviewSuspected => &["", "suspected", "cleared"],
        AccountEventType::ReviewAutoDenied => &["", "suspected", "cleared", "auto_denied"],
        AccountEventType::ReviewExpired => &["suspected"],
        _ => &["", "suspected", "cleared", "auto_denied", "confirmed"],
    };
    let applied = sqlx::query(
        "UPDATE accounts SET review_state = $2, review_changed_at = $3, review_actor = $4,
            review_reason = $5, review_score = COALESCE($6, review_score), updated_at = now()
         WHERE account_id = $1
           AND COALESCE(review_state, '') = ANY($7)
           AND (review_changed_at IS NULL OR review_changed_at <= $3)",
    )
    .bind(e.account_id.as_str())
    .bind(state.map(ReviewState::as_str))
    .bind(occurred)
    .bind(e.actor.as_deref())
    .bind(e.reason.as_deref())
    .bind(e.abuse_score.map(|s| s as i32))
    .bind(replaces)
    .execute(&mut **tx)
    .await?;
    if applied.rows_affected() == 0 {
        tracing::info!(account_id = %e.account_id, kind = e.kind.as_str(), "review event recorded; the state it would replace is newer or stronger");
    }
    Ok(())
}
