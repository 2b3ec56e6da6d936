//! The state store as the consumer drives it: a [`Partition`] for each usage partition this
//! aggregator holds, claimed at its first record, and the flushes that make them durable.
//!
//! The consumer calls [`HotStore::write`] for each batch's usage records (after deciding nothing
//! else about them), then [`HotStore::flush_due`] after every batch and whenever it has waited
//! [`FlushPolicy::interval`] without records. Only a flush's [`Flushed::Through`] lets it commit a
//! usage partition's offset to Kafka. A partition that a flush finds fenced (a newer owner) or in
//! conflict (a concurrent rebuild) is dropped and claimed again, and the consumer rewinds it to
//! the checkpoint ([`Rewind`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use meterline_infra::redis::HotConn;
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::keys::Grain;
use meterline_schemas::UsageEvent;

use super::partition::{FlushPolicy, Flushed, Partition};
use super::writer::StateWriter;
use crate::decode::Decoded;
use crate::fold::occurred_at;
use crate::SinkError;

/// Runs CPU-bound work (folding a 20,000-event batch) without holding up the runtime's other
/// tasks: in `meterline run` the aggregator shares the runtime with ingest and the read path,
/// whose quota checks would otherwise wait behind it. On a multi-threaded runtime the worker
/// hands its queue to another thread first; a current-thread runtime (unit and integration
/// tests) just runs it.
fn off_the_async_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

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

struct Held {
    partition: Partition,
    counted: u64,
    duplicates: u64,
}

/// Every usage partition's state this aggregator holds; see the module documentation.
pub struct HotStore {
    conn: HotConn,
    keys: HotKeys,
    topic: String,
    scorer_queue: Option<String>,
    pub policy: FlushPolicy,
    held: BTreeMap<i32, Held>,
    /// Script calls sent since [`Self::take_calls`] (claims, loads, snapshots, checkpoints).
    calls: u64,
    /// Partitions whose state was dropped, by the offset the consumer must read them from
    /// again (see [`Self::decide`]).
    rewinding: BTreeMap<i32, Rewind>,
}

#[derive(Debug, Clone, Copy)]
struct Rewind {
    /// The checkpoint + 1.
    from: i64,
    /// Whether the consumer's seek there succeeded.
    sought: bool,
}

impl HotStore {
    /// `scorer_queue`: the one set every partition's changed accounts go to (see
    /// [`StateWriter::with_scorer_queue`]); `None` for each partition's own.
    pub fn new(
        conn: HotConn,
        keys: HotKeys,
        topic: impl Into<String>,
        scorer_queue: Option<String>,
        policy: FlushPolicy,
    ) -> Self {
        Self {
            conn,
            keys,
            topic: topic.into(),
            scorer_queue,
            policy,
            held: BTreeMap::new(),
            calls: 0,
            rewinding: BTreeMap::new(),
        }
    }

    /// Script calls sent since the last call (for `meterline_aggregator_redis_commands_total`).
    pub fn take_calls(&mut self) -> u64 {
        std::mem::take(&mut self.calls)
    }

    fn writer(&self, partition: i32) -> StateWriter<HotConn> {
        StateWriter::new(self.conn.clone(), self.keys.clone(), &self.topic, partition)
            .with_scorer_queue(self.scorer_queue.clone())
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
                },
            );
        }
        Ok(self.held.get_mut(&partition).expect("just inserted"))
    }

    /// Decides which of a batch's usage records are new: records at or below what a partition
    /// has already handled are neither new nor duplicates (they are skipped), the rest are new
    /// unless their id was counted before.
    pub async fn decide(
        &mut self,
        usage: &[Decoded<UsageEvent>],
        now: DateTime<Utc>,
    ) -> Result<UsageDecisions, SinkError> {
        let partitions: BTreeSet<i32> = usage.iter().map(|d| d.partition).collect();
        // A held partition whose stored epoch is no longer ours went to another owner (and may
        // have come back, the consumer reading it again from the committed offset): its state,
        // deduplication included, is stale. Checked before anything of the batch is decided or
        // inserted, so a stale owner inserts nothing into ClickHouse.
        for &partition in &partitions {
            if let Some(held) = self.held.get(&partition) {
                let (e, _) = self.writer(partition).stored_checkpoint().await?;
                if e != held.partition.epoch() {
                    tracing::warn!(
                        partition,
                        ours = held.partition.epoch(),
                        stored = e,
                        "usage partition claimed by another owner since; its state is dropped"
                    );
                    self.held.remove(&partition);
                }
            }
        }
        // Claim every partition first: deciding remembers ids, so nothing may fail once it
        // has started (a retry would find the batch's own ids and call them duplicates).
        for &partition in &partitions {
            self.claimed(partition, now).await?;
        }
        let mut out = UsageDecisions::default();
        for (i, d) in usage.iter().enumerate() {
            if let Some(r) = self.rewinding.get(&d.partition).copied() {
                let resume = d.offset == r.from || (d.offset > r.from && r.sought);
                if !resume {
                    // Before the checkpoint (already handled), or read before the seek took
                    // effect: not handled now, and the partition does not advance past it.
                    out.held_back.insert(d.partition);
                    continue;
                }
                if d.offset > r.from {
                    tracing::warn!(partition = d.partition, expected = r.from, got = d.offset, "after the rewind the log resumed past the checkpoint; the records between are no longer in it");
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

    /// Seeks the consumer still has to make: (partition, offset) for each rewind not done yet.
    pub fn pending_seeks(&self) -> Vec<(i32, i64)> {
        self.rewinding
            .iter()
            .filter(|(_, r)| !r.sought)
            .map(|(p, r)| (*p, r.from))
            .collect()
    }

    /// The consumer's seek of `partition` succeeded.
    pub fn sought(&mut self, partition: i32) {
        if let Some(r) = self.rewinding.get_mut(&partition) {
            r.sought = true;
        }
    }

    /// Folds the batch's new usage events (already in ClickHouse) into their accounts, loading
    /// the accounts not in memory, and marks every partition handled up to its last record in
    /// the batch (`last`, which counts records that did not decode too).
    pub async fn fold(
        &mut self,
        usage: &[Decoded<UsageEvent>],
        decisions: &UsageDecisions,
        last: &BTreeMap<i32, i64>,
        now: DateTime<Utc>,
    ) -> Result<(), SinkError> {
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
            let held = self.claimed(partition, now).await?;
            let new: Vec<&Decoded<UsageEvent>> = decisions
                .new
                .iter()
                .map(|&i| &usage[i])
                .filter(|d| d.partition == partition)
                .collect();
            let accounts: BTreeSet<&str> =
                new.iter().map(|d| d.event.account_id.as_str()).collect();
            let missing = accounts.iter().filter(|a| !held.partition.holds(a)).count();
            self.calls += missing as u64;
            let held = self.held.get_mut(&partition).expect("claimed above");
            if !held.partition.load(&writer, accounts, in_flight).await? {
                // A newer owner of this partition holds an account: this aggregator lost the
                // partition. Its state goes, unflushed and uncommitted; the owner reads these
                // records again from its checkpoint.
                tracing::warn!(
                    partition,
                    "a newer owner holds an account of this partition; its state is dropped"
                );
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
            }
        }
        Ok(())
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

    /// Flushes every partition that is due (every one with changes when `all`), and says what
    /// the consumer must do for each. A partition found fenced or in conflict is dropped and
    /// claimed again at once, so the rewind names the checkpoint the next owner state starts
    /// from.
    pub async fn flush_due(
        &mut self,
        caught_up: bool,
        all: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<(i32, FlushAction)>, SinkError> {
        let clock = Instant::now();
        let due: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, h)| {
                if all {
                    h.partition.through() > h.partition.checkpointed()
                } else {
                    h.partition.due(clock, caught_up, &self.policy)
                }
            })
            .map(|(p, _)| *p)
            .collect();
        let mut actions = Vec::new();
        for partition in due {
            let writer = self.writer(partition);
            let in_flight = self.policy.in_flight;
            let held = self
                .held
                .get_mut(&partition)
                .expect("due partitions are held");
            let calls = held.partition.unwritten() as u64 + 1;
            let flushed = held.partition.flush(&writer, now, in_flight).await?;
            self.calls += calls;
            let held = self
                .held
                .get_mut(&partition)
                .expect("due partitions are held");
            match flushed {
                Flushed::Through(offset) => {
                    actions.push((
                        partition,
                        FlushAction::Commit {
                            offset: offset + 1,
                            counted: std::mem::take(&mut held.counted),
                            duplicates: std::mem::take(&mut held.duplicates),
                        },
                    ));
                }
                Flushed::Nothing => {}
                stop @ (Flushed::Fenced | Flushed::Conflict) => {
                    self.held.remove(&partition);
                    let (_, o) = self.writer(partition).stored_checkpoint().await?;
                    tracing::warn!(partition, outcome = ?stop, from = o + 1, "usage partition state dropped; reading it again from its checkpoint");
                    self.rewinding.insert(
                        partition,
                        Rewind {
                            from: o + 1,
                            sought: false,
                        },
                    );
                    actions.push((partition, FlushAction::Rewind(o + 1)));
                }
            }
        }
        Ok(actions)
    }
}
