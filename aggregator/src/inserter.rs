//! Usage events into ClickHouse on a task of their own, off the path from Kafka to the hot state.
//!
//! The consumer folds a batch into the state store first and then hands its new events here
//! ([`Inserter::send`]); the task inserts them, retried with backoff until they land, and then
//! raises [`Inserted`]: ClickHouse now holds each partition up to the offset the batch was
//! handled to. A flush writes its snapshots without waiting for this, and its checkpoint only
//! once `Inserted` covers its offset.
//!
//! An insert gathers batches ([`Gather`]): the ones that waited while the insert before it ran,
//! in the order sent, and then the ones that come, until they hold [`GATHER_EVENTS`] (7,500, or
//! an eighth of a smaller backlog) or its first batch was sent
//! `aggregator.clickhouse_insert_linger_ms` ago (1 s by default). An insert costs ClickHouse a
//! fixed part (a new part in `usage_events` and in each rollup its views fill, each merged
//! later, and the rollups' distinct-count states merged with them) besides its rows. The same
//! 300,000 events cost ClickHouse 19.1 s of CPU in inserts of 3,000, 8.5 s in inserts of 7,500
//! and 7.1 s in inserts of 15,000, merges included (`scripts/bench-insert-size.sh`); at 10,000
//! events/s, inserts of what waited (1,750–4,700 events each) kept ClickHouse at 0.65–0.78 of a
//! core, against 0.46–0.52 with inserts gathered (BENCHMARKS.md). Only the checkpoints (and so
//! the offsets committed) wait for an insert, not the hot state, so the linger delays the
//! history and the commits, not the quota counters.
//!
//! Why 7,500: gathered events wait decoded (about 0.5 KB each), and a batch of the default
//! largest size already holds more. Gathering 15,000 raised the aggregator's peak with 100,000
//! accounts by about 20 MiB (281–310 MiB in five runs against 266–280 MiB), past its 300 MiB
//! target. Behind, inserts grow anyway: every batch that waited while the insert before it ran
//! joins the next, up to the backlog.
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
//! Memory: at most `aggregator.clickhouse_backlog_events` events ([`MAX_WAITING_EVENTS`]
//! unless configured) wait decoded, in at most [`MAX_WAITING_BATCHES`] batches. Past that,
//! with a [`Refetch`] (`read_back` of [`Inserter::spawn`]), a batch is kept only as where its
//! events are in the log
//! ([`crate::refetch::Spilled`], bytes per event), and so is every batch after it until the
//! task has caught up: the channel carries a mark where they begin, and when the task reaches
//! it, it reads them back from Kafka in order, at most [`READ_BACK_EVENTS`] at a time, and
//! inserts them as it does the others. So the consumer does not wait for a ClickHouse
//! stall here: it folds on and the flushes write their snapshots, and the quota counters follow
//! the events; only the checkpoints, and so the offsets committed, wait for ClickHouse. What
//! bounds a stall now is the ids waiting for a partition's checkpoint
//! ([`crate::state::partition::FlushPolicy::max_seen`], 17 bytes each), past which the
//! consumer waits for the checkpoint. Without `read_back` (tests of the task alone), [`Inserter::send`] waits instead,
//! and the consumer with it. At shutdown the task inserts the batches it holds decoded (at most
//! the backlog's events), but reads none of the overflow back, and gives up at the first
//! failure: the flushes waiting on it then stop without a checkpoint
//! ([`crate::state::partition::Flushed::Stopped`]), and the next owner reads those records
//! again. So a stop after a long stall takes an insert, not the minutes of reading it back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use meterline_schemas::UsageEvent;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::decode::Decoded;
use crate::metrics::AggregatorMetrics;
use crate::refetch::{runs, Reader, Refetch, Spilled};
use crate::state::store::Inserted;
use crate::SinkError;

/// Usage events sent and not yet inserted, over every batch, before [`Inserter::send`] waits
/// (or, with [`Refetch`], before batches wait as where their events are in the log), unless
/// `aggregator.clickhouse_backlog_events` says otherwise. Room for the inserts to grow while
/// ClickHouse is behind, which keeps the overflow and its reading back for stalls: at 40,000
/// events/s on memory storage, with ClickHouse on the same two cores as everything else, every
/// run with 60,000 went into the overflow (inserts of 44,000–47,000 events), and the events
/// read back from Kafka left the rollup 9–19 s behind at the median; with 150,000, the two runs
/// the broker did not spoil read back once and not at all, and the rollup was 1.9 and 2.8 s
/// behind (BENCHMARKS.md, eleventh session). The room is used only while ClickHouse is behind,
/// and bounds that memory at about 75 MB (about 0.5 KB an event, decoded). A larger batch waits
/// until it is alone.
pub const MAX_WAITING_EVENTS: usize = 150_000;

/// The usage events an insert gathers for at most the linger ([`Gather`]), unless an eighth of
/// a smaller backlog is fewer; see the module documentation.
pub const GATHER_EVENTS: usize = 7_500;

/// The most usage events read back from Kafka for one insert (fewer if the backlog is
/// smaller). They are held twice while read, as records and decoded (about 0.75 KB an event),
/// beside a backlog that fills again with the batches that come meanwhile: 60,000 of them, the
/// backlog's size before it grew, keep that near 45 MB, and an insert of 60,000 already costs
/// ClickHouse half as much an event as one of 7,500 (`scripts/bench-insert-size.sh`).
pub const READ_BACK_EVENTS: usize = 60_000;

/// Batches sent and not yet inserted, whatever their events (a batch of account events alone
/// carries none but its offsets), before [`Inserter::send`] waits, or with [`Refetch`], before
/// batches wait as where their events are in the log, as past the backlog's events. Far more
/// than the few full batches [`MAX_WAITING_EVENTS`] holds: while ClickHouse stalls, batches
/// are as small as the traffic makes them (about 850 events at 10,000 events/s), and 64 of them
/// stopped the consumer after 5 s of a stall with a third of the events' room unused
/// (BENCHMARKS.md, 2026-12-04, sixth session). At light traffic a batch is what one fetch
/// brings, a few records: at 100 events/s, 27 batches a second, this many last 10 minutes of a
/// stall (150,000 events would last 25). What a batch holds besides its events is a few
/// offsets, about 200 bytes.
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

impl InsertJob {
    /// Where its events are in the log, per partition it handled.
    fn spilled(&self) -> Vec<Spilled> {
        self.upto
            .iter()
            .map(|(&partition, (upto, alive))| Spilled {
                partition,
                alive: Arc::clone(alive),
                runs: runs(
                    self.events
                        .iter()
                        .filter(|d| d.partition == partition)
                        .map(|d| d.offset),
                ),
                upto: *upto,
            })
            .collect()
    }
}

/// A batch waiting for the task, holding its share of [`MAX_WAITING_EVENTS`] until it is
/// inserted.
struct Queued {
    job: InsertJob,
    _room: OwnedSemaphorePermit,
    /// When it was handed to the task: an insert gathers batches for at most the linger after
    /// its first one was sent.
    sent: tokio::time::Instant,
}

/// What the channel to the task carries.
enum Item {
    Batch(Queued),
    /// The batches from here on wait in the [`Overflow`], as where their events are in the log.
    Overflow,
}

/// The batches kept as where their events are in the log, in the order sent; see the module
/// documentation.
#[derive(Default)]
struct Overflow {
    /// Whether batches go here instead of the channel: from the first that found no room
    /// until the task has inserted every one.
    active: bool,
    waiting: VecDeque<Spilled>,
    /// The usage events `waiting` stands for.
    events: usize,
}

impl Overflow {
    fn push(&mut self, job: &InsertJob) {
        for s in job.spilled() {
            self.events += s.events();
            self.waiting.push_back(s);
        }
    }

    /// The oldest waiting, up to `events` events (at least one batch's partition); `None`, and
    /// no longer active, once nothing waits.
    fn take(&mut self, events: usize) -> Option<Vec<Spilled>> {
        if self.waiting.is_empty() {
            self.active = false;
            return None;
        }
        let mut chunk = Vec::new();
        let mut n = 0;
        while let Some(next) = self.waiting.front() {
            if !chunk.is_empty() && n + next.events() > events {
                break;
            }
            n += next.events();
            chunk.extend(self.waiting.pop_front());
        }
        Some(chunk)
    }
}

/// Consecutive batches inserted together, in the order sent; see the module documentation.
#[derive(Default)]
struct Joined {
    batches: Vec<Queued>,
}

/// How much an insert gathers before it is sent: batches are joined until they hold `events`
/// usage events or the first of them was sent `linger` ago, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    pub events: usize,
    pub linger: Duration,
}

impl Gather {
    /// [`GATHER_EVENTS`], or an eighth of a smaller backlog's events, for at most `linger` (see
    /// the module documentation).
    pub fn for_backlog(backlog: usize, linger: Duration) -> Self {
        Self {
            events: (backlog / 8).clamp(1, GATHER_EVENTS),
            linger,
        }
    }

    /// Sends each batch alone unless others wait behind it.
    #[cfg(test)]
    fn at_once() -> Self {
        Self {
            events: 1,
            linger: Duration::ZERO,
        }
    }
}

impl Joined {
    /// The batch `first` and the batches behind it: every one waiting, and while they hold
    /// fewer than the gather's events and the linger since `first` was sent has not passed,
    /// the ones that come (not once shutdown is requested). Up to the overflow's mark if one
    /// comes (then `true`: the overflow is next).
    async fn take(
        first: Queued,
        waiting: &mut mpsc::Receiver<Item>,
        gather: Gather,
        shutdown: &CancellationToken,
    ) -> (Self, bool) {
        let deadline = first.sent + gather.linger;
        let mut joined = Self {
            batches: vec![first],
        };
        loop {
            let item = match waiting.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Disconnected) => return (joined, false),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if joined.events() >= gather.events || shutdown.is_cancelled() {
                        return (joined, false);
                    }
                    tokio::select! {
                        item = waiting.recv() => item,
                        _ = tokio::time::sleep_until(deadline) => return (joined, false),
                        _ = shutdown.cancelled() => return (joined, false),
                    }
                }
            };
            match item {
                Some(Item::Batch(batch)) => joined.batches.push(batch),
                Some(Item::Overflow) => return (joined, true),
                None => return (joined, false),
            }
        }
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
    jobs: mpsc::Sender<Item>,
    backlog: Backlog,
    /// Whether batches past the backlog go to the overflow (the task can read them back).
    reads_back: bool,
    task: JoinHandle<()>,
}

/// The room for events waiting decoded for ClickHouse (`aggregator.clickhouse_backlog_events`
/// of it), the overflow past it, and the gauge of the events waiting in both
/// (`meterline_aggregator_clickhouse_waiting_events`).
#[derive(Clone)]
struct Backlog {
    room: Arc<Semaphore>,
    events: usize,
    overflow: Arc<Mutex<Overflow>>,
    gauge: prometheus::IntGauge,
}

impl Backlog {
    /// Room for `events` waiting decoded, no overflow, reported on `gauge`.
    fn new(events: usize, gauge: prometheus::IntGauge) -> Self {
        Self {
            room: Arc::new(Semaphore::new(events)),
            events,
            overflow: Arc::default(),
            gauge,
        }
    }

    /// Sets the gauge from the room the waiting events hold and the overflow.
    fn report(&self) {
        let free = self.room.available_permits().min(self.events);
        let over = self.overflow.lock().expect("poisoned").events;
        self.gauge.set((self.events - free + over) as i64);
    }
}

/// What the insert task may hold, and how it paces its inserts.
#[derive(Debug, Clone, Copy)]
pub struct InsertPolicy {
    /// Usage events that may wait decoded, over every batch (at least one batch's, whatever its
    /// size); past them, batches wait as where their events are in the log, or
    /// [`Inserter::send`] waits (see [`Inserter::spawn`]).
    pub backlog: usize,
    /// Batches that may wait, whatever their events ([`MAX_WAITING_BATCHES`] but in tests); past
    /// them, as past the backlog's events.
    pub batches: usize,
    /// The longest an insert gathers batches after its first was sent ([`Gather`]).
    pub linger: Duration,
    /// Upper bound of the backoff between attempts of a failed insert.
    pub retry_max_backoff: Duration,
}

impl Inserter {
    /// Starts the task. `inserted` is raised after each insert lands; `shutdown` makes a
    /// failed insert the last attempt; past the policy's backlog (its events or its batches),
    /// with `read_back`, batches wait as where their events are in the log, and without it
    /// [`Self::send`] waits.
    pub fn spawn(
        sink: ClickHouseSink,
        inserted: Inserted,
        metrics: AggregatorMetrics,
        policy: InsertPolicy,
        read_back: Option<Refetch>,
        shutdown: CancellationToken,
    ) -> Self {
        let events = policy.backlog.max(1);
        let backlog = Backlog::new(events, metrics.clickhouse_waiting_events.clone());
        let (jobs, rx) = mpsc::channel(policy.batches.max(2));
        let reads_back = read_back.is_some();
        let task = Task {
            sink,
            inserted,
            metrics,
            backlog: backlog.clone(),
            gather: Gather::for_backlog(events, policy.linger),
            max: policy.retry_max_backoff,
            read_back,
            shutdown,
        };
        Self {
            jobs,
            backlog,
            reads_back,
            task: tokio::spawn(
                task.run(rx)
                    .instrument(tracing::info_span!("clickhouse_insert")),
            ),
        }
    }

    /// Hands a batch to the task (see the module documentation): decoded if there is room, as
    /// where its events are in the log if not (or if batches before it are), and without
    /// [`Refetch`] waiting for room. Room is for events and for batches alike: with
    /// [`Refetch`], a batch goes to the overflow when the policy's batches less one wait (the
    /// last place is the overflow's mark), so a long stall at light traffic, many batches of a
    /// few events each, does not stop the consumer either. Not cut short by shutdown (the batch
    /// collected when it came is still written): once shutdown is requested the task gives up
    /// at its first failure, and then this fails.
    pub async fn send(&self, job: InsertJob) -> Result<(), SinkError> {
        let stopped = || SinkError::HotState("the ClickHouse insert task has stopped".into());
        // The overflow alone would take batches that no task will ever insert.
        if self.jobs.is_closed() {
            return Err(stopped());
        }
        let share = job.events.len().min(self.backlog.events) as u32;
        let room = Arc::clone(&self.backlog.room);
        let room = if !self.reads_back {
            room.acquire_many_owned(share)
                .await
                .map_err(|_| stopped())?
        } else {
            // Decided under the overflow's lock, which is let go before any wait.
            let overflow_begins = {
                let mut overflow = self.backlog.overflow.lock().expect("poisoned");
                let room = match overflow.active {
                    true => None,
                    // The overflow's mark below needs a place: `send` has it at once.
                    false if self.jobs.capacity() < 2 => None,
                    false => match room.try_acquire_many_owned(share) {
                        Ok(room) => Some(room),
                        Err(TryAcquireError::NoPermits) => None,
                        Err(TryAcquireError::Closed) => return Err(stopped()),
                    },
                };
                match room {
                    Some(room) => Ok(room),
                    None => {
                        let begins = !overflow.active;
                        overflow.active = true;
                        overflow.push(&job);
                        Err(begins)
                    }
                }
            };
            match overflow_begins {
                Ok(room) => room,
                Err(begins) => {
                    self.backlog.report();
                    if begins {
                        tracing::info!(
                            "ClickHouse is behind by the backlog's events; the next ones are read back from Kafka when it catches up"
                        );
                        self.jobs
                            .send(Item::Overflow)
                            .await
                            .map_err(|_| stopped())?;
                    }
                    return Ok(());
                }
            }
        };
        self.backlog.report();
        self.jobs
            .send(Item::Batch(Queued {
                job,
                _room: room,
                sent: tokio::time::Instant::now(),
            }))
            .await
            .map_err(|_| stopped())
    }

    /// Inserts what was sent, but none of the overflow once shutdown is requested (giving up at
    /// the first failure then too), and stops the task.
    pub async fn close(self) {
        drop(self.jobs);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "ClickHouse insert task lost");
        }
    }
}

/// The insert task's own part.
struct Task {
    sink: ClickHouseSink,
    inserted: Inserted,
    metrics: AggregatorMetrics,
    backlog: Backlog,
    gather: Gather,
    max: Duration,
    read_back: Option<Refetch>,
    shutdown: CancellationToken,
}

impl Task {
    async fn run(self, mut jobs: mpsc::Receiver<Item>) {
        while let Some(item) = jobs.recv().await {
            let overflow_next = match item {
                Item::Batch(first) => {
                    let (joined, overflow_next) =
                        Joined::take(first, &mut jobs, self.gather, &self.shutdown).await;
                    let mut delays = self.delays();
                    loop {
                        let started = Instant::now();
                        let (events, held) = joined.held();
                        match insert(&self.sink, events).await {
                            Ok(sent) => {
                                self.landed(started, sent, &held);
                                break;
                            }
                            Err(e) => {
                                let (events, batches) = (joined.events(), joined.batches.len());
                                if !self.failed(e, &mut delays, events, batches).await {
                                    return;
                                }
                            }
                        }
                    }
                    // Their room goes back to the consumer now.
                    drop(joined);
                    self.backlog.report();
                    overflow_next
                }
                Item::Overflow => true,
            };
            if overflow_next && !self.read_overflow().await {
                return;
            }
        }
    }

    /// Inserts the overflow, oldest first, until it is empty (then it is no longer active);
    /// `false` if shutdown stopped it. Once shutdown is requested no more of it is read back:
    /// after a long stall that is minutes of reading, and the partitions' next owner reads
    /// those records again from their checkpoints in any case.
    async fn read_overflow(&self) -> bool {
        let Some(refetch) = &self.read_back else {
            return true;
        };
        let mut reader = None;
        loop {
            if self.shutdown.is_cancelled() {
                let left = self.backlog.overflow.lock().expect("poisoned").events;
                tracing::info!(
                    events = left,
                    "shutting down: the usage events waiting to be read back for ClickHouse are left to the partitions' next owner, which reads them again from their checkpoints"
                );
                return false;
            }
            let taken = self
                .backlog
                .overflow
                .lock()
                .expect("poisoned")
                .take(self.backlog.events.min(READ_BACK_EVENTS));
            let Some(chunk) = taken else {
                self.backlog.report();
                return true;
            };
            let events: usize = chunk.iter().map(Spilled::events).sum();
            let mut delays = self.delays();
            let inserted = loop {
                let started = Instant::now();
                match self.read_back(refetch, &mut reader, &chunk).await {
                    Ok((sent, held)) => {
                        self.landed(started, sent, &held);
                        break true;
                    }
                    Err(e) => {
                        if !self.failed(e, &mut delays, events, chunk.len()).await {
                            break false;
                        }
                    }
                }
            };
            self.backlog.overflow.lock().expect("poisoned").events -= events;
            self.backlog.report();
            if !inserted {
                return false;
            }
        }
    }

    /// Reads `chunk`'s events back from Kafka (those of claims still held) and inserts them;
    /// says how many were sent and how far ClickHouse then holds each partition.
    async fn read_back<'a>(
        &self,
        refetch: &'a Refetch,
        reader: &mut Option<Reader<'a>>,
        chunk: &[Spilled],
    ) -> Result<(usize, BTreeMap<i32, i64>), SinkError> {
        let reader = match reader {
            Some(r) => r,
            None => reader.insert(refetch.reader()?),
        };
        // One read per partition: a stall's batches are many and small, and each read is a
        // fetch from the broker's side.
        let mut wanted: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
        let mut held = BTreeMap::new();
        for s in chunk.iter().filter(|s| s.alive.load(Ordering::Acquire)) {
            wanted.entry(s.partition).or_default().extend(&s.runs);
            let o = held.entry(s.partition).or_insert(s.upto);
            *o = (*o).max(s.upto);
        }
        let started = Instant::now();
        let mut events = Vec::new();
        for (partition, runs) in wanted {
            events.extend(reader.read(partition, &merged(runs)).await?);
        }
        tracing::info!(
            events = events.len(),
            read_ms = started.elapsed().as_millis() as u64,
            "usage events read back from Kafka; inserting them into ClickHouse"
        );
        let sent = insert(&self.sink, events.iter().collect()).await?;
        Ok((sent, held))
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        crate::consumer::write_backoff(RETRY_BASE, self.max).build()
    }

    /// After an insert that landed: times it and raises [`Inserted`].
    fn landed(&self, started: Instant, sent: usize, held: &BTreeMap<i32, i64>) {
        let mut clock = started;
        self.metrics.lap(crate::metrics::INSERT_STAGE, &mut clock);
        if sent > 0 {
            self.metrics.insert_events.observe(sent as f64);
        }
        self.inserted.raise(held);
    }

    /// After a failed insert: counts it and waits before the next attempt; `false` if
    /// shutdown stops the retries.
    async fn failed(
        &self,
        e: SinkError,
        delays: &mut impl Iterator<Item = Duration>,
        events: usize,
        batches: usize,
    ) -> bool {
        self.metrics.batch_failures.inc();
        if self.shutdown.is_cancelled() {
            tracing::warn!(error = %e, "usage events not inserted before shutdown; their partitions are not checkpointed past them");
            return false;
        }
        let delay = delays.next().unwrap_or(self.max);
        tracing::warn!(error = %e, events, batches, retry_in_ms = delay.as_millis() as u64, "usage events not inserted into ClickHouse; retrying, their checkpoints wait");
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// `runs` sorted, with those that overlap or touch made one.
fn merged(mut runs: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    runs.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(runs.len());
    for (start, end) in runs {
        match out.last_mut() {
            Some((_, last)) if start <= *last + 1 => *last = (*last).max(end),
            _ => out.push((start, end)),
        }
    }
    out
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
        Queued {
            job,
            _room: room,
            sent: tokio::time::Instant::now(),
        }
    }

    fn claim(held: bool) -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(held))
    }

    /// A ClickHouse nobody listens on: every insert fails.
    fn unreachable_clickhouse() -> ClickHouseSink {
        ClickHouseSink::new(
            clickhouse::Client::default().with_url("http://127.0.0.1:1"),
            "usage",
            "accounts",
        )
    }

    /// A read back with no broker to ask (no `bootstrap.servers`): a read only times out.
    fn silent_read_back() -> Refetch {
        let registry = meterline_infra::registry::SchemaRegistry::confluent("http://127.0.0.1:1");
        Refetch::new(
            &rdkafka::ClientConfig::new(),
            "aggregator",
            "usage",
            crate::decode::Decoder::new(registry),
        )
    }

    /// An insert task with a backlog of 10 events in front of a ClickHouse that never answers:
    /// nothing sent is ever inserted, so the first batch stays in its insert and nothing gives
    /// its room back.
    fn stalled(read_back: Option<Refetch>) -> (Inserter, AggregatorMetrics, CancellationToken) {
        stalled_with(10, MAX_WAITING_BATCHES, read_back)
    }

    /// [`stalled`] with a backlog of `events` and room for `batches`.
    fn stalled_with(
        events: usize,
        batches: usize,
        read_back: Option<Refetch>,
    ) -> (Inserter, AggregatorMetrics, CancellationToken) {
        let shutdown = CancellationToken::new();
        let metrics = AggregatorMetrics::new();
        let inserter = Inserter::spawn(
            unreachable_clickhouse(),
            Inserted::unwatched(),
            metrics.clone(),
            InsertPolicy {
                backlog: events,
                batches,
                linger: Duration::ZERO,
                retry_max_backoff: Duration::from_millis(100),
            },
            read_back,
            shutdown.clone(),
        );
        (inserter, metrics, shutdown)
    }

    #[tokio::test]
    async fn with_the_batches_room_full_batches_wait_as_offsets_and_send_does_not_wait() {
        use futures::FutureExt;
        // A long stall at light traffic: many batches of an event each, far from the backlog's
        // events. This test's runtime runs the task only when the test waits, which it never
        // does, so the task takes nothing out of the channel.
        let (inserter, metrics, shutdown) = stalled_with(1_000, 3, Some(silent_read_back()));
        let p0 = claim(true);
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        for o in 0..5 {
            let job = batch(&room, &[(0, o)], &[(0, o, &p0)]).job;
            assert!(
                matches!(inserter.send(job).now_or_never(), Some(Ok(()))),
                "batch {o} handed over without waiting"
            );
        }
        assert_eq!(metrics.clickhouse_waiting_events.get(), 5);
        {
            let overflow = inserter.backlog.overflow.lock().unwrap();
            assert!(overflow.active);
            let runs: Vec<Vec<(i64, i64)>> =
                overflow.waiting.iter().map(|s| s.runs.clone()).collect();
            assert_eq!(
                runs,
                [vec![(2, 2)], vec![(3, 3)], vec![(4, 4)]],
                "two batches fill the channel but its last place, the mark's; the rest wait as offsets"
            );
        }
        assert_eq!(inserter.jobs.capacity(), 0, "the mark took the last place");
        shutdown.cancel();
        inserter.close().await;
    }

    #[tokio::test]
    async fn send_waits_once_the_configured_backlog_of_events_waits() {
        use futures::FutureExt;
        // Whether `send` is ready is decided by the room alone.
        let (inserter, metrics, shutdown) = stalled(None);
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
    async fn past_the_backlog_batches_wait_as_offsets_in_the_order_sent_and_send_does_not_wait() {
        use futures::FutureExt;
        // The task never reaches the overflow, which is left as `send` made it.
        let (inserter, metrics, shutdown) = stalled(Some(silent_read_back()));
        let p0 = claim(true);
        let p1 = claim(true);
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        let send = |events: &[(i32, i64)], upto: &[(i32, i64, &Arc<AtomicBool>)]| {
            let job = batch(&room, events, upto).job;
            inserter.send(job).now_or_never()
        };
        assert!(matches!(
            send(
                &[(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)],
                &[(0, 5, &p0)]
            ),
            Some(Ok(()))
        ));
        // No room for 6 more: they wait as offsets, and `send` returns at once. Offset 8 was a
        // duplicate, and partition 1 was handled to 40 with no new event.
        assert!(matches!(
            send(
                &[(0, 6), (0, 7), (0, 9), (0, 10), (0, 11)],
                &[(0, 11, &p0), (1, 40, &p1)]
            ),
            Some(Ok(()))
        ));
        // There is room for 2, but batches after the overflow's first wait behind it.
        assert!(matches!(
            send(&[(0, 12), (0, 13)], &[(0, 13, &p0)]),
            Some(Ok(()))
        ));
        assert_eq!(metrics.clickhouse_waiting_events.get(), 13);
        {
            let overflow = inserter.backlog.overflow.lock().unwrap();
            assert!(overflow.active);
            assert_eq!(overflow.events, 7);
            type Waiting = (i32, Vec<(i64, i64)>, i64);
            let waiting: Vec<Waiting> = overflow
                .waiting
                .iter()
                .map(|s| (s.partition, s.runs.clone(), s.upto))
                .collect();
            assert_eq!(
                waiting,
                [
                    (0, vec![(6, 7), (9, 11)], 11),
                    (1, vec![], 40),
                    (0, vec![(12, 13)], 13)
                ]
            );
        }
        let mut overflow = Overflow::default();
        for s in inserter.backlog.overflow.lock().unwrap().waiting.iter() {
            overflow.events += s.events();
            overflow.waiting.push_back(s.clone());
        }
        overflow.active = true;
        let first = overflow.take(5).unwrap();
        assert_eq!(first.len(), 2, "5 events: the first batch's two partitions");
        assert_eq!(
            overflow.take(0).unwrap().len(),
            1,
            "at least one, whatever its size"
        );
        assert!(overflow.take(5).is_none());
        assert!(!overflow.active, "emptied: batches go to the channel again");
        shutdown.cancel();
        inserter.close().await;
    }

    #[tokio::test]
    async fn once_shutdown_is_requested_the_overflow_is_left_to_the_next_owner() {
        // Were the task to read the overflow back, it would take its first chunk out and wait
        // for the read's timeout.
        let shutdown = CancellationToken::new();
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        let p0 = claim(true);
        let mut overflow = Overflow {
            active: true,
            ..Overflow::default()
        };
        overflow.push(&batch(&room, &[(0, 6), (0, 7)], &[(0, 7, &p0)]).job);
        overflow.push(&batch(&room, &[(0, 8)], &[(0, 8, &p0)]).job);
        let metrics = AggregatorMetrics::new();
        let backlog = Backlog::new(10, metrics.clickhouse_waiting_events.clone());
        *backlog.overflow.lock().unwrap() = overflow;
        let task = Task {
            sink: unreachable_clickhouse(),
            inserted: Inserted::unwatched(),
            backlog,
            gather: Gather::at_once(),
            metrics,
            max: Duration::from_millis(100),
            read_back: Some(silent_read_back()),
            shutdown: shutdown.clone(),
        };
        shutdown.cancel();
        assert!(!task.read_overflow().await, "stopped by shutdown");
        let overflow = task.backlog.overflow.lock().unwrap();
        assert_eq!(
            (overflow.events, overflow.waiting.len(), overflow.active),
            (3, 2, true),
            "nothing taken out to be read back"
        );
    }

    #[tokio::test]
    async fn batches_waiting_behind_the_first_join_it_in_the_order_sent() {
        let room = Arc::new(Semaphore::new(MAX_WAITING_EVENTS));
        let (tx, mut rx) = mpsc::channel(MAX_WAITING_BATCHES);
        let p0 = claim(true);
        let first = batch(&room, &[(0, 1)], &[(0, 1, &p0)]);
        for offsets in [[2, 3], [4, 5]] {
            let events = offsets.map(|o| (0, o));
            tx.send(Item::Batch(batch(&room, &events, &[(0, offsets[1], &p0)])))
                .await
                .unwrap();
        }
        let (joined, overflow_next) =
            Joined::take(first, &mut rx, Gather::at_once(), &CancellationToken::new()).await;
        assert!(!overflow_next);
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

        // A batch sent after the join waits for the next insert, and a join stops at the
        // overflow's mark, which says the overflow is next.
        for item in [
            Item::Batch(batch(&room, &[(0, 6)], &[(0, 6, &p0)])),
            Item::Overflow,
            Item::Batch(batch(&room, &[(0, 9)], &[(0, 9, &p0)])),
        ] {
            tx.send(item).await.unwrap();
        }
        let Some(Item::Batch(next)) = rx.recv().await else {
            panic!("a batch first");
        };
        let (joined, overflow_next) =
            Joined::take(next, &mut rx, Gather::at_once(), &CancellationToken::new()).await;
        assert_eq!((joined.batches.len(), overflow_next), (1, true));
        assert!(matches!(rx.recv().await, Some(Item::Batch(_))));
    }

    /// A gather of 10 events for at most a second, with a channel and room for its batches.
    fn gathering() -> (
        Gather,
        Arc<Semaphore>,
        mpsc::Sender<Item>,
        mpsc::Receiver<Item>,
    ) {
        let gather = Gather {
            events: 10,
            linger: Duration::from_secs(1),
        };
        let (tx, rx) = mpsc::channel(MAX_WAITING_BATCHES);
        (gather, Arc::new(Semaphore::new(100)), tx, rx)
    }

    fn offsets(joined: &Joined) -> Vec<i64> {
        joined.held().0.iter().map(|d| d.offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_insert_short_of_its_events_takes_the_batches_sent_within_the_linger() {
        let (gather, room, tx, mut rx) = gathering();
        let p0 = claim(true);
        let first = batch(&room, &[(0, 1), (0, 2)], &[(0, 2, &p0)]);
        let later = batch(&room, &[(0, 3)], &[(0, 3, &p0)]);
        let late = batch(&room, &[(0, 4)], &[(0, 4, &p0)]);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            tx.send(Item::Batch(later)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Item::Batch(late)).await.unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        let (joined, overflow_next) =
            Joined::take(first, &mut rx, gather, &CancellationToken::new()).await;
        assert_eq!(
            (offsets(&joined), overflow_next),
            (vec![1, 2, 3], false),
            "the batch sent 0.9 s after the first joins it, the one at 1.1 s waits"
        );
        assert_eq!(
            started.elapsed(),
            gather.linger,
            "sent when the linger ran out"
        );
        let _tx = sender.await.unwrap();
        assert!(matches!(rx.recv().await, Some(Item::Batch(b)) if b.job.events[0].offset == 4));
    }

    #[tokio::test(start_paused = true)]
    async fn an_insert_that_holds_its_events_goes_at_once_and_the_linger_counts_from_the_first_send(
    ) {
        let (gather, room, tx, mut rx) = gathering();
        let p0 = claim(true);
        let events: Vec<(i32, i64)> = (1..=10).map(|o| (0, o)).collect();
        let full = batch(&room, &events, &[(0, 10, &p0)]);
        let started = tokio::time::Instant::now();
        let (joined, _) = Joined::take(full, &mut rx, gather, &CancellationToken::new()).await;
        assert_eq!(joined.events(), 10);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait once it holds them"
        );

        // A batch that waited out the linger behind a slow insert goes with what is there.
        let waited = batch(&room, &[(0, 11)], &[(0, 11, &p0)]);
        tokio::time::sleep(gather.linger).await;
        let started = tokio::time::Instant::now();
        let (joined, _) = Joined::take(waited, &mut rx, gather, &CancellationToken::new()).await;
        assert_eq!(offsets(&joined), [11]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_or_the_last_sender_gone_ends_the_gathering_at_once() {
        let (gather, room, tx, mut rx) = gathering();
        let p0 = claim(true);
        let shutdown = CancellationToken::new();
        let first = batch(&room, &[(0, 1)], &[(0, 1, &p0)]);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        let (joined, overflow_next) = Joined::take(first, &mut rx, gather, &shutdown).await;
        assert_eq!((offsets(&joined), overflow_next), (vec![1], false));
        assert_eq!(started.elapsed(), Duration::from_millis(100));

        let second = batch(&room, &[(0, 2)], &[(0, 2, &p0)]);
        drop(tx);
        let (joined, overflow_next) =
            Joined::take(second, &mut rx, gather, &CancellationToken::new()).await;
        assert_eq!((offsets(&joined), overflow_next), (vec![2], false));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "closed: no wait"
        );
    }

    #[test]
    fn a_partitions_runs_over_several_batches_are_read_back_as_one() {
        assert_eq!(
            merged(vec![(10, 12), (0, 3), (4, 6), (8, 8), (11, 15)]),
            [(0, 6), (8, 8), (10, 15)]
        );
        assert_eq!(merged(vec![]), []);
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
