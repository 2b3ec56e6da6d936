//! The aggregator: Kafka in, ClickHouse + Redis + PostgreSQL out, exactly once per event.
//!
//! It is built like a small vector pipeline:
//!
//! * source, [`consumer`]: reads `usage-events` and `account-events` in a consumer group,
//!   cuts batches by size or time, and commits offsets only once they are durable (usage
//!   offsets from the state store's checkpoints, account offsets after their batch);
//! * transforms, [`decode`] (Confluent-framed Avro to events, or a reason for the
//!   dead-letter topic) and the state store's fold ([`state`]: each usage partition's accounts
//!   in memory, folded event by event);
//! * sinks, [`clickhouse_sink`], the state store's flush (per-account snapshots and
//!   per-partition checkpoints in Redis, run in the background while the consumer reads on),
//!   [`accounts_sink`] and [`dead_letter`]. [`fold`] and [`redis_sink`] are the previous hot
//!   state layout's writer, kept as the reference the new layout is tested against.
//!
//! How a batch stays exactly-once across crashes is in [`batch`]; `ARCHITECTURE.md` has the
//! long version.

pub mod accounts_sink;
pub mod batch;
pub mod clickhouse_sink;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod decode;
pub mod experiments;
pub mod fold;
pub mod inserter;
pub mod metrics;
pub mod rebuild;
pub mod redis_sink;
pub mod refetch;
pub mod state;

pub use config::AggregatorConfig;
pub use consumer::Aggregator;

/// Anything that stops a batch from being written. Every variant is transient from the
/// aggregator's point of view: the batch is retried with backoff and no offset is committed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("hot state: {0}")]
    HotState(String),
}
