use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most request-body bytes the ingest endpoints hold at once, over all requests: what
    /// bounds ingest's memory when many clients send large bodies together. A request that
    /// would go over it gets `503` with `Retry-After` before its body is read.
    pub max_inflight_body_bytes: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// How long Kafka gets to acknowledge a batch before the request fails with 503.
    pub produce_timeout_ms: u64,
    /// How long a verified token is trusted without asking PostgreSQL again. After it, the
    /// token is re-read in the background while the cached answer still serves, so a
    /// revocation takes effect within about twice this time.
    pub auth_cache_ttl_ms: u64,
    /// The `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u64,
    /// How long an account profile (plan, overrides, review state) stays cached for the read
    /// path. Changes invalidate it at once through PostgreSQL notifications; this bounds the
    /// staleness should one be missed.
    pub profile_cache_ttl_ms: u64,
    /// Events per second one token may post (a token bucket); past it, `429` with
    /// `Retry-After`. 0 turns the limit off.
    pub rate_limit_events_per_sec: u64,
    /// Events one token may post at once before the rate applies.
    pub rate_limit_burst_events: u64,
    /// A connection must send a request's headers within this time, or it is closed (a
    /// slowloris client cannot hold connections open).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this time, or the answer is `408`.
    pub body_read_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_inflight_body_bytes: 256 * 1024 * 1024,
            max_events: 10_000,
            produce_timeout_ms: 5_000,
            auth_cache_ttl_ms: 5_000,
            retry_after_secs: 1,
            profile_cache_ttl_ms: 60_000,
            rate_limit_events_per_sec: 100_000,
            rate_limit_burst_events: 200_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}
