//! Rebuilding the Redis hot state from ClickHouse's raw events, after Redis lost it (flushed,
//! restored from an old snapshot, a new instance), in layout v2 (`docs/design/hot-state-v2.md`
//! §6a). Run it with the aggregators stopped.
//!
//! 1. Every usage partition is claimed, so any stray writer is fenced.
//! 2. `usage_events` of the last `HORIZON_DAYS` days are read account by account (a row stored
//!    twice is skipped), and each account's events are folded by the aggregator's own
//!    [`AccountState`] into a state that holds them all ([`AccountState::whole`]: closed
//!    windows are written to their hashes whole). It is written with the epoch guard only, as
//!    stored up to its last offset in its partition.
//! 3. Each partition's counted ids get the ids of the days still deduplicated, and its
//!    checkpoint the ClickHouse watermark, so the aggregators resume after what ClickHouse
//!    holds and deduplicate as before.
//!
//! Every value written is absolute, so a second run writes the same state.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use clickhouse::Row;
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::keys::{Grain, SEEN_RETENTION_AFTER_DAY_SECS};
use meterline_schemas::{AccountId, UsageEvent};
use serde::Deserialize;

use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::fold::occurred_at;
use crate::state::account::AccountState;
use crate::state::seen::Ids;
use crate::state::writer::{StateWriter, Written};
use crate::SinkError;

/// How far back events can still have a live key: a month's keys live until 100 days after
/// the month ends.
const HORIZON_DAYS: i64 = 140;
/// Seen ids and changed accounts sent per checkpoint call.
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
    kafka_partition: u32,
    kafka_offset: u64,
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
    /// Of those, events that no longer parse (an account id that does not), left out.
    pub skipped: u64,
    pub accounts: u64,
    /// Partitions checkpointed.
    pub partitions: u64,
}

/// Where the rebuild writes: the hot state's connection and keys, the usage topic and its
/// partition count.
pub struct Target {
    pub conn: HotConn,
    pub keys: HotKeys,
    pub topic: String,
    pub partitions: i32,
}

impl Target {
    fn writer(&self, partition: i32) -> StateWriter<HotConn> {
        StateWriter::new(self.conn.clone(), self.keys.clone(), &self.topic, partition)
    }
}

/// One partition's part of the rebuild: its writer and epoch, and the seen ids and accounts
/// its checkpoint still has to take.
struct PartitionRebuild {
    writer: StateWriter<HotConn>,
    epoch: i64,
    /// The checkpoint found when claiming: kept by the checkpoints written mid-way, so a rebuild
    /// that stops half-way leaves the aggregators to resume where they were, not past accounts
    /// it has not written.
    claimed_at: i64,
    seen: BTreeMap<DateTime<Utc>, Ids>,
    pending: usize,
    accounts: Vec<String>,
}

impl PartitionRebuild {
    async fn checkpoint(&mut self, o: i64) -> Result<(), SinkError> {
        let accounts: Vec<&str> = self.accounts.iter().map(String::as_str).collect();
        if !self
            .writer
            .checkpoint(self.epoch, o, &accounts, &self.seen)
            .await?
        {
            return Err(fenced());
        }
        self.seen.clear();
        self.accounts.clear();
        self.pending = 0;
        Ok(())
    }
}

fn fenced() -> SinkError {
    SinkError::HotState(
        "a newer writer claimed a partition during the rebuild; stop the aggregators and run it again".into(),
    )
}

/// Rebuilds every account with events in the last `HORIZON_DAYS` days; see the module
/// documentation. `progress` is called with the events read so far.
pub async fn rebuild_hot_state(
    ch: &clickhouse::Client,
    clickhouse: &ClickHouseSink,
    target: &Target,
    now: DateTime<Utc>,
    progress: impl Fn(u64),
) -> Result<Rebuilt, SinkError> {
    let watermarks = clickhouse.watermarks(Stream::Usage).await?;
    let mut parts: BTreeMap<i32, PartitionRebuild> = BTreeMap::new();
    let partitions: Vec<i32> = (0..target.partitions)
        .chain(watermarks.keys().copied())
        .collect();
    for p in partitions {
        if parts.contains_key(&p) {
            continue;
        }
        let mut writer = target.writer(p);
        let (epoch, claimed_at) = writer.claim().await?;
        parts.insert(
            p,
            PartitionRebuild {
                writer,
                epoch,
                claimed_at,
                seen: BTreeMap::new(),
                pending: 0,
                accounts: Vec::new(),
            },
        );
    }
    let from = (now - Duration::days(HORIZON_DAYS)).timestamp();
    let seen_from = (now - Duration::seconds(86_400 + SEEN_RETENTION_AFTER_DAY_SECS)).timestamp();
    let mut cursor = ch
        .query(
            "SELECT event_id, toUInt32(occurred_at) AS occurred_at, toUInt32(received_at) AS received_at, \
                    account_id, api_key_id, gateway_id, region, cloud, provider, model, input_tokens, \
                    output_tokens, cost_micros, status, session_id, user_id, client_ip_hash, \
                    kafka_partition, kafka_offset \
             FROM usage_events WHERE occurred_at >= toDateTime(?) ORDER BY account_id, event_id",
        )
        .bind(from)
        .fetch::<RawEvent>()?;
    let mut out = Rebuilt::default();
    let mut last_id = String::new();
    let mut current: Option<(String, AccountState, i32, i64)> = None;
    while let Some(row) = cursor.next().await? {
        // Sorted by account and id: a row stored twice (see ARCHITECTURE.md) is adjacent.
        if row.event_id == last_id && current.as_ref().is_some_and(|c| c.0 == row.account_id) {
            continue;
        }
        if current.as_ref().is_none_or(|c| c.0 != row.account_id) {
            if let Some(done) = current.take() {
                write_account(&mut parts, target, done, now).await?;
            }
            out.accounts += 1;
            current = Some((row.account_id.clone(), AccountState::whole(), 0, -1));
        }
        last_id.clone_from(&row.event_id);
        out.events += 1;
        if out.events % 100_000 == 0 {
            progress(out.events);
        }
        let partition = row.kafka_partition as i32;
        let offset = row.kafka_offset as i64;
        let occurred = i64::from(row.occurred_at);
        let id = row.event_id.clone();
        let Some(e) = row.into_event() else {
            out.skipped += 1;
            tracing::warn!(event_id = %id, "a stored event no longer parses (its account id); not rebuilt");
            continue;
        };
        let c = current.as_mut().expect("set above");
        c.1.fold(&e, now);
        if offset >= c.3 {
            (c.2, c.3) = (partition, offset);
        }
        if occurred >= seen_from {
            if let Some(part) = parts.get_mut(&partition) {
                part.seen
                    .entry(Grain::Day.window_start(occurred_at(&e)))
                    .or_default()
                    .push(&e.event_id);
                part.pending += 1;
                if part.pending >= CHUNK {
                    part.checkpoint(part.claimed_at).await?;
                }
            }
        }
    }
    if let Some(done) = current.take() {
        write_account(&mut parts, target, done, now).await?;
    }
    for (p, part) in &mut parts {
        part.checkpoint(watermarks.get(p).copied().unwrap_or(-1))
            .await?;
        out.partitions += 1;
    }
    progress(out.events);
    Ok(out)
}

async fn write_account(
    parts: &mut BTreeMap<i32, PartitionRebuild>,
    target: &Target,
    (account, mut state, partition, o): (String, AccountState, i32, i64),
    now: DateTime<Utc>,
) -> Result<(), SinkError> {
    let Some(part) = parts.get_mut(&partition) else {
        return Err(SinkError::HotState(format!(
            "account {account}: partition {partition} of {} is not one the rebuild claimed",
            target.topic
        )));
    };
    match part
        .writer
        .write_whole(part.epoch, &account, o, &mut state, now)
        .await?
    {
        Written::Fenced => return Err(fenced()),
        Written::Applied | Written::Have | Written::Conflict => {}
    }
    part.accounts.push(account);
    part.pending += 1;
    Ok(())
}
