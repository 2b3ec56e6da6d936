//! Account profiles (plan, limit overrides, review state), kept in process.
//!
//! The decision path must not query PostgreSQL per request, so a profile is loaded once and
//! then served from memory. It stays right because PostgreSQL announces every change: triggers
//! on `accounts` and `account_limit_overrides` send the account id on the `meterline_accounts`
//! channel when a transaction commits (migration `0002_read_path.sql`), and [`listen`] drops
//! that account's entry. If the listening connection drops, notifications may have been
//! missed, so the whole cache is dropped. A time-to-live bounds the damage of anything else.
//!
//! A load that races an invalidation must not put the stale profile back: every invalidation
//! bumps a generation, and a load only caches what it read if no invalidation happened while
//! it was reading.
//!
//! [`listen`]: AccountDirectory::listen

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meterline_schemas::limits::AccountProfile;
use meterline_schemas::review::ReviewState;
use meterline_schemas::{AccountId, Plan};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The channel the PostgreSQL triggers notify on.
pub const ACCOUNTS_CHANNEL: &str = "meterline_accounts";

struct Cached {
    profile: Arc<AccountProfile>,
    /// When the entry is due for a background reload; spread over 50–100 % of the TTL so
    /// profiles loaded together (a restart, a burst of new accounts) do not all reload at once.
    stale_at: Instant,
    /// When it may no longer answer at all.
    expires_at: Instant,
    refreshing: bool,
}

#[derive(Clone)]
pub struct AccountDirectory {
    pool: PgPool,
    ttl: Duration,
    cache: Arc<RwLock<HashMap<String, Cached>>>,
    generation: Arc<AtomicU64>,
}

impl AccountDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// The account's profile. An account PostgreSQL does not know yet (its signup may still be
    /// on its way) is on the free plan with no overrides; when its row appears, the trigger
    /// invalidates this answer.
    pub async fn profile(&self, account: &AccountId) -> Result<Arc<AccountProfile>, sqlx::Error> {
        if let Some(c) = self.cache.read().expect("poisoned").get(account.as_str()) {
            if Instant::now() < c.stale_at {
                return Ok(c.profile.clone());
            }
        }
        // Past its time-to-live (changes arrive by notification; this is the backstop), an
        // entry still answers while one background reload refreshes it, so no request waits.
        {
            let mut cache = self.cache.write().expect("poisoned");
            if let Some(c) = cache.get_mut(account.as_str()) {
                if Instant::now() < c.expires_at {
                    if !c.refreshing {
                        c.refreshing = true;
                        let (directory, account) = (self.clone(), account.clone());
                        tokio::spawn(async move {
                            if let Err(e) = directory.reload(&account).await {
                                tracing::warn!(error = %e, "profile reload failed");
                                directory.invalidate(account.as_str());
                            }
                        });
                    }
                    return Ok(c.profile.clone());
                }
            }
        }
        self.reload(account).await
    }

    async fn reload(&self, account: &AccountId) -> Result<Arc<AccountProfile>, sqlx::Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let profile = Arc::new(load(&self.pool, account.as_str()).await?);
        if self.generation.load(Ordering::Acquire) == generation {
            let now = Instant::now();
            self.cache.write().expect("poisoned").insert(
                account.as_str().to_owned(),
                Cached {
                    profile: profile.clone(),
                    stale_at: now + self.ttl.mul_f64(rand::random_range(0.5..1.0)),
                    expires_at: now + self.ttl * 2,
                    refreshing: false,
                },
            );
        }
        Ok(profile)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn invalidate(&self, account: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.write().expect("poisoned").remove(account);
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.write().expect("poisoned").clear();
    }

    /// Subscribes to profile changes. Returns once listening, so no change made after it
    /// returns can be missed; the subscription runs until `shutdown`.
    pub async fn listen(
        &self,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(ACCOUNTS_CHANNEL).await?;
        let directory = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) => directory.invalidate(n.payload()),
                        Ok(None) => {
                            tracing::warn!("account listener reconnecting; dropping cached profiles");
                            directory.clear();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "account listener failed; dropping cached profiles");
                            directory.clear();
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }))
    }
}

async fn load(pool: &PgPool, account: &str) -> Result<AccountProfile, sqlx::Error> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT plan, review_state FROM accounts WHERE account_id = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?;
    let overrides: Vec<(String, f64)> = sqlx::query_as(
        // An override scoped to a plan (an experiment's) applies only while the account is on it.
        "SELECT o.limit_name, o.value FROM account_limit_overrides o LEFT JOIN accounts a USING (account_id) \
         WHERE o.account_id = $1 AND (o.plan IS NULL OR o.plan = COALESCE(a.plan, 'free'))",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let (plan, review) = row.unwrap_or_else(|| ("free".into(), None));
    Ok(AccountProfile {
        // The columns' CHECK constraints admit only known plans and review states.
        plan: Plan::parse("plan", &plan).unwrap_or(Plan::Free),
        overrides: overrides.into_iter().collect::<BTreeMap<_, _>>(),
        review: review.as_deref().and_then(ReviewState::parse),
    })
}

/// Sets one limit override for an account.
pub async fn set_limit_override(
    pool: &PgPool,
    account: &str,
    limit_name: &str,
    value: f64,
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO account_limit_overrides (account_id, limit_name, value, source) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (account_id, limit_name) DO UPDATE SET value = EXCLUDED.value, source = EXCLUDED.source, updated_at = now()",
    )
    .bind(account)
    .bind(limit_name)
    .bind(value)
    .bind(source)
    .execute(pool)
    .await?;
    Ok(())
}
