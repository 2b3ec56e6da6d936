//! Shared infrastructure: how every component reaches the servers it talks to.
//!
//! Each module holds one kind of server's configuration section and the client built from it,
//! so that the ingest, aggregator, scorer and notifier crates configure their clients the same
//! way without depending on each other:
//!
//! * [`kafka`]: brokers, topic names and librdkafka properties ([`KafkaConfig`]), and the base
//!   client configuration every producer and consumer starts from ([`kafka::client_config`]).
//! * [`clickhouse`]: the history store ([`ClickHouseConfig`]).
//! * [`redis`]: the hot state ([`RedisConfig`]).
//! * [`component`]: the one trait every long-running component implements, and
//!   [`http_server`]: serving HTTP with limits on slow clients, and `/metrics` for a process
//!   without ingest.
//! * [`backoff`]: the one retry backoff (exponential, equal jitter) the components use.
//! * [`registry`]: where Avro schema ids come from: a Confluent-compatible Schema Registry when
//!   one is configured, otherwise our own PostgreSQL table `avro_schemas`.
//!
//! What crosses a process boundary (events, Avro, Redis key names, topics, signals) is not
//! here: that is `meterline-schemas`, which has no I/O at all.

pub mod backoff;
pub mod clickhouse;
pub mod component;
pub mod http_server;
pub mod kafka;
pub mod redis;
pub mod registry;

pub use self::clickhouse::ClickHouseConfig;
pub use self::kafka::KafkaConfig;
pub use self::redis::RedisConfig;
pub use component::{BoxError, Component, RunFuture};
pub use registry::{RegistryError, SchemaRegistry};
