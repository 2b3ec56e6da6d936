//! The benchmark's dashboard notices: written before the services start, checked in every
//! warm-up decision, deleted at the end.

use std::collections::HashMap;

use anyhow::{Context, Result};
use uuid::Uuid;

/// The run's dashboard notices: one for every account whose number is a multiple of
/// `1 / share`, written as the notifier writes them and tagged with the run (`signal_id`), so
/// the run deletes exactly its own at the end (and they expire within the hour if it dies).
pub(super) struct BenchNotices {
    /// Account number → its notice.
    pub(super) ids: HashMap<usize, Uuid>,
    signal: String,
}

impl BenchNotices {
    pub(super) async fn write(
        pool: &sqlx::PgPool,
        run: &str,
        accounts: usize,
        share: f64,
    ) -> Result<Self> {
        let signal = format!("bench-quota:{run}");
        let every = if share > 0.0 {
            (1.0 / share).round().max(1.0) as usize
        } else {
            usize::MAX
        };
        let ids: HashMap<usize, Uuid> = (0..accounts)
            .filter(|a| a % every == 0)
            .map(|a| (a, Uuid::new_v4()))
            .collect();
        let (numbers, notice_ids): (Vec<String>, Vec<Uuid>) = ids
            .iter()
            .map(|(a, id)| (format!("bench-{a}"), *id))
            .unzip();
        sqlx::query(
            "INSERT INTO dashboard_notices \
               (notice_id, account_id, kind, message, upgrade_url, plan, signal_id, created_at, expires_at) \
             SELECT n, a, 'rate_limit_sustained', \
               'You''re growing fast! Your team has been averaging 80+ req/min this week. Upgrading to Pro (1,000 req/min) gives you room to scale.', \
               'https://meterline.example/upgrade?plan=pro', 'pro', $3, now(), now() + interval '1 hour' \
             FROM UNNEST($1::uuid[], $2::text[]) AS t(n, a)",
        )
        .bind(&notice_ids)
        .bind(&numbers)
        .bind(&signal)
        .execute(pool)
        .await
        .context("writing the run's dashboard notices")?;
        Ok(Self { ids, signal })
    }

    /// Fails unless account `a`'s decision carries its notice, or none when it has none (a
    /// notice of another run of this benchmark is let through).
    pub(super) fn check(&self, a: usize, decision: &serde_json::Value) -> Result<()> {
        let got = decision["dashboard_notice"]["notice_id"].as_str();
        match self.ids.get(&a) {
            Some(want) => anyhow::ensure!(
                got == Some(want.to_string().as_str()),
                "bench-{a} holds notice {want}, its decision carried {got:?}: {decision}"
            ),
            None => anyhow::ensure!(
                got.is_none_or(|g| !self.ids.values().any(|id| id.to_string() == g)),
                "bench-{a} holds no notice of this run, its decision carried {got:?}"
            ),
        }
        Ok(())
    }

    pub(super) async fn remove(&self, pool: &sqlx::PgPool) -> Result<()> {
        sqlx::query("DELETE FROM dashboard_notices WHERE signal_id = $1")
            .bind(&self.signal)
            .execute(pool)
            .await?;
        Ok(())
    }
}
