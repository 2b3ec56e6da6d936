//! Usage events into ClickHouse on a task of their own, off the path from Kafka to the hot state.
//!
//! The consumer folds a batch into the state store first and then hands its new events here
//! ([`Inserter::send`]); the task inserts them, retried with backoff until they land, and then
//! raises [`Inserted`]: ClickHouse now holds each partition up to the offset the batch was
//! handled to. A flush writes its snapshots without waiting for this, and its checkpoint only
//! once `Inserted` covers its offset.
//!
//! Batches that wait while an insert runs go in the next insert together, in the order sent. An
//! insert costs ClickHouse a fixed part (a new part in `usage_events` and in each rollup its
//! views fill, each merged later) besides its rows: at 2,500 events per insert that part was
//! more than half of ClickHouse's CPU (BENCHMARKS.md). So the busier ClickHouse is, the larger
//! and fewer the inserts, and an idle one still gets each batch at once.
//!
//! Why inserting after the fold keeps every event once in ClickHouse. Inserts run in batch order,
//! and a batch holds each partition's records in offset order, so what ClickHouse holds of a
//! partition is a prefix of what was sent, and its watermark (the highest offset it holds) says
//! where the prefix ends: each insert sends only the events above it. Joining batches keeps both
//! orders: one insert holds a run of consecutive batches, in the order sent. A checkpoint is
//! written only once the prefix reaches it, so after a crash the replay from the checkpoint + 1
//! finds every event it must insert above the watermark, and every event it must not insert at
//! or below it.
//!
//! A partition this aggregator drops (a newer owner fenced it) while its events wait here is
//! left out of every insert from then on, and its offset is not raised: the new owner inserts
//! those events above the watermark it finds, and this one, were it to claim the partition
//! again, would replay them from the checkpoint. Whether a partition is still held is read per
//! batch, so in a joined insert the batches of a lost claim are left out and those of a new claim
//! of the same partition go in.
//!
//! Backpressure: once `aggregator.clickhouse_backlog_events` events ([`MAX_WAITING_EVENTS`]
//! unless configured; or [`MAX_WAITING_BATCHES`] batches) are sent and not yet inserted,
//! [`Inserter::send`] waits too, so a ClickHouse outage stops the consumer after that many
//! events instead of filling memory. Until then the consumer folds and the flushes write their
//! snapshots, so the quota counters follow the events through a ClickHouse stall of that many
//! events (about 6 s at 10,000 events/s by default); only the checkpoints, and so the offsets
//! committed, wait for ClickHouse. At shutdown the task inserts what was sent, but gives up at
//! the first failure: the flushes waiting on it then stop without a checkpoint
//! ([`crate::state::partition::Flushed::Stopped`]), and the next owner reads those records
//! again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use meterline_schemas::UsageEvent;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::decode::Decoded;
use crate::metrics::AggregatorMetrics;
use crate::state::store::Inserted;
use crate::SinkError;

/// Usage events sent and not yet inserted, over every batch, before [`Inserter::send`] waits,
/// unless `aggregator.clickhouse_backlog_events` says otherwise: three batches of the default
/// largest size (`AggregatorConfig::batch_max_events`), as many as the task held when it
/// inserted one batch at a time. A larger batch waits until it is alone.
pub const MAX_WAITING_EVENTS: usize = 60_000;

/// Batches sent and not yet inserted, whatever their events (a batch of account events alone
/// carries none but its offsets), before [`Inserter::send`] waits. Far more than the three
/// full batches [`MAX_WAITING_EVENTS`] holds: while ClickHouse stalls, batches are as small as
/// the traffic makes them (about 850 events at 10,000 events/s), and 64 of them stopped the
/// consumer after 5 s of a stall with a third of the events' room unused (BENCHMARKS.md,
/// 2026-12-04, sixth session). At light traffic a batch is what one fetch brings, a few
/// records: at 100 events/s, 60,000 events last 10 minutes of a stall, and 16,384 batches as
/// long at 27 batches a second. What a batch holds besides its events is a few offsets, about
/// 200 bytes.
pub const MAX_WAITING_BATCHES: usize = 16_384;

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

/// A batch waiting for the task, holding its share of [`MAX_WAITING_EVENTS`] until it is
/// inserted.
struct Queued {
    job: InsertJob,
    _room: OwnedSemaphorePermit,
}

/// Consecutive batches inserted together, in the order sent; see the module documentation.
#[derive(Default)]
struct Joined {
    batches: Vec<Queued>,
}

impl Joined {
    /// The batch `first` and every batch waiting behind it.
    fn take(first: Queued, waiting: &mut mpsc::Receiver<Queued>) -> Self {
        let mut joined = Self::default();
        let mut next = Some(first);
        while let Some(batch) = next {
            joined.batches.push(batch);
            next = waiting.try_recv().ok();
        }
        joined
    }

    fn events(&self) -> usize {
        self.batches.iter().map(|b| b.job.events.len()).sum()
    }

    /// What one insert of these batches sends (before the watermarks are read): each batch's
    /// events of the partitions it still holds, in the order sent; and how far ClickHouse holds
    /// each of those partitions once it lands.
    fn held(&self) -> (Vec<&Decoded<UsageEvent>>, BTreeMap<i32, i64>) {
        let mut events = Vec::with_capacity(self.events());
        let mut upto = BTreeMap::new();
        for InsertJob {
            events: batch,
            upto: claims,
        } in self.batches.iter().map(|b| &b.job)
        {
            let held: BTreeMap<i32, i64> = claims
                .iter()
                .filter(|(_, (_, alive))| alive.load(Ordering::Acquire))
                .map(|(&p, &(offset, _))| (p, offset))
                .collect();
            events.extend(batch.iter().filter(|d| held.contains_key(&d.partition)));
            for (p, offset) in held {
                let o = upto.entry(p).or_insert(offset);
                *o = (*o).max(offset);
            }
        }
        (events, upto)
    }
}

/// The handle of the insert task; see the module documentation.
pub struct Inserter {
    jobs: mpsc::Sender<Queued>,
    backlog: Backlog,
    task: JoinHandle<()>,
}

/// The room for events waiting for ClickHouse (`aggregator.clickhouse_backlog_events` of it),
/// and the gauge of how much of it they hold
/// (`meterline_aggregator_clickhouse_waiting_events`).
#[derive(Clone)]
struct Backlog {
    room: Arc<Semaphore>,
    events: usize,
    gauge: prometheus::IntGauge,
}

impl Backlog {
    /// Sets the gauge from the room the waiting events hold.
    fn report(&self) {
        let free = self.room.available_permits().min(self.events);
        self.gauge.set((self.events - free) as i64);
    }
}

impl Inserter {
    /// Starts the task. `inserted` is raised after each insert lands; `shutdown` makes a
    /// failed insert the last attempt; `backlog` events may wait, over every batch (at least
    /// one batch's, whatever its size).
    pub fn spawn(
        sink: ClickHouseSink,
        inserted: Inserted,
        metrics: AggregatorMetrics,
        retry_max_backoff: Duration,
        backlog: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let events = backlog.max(1);
        let backlog = Backlog {
            room: Arc::new(Semaphore::new(events)),
            events,
            gauge: metrics.clickhouse_waiting_events.clone(),
        };
        let (jobs, rx) = mpsc::channel(MAX_WAITING_BATCHES);
        let work = run(
            sink,
            rx,
            inserted,
            metrics,
            backlog.clone(),
            retry_max_backoff,
            shutdown,
        );
        Self {
            jobs,
            backlog,
            task: tokio::spawn(work.instrument(tracing::info_span!("clickhouse_insert"))),
        }
    }

    /// Hands a batch to the task, waiting while too much waits already (see the module
    /// documentation). Not cut short by shutdown (the batch collected when it came is still
    /// written): once shutdown is requested the task gives up at its first failure, and then
    /// this fails.
    pub async fn send(&self, job: InsertJob) -> Result<(), SinkError> {
        let stopped = || SinkError::HotState("the ClickHouse insert task has stopped".into());
        let share = job.events.len().min(self.backlog.events) as u32;
        let room = Arc::clone(&self.backlog.room)
            .acquire_many_owned(share)
            .await
            .map_err(|_| stopped())?;
        self.backlog.report();
        self.jobs
            .send(Queued { job, _room: room })
            .await
            .map_err(|_| stopped())
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
    mut jobs: mpsc::Receiver<Queued>,
    inserted: Inserted,
    metrics: AggregatorMetrics,
    backlog: Backlog,
    max: Duration,
    shutdown: CancellationToken,
) {
    while let Some(first) = jobs.recv().await {
        let joined = Joined::take(first, &mut jobs);
        let mut delays = crate::consumer::write_backoff(RETRY_BASE, max).build();
        loop {
            let started = Instant::now();
            let (events, held) = joined.held();
            match insert(&sink, events).await {
                Ok(sent) => {
                    let mut clock = started;
                    metrics.lap(crate::metrics::INSERT_STAGE, &mut clock);
                    if sent > 0 {
                        metrics.insert_events.observe(sent as f64);
                    }
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
                    tracing::warn!(error = %e, events = joined.events(), batches = joined.batches.len(), retry_in_ms = delay.as_millis() as u64, "usage events not inserted into ClickHouse; retrying, their checkpoints wait");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Their room goes back to the consumer now.
        drop(joined);
        backlog.report();
    }
}

/// Inserts `events` above ClickHouse's watermarks (an earlier attempt, or an earlier owner, may
/// have inserted a prefix); says how many were sent.
async fn insert(
    sink: &ClickHouseSink,
    events: Vec<&Decoded<UsageEvent>>,
) -> Result<usize, SinkError> {
    if events.is_empty() {
        return Ok(0);
    }
    let to_insert = sink.above_watermarks(Stream::Usage, events).await?;
    sink.insert_usage(&to_insert).await?;
    Ok(to_insert.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `events` (partition, offset), with each partition's offset handled and claim.
    fn batch(
        room: &Arc<Semaphore>,
        events: &[(i32, i64)],
        upto: &[(i32, i64, &Arc<AtomicBool>)],
    ) -> Queued {
        let job = InsertJob {
            events: events
                .iter()
                .map(|&(partition, offset)| Decoded {
                    partition,
                    offset,
                    event: UsageEvent {
                        event_id: format!("e-{partition}-{offset}"),
                        ..crate::state::account::tests::event(chrono::Utc::now(), "gpt-4o", "", "")
                    },
                })
                .collect(),
            upto: upto
                .iter()
                .map(|&(p, o, alive)| (p, (o, Arc::clone(alive))))
                .collect(),
        };
        let share = job.events.len() as u32;
        let room = Arc::clone(room).try_acquire_many_owned(share).unwrap();
        Queued { job, _room: room }
    }

    fn claim(held: bool) -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(held))
    }

    #[tokio::test]
    async fn send_waits_once_the_configured_backlog_of_events_waits() {
        use futures::FutureExt;
        // A ClickHouse that never answers: nothing sent is ever inserted, so nothing gives its
        // room back, and whether `send` is ready is decided by the room alone.
        let sink = ClickHouseSink::new(
            clickhouse::Client::default().with_url("http://127.0.0.1:1"),
            "usage",
            "accounts",
        );
        let shutdown = CancellationToken::new();
        let metrics = AggregatorMetrics::new();
        let inserter = Inserter::spawn(
            sink,
            Inserted::unwatched(),
            metrics.clone(),
            Duration::from_millis(100),
            10,
            shutdown.clone(),
        );
        let p0 = claim(true);
        let job = |offsets: std::ops::Range<i64>| {
            let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
            let events: Vec<(i32, i64)> = offsets.clone().map(|o| (0, o)).collect();
            batch(&room, &events, &[(0, offsets.end - 1, &p0)]).job
        };
        assert!(
            matches!(inserter.send(job(0..6)).now_or_never(), Some(Ok(()))),
            "6 events of a backlog of 10 wait at once"
        );
        assert_eq!(metrics.clickhouse_waiting_events.get(), 6);
        assert!(
            inserter.send(job(6..12)).now_or_never().is_none(),
            "6 more do not fit: the consumer waits"
        );
        shutdown.cancel();
        inserter.close().await;
    }

    #[tokio::test]
    async fn batches_waiting_behind_the_first_join_it_in_the_order_sent() {
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        let (tx, mut rx) = mpsc::channel(MAX_WAITING_BATCHES);
        let p0 = claim(true);
        let first = batch(&room, &[(0, 1)], &[(0, 1, &p0)]);
        for offsets in [[2, 3], [4, 5]] {
            let events = offsets.map(|o| (0, o));
            tx.send(batch(&room, &events, &[(0, offsets[1], &p0)]))
                .await
                .unwrap();
        }
        let joined = Joined::take(first, &mut rx);
        let (events, upto) = joined.held();
        let offsets: Vec<i64> = events.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        assert_eq!(upto, BTreeMap::from([(0, 5)]));
        assert_eq!(room.available_permits(), MAX_WAITING_EVENTS - 5);
        drop(joined);
        assert_eq!(
            room.available_permits(),
            MAX_WAITING_EVENTS,
            "room back once inserted"
        );

        // A batch sent after the join waits for the next insert.
        tx.send(batch(&room, &[(0, 6)], &[(0, 6, &p0)]))
            .await
            .unwrap();
        let next = rx.recv().await.unwrap();
        assert_eq!(Joined::take(next, &mut rx).batches.len(), 1);
    }

    #[test]
    fn a_joined_insert_leaves_out_each_batch_of_a_lost_claim_and_keeps_a_new_one() {
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        let p0 = claim(true);
        let lost = claim(false);
        let claimed_again = claim(true);
        let gone = claim(false);
        let joined = Joined {
            batches: vec![
                batch(
                    &room,
                    &[(0, 10), (1, 20), (2, 30)],
                    &[(0, 10, &p0), (1, 20, &lost), (2, 30, &gone)],
                ),
                batch(
                    &room,
                    &[(1, 18), (1, 21), (0, 11)],
                    &[(0, 11, &p0), (1, 21, &claimed_again)],
                ),
                // Handled to a later offset without a usage event of its own (a record that did
                // not decode, say): ClickHouse still holds the partition that far.
                batch(&room, &[], &[(0, 12, &p0)]),
            ],
        };
        let (events, upto) = joined.held();
        let sent: Vec<(i32, i64)> = events.iter().map(|d| (d.partition, d.offset)).collect();
        assert_eq!(sent, [(0, 10), (1, 18), (1, 21), (0, 11)]);
        assert_eq!(upto, BTreeMap::from([(0, 12), (1, 21)]));
        assert_eq!(joined.events(), 6);
    }
}
