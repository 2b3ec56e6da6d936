//! The scoring loop: drain the dirty set, score, store, move accounts into (or out of)
//! review, raise; once a day, everyone; early in each month, the reset sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use meterline_schemas::limits::{QuotaConfig, TiersConfig};
use meterline_schemas::AccountId;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ScorerConfig;
use crate::load::Stores;
use crate::metrics::ScorerMetrics;
use crate::reset;
use crate::score::{score, signals, Scores};
use crate::store::ScoreStore;
use crate::ScoreError;

#[derive(Clone)]
pub struct Scorer {
    pub stores: Stores,
    pub store: ScoreStore,
    pub quota: Arc<QuotaConfig>,
    pub tiers: Arc<TiersConfig>,
    pub config: Arc<ScorerConfig>,
    pub metrics: ScorerMetrics,
}

impl Scorer {
    /// Scores accounts without storing anything (for `meterline scores`).
    pub async fn compute(&self, accounts: &[AccountId]) -> Result<Vec<Scores>, ScoreError> {
        let now = Utc::now();
        let facts = self
            .stores
            .facts(accounts, now, &self.quota, &self.tiers, &self.config)
            .await?;
        Ok(facts
            .iter()
            .map(|f| score(f, &self.quota, &self.tiers, &self.config))
            .collect())
    }

    /// Scores, stores and raises signals for a batch.
    pub async fn score_batch(&self, accounts: &[AccountId]) -> Result<Vec<Scores>, ScoreError> {
        let started = Instant::now();
        let all = self.compute(accounts).await?;
        for s in &all {
            // Instrumented, not entered: an entered span would stay current on this thread
            // across the awaits, and other tasks' events would be logged under this account.
            let span = tracing::debug_span!("score", account_id = %s.account_id);
            async {
                let last_suspected = self.store.save(s).await?;
                if let Some(action) = self.store.review(s, last_suspected).await? {
                    tracing::info!(kind = action.event().as_str(), abuse = s.abuse.value, "review move");
                }
                self.store
                    .record_crossings(s, &self.quota, self.tiers.get(s.plan))
                    .await?;
                for sig in signals(s, &self.config) {
                    if self.store.raise(&sig).await? {
                        tracing::info!(kind = sig.kind.as_str(), episode = %sig.episode, "signal raised");
                        self.metrics
                            .signals
                            .with_label_values(&[sig.kind.as_str()])
                            .inc();
                    }
                }
                Ok::<_, ScoreError>(())
            }
            .instrument(span)
            .await?;
        }
        self.metrics.scored.inc_by(all.len() as u64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(all)
    }

    /// Raises `allowance_reset` for the accounts that hit a limit in the month before `now`'s
    /// ([`crate::reset`]). Returns how many were raised now (a second sweep raises none).
    pub async fn reset_sweep(&self, now: DateTime<Utc>) -> Result<usize, ScoreError> {
        let last_stage = self.quota.stages.last().copied().unwrap_or(100);
        let hits = reset::last_month_hits(&self.stores.pg, last_stage, now).await?;
        let mut raised = 0;
        for sig in reset::reset_signals(&self.config, &hits, now) {
            let span = tracing::debug_span!("reset", account_id = %sig.account_id);
            if self.store.raise(&sig).instrument(span).await? {
                raised += 1;
                self.metrics
                    .signals
                    .with_label_values(&[sig.kind.as_str()])
                    .inc();
            }
        }
        Ok(raised)
    }

    async fn take_dirty(&self) -> Result<Vec<String>, ScoreError> {
        Ok(self.stores.queue().take(self.config.batch_size).await?)
    }

    async fn put_back(&self, ids: &[String]) {
        if let Err(e) = self.stores.queue().put_back(ids).await {
            tracing::error!(error = %e, accounts = ids.len(), "could not queue accounts again; the daily pass will score them");
        }
    }

    /// Scores `ids`; on failure they go back in the dirty set, to be retried.
    async fn score_ids(&self, ids: Vec<String>) -> bool {
        let accounts: Vec<AccountId> = ids
            .iter()
            .filter_map(|id| match AccountId::parse(id) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(account_id = %id, error = %e, "skipping an invalid account id");
                    None
                }
            })
            .collect();
        match self.score_batch(&accounts).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, accounts = ids.len(), "scoring failed; will retry");
                self.metrics.failures.inc();
                self.put_back(&ids).await;
                false
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ScoreError> {
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut last_full_pass: Option<NaiveDate> = None;
        // The month (`YYYYMM`) whose reset sweep has run in this process.
        let mut last_reset: Option<String> = None;
        let mut backoff = interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            let now = Utc::now();
            if now.hour() == self.config.full_pass_hour && last_full_pass != Some(now.date_naive())
            {
                match self.stores.all_accounts(now).await {
                    Ok(all) => {
                        tracing::info!(accounts = all.len(), "daily full pass");
                        self.put_back(&all).await;
                        last_full_pass = Some(now.date_naive());
                    }
                    Err(e) => tracing::warn!(error = %e, "daily full pass could not list accounts"),
                }
            }
            let month = reset::months(now).1;
            if reset::in_sweep_window(&self.config, now) && last_reset.as_ref() != Some(&month) {
                match self.reset_sweep(now).await {
                    Ok(n) => {
                        tracing::info!(raised = n, %month, "monthly reset sweep");
                        last_reset = Some(month);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "monthly reset sweep failed; retried next tick")
                    }
                }
            }
            backoff = interval;
            // Drain what is dirty now; new changes wait for the next tick.
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let ids = match self.take_dirty().await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the dirty set failed");
                        backoff = (interval * 5).min(Duration::from_secs(10));
                        break;
                    }
                };
                if ids.is_empty() {
                    break;
                }
                let full = ids.len() >= self.config.batch_size;
                if !self.score_ids(ids).await {
                    backoff = (interval * 5).min(Duration::from_secs(10));
                    break;
                }
                if !full {
                    break;
                }
            }
        }
    }
}

impl meterline_infra::Component for Scorer {
    fn name(&self) -> &'static str {
        "scorer"
    }

    fn metrics(&self) -> prometheus::Registry {
        self.metrics.registry.clone()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> meterline_infra::RunFuture {
        Box::pin(async move { Ok(Scorer::run(*self, shutdown).await?) })
    }
}
