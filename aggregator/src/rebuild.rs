//! Rebuilding the Redis hot state from ClickHouse's raw events, after Redis lost it (flushed,
//! restored from an old snapshot, a new instance).
//!
//! It is the aggregator's own write path run over `usage_events` instead of Kafka: events are
//! read account by account, checked against the seen-sets, folded and marked seen in the same
//! per-account transactions. So it is idempotent (a second run, or a run over a Redis that
//! kept part of its state, adds nothing already counted), and windows whose keys would already
//! have expired are not recreated. Run it with the aggregators stopped: it and a live aggregator
//! could both count an event neither had marked yet.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use clickhouse::Row;
use meterline_schemas::{AccountId, UsageEvent};
use serde::Deserialize;

use crate::batch::fold_and_apply;
use crate::redis_sink::{seen_query, RedisSink};
use crate::SinkError;

/// How far back events can still have a live key: a month's keys live until 100 days after
/// the month ends.
const HORIZON_DAYS: i64 = 140;
/// Events folded per Redis round of seen checks.
const CHUNK: usize = 5_000;

#[derive(Debug, Row, Deserialize)]
struct RawEvent {
    event_id: String,
    occurred_at: u32,
    received_at: u32,
    account_id: String,
    api_key_id: String,
    gateway_id: String,
    region: String,
    cloud: String,
    provider: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    cost_micros: u64,
    status: Option<u16>,
    session_id: String,
    user_id: String,
    client_ip_hash: String,
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl RawEvent {
    fn into_event(self) -> Option<UsageEvent> {
        Some(UsageEvent {
            event_id: self.event_id,
            occurred_at: i64::from(self.occurred_at) * 1_000_000,
            received_at: i64::from(self.received_at) * 1_000_000,
            // Every stored id passed ingest's validation; one that no longer parses is skipped.
            account_id: AccountId::parse(&self.account_id).ok()?,
            api_key_id: self.api_key_id,
            gateway_id: self.gateway_id,
            region: self.region,
            cloud: self.cloud,
            provider: self.provider,
            model: self.model,
            input_tokens: self.input_tokens as i64,
            output_tokens: self.output_tokens as i64,
            cost_micros: Some(self.cost_micros as i64),
            latency_ms: None,
            status: self.status.map(i32::from),
            session_id: nonempty(self.session_id),
            user_id: nonempty(self.user_id),
            plugins: Vec::new(),
            pii_detected: false,
            client_ip_hash: nonempty(self.client_ip_hash),
            device_id: None,
            prompt_hash: None,
        })
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events read from ClickHouse (duplicate rows counted once).
    pub events: u64,
    /// Of those, already counted in Redis.
    pub already_counted: u64,
    pub accounts: u64,
}

/// Folds every event of the last [`HORIZON_DAYS`] days into Redis. `progress` is called with
/// the events read so far.
pub async fn rebuild_hot_state(
    ch: &clickhouse::Client,
    redis: &RedisSink,
    now: DateTime<Utc>,
    progress: impl Fn(u64),
) -> Result<Rebuilt, SinkError> {
    let from = (now - Duration::days(HORIZON_DAYS)).timestamp();
    let mut cursor = ch
        .query(
            "SELECT event_id, toUInt32(occurred_at) AS occurred_at, toUInt32(received_at) AS received_at, \
                    account_id, api_key_id, gateway_id, region, cloud, provider, model, input_tokens, \
                    output_tokens, cost_micros, status, session_id, user_id, client_ip_hash \
             FROM usage_events WHERE occurred_at >= toDateTime(?) ORDER BY account_id, event_id",
        )
        .bind(from)
        .fetch::<RawEvent>()?;
    let mut out = Rebuilt::default();
    let mut chunk: Vec<UsageEvent> = Vec::with_capacity(CHUNK);
    let mut last_id = String::new();
    let mut last_account = String::new();
    while let Some(row) = cursor.next().await? {
        // Sorted by account and id: a row stored twice (see ARCHITECTURE.md) is adjacent.
        if row.event_id == last_id && row.account_id == last_account {
            continue;
        }
        if row.account_id != last_account {
            out.accounts += 1;
            // Flush between accounts only, so each account's events go in together.
            if chunk.len() >= CHUNK {
                apply(redis, &mut chunk, now, &mut out).await?;
                progress(out.events);
            }
            last_account.clone_from(&row.account_id);
        }
        last_id.clone_from(&row.event_id);
        out.events += 1;
        if let Some(e) = row.into_event() {
            chunk.push(e);
        }
    }
    apply(redis, &mut chunk, now, &mut out).await?;
    progress(out.events);
    Ok(out)
}

async fn apply(
    redis: &RedisSink,
    chunk: &mut Vec<UsageEvent>,
    now: DateTime<Utc>,
    out: &mut Rebuilt,
) -> Result<(), SinkError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let seen: HashSet<String> = redis.already_seen(&seen_query(chunk)).await?;
    out.already_counted += seen.len() as u64;
    // Rows come ordered by account, so the chunk is grouped as `account_deltas` needs.
    let unseen: Vec<&UsageEvent> = chunk
        .iter()
        .filter(|e| !seen.contains(&e.event_id))
        .collect();
    fold_and_apply(redis, &unseen, now, |_| {}).await?;
    chunk.clear();
    Ok(())
}
