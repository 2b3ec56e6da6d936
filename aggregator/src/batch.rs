//! Writing one batch, exactly once, across three stores that share no transaction.
//!
//! Usage events, per batch:
//!
//! 1. Ask Redis which event ids were already counted (`{p}seen:{day}` sets). An event is *new*
//!    when Redis has not seen it and no earlier record in this batch carries its id.
//! 2. Ask ClickHouse for its watermark: the highest offset per partition of this topic it
//!    already holds.
//!    New events above the watermark are inserted; those at or below it were inserted by an
//!    attempt that crashed before Redis was written, and are not inserted again.
//! 3. Apply the fold of the new events and their "seen" marks to Redis, in small atomic script
//!    calls (each event's counters and seen mark in the same one).
//! 4. Only then does the caller commit the offsets.
//!
//! Why this is exact: records of one account (so every copy of one event, which carries the
//! same account id) live in one partition and are processed in offset order by one consumer.
//! Redis is written after ClickHouse, a few events at a time, atomically, so after a crash Redis
//! has each event's counters exactly when it has its seen mark, and ClickHouse either has a prefix-closed range of offsets (it is one
//! INSERT, and the watermark is filled by the same INSERT) or none. Replaying from the last
//! commit makes the same "new" decisions (Redis has not changed) and skips what ClickHouse
//! already holds. The horizon is the life of a seen set: 36 days after the event's day, longer
//! than the oldest event ingest accepts.
//!
//! Account events follow the same pattern with PostgreSQL in Redis's role: the `account_events`
//! table is the seen-set and the accounts update shares its transaction.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use meterline_schemas::{AccountEvent, UsageEvent};
use tracing::Instrument;

use crate::accounts_sink::AccountsSink;
use crate::clickhouse_sink::{ClickHouseSink, Stream};
use crate::decode::{Decoded, DecodedBatch};
use crate::fold::{account_deltas, occurred_at, RedisDelta};
use crate::metrics::AggregatorMetrics;
use crate::redis_sink::RedisSink;
use crate::SinkError;

/// Redis calls per script call ([`RedisDelta::redis_calls`]): about 0.3 ms of Redis time
/// here when most keys are new (a minute window, a session), less when they exist. Redis
/// serves nobody else while a script runs, so this is how long a gateway's quota check can
/// wait behind the aggregator (one script is in flight at a time, see
/// `redis_sink::SCRIPTS_IN_FLIGHT`). At 2,000 checks/s with 5,000 events/s ingested, the
/// checks' p99 was 0.85–1.4 ms at 120 calls, 1.2–1.9 ms at 150 and 1.3–2.4 ms at 250. Smaller
/// calls cost aggregation throughput (about 11 % from 250 to 120) and mean more calls per
/// event (0.07 over 10,000 accounts); see BENCHMARKS.md.
pub const REDIS_CALLS_PER_SCRIPT: usize = 120;

/// Deltas folded at a time before they are applied: a round of folding off the async workers
/// for every few dozen script calls, so a batch over many accounts never holds all its deltas.
const DELTAS_PER_FOLD: usize = 32;

/// Runs CPU-bound work (folding a 20,000-event batch takes about a quarter of a second) without
/// holding up the runtime's other tasks: in `meterline run` the aggregator shares the runtime
/// with ingest and the read path, whose quota checks would otherwise wait behind it. On a
/// multi-threaded runtime the worker hands its queue to another thread first; a
/// current-thread runtime (unit and integration tests) just runs it.
fn off_the_async_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Folds `events`, grouped by account, into deltas and applies them to Redis
/// [`DELTAS_PER_FOLD`] at a time, so a batch over many accounts never holds all its deltas at
/// once. The fold runs off the async workers. `lap` is told after each fold ("fold") and each
/// application ("redis_apply"). Returns the Redis commands sent.
pub(crate) async fn fold_and_apply(
    redis: &RedisSink,
    events: &[&UsageEvent],
    now: DateTime<Utc>,
    mut lap: impl FnMut(&'static str),
) -> Result<usize, SinkError> {
    let mut folded = 0;
    let mut commands = 0;
    while folded < events.len() {
        let group: Vec<RedisDelta> = off_the_async_workers(|| {
            let mut deltas = account_deltas(
                events[folded..].iter().copied(),
                redis.keys(),
                now,
                REDIS_CALLS_PER_SCRIPT,
            );
            let group = deltas.by_ref().take(DELTAS_PER_FOLD).collect();
            folded += deltas.consumed();
            group
        });
        lap("fold");
        commands += redis.apply_all(&group).await?;
        lap("redis_apply");
    }
    Ok(commands)
}

/// The sinks a batch is written to.
#[derive(Clone)]
pub struct Sinks {
    pub clickhouse: ClickHouseSink,
    pub redis: RedisSink,
    pub accounts: AccountsSink,
}

/// What happened to a batch's events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub usage_counted: usize,
    pub usage_duplicates: usize,
    pub account_applied: usize,
    pub account_duplicates: usize,
    pub redis_commands: usize,
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
    pub async fn write_usage(
        &self,
        usage: &[Decoded<UsageEvent>],
        now: DateTime<Utc>,
        metrics: &AggregatorMetrics,
    ) -> Result<(usize, usize), SinkError> {
        if usage.is_empty() {
            return Ok((0, 0));
        }
        let mut clock = Instant::now();
        let ids: Vec<(&str, DateTime<Utc>)> = usage
            .iter()
            .map(|d| (d.event.event_id.as_str(), occurred_at(&d.event)))
            .collect();
        let seen = self.redis.already_seen(&ids).await?;
        let new = first_unseen(usage, |e| &e.event_id, &seen);
        metrics.lap("redis_seen", &mut clock);

        let watermarks = self.clickhouse.watermarks(Stream::Usage).await?;
        let to_insert: Vec<_> = new
            .iter()
            .copied()
            .filter(|d| watermarks.get(&d.partition).is_none_or(|w| d.offset > *w))
            .collect();
        self.clickhouse.insert_usage(&to_insert).await?;
        metrics.lap("clickhouse", &mut clock);

        // Redis runs a script without serving anyone else, and gateways read the hot state in
        // the meantime. So the batch goes in as many small atomic deltas, grouped by account
        // so that an account's events fold together: an event's counters and its seen mark
        // always travel together, which is all exactly-once needs (a replay skips what is
        // marked seen).
        let mut by_account = new.clone();
        by_account.sort_by(|a, b| a.event.account_id.as_str().cmp(b.event.account_id.as_str()));
        let events: Vec<&UsageEvent> = by_account.iter().map(|d| &d.event).collect();
        let commands = 1 + fold_and_apply(&self.redis, &events, now, |stage| {
            metrics.lap(stage, &mut clock)
        })
        .await?;
        Ok((new.len(), commands))
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
        let watermarks = self.clickhouse.watermarks(Stream::Account).await?;
        let to_insert: Vec<_> = new
            .iter()
            .copied()
            .filter(|d| watermarks.get(&d.partition).is_none_or(|w| d.offset > *w))
            .collect();
        self.clickhouse.insert_accounts(&to_insert).await?;
        self.accounts.apply(&new).await?;
        self.record_assignments().await?;
        // A plan, seat or signup change changes scores too.
        let changed: Vec<&str> = new.iter().map(|d| d.event.account_id.as_str()).collect();
        self.redis.mark_dirty(&changed).await?;
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
    pub async fn write(
        &self,
        batch: &DecodedBatch,
        done: &mut WriteProgress,
        metrics: &AggregatorMetrics,
    ) -> Result<BatchOutcome, SinkError> {
        let now = Utc::now();
        if done.usage.is_none() {
            let span = tracing::debug_span!("write_usage", events = batch.usage.len());
            done.usage = Some(
                self.write_usage(&batch.usage, now, metrics)
                    .instrument(span)
                    .await?,
            );
        }
        if done.account.is_none() {
            let mut clock = Instant::now();
            done.account = Some(self.write_accounts(&batch.account).await?);
            metrics.lap("accounts", &mut clock);
        }
        let (usage_counted, redis_commands) = done.usage.unwrap_or_default();
        let account_applied = done.account.unwrap_or_default();
        let outcome = BatchOutcome {
            usage_counted,
            usage_duplicates: batch.usage.len() - usage_counted,
            account_applied,
            account_duplicates: batch.account.len() - account_applied,
            redis_commands,
        };
        metrics
            .events
            .with_label_values(&["counted"])
            .inc_by((usage_counted + account_applied) as u64);
        metrics
            .events
            .with_label_values(&["duplicate"])
            .inc_by((outcome.usage_duplicates + outcome.account_duplicates) as u64);
        metrics.redis_commands.inc_by(redis_commands as u64);
        Ok(outcome)
    }
}

/// Which parts of a batch are written, kept across retries of that batch.
#[derive(Debug, Default)]
pub struct WriteProgress {
    pub dead_letters: bool,
    pub usage: Option<(usize, usize)>,
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
