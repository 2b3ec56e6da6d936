//! Current, unseen dashboard notices, kept in process so a quota decision can carry one
//! (`dashboard_notice`) without asking PostgreSQL.
//!
//! The notifier owns `dashboard_notices`; ingest marks `shown_at` / `clicked_at` when the
//! gateway reports them. A notice is *unseen* while neither mark is set and it has not expired.
//! This cache holds, per account, the most recent unseen notice and nothing else, so its size is
//! bounded by the accounts that have one waiting, not by the table's history.
//!
//! It stays right the way the [account directory](super::directory) does: a trigger on
//! `dashboard_notices` (migration `0012_notice_notify.sql`) sends the account id on the
//! `meterline_notices` channel when an insert, a mark or a delete commits, and the task of
//! [`NoticeCache::start`] reloads that account's unseen notice. Notifications arrive in commit
//! order and are applied one batch at a time by a single task, so once a later change is visible
//! every earlier one is too (the end-to-end tests rely on that as their sentinel). Expiry needs no notification: a lookup
//! ignores an expired notice, and expired entries are pruned every minute.
//!
//! At start, the task listens first and then loads every unseen notice, so nothing committed
//! in between is missed. If the listening connection drops, notifications may have been lost:
//! the cache is emptied (a notice already shown must not be offered again) and reloaded in full
//! once listening again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// The channel the `dashboard_notices` trigger notifies on.
pub const NOTICES_CHANNEL: &str = "meterline_notices";

/// How often expired notices are dropped from memory (lookups already ignore them).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A dashboard notice the account has not seen yet, as a quota decision carries it: the fields
/// of `GET /v1/accounts/{id}/notice` but `shown_at`, which is null by definition. The gateway
/// shows it and then reports it with `POST /v1/accounts/{id}/notices/{notice_id}/shown`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct DashboardNotice {
    pub notice_id: Uuid,
    /// The signal that suggested it (for example `rate_limit_sustained`).
    pub kind: String,
    /// The text for the account holder.
    pub message: String,
    pub upgrade_url: String,
    /// The plan that lifts the limit.
    pub plan: String,
    pub created_at: DateTime<Utc>,
    /// When it stops being current, shown or not.
    pub expires_at: DateTime<Utc>,
}

/// The in-memory part: account → its most recent unseen notice. Pure, so its rules are tested
/// without PostgreSQL.
#[derive(Debug, Default)]
struct Board(HashMap<String, Arc<DashboardNotice>>);

impl Board {
    /// The account's notice, if it has not expired by `now`.
    fn current(&self, account: &str, now: DateTime<Utc>) -> Option<Arc<DashboardNotice>> {
        self.0.get(account).filter(|n| n.expires_at > now).cloned()
    }

    /// Puts what PostgreSQL holds for `accounts` in place: each gets its most recent notice in
    /// `rows`, or none.
    fn apply(&mut self, accounts: &[String], rows: Vec<(String, DashboardNotice)>) {
        for a in accounts {
            self.0.remove(a);
        }
        self.insert_latest(rows);
    }

    /// Replaces everything with `rows`.
    fn replace(&mut self, rows: Vec<(String, DashboardNotice)>) {
        self.0.clear();
        self.insert_latest(rows);
    }

    fn insert_latest(&mut self, rows: Vec<(String, DashboardNotice)>) {
        for (account, notice) in rows {
            match self.0.get(&account) {
                Some(held) if held.created_at >= notice.created_at => {}
                _ => {
                    self.0.insert(account, Arc::new(notice));
                }
            }
        }
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        self.0.retain(|_, n| n.expires_at > now);
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    account_id: String,
    #[sqlx(flatten)]
    notice: DashboardNotice,
}

/// Every account's most recent unseen, unexpired notice (the partial index of migration 0012
/// keeps this to the unseen ones).
const ALL_UNSEEN: &str = "SELECT DISTINCT ON (account_id) account_id, notice_id, kind, message, upgrade_url, plan, created_at, expires_at \
     FROM dashboard_notices \
     WHERE shown_at IS NULL AND clicked_at IS NULL AND expires_at > now() \
     ORDER BY account_id, created_at DESC";

/// The same for some accounts (`$1`).
const UNSEEN_OF: &str = "SELECT DISTINCT ON (account_id) account_id, notice_id, kind, message, upgrade_url, plan, created_at, expires_at \
     FROM dashboard_notices \
     WHERE account_id = ANY($1) AND shown_at IS NULL AND clicked_at IS NULL AND expires_at > now() \
     ORDER BY account_id, created_at DESC";

/// Each account's most recent unseen dashboard notice; see the module documentation.
#[derive(Clone)]
pub struct NoticeCache {
    pool: PgPool,
    board: Arc<RwLock<Board>>,
}

impl NoticeCache {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            board: Arc::default(),
        }
    }

    /// The account's unseen notice, if one is current at `now`. Memory only.
    pub fn current(&self, account: &str, now: DateTime<Utc>) -> Option<Arc<DashboardNotice>> {
        self.board.read().expect("poisoned").current(account, now)
    }

    /// How many accounts have an unseen notice held in memory.
    pub fn len(&self) -> usize {
        self.board.read().expect("poisoned").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn load(
        &self,
        accounts: Option<&[String]>,
    ) -> Result<Vec<(String, DashboardNotice)>, sqlx::Error> {
        let rows: Vec<Row> = match accounts {
            None => sqlx::query_as(ALL_UNSEEN).fetch_all(&self.pool).await?,
            Some(a) => {
                sqlx::query_as(UNSEEN_OF)
                    .bind(a)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|r| (r.account_id, r.notice)).collect())
    }

    /// Reloads everything from PostgreSQL.
    async fn resync(&self) -> Result<(), sqlx::Error> {
        let rows = self.load(None).await?;
        let n = rows.len();
        self.board.write().expect("poisoned").replace(rows);
        tracing::info!(notices = n, "loaded the unseen dashboard notices");
        Ok(())
    }

    /// Reloads the named accounts.
    async fn reload(&self, accounts: &[String]) -> Result<(), sqlx::Error> {
        let rows = self.load(Some(accounts)).await?;
        self.board.write().expect("poisoned").apply(accounts, rows);
        Ok(())
    }

    fn clear(&self) {
        self.board.write().expect("poisoned").0.clear();
    }

    fn prune(&self, now: DateTime<Utc>) {
        self.board.write().expect("poisoned").prune(now);
    }

    /// Listens for notice changes, loads every unseen notice, and returns once both are done
    /// (so a check made after it returns sees every notice committed before); the task that
    /// applies changes runs until `shutdown`.
    pub async fn start(
        &self,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
        let listener = connect(&self.pool).await?;
        self.resync().await?;
        let cache = self.clone();
        Ok(tokio::spawn(async move {
            // Pruning runs beside the listener rather than in its `select!`: a notification
            // half read when another branch won would be lost.
            let prune = async {
                let mut every = tokio::time::interval(PRUNE_EVERY);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = every.tick() => cache.prune(Utc::now()),
                    }
                }
            };
            tokio::join!(prune, apply_changes(&cache, listener, &shutdown));
        }))
    }
}

/// Applies notifications until `shutdown`; see the module documentation.
async fn apply_changes(
    cache: &NoticeCache,
    mut listener: PgListener,
    shutdown: &CancellationToken,
) {
    loop {
        let lost = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = listener.try_recv() => match received {
                Ok(Some(n)) => {
                    // Everything already delivered goes in one query.
                    let mut accounts = vec![n.payload().to_owned()];
                    while let Some(n) = listener.next_buffered() {
                        accounts.push(n.payload().to_owned());
                    }
                    accounts.sort_unstable();
                    accounts.dedup();
                    match cache.reload(&accounts).await {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(error = %e, "reloading dashboard notices failed");
                            true
                        }
                    }
                }
                // Reconnected and listening again; what happened meanwhile is unknown.
                Ok(None) => {
                    tracing::warn!("notice listener reconnected; reloading dashboard notices");
                    cache.clear();
                    cache.resync().await.is_err()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notice listener failed");
                    true
                }
            }
        };
        if lost {
            cache.clear();
            match recover(cache, shutdown).await {
                Some(l) => listener = l,
                None => return,
            }
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTICES_CHANNEL).await?;
    Ok(listener)
}

/// A new listener, then a full reload, retried every second; `None` on shutdown.
async fn recover(cache: &NoticeCache, shutdown: &CancellationToken) -> Option<PgListener> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let attempt = async {
            let l = connect(&cache.pool).await?;
            cache.resync().await?;
            Ok::<_, sqlx::Error>(l)
        };
        match attempt.await {
            Ok(l) => return Some(l),
            Err(e) => tracing::warn!(error = %e, "notice listener still down; retrying"),
        }
    }
}

#[cfg(test)]
mod tests;
