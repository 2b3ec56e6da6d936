//! The scorer: reads the hot state (Redis), the history (ClickHouse) and the accounts
//! (PostgreSQL), and turns them into scores people act on and signals the notifier delivers.
//!
//! * [`facts`]: everything the rules know about an account, as plain data;
//! * [`rules`]: one file per score family, pure functions with their boundaries tested;
//! * [`config`]: every weight and threshold, and the plans each rule watches;
//! * [`score`]: facts to [`score::Scores`] (every score with its reasons, for every account)
//!   and to [`score::Signal`]s (only for the plans each kind's rule watches);
//! * [`load`]: gathers facts for a batch of accounts, one query per fact kind;
//! * [`store`]: current scores, score history and signals (exactly one per episode);
//! * [`crossings`]: each limit stage an account reaches, by event time, for the growth team's
//!   `limit_events`;
//! * [`reset`]: on a new month, `allowance_reset` for the accounts that hit a limit in the
//!   month before (seed 002's re-engagement);
//! * [`queue`]: the accounts waiting to be scored, in Redis sets kept per partition (the
//!   aggregator adds the accounts each checkpoint and account event changed) plus the
//!   scorer's own;
//! * [`worker`]: the loop. It drains the queue every second, so a change is scored within
//!   seconds without scanning every account, and a daily full pass catches what time alone
//!   changes.
//!   Early in each month it also runs the [`reset`] sweep once.

pub mod config;
pub mod crossings;
pub mod facts;
pub mod load;
pub mod metrics;
pub mod queue;
pub mod reset;
pub mod rules;
pub mod score;
pub mod store;
pub mod worker;

pub use config::ScorerConfig;
pub use worker::Scorer;

/// Anything that stops a batch from being scored; the batch's accounts are marked dirty again
/// and retried.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("encoding: {0}")]
    Encode(String),
}
