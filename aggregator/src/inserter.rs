//! Usage events into ClickHouse on a task of their own, off the path from Kafka to the hot state.
//!
//! The consumer folds a batch into the state store first and then hands its new events here
//! ([`Inserter::send`]); the task inserts them, one batch at a time in the order sent, each
//! retried with backoff until it lands, and then raises [`Inserted`]: ClickHouse now holds each
//! partition up to the offset the batch was handled to. A flush writes its snapshots without
//! waiting for this, and its checkpoint only once `Inserted` covers its offset.
//!
//! Why inserting after the fold keeps every event once in ClickHouse. Inserts run in batch order,
//! and a batch holds each partition's records in offset order, so what ClickHouse holds of a
//! partition is a prefix of what was sent, and its watermark (the highest offset it holds) says
//! where the prefix ends: each insert sends only the events above it. A checkpoint is written
//! only once the prefix reaches it, so after a crash the replay from the checkpoint + 1 finds
//! every event it must insert above the watermark, and every event it must not insert at or
//! below it.
//!
//! A partition this aggregator drops (a newer owner fenced it) while its events wait here is
//! left out of every insert from then on, and its offset is not raised: the new owner inserts
//! those events above the watermark it finds, and this one, were it to claim the partition
//! again, would replay them from the checkpoint.
//!
//! Backpressure: at most [`DEPTH`] batches wait, after which [`Inserter::send`] waits too, so a
//! ClickHouse outage stops the consumer after a few batches instead of filling memory. At
//! shutdown the task inserts what was sent, but gives up at the first failure: the flushes
//! waiting on it then stop without a checkpoint ([`crate::state::partition::Flushed::Stopped`]),
//! and the next owner reads those records again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use meterline_schemas::UsageEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::decode::Decoded;
use crate::metrics::AggregatorMetrics;
use crate::state::store::Inserted;
use crate::SinkError;

/// Batches that may wait for the insert task before the consumer waits too.
pub const DEPTH: usize = 2;

/// The first delay before inserting a failed batch again.
const RETRY_BASE: Duration = Duration::from_millis(100);

/// One batch's part for ClickHouse: its new usage events, and for each partition the offset it
/// was handled to (what ClickHouse holds once they are inserted) and whether its claim is still
/// held ([`crate::state::store::HotStore::claim_of`]).
#[derive(Debug, Default)]
pub struct InsertJob {
    pub events: Vec<Decoded<UsageEvent>>,
    pub upto: BTreeMap<i32, (i64, Arc<AtomicBool>)>,
}

impl InsertJob {
    /// The partitions whose claim is still held, with their offsets.
    fn held(&self) -> BTreeMap<i32, i64> {
        self.upto
            .iter()
            .filter(|(_, (_, alive))| alive.load(Ordering::Acquire))
            .map(|(p, (o, _))| (*p, *o))
            .collect()
    }
}

/// The handle of the insert task; see the module documentation.
pub struct Inserter {
    jobs: mpsc::Sender<InsertJob>,
    task: JoinHandle<()>,
}

impl Inserter {
    /// Starts the task. `inserted` is raised after each insert lands; `shutdown` makes a
    /// failed insert the last attempt.
    pub fn spawn(
        sink: ClickHouseSink,
        inserted: Inserted,
        metrics: AggregatorMetrics,
        retry_max_backoff: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (jobs, rx) = mpsc::channel(DEPTH);
        let work = run(sink, rx, inserted, metrics, retry_max_backoff, shutdown);
        Self {
            jobs,
            task: tokio::spawn(work.instrument(tracing::info_span!("clickhouse_insert"))),
        }
    }

    /// Hands a batch to the task, waiting while [`DEPTH`] batches already wait. Not cut short
    /// by shutdown (the batch collected when it came is still written): once shutdown is
    /// requested the task gives up at its first failure, and then this fails.
    pub async fn send(&self, job: InsertJob) -> Result<(), SinkError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| SinkError::HotState("the ClickHouse insert task has stopped".into()))
    }

    /// Inserts what was sent (giving up at the first failure, as shutdown is requested) and
    /// stops the task.
    pub async fn close(self) {
        drop(self.jobs);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "ClickHouse insert task lost");
        }
    }
}

async fn run(
    sink: ClickHouseSink,
    mut jobs: mpsc::Receiver<InsertJob>,
    inserted: Inserted,
    metrics: AggregatorMetrics,
    max: Duration,
    shutdown: CancellationToken,
) {
    while let Some(job) = jobs.recv().await {
        let mut delays = crate::consumer::write_backoff(RETRY_BASE, max).build();
        loop {
            let started = Instant::now();
            let held = job.held();
            match insert(&sink, &job.events, &held).await {
                Ok(()) => {
                    let mut clock = started;
                    metrics.lap(crate::metrics::INSERT_STAGE, &mut clock);
                    inserted.raise(&held);
                    break;
                }
                Err(e) => {
                    metrics.batch_failures.inc();
                    if shutdown.is_cancelled() {
                        tracing::warn!(error = %e, "usage events not inserted before shutdown; their partitions are not checkpointed past them");
                        return;
                    }
                    let delay = delays.next().unwrap_or(max);
                    tracing::warn!(error = %e, events = job.events.len(), retry_in_ms = delay.as_millis() as u64, "usage events not inserted into ClickHouse; retrying, their checkpoints wait");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Inserts the events of the partitions still `held` above ClickHouse's watermark (an earlier
/// attempt, or an earlier owner, may have inserted a prefix).
async fn insert(
    sink: &ClickHouseSink,
    events: &[Decoded<UsageEvent>],
    held: &BTreeMap<i32, i64>,
) -> Result<(), SinkError> {
    if !events.iter().any(|d| held.contains_key(&d.partition)) {
        return Ok(());
    }
    let to_insert = sink
        .above_watermarks(
            Stream::Usage,
            events.iter().filter(|d| held.contains_key(&d.partition)),
        )
        .await?;
    sink.insert_usage(&to_insert).await
}
