//! Ingest: the HTTP front door for gateways. It also serves the read path ([`read`]): usage
//! and quota decisions from the hot state.
//!
//! A request goes through these steps, in this order:
//!
//! 1. [`auth`]: the bearer token is hashed and looked up (PostgreSQL, cached briefly); a missing
//!    or revoked token gets `401` before the body is read.
//! 2. [`body`]: the content type picks the framing (a JSON array, or NDJSON), the size and event
//!    count are bounded (`413`), and a body that cannot be split into events gets `400`.
//! 3. Each event is validated on its own (`meterline_schemas`), so one bad event never costs its
//!    neighbours; failures are reported by index with the field and the reason.
//! 4. [`producer`]: the valid events are Avro-encoded and produced to Kafka, keyed by
//!    `account_id`. The `202` is written only after Kafka has acknowledged every one of them
//!    (acks=all, idempotent producer); otherwise the answer is `503` with `Retry-After`, and the
//!    gateway retries the whole batch, which deduplication downstream makes safe.

pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod producer;
pub mod rate_limit;
pub mod read;
pub mod routes;
pub mod server;

pub use app::{router, AppState};
pub use auth::{Principal, Scope, TokenStore};
pub use config::IngestConfig;
pub use producer::EventProducer;
