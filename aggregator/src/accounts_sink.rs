//! Account events into PostgreSQL: the `accounts` table always holds each account's current
//! plan, seats, profile and signup time. Event ids are recorded in `account_events` in the
//! same transaction, which makes this sink exactly-once on its own.

use std::collections::HashSet;

use chrono::{TimeZone, Utc};
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
            sqlx::query(
                "INSERT INTO accounts (account_id, plan, plan_changed_at, seats, seats_changed_at, email_domain,
                    company_size, signup_ip_hash, device_id, browser_signature, signed_up_at, churned_at, last_event_at)
                 VALUES ($1, COALESCE($2, 'free'), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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
            .execute(&mut *tx)
            .await?;
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
