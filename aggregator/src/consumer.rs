//! The source: a Kafka consumer group over both event topics, cut into batches, with offsets
//! committed only after a batch is fully written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::batch::{Sinks, UsageSpan, WriteProgress};
use crate::config::AggregatorConfig;
use crate::dead_letter::DeadLetters;
use crate::decode::{Decoder, RawRecord, Stream};
use crate::inserter::{InsertPolicy, Inserter};
use crate::metrics::AggregatorMetrics;
use crate::refetch::Refetch;
use crate::state::store::FlushAction;
use crate::SinkError;

/// How often an aggregator waiting for records looks at its partition assignment (for the
/// gauge).
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);
/// How long an aggregator may go without any partition before it warns.
const UNASSIGNED_WARNING: Duration = Duration::from_secs(30);

/// The first delay before writing a failed batch again.
const WRITE_RETRY_BASE: Duration = Duration::from_millis(100);
/// A batch also ends once no record has followed its last one for this long while none is
/// ready: librdkafka queues a fetch's records together, so the fetch is drained, and waiting
/// out `batch_max_wait_ms` for the next fetch (which comes every few hundred ms from a busy
/// broker) only held the batch's events back from the hot state.
const BATCH_IDLE_GAP: Duration = Duration::from_millis(5);

/// The delays between attempts to write a failed batch: doubling from `base` up to `max`
/// (`aggregator.retry_max_backoff_ms`) with equal jitter, and never running out: a batch is
/// retried for as long as it takes.
pub fn write_backoff(base: Duration, max: Duration) -> ExponentialBuilder {
    meterline_infra::backoff::equal_jitter(base, max)
}

/// The topics the aggregator reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    pub usage: String,
    pub account: String,
    pub dead_letter: String,
}

pub struct Aggregator {
    consumer: Arc<StreamConsumer>,
    decoder: Decoder,
    sinks: Sinks,
    dead_letters: DeadLetters,
    config: AggregatorConfig,
    topics: Topics,
    metrics: AggregatorMetrics,
    unassigned_since: std::sync::Mutex<Option<Instant>>,
    /// How the insert task reads back the events it let go of while ClickHouse was behind.
    read_back: Refetch,
}

impl Aggregator {
    /// `base` carries the broker list and any security settings.
    pub fn new(
        base: &ClientConfig,
        topics: Topics,
        config: AggregatorConfig,
        decoder: Decoder,
        sinks: Sinks,
        metrics: AggregatorMetrics,
    ) -> Result<Self, SinkError> {
        let mut cc = meterline_infra::kafka::with_fetch_wait(base.clone());
        cc.set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "600000")
            // librdkafka's prefetch queue, 64 MiB by default: a batch is at most 20,000 records
            // of about 200 bytes (4 MiB), so 4 MiB keeps a batch ahead. Behind a backlog the
            // queue stays full, and librdkafka's bookkeeping per record and the fetch buffers
            // the records pin come on top of the bytes it counts: at 100,000 accounts the
            // aggregator's peak was 489 MiB with 16 MiB and 394 MiB with 4 MiB, at the same rate
            // (BENCHMARKS.md; the aggregator's RSS target, issue 21).
            .set("queued.max.messages.kbytes", "4096");
        if !config.instance_id.is_empty() {
            cc.set("group.instance.id", &config.instance_id);
        }
        let consumer: StreamConsumer = cc.create()?;
        consumer.subscribe(&[topics.usage.as_str(), topics.account.as_str()])?;
        let mut pc = base.clone();
        pc.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer = pc.create()?;
        let read_back = Refetch::new(base, &config.group_id, &topics.usage, decoder.clone());
        Ok(Self {
            consumer: Arc::new(consumer),
            read_back,
            decoder,
            sinks,
            dead_letters: DeadLetters::new(producer, topics.dead_letter.clone()),
            config,
            topics,
            metrics,
            unassigned_since: Default::default(),
        })
    }

    pub fn metrics(&self) -> &AggregatorMetrics {
        &self.metrics
    }

    fn stream_of(&self, topic: &str) -> Option<Stream> {
        if topic == self.topics.usage {
            Some(Stream::Usage)
        } else if topic == self.topics.account {
            Some(Stream::Account)
        } else {
            None
        }
    }

    /// Runs until `shutdown` is cancelled. A batch being collected when that happens is
    /// written and committed first; a batch that cannot be written is left uncommitted, to be
    /// read again by whoever owns its partitions next.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SinkError> {
        tracing::info!(group = %self.config.group_id, usage = %self.topics.usage, account = %self.topics.account, "aggregator started");
        let max_wait = Duration::from_millis(self.config.batch_max_wait_ms);
        // Assignments a crash left unrecorded would otherwise wait for the next account event.
        if let Err(e) = self.sinks.record_assignments().await {
            tracing::warn!(error = %e, "experiment assignments not recorded yet; the next account batch retries");
        }
        // Whether the state store holds only written batches: a batch interrupted by shutdown
        // has had its ids decided (they are in the partitions' next checkpoints) but not its
        // events written, so its partitions must not be flushed.
        let mut whole = true;
        let inserted = {
            let mut hot = self.sinks.hot.lock().await;
            hot.time_flushes(
                self.metrics.flush_seconds.clone(),
                self.metrics.snapshot_write_seconds.clone(),
            );
            hot.gate_on_clickhouse()
        };
        let inserter = Inserter::spawn(
            self.sinks.clickhouse.clone(),
            inserted,
            self.metrics.clone(),
            InsertPolicy {
                backlog: self.config.clickhouse_backlog_events,
                batches: crate::inserter::MAX_WAITING_BATCHES,
                linger: Duration::from_millis(self.config.clickhouse_insert_linger_ms),
                retry_max_backoff: Duration::from_millis(self.config.retry_max_backoff_ms),
            },
            Some(self.read_back.clone()),
            shutdown.clone(),
        );
        loop {
            let mut clock = Instant::now();
            let Some(records) = self.collect_batch(max_wait, &shutdown).await else {
                break;
            };
            let caught_up = records.len() < self.config.batch_max_events;
            if !records.is_empty() {
                self.metrics.lap("collect", &mut clock);
                if !self.write_with_retry(&records, &inserter, &shutdown).await {
                    whole = false;
                    break;
                }
                let mut clock = Instant::now();
                self.commit_accounts(&records).await;
                self.metrics.lap("commit", &mut clock);
            }
            self.flush(caught_up, false).await;
            self.seek_rewinds().await;
        }
        // Shutting down: what is folded is made durable (and committed) before leaving, unless
        // a batch was left half-done; then every partition resumes from its last checkpoint.
        // ClickHouse gets what was sent first: the checkpoints wait for it.
        inserter.close().await;
        if whole {
            self.flush(true, true).await;
        } else {
            tracing::warn!("a batch was not written before shutdown: nothing more is flushed; the partitions resume from their checkpoints");
        }
        tracing::info!("aggregator stopped");
        Ok(())
    }

    /// Starts the flushes of the usage partitions that are due (all with changes when `all`,
    /// and then waits for them), then commits the checkpoints of the flushes that have finished
    /// to Kafka and rewinds the partitions whose state was dropped. A flush retries on its own
    /// task until it finishes (`HotStore::flush_due`).
    async fn flush(&self, caught_up: bool, all: bool) {
        let mut clock = Instant::now();
        let actions = {
            let mut hot = self.sinks.hot.lock().await;
            let actions = hot.flush_due(caught_up, all, chrono::Utc::now()).await;
            // The wait for running flushes (backpressure) apart from the rest of the flush.
            self.metrics
                .set_apart("flush_wait", hot.take_waited(), &mut clock);
            self.metrics.batch_failures.inc_by(hot.take_failures());
            self.metrics.state_evictions.inc_by(hot.take_evicted());
            self.metrics.state_accounts.set(hot.accounts() as i64);
            for (reason, n) in hot.take_dropped() {
                self.metrics
                    .partitions_dropped
                    .with_label_values(&[reason])
                    .inc_by(n);
            }
            actions
        };
        self.metrics
            .redis_commands
            .inc_by(self.sinks.hot.lock().await.take_calls());
        if actions.is_empty() {
            return;
        }
        self.metrics.lap("flush", &mut clock);
        let mut commits = Vec::new();
        for (partition, action) in actions {
            match action {
                FlushAction::Commit {
                    offset,
                    counted,
                    duplicates,
                } => {
                    self.metrics
                        .events
                        .with_label_values(&["counted"])
                        .inc_by(counted);
                    self.metrics
                        .events
                        .with_label_values(&["duplicate"])
                        .inc_by(duplicates);
                    commits.push((self.topics.usage.clone(), partition, offset));
                }
                FlushAction::Rewind(_) => {}
            }
        }
        // At shutdown the last commits are waited for; otherwise they go in the background.
        self.commit_offsets(commits, all).await;
        self.seek_rewinds().await;
        self.metrics.lap("commit", &mut clock);
    }

    /// Seeks the usage partitions whose state was dropped back to their checkpoints. A seek
    /// that fails is tried again after the next batch; meanwhile the state store holds back
    /// the partition's records (`HotStore::decide`), so nothing past the checkpoint is skipped.
    async fn seek_rewinds(&self) {
        let pending = self.sinks.hot.lock().await.pending_seeks();
        for (partition, offset) in pending {
            let consumer = self.consumer.clone();
            let topic = self.topics.usage.clone();
            let sought = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
            })
            .await;
            match sought {
                Ok(Ok(())) => {
                    tracing::warn!(
                        partition,
                        offset,
                        "usage partition rewound to its checkpoint"
                    );
                    self.sinks.hot.lock().await.sought(partition);
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition, offset, error = %e, "usage partition not rewound yet; its records are held back")
                }
                Err(e) => tracing::error!(error = %e, "seek task failed"),
            }
        }
    }

    /// Reads up to a batch. `None` once shutdown is requested and nothing is pending.
    async fn collect_batch(
        &self,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Vec<RawRecord>> {
        let mut records = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        // `BATCH_IDLE_GAP` after the latest record.
        let mut idle: Option<tokio::time::Instant> = None;
        // While idle, check now and then that the group gave this aggregator partitions at all:
        // an aggregator without any looks exactly like one without traffic.
        // Not at once: `assignment()` waits on librdkafka's main thread, which is busy while a
        // backlog streams in (an immediate check per batch cost a third of the loop's time).
        let mut assignment_check = tokio::time::interval_at(
            tokio::time::Instant::now() + ASSIGNMENT_CHECK,
            ASSIGNMENT_CHECK,
        );
        assignment_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With folded events not yet flushed and no record coming, come back empty-handed after
        // the flush interval so the flush is not held up by a quiet topic.
        let flush_wait = {
            let hot = self.sinks.hot.lock().await;
            hot.has_pending()
                .then(|| tokio::time::Instant::now() + hot.policy.interval)
        };
        while records.len() < self.config.batch_max_events {
            let until = |at: Option<tokio::time::Instant>| async move {
                match at {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return if records.is_empty() { None } else { Some(records) };
                }
                _ = until(deadline.or(flush_wait)) => break,
                _ = assignment_check.tick() => self.check_assignment(),
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let topic = m.topic().to_owned();
                        let stream = if topic == self.topics.usage { "usage" } else { "account" };
                        self.metrics.records.with_label_values(&[stream]).inc();
                        if let Some(produced) = m.timestamp().to_millis() {
                            let age_ms = chrono::Utc::now().timestamp_millis() - produced;
                            self.metrics
                                .record_age_seconds
                                .with_label_values(&[stream])
                                .observe(age_ms.max(0) as f64 / 1000.0);
                        }
                        records.push(RawRecord {
                            topic,
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec),
                        });
                        let now = tokio::time::Instant::now();
                        deadline.get_or_insert(now + max_wait);
                        idle = Some(now + BATCH_IDLE_GAP);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                // Polled after `recv`, so a record ready is always taken first.
                _ = until(idle) => break,
            }
        }
        Some(records)
    }

    /// Updates the assigned-partitions gauge, and warns when there have been none for a while:
    /// an aggregator without partitions looks exactly like one without traffic.
    fn check_assignment(&self) {
        let Ok(assigned) = self.consumer.assignment() else {
            return;
        };
        let count = assigned.count();
        self.metrics.assigned_partitions.set(count as i64);
        let mut since = self.unassigned_since.lock().expect("poisoned");
        if count > 0 {
            *since = None;
            return;
        }
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() >= UNASSIGNED_WARNING {
            tracing::warn!(
                group = %self.config.group_id,
                instance_id = %self.config.instance_id,
                "no partitions assigned for {} s; if another aggregator runs with the same aggregator.instance_id, give each its own",
                started.elapsed().as_secs()
            );
            *since = Some(Instant::now());
        }
    }

    /// Writes a batch, retrying with exponential backoff until it succeeds. Returns false
    /// when shutdown interrupted the retries (nothing is committed then).
    async fn write_with_retry(
        &self,
        records: &[RawRecord],
        inserter: &Inserter,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut progress = WriteProgress::default();
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let mut delays = write_backoff(WRITE_RETRY_BASE, max_backoff).build();
        loop {
            let started = Instant::now();
            match self.write_once(records, &mut progress, inserter).await {
                Ok(()) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return true;
                }
                Err(e) => {
                    self.metrics.batch_failures.inc();
                    let delay = delays.next().unwrap_or(max_backoff);
                    tracing::warn!(error = %e, records = records.len(), retry_in_ms = delay.as_millis() as u64, "batch not written; retrying, offsets not committed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn write_once(
        &self,
        records: &[RawRecord],
        progress: &mut WriteProgress,
        inserter: &Inserter,
    ) -> Result<(), SinkError> {
        let mut clock = Instant::now();
        let mut decoded = self.decoder.decode(records, |t| self.stream_of(t)).await?;
        if !progress.dead_letters {
            self.dead_letters.send(&decoded.poison).await?;
            self.metrics
                .events
                .with_label_values(&["dead_lettered"])
                .inc_by(decoded.poison.len() as u64);
            progress.dead_letters = true;
        }
        self.metrics.lap("decode", &mut clock);
        let span = UsageSpan::of(
            records
                .iter()
                .filter(|r| r.topic == self.topics.usage)
                .map(|r| (r.partition, r.offset)),
        );
        let outcome = self
            .sinks
            .write(&mut decoded, &span, progress, inserter, &self.metrics)
            .await?;
        tracing::debug!(?outcome, "batch written");
        Ok(())
    }

    /// Commits the account topic's records of a written batch. Usage offsets are committed by
    /// the flushes, from their checkpoints.
    async fn commit_accounts(&self, records: &[RawRecord]) {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for r in records.iter().filter(|r| r.topic == self.topics.account) {
            let e = next
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        self.commit_offsets(
            next.into_iter().map(|((t, p), o)| (t, p, o)).collect(),
            false,
        )
        .await;
    }

    /// Commits offsets to Kafka: in the background (`CommitMode::Async`) unless `wait`. A commit
    /// is advisory: Redis's checkpoints say where a usage partition resumes (a commit behind
    /// them only re-reads records the store skips; one ahead is sought back, see
    /// `HotStore::decide`), and account events are deduplicated by id, so a lost commit costs a
    /// re-read, never a count. Waiting on the broker for each one cost a sixth of the loop's
    /// time on tansu.
    async fn commit_offsets(&self, offsets: Vec<(String, i32, i64)>, wait: bool) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
                tracing::error!(error = %e, "building the commit list");
                return;
            }
        }
        let result = if wait {
            let consumer = self.consumer.clone();
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await
        } else {
            Ok(self.consumer.commit(&tpl, CommitMode::Async))
        };
        match result {
            Ok(Ok(())) => self
                .metrics
                .last_commit_unix
                .set(chrono::Utc::now().timestamp()),
            // After a rebalance the partitions may belong to another member, which will read
            // these records again; deduplication makes that harmless.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "offset commit failed; the records will be read again")
            }
            Err(e) => tracing::error!(error = %e, "commit task failed"),
        }
    }
}

impl meterline_infra::Component for Aggregator {
    fn name(&self) -> &'static str {
        "aggregator"
    }

    fn metrics(&self) -> prometheus::Registry {
        self.metrics.registry.clone()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> meterline_infra::RunFuture {
        Box::pin(async move { Ok(Aggregator::run(*self, shutdown).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_retries_double_up_to_the_cap_with_equal_jitter_and_never_run_out() {
        let max = Duration::from_secs(5);
        let mut delays = write_backoff(WRITE_RETRY_BASE, max).build();
        // backon computes in f32 seconds: allow a microsecond either way.
        let within = |d: Duration, lo: Duration, hi: Duration| {
            d + Duration::from_micros(1) >= lo && d <= hi + Duration::from_micros(1)
        };
        for n in 0..10_000u32 {
            let d = delays.next().expect("retries never run out");
            let full = (WRITE_RETRY_BASE * 2u32.pow(n.min(10))).min(max);
            assert!(
                within(d, full / 2, full),
                "attempt {n}: {d:?} not in [{:?}, {full:?})",
                full / 2
            );
        }
    }
}
