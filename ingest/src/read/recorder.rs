//! Records quota decisions the growth team counts (`quota_warning_shown`,
//! `model_downgrade_triggered`, `limit_reached`) in ClickHouse's `quota_events`, at most once
//! per account, limit, stage and window, without slowing the decision down.
//!
//! The request path only puts a record on a bounded queue ([`DecisionRecorder::record`] never
//! waits). A background task drains the queue in batches and, per batch:
//!
//! 1. asks Redis which records are already marked as written (`{p}q:{<account>}:…`, in the
//!    account's slot: [`HotKeys::quota_marker`]);
//! 2. inserts the rest into ClickHouse;
//! 3. only then sets their markers, expiring when their window resets.
//!
//! The markers of a batch are in as many slots as it has accounts, so they are asked and set
//! one command each, `MARKERS_IN_FLIGHT` at a time (a pipeline must keep to one slot in a
//! Redis Cluster); the connection is multiplexed, so they still share round trips.
//!
//! A crash between 2 and 3 inserts the same rows again on a later call; their `event_id` is a
//! hash of the dedup key, so `ReplacingMergeTree` folds them and `uniqExact(event_id)` never
//! counts them twice. A full queue or a failed write drops the record *unmarked*, so the next
//! call that reaches the same stage records it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use futures::{StreamExt, TryStreamExt};
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::HotKeys;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One row of `quota_events`.
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct QuotaEventRow {
    pub event_id: String,
    /// Unix seconds.
    pub occurred_at: u32,
    pub account_id: String,
    pub event_type: String,
    pub plan: String,
    pub limit_name: String,
    pub stage: u8,
    pub window_id: String,
    pub used: f64,
    pub limit_value: f64,
    pub requested_model: String,
    pub served_model: String,
}

/// A decision to record, with what makes it unique.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// `{account}:{event_type}:{limit}:{stage}:{window}`.
    pub dedup_key: String,
    /// When the marker may go (Unix seconds): the window's reset.
    pub expires_at: i64,
    pub row: QuotaEventRow,
}

/// Marker commands sent at a time.
const MARKERS_IN_FLIGHT: usize = 64;

impl DecisionRecord {
    /// The record's marker: its dedup key, in its account's slot.
    pub fn marker(&self, keys: &HotKeys) -> String {
        let account = &self.row.account_id;
        let rest = self
            .dedup_key
            .strip_prefix(account.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or(&self.dedup_key);
        keys.quota_marker(account, rest)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at: DateTime<Utc>,
        account: &str,
        event_type: &str,
        plan: &str,
        limit_name: &str,
        stage: u32,
        window_id: &str,
        expires_at: i64,
        used: f64,
        limit_value: f64,
        requested_model: &str,
        served_model: &str,
    ) -> Self {
        let dedup_key = format!("{account}:{event_type}:{limit_name}:{stage}:{window_id}");
        let digest = Sha256::digest(dedup_key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self {
            row: QuotaEventRow {
                event_id: uuid::Uuid::from_bytes(id).to_string(),
                occurred_at: at.timestamp().max(0) as u32,
                account_id: account.to_owned(),
                event_type: event_type.to_owned(),
                plan: plan.to_owned(),
                limit_name: limit_name.to_owned(),
                stage: stage.min(255) as u8,
                window_id: window_id.to_owned(),
                used,
                limit_value,
                requested_model: requested_model.to_owned(),
                served_model: served_model.to_owned(),
            },
            dedup_key,
            expires_at,
        }
    }
}

#[derive(Default)]
struct Known {
    /// Written and marked: dedup key → marker expiry.
    written: HashMap<String, i64>,
    /// Queued or being written.
    pending: HashSet<String>,
}

/// Counters for `/metrics`.
#[derive(Clone)]
pub struct RecorderMetrics {
    pub recorded: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
}

#[derive(Clone)]
pub struct DecisionRecorder {
    tx: mpsc::Sender<DecisionRecord>,
    known: Arc<Mutex<Known>>,
    metrics: RecorderMetrics,
}

const QUEUE: usize = 10_000;
const BATCH: usize = 1_000;

impl DecisionRecorder {
    /// Starts the writer task; it drains what is queued and stops on `shutdown`.
    pub fn start(
        clickhouse: clickhouse::Client,
        redis: HotConn,
        keys: HotKeys,
        metrics: RecorderMetrics,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let known = Arc::new(Mutex::new(Known::default()));
        let writer = Writer {
            clickhouse,
            redis,
            keys,
            known: known.clone(),
            metrics: metrics.clone(),
        };
        let handle = tokio::spawn(writer.run(rx, shutdown));
        (Self { tx, known, metrics }, handle)
    }

    /// Queues a record unless it is known to be written or already queued. Never waits.
    pub fn record(&self, rec: DecisionRecord, now: i64) {
        {
            let mut k = self.known.lock().expect("poisoned");
            if k.written.get(&rec.dedup_key).is_some_and(|exp| *exp > now) {
                return;
            }
            if !k.pending.insert(rec.dedup_key.clone()) {
                return;
            }
        }
        if let Err(e) = self.tx.try_send(rec) {
            let rec = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            self.known
                .lock()
                .expect("poisoned")
                .pending
                .remove(&rec.dedup_key);
            self.metrics.dropped.inc();
        }
    }
}

struct Writer {
    clickhouse: clickhouse::Client,
    redis: HotConn,
    keys: HotKeys,
    known: Arc<Mutex<Known>>,
    metrics: RecorderMetrics,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<DecisionRecord>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let open = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n > 0,
                _ = shutdown.cancelled() => {
                    // Write what is already queued, then stop.
                    rx.close();
                    while rx.recv_many(&mut batch, BATCH).await > 0 {
                        self.write(std::mem::take(&mut batch)).await;
                    }
                    return;
                }
            };
            if !open {
                return;
            }
            // Let a burst gather into one insert.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write(std::mem::take(&mut batch)).await;
        }
    }

    async fn write(&self, batch: Vec<DecisionRecord>) {
        let keys: Vec<String> = batch.iter().map(|r| r.dedup_key.clone()).collect();
        let result = self.try_write(&batch).await;
        let mut k = self.known.lock().expect("poisoned");
        for key in &keys {
            k.pending.remove(key);
        }
        match result {
            Ok(written) => {
                let now = Utc::now().timestamp();
                if k.written.len() > 100_000 {
                    k.written.retain(|_, exp| *exp > now);
                }
                for r in &batch {
                    k.written.insert(r.dedup_key.clone(), r.expires_at);
                }
                self.metrics.recorded.inc_by(written as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "quota decisions not recorded; a later call retries");
                self.metrics.dropped.inc_by(batch.len() as u64);
            }
        }
    }

    /// Returns how many rows were inserted.
    async fn try_write(&self, batch: &[DecisionRecord]) -> Result<usize, String> {
        let markers: Vec<String> = batch.iter().map(|r| r.marker(&self.keys)).collect();
        // Owned values into each future: a closure over borrowed ones makes the task's future
        // not `Send` for every lifetime (rust-lang/rust#102211).
        let present: Vec<bool> = futures::stream::iter(markers.clone())
            .map(|m| {
                let mut redis = self.redis.clone();
                async move {
                    redis::cmd("EXISTS")
                        .arg(m)
                        .query_async::<bool>(&mut redis)
                        .await
                }
            })
            .buffered(MARKERS_IN_FLIGHT)
            .try_collect()
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let fresh: Vec<(&DecisionRecord, &String)> = batch
            .iter()
            .zip(&markers)
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(rm, _)| rm)
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut insert = self
            .clickhouse
            .insert::<QuotaEventRow>("quota_events")
            .await
            .map_err(|e| format!("clickhouse: {e}"))?;
        for (r, _) in &fresh {
            insert
                .write(&r.row)
                .await
                .map_err(|e| format!("clickhouse: {e}"))?;
        }
        insert.end().await.map_err(|e| format!("clickhouse: {e}"))?;
        let marks: Vec<(String, i64)> = fresh
            .iter()
            .map(|(r, m)| ((*m).clone(), r.expires_at))
            .collect();
        futures::stream::iter(marks)
            .map(|(m, expires_at)| {
                let mut redis = self.redis.clone();
                async move {
                    redis::cmd("SET")
                        .arg(m)
                        .arg(1)
                        .arg("EXAT")
                        .arg(expires_at)
                        .query_async::<()>(&mut redis)
                        .await
                }
            })
            .buffer_unordered(MARKERS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(fresh.len())
    }
}
