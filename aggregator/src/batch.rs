//! Writing one batch, exactly once, across three stores that share no transaction.
//!
//! Usage events, per batch (design §4.1 of `docs/design/hot-state-v2.md`):
//!
//! 1. Drop the records at or below what their partition has handled. The rest are *new* when
//!    the partition's deduplication ([`crate::state::partition::Partition::is_new`]) has not
//!    counted their id; the decisions are kept in [`WriteProgress`], so a retry reuses them.
//! 2. Fold the new events into their accounts in memory, skipping those an account's stored
//!    snapshot already holds (offset at or below its `_o`).
//! 3. Hand the new events to the insert task ([`crate::inserter`]), which inserts them into
//!    ClickHouse above its watermark (the highest offset per partition it holds), in batch
//!    order, and then says how far ClickHouse holds each partition.
//! 4. Later, when the partition flushes (`state::store`): each changed account's snapshot, then,
//!    once ClickHouse holds the partition that far, the checkpoint, which stores the seen ids
//!    and the offset together. Only then is the offset committed to Kafka. A flush is cut from
//!    the partition's state between two batches and runs on its own task while the next
//!    batches fold; a snapshot it writes may hold events past its checkpoint, as a flush torn
//!    by a crash may (`_o` says how far). At shutdown after a batch that was not written,
//!    nothing is cut: its ids are decided, its events are not.
//!
//! Why this is exact. Every copy of an event carries the same account, so all copies land in one
//! partition, read in offset order by one owner per epoch.
//! - *Deduplication replays the same.* The checkpoint at offset c holds exactly the ids counted
//!   up to c, so a new owner resuming at c + 1 starts from the same deduplication and makes the
//!   same decisions.
//! - *Snapshots hold a prefix.* An account's stored state is the fold of its new events up to its
//!   `_o`: `snap.lua` replaces the state stored at `O_prev` by one that continues it, or changes
//!   nothing, and the increments it carries for closed windows land with it, once.
//! - *ClickHouse holds a prefix.* Inserts go in offset order per partition, each above the
//!   watermark, so what ClickHouse holds of a partition ends at its watermark.
//! - *The checkpoint is behind every store.* Every changed account is written before the
//!   checkpoint that covers its events, and ClickHouse holds them before it too.
//!
//! So after a crash anywhere, the replay from c + 1 inserts into ClickHouse only above its
//! watermark, and folds into an account only above its `_o`: every event counts once in each
//! store. A writer from an older assignment is refused by the epoch in every script; the only
//! writes it can still make are continuations of untouched accounts, which are the same fold of
//! the same log. The horizon is the life of a day's seen ids: 36 days after the day, longer than
//! the oldest event ingest accepts.
//!
//! Account events follow the same pattern with PostgreSQL in Redis's role: the `account_events`
//! table is the seen-set and the accounts update shares its transaction.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use meterline_schemas::{AccountEvent, UsageEvent};
use tracing::Instrument;

use crate::accounts_sink::AccountsSink;
use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::decode::{Decoded, DecodedBatch};
use crate::inserter::{InsertJob, Inserter};
use crate::metrics::AggregatorMetrics;
use crate::state::store::{HotStore, UsageDecisions};
use crate::SinkError;

/// Each usage partition's first and last offset in a batch, counting the records that did not
/// decode: the state store positions a partition by its first record and advances it to its
/// last, whatever they held.
#[derive(Debug, Default, Clone)]
pub struct UsageSpan {
    pub first: BTreeMap<i32, i64>,
    pub last: BTreeMap<i32, i64>,
}

impl UsageSpan {
    /// The span of `records` (partition, offset) of the usage topic.
    pub fn of(records: impl IntoIterator<Item = (i32, i64)>) -> Self {
        let mut span = Self::default();
        for (partition, offset) in records {
            let first = span.first.entry(partition).or_insert(offset);
            *first = (*first).min(offset);
            let last = span.last.entry(partition).or_insert(offset);
            *last = (*last).max(offset);
        }
        span
    }
}

/// The sinks a batch is written to.
#[derive(Clone)]
pub struct Sinks {
    pub clickhouse: ClickHouseSink,
    pub accounts: AccountsSink,
    /// The hot state of the usage partitions this aggregator holds.
    pub hot: Arc<tokio::sync::Mutex<HotStore>>,
}

/// What happened to a batch's events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Usage events found new and folded (durable at their partition's next flush).
    pub usage_new: usize,
    pub account_applied: usize,
    pub account_duplicates: usize,
}

/// Keeps the first record of each id that `already` does not hold, in batch order.
fn first_unseen<'a, T>(
    records: &'a [Decoded<T>],
    id: impl Fn(&T) -> &str,
    already: &HashSet<String>,
) -> Vec<&'a Decoded<T>> {
    let mut in_batch = HashSet::new();
    records
        .iter()
        .filter(|d| {
            let id = id(&d.event);
            !already.contains(id) && in_batch.insert(id.to_owned())
        })
        .collect()
}

impl Sinks {
    /// Usage events (design §4.1): the partitions' deduplication decides what is new (once per
    /// batch, kept in `done` across retries), the state store folds the new events, then they
    /// go to the insert task for ClickHouse. Nothing reaches Redis here: the store's flush does
    /// ([`HotStore::flush_due`]). `span` is each usage partition's first and last offset in the
    /// batch, decoded or not. Takes the events it sends to ClickHouse out of `usage`. Returns
    /// the new events.
    pub async fn write_usage(
        &self,
        usage: &mut Vec<Decoded<UsageEvent>>,
        span: &UsageSpan,
        done: &mut WriteProgress,
        inserter: &Inserter,
        now: DateTime<Utc>,
        metrics: &AggregatorMetrics,
    ) -> Result<usize, SinkError> {
        let mut clock = Instant::now();
        let mut hot = self.hot.lock().await;
        if done.usage_decisions.is_none() {
            done.usage_decisions = Some(hot.decide(usage, &span.first, now).await?);
        }
        let decisions = done.usage_decisions.as_ref().expect("decided above");
        metrics.lap("dedup", &mut clock);
        let upto = hot.fold(usage, decisions, &span.last, now).await;
        // The accounts' loads from Redis apart from the fold itself.
        metrics.set_apart("load", hot.take_loading(), &mut clock);
        let upto = upto?;
        hot.count(usage, decisions);
        let upto: BTreeMap<_, _> = upto
            .into_iter()
            .filter_map(|(p, o)| Some((p, (o, hot.claim_of(p)?))))
            .collect();
        drop(hot);
        metrics.lap("fold", &mut clock);
        if upto.is_empty() {
            return Ok(decisions.new.len());
        }
        // The new events of the partitions folded (one dropped meanwhile is its next owner's
        // to insert), in batch order.
        let mut keep = vec![false; usage.len()];
        for &i in &decisions.new {
            keep[i] = upto.contains_key(&usage[i].partition);
        }
        let events = std::mem::take(usage)
            .into_iter()
            .zip(keep)
            .filter_map(|(d, keep)| keep.then_some(d))
            .collect();
        inserter.send(InsertJob { events, upto }).await?;
        metrics.lap("clickhouse", &mut clock);
        Ok(decisions.new.len())
    }

    pub async fn write_accounts(
        &self,
        account: &[Decoded<AccountEvent>],
    ) -> Result<usize, SinkError> {
        if account.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = account.iter().map(|d| d.event.event_id.clone()).collect();
        let applied = self.accounts.already_applied(&ids).await?;
        let new = first_unseen(account, |e| &e.event_id, &applied);
        let to_insert = self
            .clickhouse
            .above_watermarks(Stream::Account, new.iter().copied())
            .await?;
        self.clickhouse.insert_accounts(&to_insert).await?;
        self.accounts.apply(&new).await?;
        self.record_assignments().await?;
        // A plan, seat or signup change changes scores too.
        let changed: Vec<(i32, &str)> = new
            .iter()
            .map(|d| (d.partition, d.event.account_id.as_str()))
            .collect();
        self.hot.lock().await.queue_for_scorer(&changed).await?;
        Ok(new.len())
    }

    /// Writes the `experiment_assigned` events of assignments the signups made (and any an
    /// earlier attempt left unrecorded) to ClickHouse, then marks them recorded: recorded only
    /// after the write lands.
    pub async fn record_assignments(&self) -> Result<usize, SinkError> {
        let mut total = 0;
        loop {
            let pending = self.accounts.pending_assignments(5_000).await?;
            if pending.is_empty() {
                return Ok(total);
            }
            self.clickhouse.insert_assignments(&pending).await?;
            self.accounts.mark_recorded(&pending).await?;
            total += pending.len();
        }
    }

    /// Writes the decoded part of a batch. `done` remembers which streams an earlier attempt
    /// already finished, so a retry after a failure does not redo (or double-count) them.
    /// `span` is each usage partition's first and last offset in the batch, decoded or not.
    /// The batch's usage events are taken out of it, to the insert task.
    pub async fn write(
        &self,
        batch: &mut DecodedBatch,
        span: &UsageSpan,
        done: &mut WriteProgress,
        inserter: &Inserter,
        metrics: &AggregatorMetrics,
    ) -> Result<BatchOutcome, SinkError> {
        let now = Utc::now();
        if done.usage.is_none() {
            let trace = tracing::debug_span!("write_usage", events = batch.usage.len());
            done.usage = Some(
                self.write_usage(&mut batch.usage, span, done, inserter, now, metrics)
                    .instrument(trace)
                    .await?,
            );
        }
        if done.account.is_none() {
            let mut clock = Instant::now();
            done.account = Some(self.write_accounts(&batch.account).await?);
            metrics.lap("accounts", &mut clock);
        }
        let usage_new = done.usage.unwrap_or_default();
        let account_applied = done.account.unwrap_or_default();
        let outcome = BatchOutcome {
            usage_new,
            account_applied,
            account_duplicates: batch.account.len() - account_applied,
        };
        // Usage events count once their partition's flush makes them durable (the consumer).
        metrics
            .events
            .with_label_values(&["counted"])
            .inc_by(account_applied as u64);
        metrics
            .events
            .with_label_values(&["duplicate"])
            .inc_by(outcome.account_duplicates as u64);
        Ok(outcome)
    }
}

/// Which parts of a batch are written, kept across retries of that batch.
#[derive(Debug, Default)]
pub struct WriteProgress {
    pub dead_letters: bool,
    /// Which usage records are new: decided once, since deciding remembers the ids.
    pub usage_decisions: Option<UsageDecisions>,
    /// The usage events found new, once folded.
    pub usage: Option<usize>,
    pub account: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, id: &str) -> Decoded<String> {
        Decoded {
            partition: 0,
            offset,
            event: id.to_owned(),
        }
    }

    #[test]
    fn first_unseen_keeps_the_first_copy_of_each_new_id() {
        let records = vec![
            rec(1, "a"),
            rec(2, "b"),
            rec(3, "a"),
            rec(4, "c"),
            rec(5, "b"),
        ];
        let already: HashSet<String> = ["c".to_owned()].into();
        let kept: Vec<i64> = first_unseen(&records, |s| s.as_str(), &already)
            .iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(kept, vec![1, 2]);
    }
}
