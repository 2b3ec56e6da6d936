//! The state store as the consumer drives it: a [`Partition`] for each usage partition this
//! aggregator holds, claimed at its first record, and the flushes that make them durable.
//!
//! The consumer calls [`HotStore::decide`] and [`HotStore::fold`] for each batch's usage records,
//! then [`HotStore::flush_due`] after every batch and whenever it has waited
//! [`FlushPolicy::interval`] without records. A due partition's flush runs as a task of its own
//! (a [`FlushJob`], retried with backoff until it finishes) while the consumer reads, inserts
//! and folds the next batches; a later `flush_due` collects its outcome. Only a finished flush
//! ([`Flushed::Through`]) lets the consumer commit a usage partition's offset to Kafka. A
//! partition whose flush is still running when it is due again with more than the policy's
//! bounds waits for it (backpressure). A partition that a flush finds fenced (a newer owner) or
//! in conflict (a concurrent rebuild) is dropped and claimed again, and the consumer rewinds it
//! to the checkpoint (`Rewind`).
//!
//! The events go to ClickHouse on the consumer's insert task, off the path from Kafka to the
//! snapshots. With [`HotStore::gate_on_clickhouse`], a job writes its snapshots at once but its
//! checkpoint only once the insert task says ClickHouse holds the partition up to the job's
//! offset ([`Inserted`]): the checkpoint is what says "every store holds this prefix", and a
//! snapshot ahead of it is what a torn flush leaves anyway (the replay skips what an
//! account's `_o` holds, and inserts only above ClickHouse's watermark). While one job waits,
//! the partition's next jobs write their snapshots only, and the next checkpoint, taken once
//! the waiting one has landed, carries them all ([`Partition::take`]): one checkpoint of a
//! partition is open at a time, so they land in offset order, and a ClickHouse stall holds up
//! the checkpoints but not the snapshots. A job that writes snapshots only is collected as soon
//! as it finishes, even behind a checkpoint still waiting.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::keys::Grain;
use meterline_schemas::UsageEvent;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::off_the_async_workers;
use super::partition::{FlushJob, FlushPolicy, Flushed, Partition};
use super::writer::StateWriter;
use crate::decode::Decoded;
use crate::fold::occurred_at;
use crate::SinkError;

/// What a flush asks of the consumer for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushAction {
    /// Commit this offset (the checkpoint + 1) to Kafka; the usage events counted and found
    /// duplicate since the last checkpoint are now durable.
    Commit {
        offset: i64,
        counted: u64,
        duplicates: u64,
    },
    /// Read the partition again from this offset (the checkpoint + 1): the state was dropped.
    Rewind(i64),
}

/// A batch's decisions, kept across retries of the batch: which records are the first of their
/// event id (indices into the batch's usage records).
#[derive(Debug, Default)]
pub struct UsageDecisions {
    pub new: Vec<usize>,
    pub duplicates: usize,
    /// The last offset decided, per partition.
    pub handled: BTreeMap<i32, i64>,
    /// Partitions with records held back while they rewind: they advance only to
    /// [`Self::handled`], whatever else the batch holds of them.
    pub held_back: BTreeSet<i32>,
}

/// The first delay before running a failed flush again.
const RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(100);

struct Held {
    partition: Partition,
    counted: u64,
    duplicates: u64,
    /// The partition's flushes taken and not collected, oldest first.
    flushes: VecDeque<Running>,
    /// Whether the first batch since the claim was checked against the checkpoint (design
    /// §3.2 step 2; [`HotStore::decide`]).
    positioned: bool,
    /// True while this claim is held; the insert task skips the events of a claim dropped
    /// since it folded them ([`HotStore::claim_of`]).
    alive: Arc<AtomicBool>,
}

impl Held {
    /// Waits for every running flush of the partition to write its snapshots.
    async fn wait_for_snapshots(&mut self) {
        for running in self.flushes.iter_mut() {
            // An error: the task ended without writing them (it stopped, or was fenced).
            let _ = running.written.wait_for(|w| *w).await;
        }
    }

    /// Tells the partition once its newest flush has written its snapshots, so that the next
    /// one may be taken and their accounts forgotten.
    fn note_snapshots_written(&mut self) {
        if self.flushes.back().is_some_and(Running::snapshots_written) {
            self.partition.snapshots_written();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// A flush job on its task, with the counts its checkpoint makes durable. Dropping it (the
/// partition was dropped) stops the task at its next await.
struct Running {
    task: JoinHandle<(FlushJob, Flushed, u64)>,
    /// Whether it writes a checkpoint ([`FlushJob::checkpoints`]); if not, it holds no counts
    /// and may be collected before the flushes taken ahead of it.
    checkpoints: bool,
    counted: u64,
    duplicates: u64,
    /// About how many bytes the copies its snapshots are built from held when it started (see
    /// [`FlushPolicy::max_snapshot_bytes`]).
    bytes: usize,
    /// True once its snapshots are written (and forgotten); closed if the task ended first.
    written: watch::Receiver<bool>,
}

impl Running {
    fn snapshots_written(&self) -> bool {
        *self.written.borrow()
    }
}

/// How far ClickHouse holds each usage partition (the highest offset handled whose events are
/// all inserted), raised by the consumer's insert task after each insert lands, in offset order.
/// Dropping it (the insert task stopped at shutdown) tells the jobs still waiting that their
/// checkpoints will not be made ([`Flushed::Stopped`]).
pub struct Inserted(watch::Sender<BTreeMap<i32, i64>>);

impl Inserted {
    /// One that no flush waits on, for tests of the insert task alone.
    #[cfg(test)]
    pub(crate) fn unwatched() -> Self {
        Self(watch::channel(BTreeMap::new()).0)
    }

    /// ClickHouse now holds each partition of `upto` up to its offset.
    pub fn raise(&self, upto: &BTreeMap<i32, i64>) {
        if upto.is_empty() {
            return;
        }
        self.0.send_modify(|held| {
            for (&partition, &offset) in upto {
                let o = held.entry(partition).or_insert(offset);
                *o = (*o).max(offset);
            }
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every usage partition's state this aggregator holds; see the module documentation.
pub struct HotStore {
    conn: HotConn,
    keys: HotKeys,
    topic: String,
    pub policy: FlushPolicy,
    held: BTreeMap<i32, Held>,
    /// Script calls sent since [`Self::take_calls`] (claims, loads, snapshots, checkpoints).
    calls: u64,
    /// Failed flush attempts since [`Self::take_failures`].
    failures: u64,
    /// Accounts forgotten to keep within [`FlushPolicy::max_resident`] since
    /// [`Self::take_evicted`].
    evicted: u64,
    /// Partitions dropped since [`Self::take_dropped`], by reason.
    dropped: BTreeMap<&'static str, u64>,
    /// Partitions whose state was dropped, by the offset the consumer must read them from
    /// again (see [`Self::decide`]).
    rewinding: BTreeMap<i32, Rewind>,
    /// What the checkpoints wait for, once [`Self::gate_on_clickhouse`] was called.
    inserted: Option<watch::Receiver<BTreeMap<i32, i64>>>,
    /// Time [`Self::flush_due`] spent waiting for running flushes (backpressure) since
    /// [`Self::take_waited`].
    waited: std::time::Duration,
    /// Time [`Self::fold`] spent loading accounts from Redis since [`Self::take_loading`].
    loading: std::time::Duration,
    /// Where each flush's durations go, once [`Self::time_flushes`] was called.
    flush_seconds: Option<prometheus::HistogramVec>,
    /// Where each snapshot's round trip goes, likewise.
    snapshot_seconds: Option<prometheus::Histogram>,
}

#[derive(Debug, Clone, Copy)]
struct Rewind {
    /// The checkpoint + 1; `None` until it has been read.
    from: Option<i64>,
    /// Whether the consumer's seek there succeeded.
    sought: bool,
}

impl HotStore {
    pub fn new(
        conn: HotConn,
        keys: HotKeys,
        topic: impl Into<String>,
        policy: FlushPolicy,
    ) -> Self {
        Self {
            conn,
            keys,
            topic: topic.into(),
            policy,
            held: BTreeMap::new(),
            calls: 0,
            failures: 0,
            evicted: 0,
            dropped: BTreeMap::new(),
            rewinding: BTreeMap::new(),
            inserted: None,
            waited: std::time::Duration::ZERO,
            loading: std::time::Duration::ZERO,
            flush_seconds: None,
            snapshot_seconds: None,
        }
    }

    /// From now on each flush observes in `flushes` how long it took until its snapshots were
    /// written (`until` = `snapshots`) and until its checkpoint was (`checkpoint`), and each
    /// snapshot in `snapshots` how long its round trip to Redis took.
    pub fn time_flushes(
        &mut self,
        flushes: prometheus::HistogramVec,
        snapshots: prometheus::Histogram,
    ) {
        self.flush_seconds = Some(flushes);
        self.snapshot_seconds = Some(snapshots);
    }

    /// Time spent loading accounts since the last call (the consumer's `load` stage).
    pub fn take_loading(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.loading)
    }

    /// Time spent waiting for running flushes since the last call (the consumer's
    /// `flush_wait` stage).
    pub fn take_waited(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.waited)
    }

    /// From now on a flush's checkpoint waits until ClickHouse holds its partition up to its
    /// offset, as the returned handle says; without this (tests of the store alone) it does
    /// not wait.
    pub fn gate_on_clickhouse(&mut self) -> Inserted {
        let (tx, rx) = watch::channel(BTreeMap::new());
        self.inserted = Some(rx);
        Inserted(tx)
    }

    /// Queues accounts for the scorer, each in the share of the partition its record came from
    /// (account events: a plan, seat or signup change changes scores too), listing the shares.
    pub async fn queue_for_scorer(&self, accounts: &[(i32, &str)]) -> Result<(), SinkError> {
        let mut by_partition: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        for (partition, account) in accounts {
            by_partition.entry(*partition).or_default().push(account);
        }
        let mut conn = self.conn.clone();
        for (partition, accounts) in by_partition {
            let queue = self.keys.dirty(partition);
            redis::cmd("SADD")
                .arg(self.keys.scorer_queues())
                .arg(&queue)
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("SADD")
                .arg(&queue)
                .arg(accounts)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Script calls sent since the last call (for `meterline_aggregator_redis_commands_total`).
    pub fn take_calls(&mut self) -> u64 {
        std::mem::take(&mut self.calls)
    }

    /// Accounts evicted since the last call (`meterline_aggregator_state_evictions_total`).
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Partitions dropped since the last call, by reason (fenced, conflict, lost).
    pub fn take_dropped(&mut self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut self.dropped)
    }

    /// Failed flush attempts since the last call (for `meterline_aggregator_batch_failures_total`).
    pub fn take_failures(&mut self) -> u64 {
        std::mem::take(&mut self.failures)
    }

    fn writer(&self, partition: i32) -> StateWriter<HotConn> {
        StateWriter::new(self.conn.clone(), self.keys.clone(), &self.topic, partition)
            .timed(self.snapshot_seconds.clone())
    }

    /// The partition's state, claimed now if this aggregator does not hold it.
    async fn claimed(
        &mut self,
        partition: i32,
        now: DateTime<Utc>,
    ) -> Result<&mut Held, SinkError> {
        if !self.held.contains_key(&partition) {
            self.calls += 1;
            let mut writer = self.writer(partition);
            let p = Partition::claim(&mut writer, now).await?;
            // A rewind recorded for an earlier claim (its seek may have been overtaken by a
            // rebalance) is void: the new claim's checkpoint decides, in `decide`.
            self.rewinding.remove(&partition);
            tracing::info!(
                partition,
                epoch = p.epoch(),
                checkpoint = p.checkpointed(),
                "usage partition claimed"
            );
            self.held.insert(
                partition,
                Held {
                    partition: p,
                    counted: 0,
                    duplicates: 0,
                    flushes: VecDeque::new(),
                    positioned: false,
                    alive: Arc::new(AtomicBool::new(true)),
                },
            );
        }
        Ok(self.held.get_mut(&partition).expect("just inserted"))
    }

    /// Decides which of a batch's usage records are new: records at or below what a partition
    /// has already handled are neither new nor duplicates (they are skipped), the rest are new
    /// unless their id was counted before.
    ///
    /// `first` is each usage partition's first offset in the batch, counting records that did
    /// not decode: every partition in it is claimed and positioned here, even one whose records
    /// all went to the dead-letter topic.
    pub async fn decide(
        &mut self,
        usage: &[Decoded<UsageEvent>],
        first: &BTreeMap<i32, i64>,
        now: DateTime<Utc>,
    ) -> Result<UsageDecisions, SinkError> {
        let partitions: BTreeSet<i32> = usage
            .iter()
            .map(|d| d.partition)
            .chain(first.keys().copied())
            .collect();
        // A held partition whose stored epoch is no longer ours went to another owner (and may
        // have come back, the consumer reading it again from the committed offset): its state,
        // deduplication included, is stale. Checked before anything of the batch is decided or
        // inserted, so a stale owner inserts nothing into ClickHouse.
        // The held partitions' stored epochs read together: one after the other, a batch
        // waited for one round trip per partition, each behind the running flushes' snapshots
        // (BENCHMARKS.md, 2026-12-04, fourth session).
        let stored = futures::future::try_join_all(
            partitions
                .iter()
                .filter(|p| self.held.contains_key(p))
                .map(|&partition| {
                    let mut writer = self.writer(partition);
                    async move {
                        let (e, _) = writer.stored_checkpoint().await?;
                        Ok::<_, SinkError>((partition, e))
                    }
                }),
        )
        .await?;
        for (partition, e) in stored {
            if let Some(held) = self.held.get(&partition) {
                if e != held.partition.epoch() {
                    tracing::warn!(
                        partition,
                        ours = held.partition.epoch(),
                        stored = e,
                        "usage partition claimed by another owner since; its state is dropped"
                    );
                    *self.dropped.entry("fenced").or_default() += 1;
                    self.held.remove(&partition);
                }
            }
        }
        // Claim every partition first: deciding remembers ids, so nothing may fail once it
        // has started (a retry would find the batch's own ids and call them duplicates).
        for &partition in &partitions {
            self.claimed(partition, now).await?;
        }
        // Redis decides where a partition resumes, Kafka's commit is advisory (design §3.2 step
        // 2): a partition whose first records since its claim are past its checkpoint + 1 (the
        // commit ahead of the checkpoint: a broker fault, a migration, Redis restored from an
        // older copy, records fetched before the partition went to another owner and came
        // back) is read again from there.
        for &partition in &partitions {
            let held = self.held.get_mut(&partition).expect("claimed above");
            if std::mem::replace(&mut held.positioned, true)
                || self.rewinding.contains_key(&partition)
            {
                continue;
            }
            let from = held.partition.checkpointed() + 1;
            let first = first.get(&partition).copied().or_else(|| {
                usage
                    .iter()
                    .filter(|d| d.partition == partition)
                    .map(|d| d.offset)
                    .min()
            });
            if let Some(first) = first.filter(|f| *f > from) {
                tracing::warn!(
                    partition,
                    from,
                    first,
                    "records past the checkpoint; reading the partition again from it"
                );
                self.rewinding.insert(
                    partition,
                    Rewind {
                        from: Some(from),
                        sought: false,
                    },
                );
            }
        }
        let mut out = UsageDecisions::default();
        for (i, d) in usage.iter().enumerate() {
            if let Some(r) = self.rewinding.get(&d.partition).copied() {
                // Until the checkpoint is read, nothing resumes.
                let from = r.from.unwrap_or(i64::MAX);
                let resume = d.offset == from || (d.offset > from && r.sought);
                if !resume {
                    // Before the checkpoint (already handled), or read before the seek took
                    // effect: not handled now, and the partition does not advance past it.
                    out.held_back.insert(d.partition);
                    continue;
                }
                if d.offset > from {
                    tracing::warn!(partition = d.partition, expected = from, got = d.offset, "after the rewind the log resumed past the checkpoint; the records between are no longer in it");
                }
                self.rewinding.remove(&d.partition);
            }
            let held = self.held.get_mut(&d.partition).expect("claimed above");
            if d.offset <= held.partition.through() {
                continue;
            }
            out.handled
                .entry(d.partition)
                .and_modify(|o| *o = (*o).max(d.offset))
                .or_insert(d.offset);
            let day = Grain::Day.window_start(occurred_at(&d.event));
            if held.partition.is_new(&d.event.event_id, day) {
                out.new.push(i);
            } else {
                out.duplicates += 1;
                held.duplicates += 1;
            }
        }
        Ok(out)
    }

    /// How far ClickHouse holds `partition`, as the insert task last said (`None` before it
    /// said anything of it, or without [`Self::gate_on_clickhouse`]).
    pub fn inserted_through(&self, partition: i32) -> Option<i64> {
        self.inserted.as_ref()?.borrow().get(&partition).copied()
    }

    /// A flag that stays true while this aggregator holds its current claim of `partition`
    /// (`None` if it holds none): dropping the partition, for whatever reason, clears it, so
    /// whoever holds the flag stops writing for that claim (the insert task).
    pub fn claim_of(&self, partition: i32) -> Option<Arc<AtomicBool>> {
        self.held.get(&partition).map(|h| h.alive.clone())
    }

    /// Seeks the consumer still has to make: (partition, offset) for each rewind not done yet.
    pub fn pending_seeks(&self) -> Vec<(i32, i64)> {
        self.rewinding
            .iter()
            .filter(|(_, r)| !r.sought)
            .filter_map(|(p, r)| Some((*p, r.from?)))
            .collect()
    }

    /// The consumer's seek of `partition` succeeded.
    pub fn sought(&mut self, partition: i32) {
        if let Some(r) = self.rewinding.get_mut(&partition) {
            r.sought = true;
        }
    }

    /// Folds the batch's new usage events into their accounts, loading the accounts not in
    /// memory, and marks every partition handled up to its last record in the batch (`last`,
    /// which counts records that did not decode too). `now` is the moment the events are
    /// folded as of. Returns the offset each partition was handled to: its events, and only
    /// those, go to ClickHouse, and a checkpoint waits for them ([`Inserted::raise`]).
    pub async fn fold(
        &mut self,
        usage: &[Decoded<UsageEvent>],
        decisions: &UsageDecisions,
        last: &BTreeMap<i32, i64>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let mut advanced = BTreeMap::new();
        let partitions: BTreeSet<i32> = usage
            .iter()
            .map(|d| d.partition)
            .chain(last.keys().copied())
            .collect();
        for partition in partitions {
            if self.rewinding.contains_key(&partition)
                && !decisions.handled.contains_key(&partition)
            {
                continue;
            }
            let writer = self.writer(partition);
            let in_flight = self.policy.in_flight;
            // Claimed in `decide`. One dropped since (by a newer owner, in an earlier attempt at
            // this batch) is not claimed back here: its records were decided by the dropped
            // state, and its next batch claims and positions it afresh.
            let Some(held) = self.held.get_mut(&partition) else {
                continue;
            };
            let new: Vec<&Decoded<UsageEvent>> = decisions
                .new
                .iter()
                .map(|&i| &usage[i])
                .filter(|d| d.partition == partition)
                .collect();
            let accounts: BTreeSet<&str> =
                new.iter().map(|d| d.event.account_id.as_str()).collect();
            let missing = accounts.iter().filter(|a| !held.partition.holds(a)).count();
            // Room for them first. Past its share, the partition waits for its running flushes
            // to write their snapshots, whose accounts may then go: with eviction after flushes
            // only, the accounts of the batch before stayed in memory with this one's, and a
            // batch is mostly one partition's records (20,000 events over 100,000 accounts
            // touched 9,000-12,000 accounts of one partition), which took the store to
            // 50,000-55,000 accounts against a budget of 30,000.
            let share = self.share();
            let held = self.held.get_mut(&partition).expect("claimed above");
            if held.partition.accounts() + missing > share {
                let started = Instant::now();
                held.wait_for_snapshots().await;
                held.note_snapshots_written();
                self.waited += started.elapsed();
            }
            self.evicted +=
                held.partition
                    .evict_but(share.saturating_sub(missing), &accounts) as u64;
            self.calls += missing as u64;
            let started = Instant::now();
            let loaded = held.partition.load(&writer, accounts, in_flight).await;
            self.loading += started.elapsed();
            let held = self.held.get_mut(&partition).expect("claimed above");
            if !loaded? {
                // A newer owner of this partition holds an account: this aggregator lost the
                // partition. Its state goes, unflushed and uncommitted; the owner reads these
                // records again from its checkpoint.
                tracing::warn!(
                    partition,
                    "a newer owner holds an account of this partition; its state is dropped"
                );
                *self.dropped.entry("fenced").or_default() += 1;
                self.held.remove(&partition);
                continue;
            }
            let p = &mut held.partition;
            off_the_async_workers(|| {
                for d in &new {
                    p.fold(d.offset, &d.event, now);
                }
            });
            let handled = decisions.handled.get(&partition).copied();
            let upto = if decisions.held_back.contains(&partition) {
                handled
            } else {
                handled.max(last.get(&partition).copied())
            };
            if let Some(upto) = upto {
                held.partition.advance(upto);
                advanced.insert(partition, upto);
            }
        }
        Ok(advanced)
    }

    /// Counts a written batch's new events toward their partitions' next checkpoints (for the
    /// `counted` metric); once per batch, after its write succeeded.
    pub fn count(&mut self, usage: &[Decoded<UsageEvent>], decisions: &UsageDecisions) {
        for &i in &decisions.new {
            if let Some(held) = self.held.get_mut(&usage[i].partition) {
                held.counted += 1;
            }
        }
    }

    /// Whether any partition has something to flush.
    pub fn has_pending(&self) -> bool {
        self.held
            .values()
            .any(|h| h.partition.through() > h.partition.checkpointed())
    }

    /// Accounts held in memory, over every partition.
    pub fn accounts(&self) -> usize {
        self.held.values().map(|h| h.partition.accounts()).sum()
    }

    /// Starts the flush of every partition that is due (every one with changes when `all`) and
    /// collects the flushes that have finished, saying what the consumer must do for each. With
    /// `all` it waits for every flush; otherwise only for a partition due again with more than
    /// the policy's bounds waiting behind its running flushes. A partition found fenced or in
    /// conflict is dropped, and the rewind names its stored checkpoint.
    pub async fn flush_due(
        &mut self,
        caught_up: bool,
        all: bool,
        now: DateTime<Utc>,
    ) -> Vec<(i32, FlushAction)> {
        let mut actions = Vec::new();
        self.read_rewinds(&mut actions).await;
        let partitions: Vec<i32> = self.held.keys().copied().collect();
        for &partition in &partitions {
            let Some(held) = self.held.get(&partition) else {
                continue;
            };
            if held.flushes.is_empty() {
                continue;
            }
            let behind = held.partition.due(Instant::now(), caught_up, &self.policy)
                && held.partition.over_bounds(&self.policy);
            if all || behind {
                let started = Instant::now();
                self.collect_all(partition, &mut actions).await;
                self.waited += started.elapsed();
            } else {
                self.collect_finished(partition, &mut actions).await;
            }
        }
        let clock = Instant::now();
        let share = self.share();
        for &partition in &partitions {
            let Some(held) = self.held.get_mut(&partition) else {
                continue;
            };
            held.note_snapshots_written();
            // Past its share of the budget, a partition forgets what its written snapshots
            // hold, and flushes its changes now, so that they may go once written.
            let over_share = held.partition.accounts() > share;
            if over_share {
                self.evicted += held.partition.evict(share) as u64;
            }
            let due = if all {
                held.partition.through() > held.partition.checkpointed()
            } else {
                held.partition.due(clock, caught_up, &self.policy)
                    || (over_share && held.partition.has_changes())
            };
            if !due || held.flushes.len() >= self.policy.max_jobs.max(1) {
                continue;
            }
            // A flush holds its accounts' copies until their snapshots are written (each built
            // just before its write): past the budget, wait for them to be written first (not
            // for the checkpoints, which may wait for ClickHouse).
            let in_flight: usize = self
                .held
                .values()
                .flat_map(|h| h.flushes.iter())
                .filter(|r| !r.snapshots_written() && !r.task.is_finished())
                .map(|r| r.bytes)
                .sum();
            if in_flight >= self.policy.max_snapshot_bytes {
                let started = Instant::now();
                self.wait_for_snapshots().await;
                self.waited += started.elapsed();
            }
            let Some(held) = self.held.get_mut(&partition) else {
                continue;
            };
            let partition_state = &mut held.partition;
            let Some(job) = off_the_async_workers(|| partition_state.take(now)) else {
                continue;
            };
            let bytes = job.bytes();
            let checkpoints = job.checkpoints();
            self.calls += job.unwritten() as u64 + u64::from(checkpoints);
            let (written_tx, written) = watch::channel(false);
            let task = self.spawn(partition, job, written_tx);
            let held = self.held.get_mut(&partition).expect("held above");
            let (counted, duplicates) = if checkpoints {
                (
                    std::mem::take(&mut held.counted),
                    std::mem::take(&mut held.duplicates),
                )
            } else {
                (0, 0)
            };
            held.flushes.push_back(Running {
                bytes,
                task,
                written,
                checkpoints,
                counted,
                duplicates,
            });
        }
        if all {
            for partition in partitions {
                self.collect_all(partition, &mut actions).await;
            }
        }
        actions
    }

    /// Runs `job` on a task of its own: its snapshots, retried with backoff until they are
    /// written (then `written` is set); then, if it checkpoints, once ClickHouse holds the
    /// job's offset, its checkpoint, retried the same way (the partition's checkpoint before
    /// it has landed: [`Partition::take`] opens one at a time). Returns its outcome and the
    /// failed attempts.
    fn spawn(
        &self,
        partition: i32,
        mut job: FlushJob,
        written: watch::Sender<bool>,
    ) -> JoinHandle<(FlushJob, Flushed, u64)> {
        let writer = self.writer(partition);
        let in_flight = self.policy.in_flight;
        let max = self.policy.retry_max_backoff;
        let mut inserted = self.inserted.clone();
        let timing = self.flush_seconds.clone();
        let started = Instant::now();
        let since = job.since();
        // A checkpoint taking what jobs of snapshots only left has no snapshot to time.
        let had_writes = job.unwritten() > 0;
        let observe = move |until: &str, from: Instant| {
            if let Some(h) = &timing {
                h.with_label_values(&[until])
                    .observe(from.elapsed().as_secs_f64());
            }
        };
        let work = async move {
            let mut delays = crate::consumer::write_backoff(RETRY_BASE, max).build();
            let mut failures = 0;
            let mut retry = |e: SinkError, failures: &mut u64| {
                *failures += 1;
                let delay = delays.next().unwrap_or(max);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "hot state not flushed; retrying, usage offsets not committed");
                tokio::time::sleep(delay)
            };
            loop {
                match job.write_snapshots(&writer, in_flight).await {
                    Ok(None) => break,
                    Ok(Some(stop)) => return (job, stop, failures),
                    Err(e) => retry(e, &mut failures).await,
                }
            }
            job.release_snapshots();
            written.send_replace(true);
            if had_writes {
                observe("snapshots", started);
                observe("snapshots_since_change", since);
            }
            if !job.checkpoints() {
                return (job, Flushed::Nothing, failures);
            }
            let through = job.through();
            let held = match inserted.as_mut() {
                None => true,
                Some(rx) => rx
                    .wait_for(|m| m.get(&partition).is_some_and(|&o| o >= through))
                    .await
                    .is_ok(),
            };
            if !held {
                return (job, Flushed::Stopped, failures);
            }
            loop {
                match job.checkpoint(&writer).await {
                    Ok(outcome) => {
                        if matches!(outcome, Flushed::Through(_)) {
                            observe("checkpoint", started);
                        }
                        return (job, outcome, failures);
                    }
                    Err(e) => retry(e, &mut failures).await,
                }
            }
        };
        tokio::spawn(work.instrument(tracing::info_span!("flush", partition)))
    }

    /// Waits until every running flush has written its snapshots (the memory the budget
    /// counts); their checkpoints may still wait for ClickHouse.
    async fn wait_for_snapshots(&mut self) {
        for held in self.held.values_mut() {
            held.wait_for_snapshots().await;
        }
    }

    /// Collects the partition's flushes that have finished: oldest first, up to the first one
    /// still running, and then those behind it that write snapshots only (a checkpoint waiting
    /// for ClickHouse does not hold them up; they carry no offset to commit).
    async fn collect_finished(&mut self, partition: i32, actions: &mut Vec<(i32, FlushAction)>) {
        loop {
            let Some(held) = self.held.get(&partition) else {
                return;
            };
            let next = held
                .flushes
                .iter()
                .enumerate()
                .position(|(i, r)| r.task.is_finished() && (i == 0 || !r.checkpoints));
            match next {
                Some(i) => self.collect_at(partition, i, actions).await,
                None => return,
            }
        }
    }

    /// Waits for every flush of the partition, oldest first.
    async fn collect_all(&mut self, partition: i32, actions: &mut Vec<(i32, FlushAction)>) {
        while self
            .held
            .get(&partition)
            .is_some_and(|h| !h.flushes.is_empty())
        {
            self.collect(partition, actions).await;
        }
    }

    /// The accounts each held partition may keep in memory ([`FlushPolicy::max_resident`]
    /// shared equally).
    fn share(&self) -> usize {
        self.policy.max_resident / self.held.len().max(1)
    }

    /// Waits for the partition's oldest running flush, if any, and takes its outcome.
    async fn collect(&mut self, partition: i32, actions: &mut Vec<(i32, FlushAction)>) {
        self.collect_at(partition, 0, actions).await;
    }

    /// Waits for the partition's `i`th running flush, if any, and takes its outcome.
    async fn collect_at(
        &mut self,
        partition: i32,
        i: usize,
        actions: &mut Vec<(i32, FlushAction)>,
    ) {
        let Some(held) = self.held.get_mut(&partition) else {
            return;
        };
        let Some(mut running) = held.flushes.remove(i) else {
            return;
        };
        let share = self.share();
        let held = self.held.get_mut(&partition).expect("held above");
        let mut lost = false;
        let outcome = match (&mut running.task).await {
            Ok((job, outcome, failures)) => {
                self.failures += failures;
                held.partition.finish(&job, outcome);
                self.evicted += held.partition.evict(share) as u64;
                outcome
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "flush task lost");
                lost = true;
                Flushed::Conflict
            }
        };
        match outcome {
            Flushed::Through(offset) => actions.push((
                partition,
                FlushAction::Commit {
                    offset: offset + 1,
                    counted: running.counted,
                    duplicates: running.duplicates,
                },
            )),
            Flushed::Nothing => {}
            Flushed::Stopped => {
                // Shutting down before ClickHouse confirmed the job's events: nothing more of
                // this partition may be checkpointed; the next owner resumes from the last one.
                *self.dropped.entry("stopped").or_default() += 1;
                self.held.remove(&partition);
                tracing::warn!(
                    partition,
                    "flush not checkpointed: ClickHouse did not confirm its events before shutdown"
                );
            }
            stop @ (Flushed::Fenced | Flushed::Conflict) => {
                let reason = match stop {
                    _ if lost => "lost",
                    Flushed::Fenced => "fenced",
                    _ => "conflict",
                };
                *self.dropped.entry(reason).or_default() += 1;
                self.held.remove(&partition);
                tracing::warn!(partition, outcome = ?stop, "usage partition state dropped; reading it again from its checkpoint");
                self.rewinding.insert(
                    partition,
                    Rewind {
                        from: None,
                        sought: false,
                    },
                );
                self.read_rewinds(actions).await;
            }
        }
    }

    /// Reads the checkpoint of every dropped partition not read yet; one that cannot be read
    /// now is tried again at the next flush, its records held back meanwhile.
    async fn read_rewinds(&mut self, actions: &mut Vec<(i32, FlushAction)>) {
        let unread: Vec<i32> = self
            .rewinding
            .iter()
            .filter(|(_, r)| r.from.is_none())
            .map(|(p, _)| *p)
            .collect();
        for partition in unread {
            match self.writer(partition).stored_checkpoint().await {
                Ok((_, o)) => {
                    if let Some(r) = self.rewinding.get_mut(&partition) {
                        r.from = Some(o + 1);
                    }
                    actions.push((partition, FlushAction::Rewind(o + 1)));
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "checkpoint of a dropped partition not read yet; its records are held back")
                }
            }
        }
    }
}
