//! The outbox worker: claims due notifications, sends them, and records what happened.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::deliver::{HubSpotIds, SendError};
use crate::email::render::EmailMessage;
use crate::message::DealRequest;
use crate::metrics::destination_label;
use crate::outbox::{self, Claimed};
use crate::route::{email_skip, AccountInfo, Destination};
use crate::{failpoint, Notifier, NotifyError};
use meterline_schemas::ContactEmail;

/// How many notifications one poll claims.
const CLAIM_BATCH: i64 = 16;

/// The delay before attempt `attempt + 1` of a send: the `attempt`-th delay of
/// [`crate::backoff`], d = base × 2^(attempt-1) capped at `max`, somewhere in `[d/2, d)`.
pub fn retry_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    // Past 64 doublings every delay is capped anyway.
    let n = attempt.saturating_sub(1).min(64) as usize;
    crate::backoff(base, max).build().nth(n).unwrap_or(max)
}

pub async fn run(n: Notifier, shutdown: CancellationToken) {
    let poll = Duration::from_millis(n.config.poll_interval_ms);
    tracing::info!("notifier worker started");
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let claimed = match poll_once(&n).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbox poll failed; retrying");
                0
            }
        };
        if claimed == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = n.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Settles expired leases, then claims and sends one batch. Returns how many were claimed.
pub async fn poll_once(n: &Notifier) -> Result<usize, NotifyError> {
    let (requeued, unconfirmed) = outbox::recover_expired(&n.pg).await?;
    if requeued + unconfirmed > 0 {
        tracing::warn!(
            requeued,
            unconfirmed,
            "found notifications whose sender stopped mid-send"
        );
    }
    let lease = chrono::Duration::milliseconds(n.config.lease_ms as i64);
    let claimed = outbox::claim(&n.pg, CLAIM_BATCH, lease).await?;
    n.metrics.backlog.set(claimed.len() as i64);
    let count = claimed.len();
    for c in claimed {
        let span = tracing::info_span!("deliver", notification = c.id, account_id = %c.account_id, destination = %c.destination, kind = %c.kind, attempt = c.attempts);
        settle(n, &c).instrument(span).await?;
    }
    Ok(count)
}

/// Records the outcome of a send, retrying while PostgreSQL is unreachable: the outcome is
/// known only here, and a row left `sending` would be settled by its lease as "unknown"
/// (a Slack alert then waits for a person, though this process knows what happened).
async fn until_recorded<F, Fut>(record: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let max = Duration::from_secs(5);
    let mut delays = crate::backoff(Duration::from_millis(100), max).build();
    loop {
        match record().await {
            Ok(()) => return,
            Err(e) => {
                let wait = delays.next().unwrap_or(max);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "could not record a send's outcome; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn settle(n: &Notifier, c: &Claimed) -> Result<(), NotifyError> {
    let (label, result) = send(n, c).await;
    if result.is_ok() {
        failpoint("notifier-after-send");
    }
    let outcome = match &result {
        Ok(_) => "sent",
        Err(SendError::RateLimited { .. }) => "rate_limited",
        Err(SendError::Transient(_)) => "failed",
        Err(SendError::Permanent(_)) => "rejected",
        Err(SendError::Skipped(_)) => "skipped",
    };
    n.metrics.sends.with_label_values(&[label, outcome]).inc();
    match result {
        Ok(to) => {
            until_recorded(|| outbox::mark_sent(&n.pg, c.id, &to)).await;
            tracing::info!(delivered_to = %to, "notification sent");
        }
        Err(SendError::Skipped(why)) => {
            until_recorded(|| outbox::mark_skipped(&n.pg, c.id, &why)).await;
            tracing::info!(%why, "notification skipped");
        }
        Err(SendError::RateLimited { after, detail }) => {
            let next = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            until_recorded(|| outbox::mark_retry(&n.pg, c.id, next, &detail, false)).await;
            tracing::warn!(retry_in_ms = after.as_millis() as u64, %detail, "rate limited; waiting as asked");
        }
        Err(SendError::Transient(e)) if (c.attempts as u32) < n.config.max_attempts => {
            let delay = retry_delay(
                Duration::from_millis(n.config.backoff_base_ms),
                Duration::from_millis(n.config.backoff_max_ms),
                c.attempts as u32,
            );
            let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            until_recorded(|| outbox::mark_retry(&n.pg, c.id, next, &e, true)).await;
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "send failed; will retry");
        }
        Err(SendError::Transient(e) | SendError::Permanent(e)) => {
            until_recorded(|| outbox::mark_dead(&n.pg, c.id, &e)).await;
            n.metrics
                .dead
                .with_label_values(&[destination_label(&c.destination)])
                .inc();
            tracing::error!(error = %e, "notification moved to dead-letter; `meterline notifications retry` sends it again");
        }
    }
    Ok(())
}

async fn send(n: &Notifier, c: &Claimed) -> (&'static str, Result<String, SendError>) {
    match Destination::parse(&c.destination) {
        Some(Destination::Slack(channel)) if n.slack.configured(&channel) => {
            ("slack", n.slack.post(&channel, &c.payload).await)
        }
        Some(Destination::HubSpot) if n.hubspot.configured() => ("hubspot", sync_deal(n, c).await),
        Some(Destination::Notice) => ("notice", Ok(c.destination.clone())),
        Some(Destination::Email) => ("email", send_email(n, c).await),
        Some(_) => ("local", local_sink(n, c).await),
        None => (
            "other",
            Err(SendError::Permanent(format!(
                "unknown destination {:?}",
                c.destination
            ))),
        ),
    }
}

/// Writes the notification to the local sink (one file per message).
async fn local_sink(n: &Notifier, c: &Claimed) -> Result<String, SendError> {
    n.sink
        .write(
            c.id,
            &c.destination,
            &c.account_id,
            c.kind.as_str(),
            &c.payload,
        )
        .await
}

/// Sends an email: the account's address and unsubscribe mark are read now (an unsubscribe
/// since the email was queued still wins), then SMTP, or the local sink when no SMTP server is
/// configured (the file has the message, not the address).
async fn send_email(n: &Notifier, c: &Claimed) -> Result<String, SendError> {
    let message: EmailMessage = serde_json::from_value(c.payload.clone())
        .map_err(|e| SendError::Permanent(format!("email in the outbox is unreadable: {e}")))?;
    let row: Option<(Option<String>, Option<chrono::DateTime<Utc>>)> = sqlx::query_as(
        "SELECT contact_email, email_unsubscribed_at FROM accounts WHERE account_id = $1",
    )
    .bind(&c.account_id)
    .fetch_optional(&n.pg)
    .await
    .map_err(|e| SendError::Transient(format!("postgres: {e}")))?;
    let (address, email_unsubscribed_at) = row.unwrap_or_default();
    let account = AccountInfo {
        has_contact_email: address.is_some(),
        email_unsubscribed_at,
        ..Default::default()
    };
    if let Some(why) = email_skip(&account) {
        return Err(SendError::Skipped(why));
    }
    let to = ContactEmail::parse(
        "accounts.contact_email",
        address.as_deref().unwrap_or_default(),
    )
    .map_err(|e| SendError::Skipped(format!("email skipped: {e}")))?;
    if n.mailer.configured() {
        n.mailer.send(c.id, &to, &message).await
    } else {
        local_sink(n, c).await
    }
}

async fn sync_deal(n: &Notifier, c: &Claimed) -> Result<String, SendError> {
    let request: DealRequest = serde_json::from_value(c.payload.clone()).map_err(|e| {
        SendError::Permanent(format!("deal request in the outbox is unreadable: {e}"))
    })?;
    let known: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT deal_id, company_id FROM hubspot_deals WHERE account_id = $1")
            .bind(&c.account_id)
            .fetch_optional(&n.pg)
            .await
            .map_err(|e| SendError::Transient(format!("postgres: {e}")))?;
    let known = known
        .map(|(deal, company)| HubSpotIds {
            deal_id: Some(deal),
            company_id: company,
        })
        .unwrap_or_default();
    let pg = n.pg.clone();
    let account = c.account_id.clone();
    n.hubspot
        .sync_deal(&request, known, move |ids| {
            let pg = pg.clone();
            let account = account.clone();
            async move {
                let result = match &ids.deal_id {
                    Some(deal) => sqlx::query(
                        "INSERT INTO hubspot_deals (account_id, deal_id, company_id) VALUES ($1, $2, $3) \
                         ON CONFLICT (account_id) DO UPDATE SET deal_id = $2, company_id = COALESCE($3, hubspot_deals.company_id), updated_at = now()",
                    )
                    .bind(&account)
                    .bind(deal)
                    .bind(&ids.company_id)
                    .execute(&pg)
                    .await,
                    None => sqlx::query("DELETE FROM hubspot_deals WHERE account_id = $1").bind(&account).execute(&pg).await,
                };
                if let Err(e) = result {
                    // The deal is still found by its account-id property next time.
                    tracing::warn!(error = %e, "could not save the HubSpot ids");
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        // backon computes in f32 seconds: allow a microsecond either way.
        let within = |d: Duration, lo: Duration, hi: Duration| {
            d + Duration::from_micros(1) >= lo && d <= hi + Duration::from_micros(1)
        };
        for (attempt, full) in [
            (0, base),
            (1, base),
            (3, base * 4),
            (6, base * 32),
            (7, cap),
            (30, cap),
            (u32::MAX, cap),
        ] {
            let delays: Vec<Duration> = (0..200).map(|_| retry_delay(base, cap, attempt)).collect();
            for d in &delays {
                assert!(within(*d, full / 2, full), "attempt {attempt}: {d:?}");
            }
            // Jittered: not all the same.
            assert!(delays.iter().any(|d| *d != delays[0]), "attempt {attempt}");
        }
        // The loops' iterator keeps going.
        assert_eq!(
            crate::backoff(base, cap).build().take(10_000).count(),
            10_000
        );
    }
}
