//! One Kafka partition's share of the state store (design §3): its accounts in memory, its
//! deduplication, and what its next checkpoint carries.
//!
//! The cycle, for the records of one partition in offset order:
//! 1. [`Partition::is_new`] decides, once per record, whether its event id is new. The
//!    decision depends only on the ids counted before it, which the checkpoint stores with its
//!    offset, so a replay from the checkpoint decides the same.
//! 2. [`Partition::fold`] counts each new event in its account, unless the account's stored
//!    snapshot already holds its offset. The new events go to ClickHouse on the caller's
//!    insert task, in offset order, which says how far ClickHouse holds each partition.
//! 3. When [`Partition::due`], [`Partition::take`] cuts a [`FlushJob`]: a copy of what every
//!    changed account's snapshot as of now is built from ([`AccountState::pending`]; the job
//!    builds the snapshots on its task), the seen ids, the changed accounts and the offset
//!    handled. The job runs on its own while the partition goes on folding: the snapshots through
//!    `snap.lua`, [`FlushPolicy::in_flight`] at a time ([`FlushJob::write_snapshots`]), then,
//!    once ClickHouse holds the partition up to the job's offset, the checkpoint through
//!    `ckpt.lua` ([`FlushJob::checkpoint`]). [`Partition::finish`] takes its outcome. Only then
//!    may the caller commit the offset to Kafka. [`Partition::flush`] does all three in one go.
//! 4. While a job waits for its checkpoint, the jobs taken after it write snapshots only
//!    ([`FlushJob::checkpoints`] is false): their seen ids, changed accounts and offset stay in
//!    the partition, and the next job taken once the waiting one has finished checkpoints them
//!    all at once. So a partition has at most one checkpoint open, whatever ClickHouse does: the
//!    quota counters follow its events through a ClickHouse stall, and what waits for the
//!    checkpoint is the ids and accounts since the last one (bounded by
//!    [`FlushPolicy::max_seen`]), not a job per flush. With one checkpoint per job, a partition
//!    took no flush past [`FlushPolicy::max_jobs`] (256) of them, which a ClickHouse stall
//!    reached about 88 s in at 1,000 events/s (BENCHMARKS.md, 2026-12-04, seventh session).
//!
//! Why a replay counts every event once is the proof of design §4.2: a snapshot holds exactly
//! its account's new events up to its `_o`, and the checkpoint's offset is at most the lowest
//! point every account's snapshot has reached.
//!
//! Why folding may go on while a job runs: taking the job is what a successful write used to
//! do to the state ([`AccountState::written`]: late increments, new members and moved windows
//! are forgotten, every window and session is clean), so what is folded afterwards is exactly
//! what the next snapshot must add to this one. The next job of the partition is taken only
//! once this one's snapshots are written ([`Partition::snapshots_written`]), so an account's
//! snapshots reach Redis in the order they were taken, each continuing the one before
//! (`snap.lua` answers `CONFLICT` otherwise); its checkpoint may still be waiting for
//! ClickHouse. A job that fails is retried as it is (a snapshot that landed answers `HAVE`);
//! one that cannot finish (fenced, in conflict, stopped at shutdown, or its task lost) drops
//! the partition, which is read again from its checkpoint, so nothing the job forgot is needed.
//!
//! Why the oldest change is written first: a job writes its accounts in the order of their
//! first event since their last snapshot ([`FlushJob::write_snapshots`] starts them in that
//! order). Under load a job takes about as long as the interval it collected, `D`, so an event
//! folded at time `x` into that interval waits `D - x` for the job to be taken, and then its
//! place in the job. In the map's order that place is anywhere in the job, and the slowest
//! events waited up to `2D`. In this order only the accounts first changed before `x` go ahead
//! of it, so an event folded late in the interval, which waits least for the job, is also
//! written last, and one folded early is written early. The staleness of each account's oldest
//! unwritten event is then `D - x + F(x)·D`, with `F(x)` the share of the job's accounts
//! changed before `x`: at most `D` where accounts change rarely, and below `2D` where they
//! change often. `scripts/flush-order-model.py` models it: the p99 wait falls from about `1.85D`
//! to `1.1D`–`1.6D` (BENCHMARKS.md, twelfth session, where the benchmark did not show it
//! beyond the machine's noise). The price is paid by accounts that change once while most
//! others change often, which now come late in their job. The order costs a sort of the job's
//! accounts; it changes nothing the proof below relies on, which holds for any order.
//!
//! Why a checkpoint may carry the ids and offset of jobs that wrote snapshots only (step 4):
//! the checkpointing job is taken only once every earlier job's snapshots are written, and
//! writes its own before its checkpoint, so when the checkpoint lands every account's snapshot
//! holds its events up to the checkpoint's offset, as the proof needs. Snapshots past the
//! checkpoint (those of later jobs, or of a crash before it) are what a torn flush leaves, which
//! the replay already skips by each account's `_o`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use meterline_schemas::keys::{Grain, SEEN_RETENTION_AFTER_DAY_SECS};
use meterline_schemas::UsageEvent;
use redis::aio::ConnectionLike;

use super::account::AccountState;
use super::seen::Ids;
use super::writer::{StateWriter, Written};
use crate::SinkError;

/// When a partition flushes (design §3.3): the first of these.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    /// The oldest unflushed change is this old and the consumer is caught up…
    pub interval: Duration,
    /// …or it is this old, caught up or not…
    pub max_interval: Duration,
    /// …or this many accounts wait to be written…
    pub max_accounts: usize,
    /// …or this many seen ids wait for the checkpoint. They are held encoded
    /// ([`super::seen::Ids`], 17 bytes each), so 500,000 take about 8.5 MB a partition; while a
    /// ClickHouse stall holds the checkpoint, they bound how long the quota counters follow the
    /// events (5 minutes at 10,000 events/s over 6 partitions, 50 at 1,000).
    pub max_seen: usize,
    /// Snapshots sent at a time.
    pub in_flight: usize,
    /// Jobs of one partition open at a time. At most one of them checkpoints (see the module
    /// documentation), and the jobs that write snapshots only are collected as soon as they
    /// finish, so a partition holds two or three; a partition at this bound takes no flush.
    pub max_jobs: usize,
    /// Accounts kept in memory over every partition, after a flush and before a batch's
    /// accounts are loaded ([`Partition::evict`]).
    pub max_resident: usize,
    /// About how many bytes the running flushes' snapshots may hold over every partition,
    /// counted on the copies they are built from: a flush due once they hold more waits for
    /// them (a fresh account's snapshot, with its month's members, is several KB).
    pub max_snapshot_bytes: usize,
    /// The longest wait between attempts of a failed flush.
    pub retry_max_backoff: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(50),
            max_interval: Duration::from_secs(1),
            max_accounts: 20_000,
            max_seen: 500_000,
            in_flight: 8,
            max_jobs: 256,
            max_resident: 30_000,
            max_snapshot_bytes: 32 << 20,
            retry_max_backoff: Duration::from_secs(5),
        }
    }
}

/// The event ids a partition has counted, by the day their events occurred on, for as long as
/// a retry may come (the counted ids' life in Redis, 36 days after the day).
///
/// Ids are kept as 128-bit fingerprints (two SipHash-1-3 hashes under different domain bytes),
/// about 20 bytes each instead of about 80 for the string: two ids of one day collide with
/// probability about n²/2¹²⁹, 1.5·10⁻²⁵ at ten million. The strings are still what the
/// checkpoint stores, so a reload rebuilds the same fingerprints.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dedup {
    days: BTreeMap<DateTime<Utc>, HashSet<u128>>,
}

fn id_fingerprint(id: &str) -> u128 {
    let half = |domain: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        domain.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

impl Dedup {
    /// Whether `id`, of an event that occurred on the day starting `day`, is new; it is
    /// remembered either way.
    pub fn insert(&mut self, id: &str, day: DateTime<Utc>) -> bool {
        self.days.entry(day).or_default().insert(id_fingerprint(id))
    }

    /// Forgets the days whose counted ids have expired in Redis at `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.days.retain(|day, _| {
            day.timestamp() + 86_400 + SEEN_RETENTION_AFTER_DAY_SECS > now.timestamp()
        });
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.days.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct Tracked {
    state: AccountState,
    /// The offset of the account's last event its latest snapshot holds (-1: none): stored, or
    /// taken into the partition's running [`FlushJob`].
    stored: i64,
    /// The offset of the last event folded into `state`.
    last: i64,
    /// The offset of the first event folded since the account's latest snapshot was taken
    /// (meaningful while `last > stored`): the next job writes the accounts in this order.
    first_unstored: i64,
    /// The partition's [`Partition::taken`] when an event of the account was last folded (or
    /// it was loaded): how recently it was used, for eviction.
    used: u64,
    /// The [`FlushJob::seq`] of the last job that took the account's snapshot (0: none). Its
    /// snapshot is known written once a later job was taken, or this one's snapshots are
    /// written ([`Partition::snapshots_written`]).
    in_job: u64,
}

impl Tracked {
    /// Whether Redis holds everything the state holds, given that the snapshots of every job
    /// up to `written` are written: nothing was folded since the account's last snapshot, and
    /// that snapshot is written. Such an account may be forgotten and loaded again.
    fn is_stored(&self, written: u64) -> bool {
        self.last == self.stored && self.in_job <= written
    }
}

/// What a flush came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything up to this offset is durable: commit `through + 1` to Kafka.
    Through(i64),
    /// Nothing was due.
    Nothing,
    /// The snapshots are written but ClickHouse did not confirm the job's events before
    /// shutdown (or an earlier job of the partition did not finish): nothing is checkpointed,
    /// and the partition is dropped, to be read again from its checkpoint.
    Stopped,
    /// A newer assignment owns the partition (or one of its accounts): drop this state without
    /// writing more, and let the owner replay from the checkpoint.
    Fenced,
    /// An account's stored snapshot is not the one this state continued (a concurrent rebuild,
    /// or a bug): drop this state, claim again and replay from the checkpoint.
    Conflict,
}

/// One partition's state; see the module documentation.
#[derive(Debug)]
pub struct Partition {
    epoch: i64,
    checkpointed: i64,
    through: i64,
    dedup: Dedup,
    accounts: HashMap<Box<str>, Tracked>,
    seen: BTreeMap<DateTime<Utc>, Ids>,
    changed: BTreeSet<Box<str>>,
    oldest_change: Option<Instant>,
    /// The offset the open checkpointing job checkpoints (one at a time).
    flushing: Option<i64>,
    /// Jobs taken and not finished.
    open: usize,
    /// Whether the newest job's snapshots may not be written yet.
    snapshotting: bool,
    /// A job [`Self::flush`] started and could not finish, to run again as it is.
    unfinished: Option<FlushJob>,
    /// Jobs taken so far: the clock of [`Tracked::used`].
    taken: u64,
}

/// One account's snapshot in a [`FlushJob`].
#[derive(Debug)]
struct SnapshotWrite {
    account: String,
    /// The offsets of the snapshot it continues and of its own last event.
    range: (i64, i64),
    /// What the snapshot is built from, copied in the consumer's loop
    /// ([`AccountState::pending`]); the job builds the snapshot on its task just before writing
    /// it, and forgets both once it is stored or found stored: `None` once written.
    pending: Option<AccountState>,
}

/// Builds `w`'s snapshot from its copy and writes it; once stored (or found stored), forgets
/// both ([`FlushJob::write_snapshots`]).
fn write_one<'a, C: ConnectionLike + Clone + Send + 'a>(
    w: &'a mut SnapshotWrite,
    mut writer: StateWriter<C>,
    epoch: i64,
    now: DateTime<Utc>,
) -> BoxFuture<'a, Result<Written, SinkError>> {
    async move {
        let written = {
            let snapshot = w
                .pending
                .as_ref()
                .expect("a snapshot not stored keeps its copy")
                .snapshot(now);
            writer
                .write_snapshot(epoch, &w.account, w.range, &snapshot)
                .await?
        };
        if matches!(written, Written::Applied | Written::Have) {
            w.pending = None;
        }
        Ok(written)
    }
    .boxed()
}

/// A partition's flush, cut by [`Partition::take`] and owning everything it writes, so it can
/// run while the partition folds on; see the module documentation.
#[derive(Debug)]
pub struct FlushJob {
    /// Its place among the partition's jobs ([`Partition::taken`] when it was taken).
    seq: u64,
    epoch: i64,
    through: i64,
    now: DateTime<Utc>,
    /// When the partition's oldest change this job holds was made: its events have waited in
    /// the aggregator since then at most.
    since: Instant,
    writes: Vec<SnapshotWrite>,
    /// Whether it writes a checkpoint after its snapshots (the seen ids and changed accounts
    /// since the last checkpointing job), or its snapshots only (step 4 of the module
    /// documentation).
    checkpoints: bool,
    changed: Vec<String>,
    seen: BTreeMap<DateTime<Utc>, Ids>,
}

impl FlushJob {
    /// When the oldest change the job holds was made (an event folded or a record handled).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The offset the job's snapshots reach, and its checkpoint if it [`Self::checkpoints`].
    pub fn through(&self) -> i64 {
        self.through
    }

    /// Whether the job writes a checkpoint after its snapshots; see [`FlushJob`].
    pub fn checkpoints(&self) -> bool {
        self.checkpoints
    }

    /// About how many bytes the copies the job's snapshots are built from hold.
    pub fn bytes(&self) -> usize {
        self.writes
            .iter()
            .map(|w| w.account.len() + w.pending.as_ref().map_or(0, |p| p.approx_pending_bytes()))
            .sum()
    }

    /// Snapshots not stored yet.
    pub fn unwritten(&self) -> usize {
        self.writes.iter().filter(|w| w.pending.is_some()).count()
    }

    /// Writes the snapshots not stored yet, [`FlushPolicy::in_flight`] at a time; `Some` if a
    /// snapshot was refused (see [`Flushed`]), after which no further write starts.
    ///
    /// Each snapshot is built from its copy just before it is written (a few microseconds) and
    /// dropped with the copy once stored, so a job holds its copies and at most `in_flight`
    /// built snapshots, less as its writes land. Built all at the job's start, they were the
    /// largest part of the heap's peak in `bench aggregate --accounts 100000` (heaptrack: about
    /// 100 MB, 75 MB of it `cur` maps). A write that fails keeps its copy, and the retry builds
    /// the same snapshot from it
    /// (`pending(now).snapshot(now)` equals `snapshot(now)`, a property test in `account`).
    pub async fn write_snapshots<C: ConnectionLike + Clone + Send>(
        &mut self,
        writer: &StateWriter<C>,
        in_flight: usize,
    ) -> Result<Option<Flushed>, SinkError> {
        let (epoch, now) = (self.epoch, self.now);
        // Each write's future is made only when there is room for it among the `in_flight`
        // (made all at once, a flush of thousands of accounts held thousands of them).
        let mut unwritten = self
            .writes
            .iter_mut()
            .filter(|w| w.pending.is_some())
            .collect::<Vec<&mut SnapshotWrite>>()
            .into_iter();
        let mut writes = futures::stream::FuturesUnordered::new();
        for w in unwritten.by_ref().take(in_flight.max(1)) {
            writes.push(write_one(w, writer.clone(), epoch, now));
        }
        let mut outcome = None;
        while let Some(written) = writes.next().await {
            match written? {
                Written::Applied | Written::Have => {}
                Written::Fenced => outcome = Some(Flushed::Fenced),
                Written::Conflict => {
                    outcome = outcome.or(Some(Flushed::Conflict));
                }
            }
            // Once a snapshot is refused the partition's state is dropped (see [`Flushed`]),
            // so the rest would be writes for nothing: only those in flight are awaited.
            if outcome.is_none() {
                if let Some(w) = unwritten.next() {
                    writes.push(write_one(w, writer.clone(), epoch, now));
                }
            }
        }
        Ok(outcome)
    }

    /// Forgets the written snapshots' accounts and offsets (their copies went as each was
    /// written): a retry of the checkpoint does not need them, and the job may wait a while for
    /// ClickHouse.
    pub fn release_snapshots(&mut self) {
        debug_assert!(self.writes.iter().all(|w| w.pending.is_none()));
        self.writes = Vec::new();
    }

    /// Writes the checkpoint (the seen ids, the changed accounts for the scorer, the offset);
    /// every snapshot must be written first. On `Err`, call again.
    pub async fn checkpoint<C: ConnectionLike + Clone + Send>(
        &self,
        writer: &StateWriter<C>,
    ) -> Result<Flushed, SinkError> {
        let changed: Vec<&str> = self.changed.iter().map(String::as_str).collect();
        let mut writer = writer.clone();
        if !writer
            .checkpoint(self.epoch, self.through, &changed, &self.seen)
            .await?
        {
            return Ok(Flushed::Fenced);
        }
        Ok(Flushed::Through(self.through))
    }

    /// Runs the job: the snapshots, then the checkpoint if it [`Self::checkpoints`]
    /// ([`Flushed::Nothing`] if not). On `Err`, run it again: what was written stays written.
    pub async fn run<C: ConnectionLike + Clone + Send>(
        &mut self,
        writer: &StateWriter<C>,
        in_flight: usize,
    ) -> Result<Flushed, SinkError> {
        if let Some(stop) = self.write_snapshots(writer, in_flight).await? {
            return Ok(stop);
        }
        if !self.checkpoints {
            return Ok(Flushed::Nothing);
        }
        self.checkpoint(writer).await
    }
}

impl Partition {
    /// A partition claimed under `epoch`, checkpointed at `checkpointed` (-1: never), with the
    /// ids its checkpoint holds.
    pub fn new(epoch: i64, checkpointed: i64, dedup: Dedup) -> Self {
        Self {
            epoch,
            checkpointed,
            through: checkpointed,
            dedup,
            accounts: HashMap::new(),
            seen: BTreeMap::new(),
            changed: BTreeSet::new(),
            oldest_change: None,
            flushing: None,
            open: 0,
            snapshotting: false,
            unfinished: None,
            taken: 0,
        }
    }

    /// Claims the partition for a new owner through `writer`: a higher epoch, the checkpoint,
    /// and the deduplication read back from the counted ids of the days still kept at `now`.
    pub async fn claim<C: ConnectionLike + Send>(
        writer: &mut StateWriter<C>,
        now: DateTime<Utc>,
    ) -> Result<Self, SinkError> {
        let (epoch, checkpointed) = writer.claim().await?;
        let mut dedup = Dedup::default();
        let horizon = 86_400 + SEEN_RETENTION_AFTER_DAY_SECS;
        let mut day = Grain::Day.window_start(now - chrono::Duration::seconds(horizon));
        let last = Grain::Day.window_start(now + chrono::Duration::days(1));
        while day <= last {
            for id in writer.seen_ids(day).await? {
                dedup.insert(&id, day);
            }
            day += chrono::Duration::days(1);
        }
        dedup.prune(now);
        Ok(Self::new(epoch, checkpointed, dedup))
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The offset the checkpoint holds: records at or below it are done.
    pub fn checkpointed(&self) -> i64 {
        self.checkpointed
    }

    /// The last offset handed to [`Self::advance`].
    pub fn through(&self) -> i64 {
        self.through
    }

    /// Whether the record of `id` (its event occurred on the day starting `day`) is the first
    /// of its id; if so, the id goes to the next checkpoint.
    pub fn is_new(&mut self, id: &str, day: DateTime<Utc>) -> bool {
        let new = self.dedup.insert(id, day);
        if new {
            self.seen.entry(day).or_default().push(id);
        }
        new
    }

    /// Whether the account is in memory.
    pub fn holds(&self, account: &str) -> bool {
        self.accounts.contains_key(account)
    }

    /// Takes an account loaded from Redis, whose snapshot holds its events up to `stored`.
    pub fn insert_loaded(&mut self, account: &str, state: AccountState, stored: i64) {
        self.accounts.insert(
            account.into(),
            Tracked {
                state,
                stored,
                last: stored,
                first_unstored: stored,
                used: self.taken,
                in_job: 0,
            },
        );
    }

    /// Loads the accounts of `accounts` that are not in memory, [`FlushPolicy::in_flight`] at
    /// a time. `false` if a newer epoch holds one of them.
    pub async fn load<C: ConnectionLike + Clone + Send>(
        &mut self,
        writer: &StateWriter<C>,
        accounts: impl IntoIterator<Item = &str>,
        in_flight: usize,
    ) -> Result<bool, SinkError> {
        let missing: BTreeSet<&str> = accounts.into_iter().filter(|a| !self.holds(a)).collect();
        let epoch = self.epoch;
        // Boxed one by one (not a closure over the stream), which keeps the caller's future
        // `Send` for every lifetime (rust-lang/rust#102211).
        type Load<'a> = BoxFuture<'a, Result<(&'a str, Option<(AccountState, i64)>), SinkError>>;
        let loads: Vec<Load<'_>> = missing
            .into_iter()
            .map(|account| {
                let mut writer = writer.clone();
                async move { Ok((account, writer.load_account(epoch, account).await?)) }.boxed()
            })
            .collect();
        let mut loads = futures::stream::iter(loads).buffer_unordered(in_flight.max(1));
        while let Some(loaded) = loads.next().await {
            match loaded? {
                (account, Some((state, stored))) => self.insert_loaded(account, state, stored),
                (_, None) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Counts a new event of a held account at `offset`, as of `now`, unless the account's
    /// state already holds it: its stored snapshot (a replay), or an earlier attempt to write
    /// the same batch (a retry after another partition failed). The account goes to the
    /// scorer's queue either way.
    ///
    /// # Panics
    /// If the account is not held ([`Self::load`] first).
    pub fn fold(&mut self, offset: i64, e: &UsageEvent, now: DateTime<Utc>) {
        let account = e.account_id.as_str();
        let t = self
            .accounts
            .get_mut(account)
            .expect("accounts are loaded before their events are folded");
        if offset > t.last {
            if t.last == t.stored {
                t.first_unstored = offset;
            }
            t.state.fold(e, now);
            t.last = offset;
        }
        t.used = self.taken;
        if !self.changed.contains(account) {
            self.changed.insert(account.into());
        }
        self.oldest_change.get_or_insert_with(Instant::now);
    }

    /// Every record up to `offset` is handled (its new events folded; ClickHouse holds them by
    /// the time a checkpoint covers them).
    pub fn advance(&mut self, offset: i64) {
        self.through = self.through.max(offset);
        if self.through > self.flushing.unwrap_or(self.checkpointed) {
            self.oldest_change.get_or_insert_with(Instant::now);
        }
    }

    /// Accounts with events their latest snapshot lacks.
    pub fn unwritten(&self) -> usize {
        self.accounts.values().filter(|t| t.last > t.stored).count()
    }

    /// Accounts in memory.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Whether a flush is due at `now` under `policy`; `caught_up` when the consumer has
    /// reached the end of the log.
    pub fn due(&self, now: Instant, caught_up: bool, policy: &FlushPolicy) -> bool {
        let Some(oldest) = self.oldest_change else {
            return false;
        };
        let age = now.saturating_duration_since(oldest);
        (caught_up && age >= policy.interval)
            || age >= policy.max_interval
            || self.over_bounds(policy)
    }

    /// Whether events were folded (or records handled) since the last job was taken.
    pub fn has_changes(&self) -> bool {
        self.oldest_change.is_some()
    }

    /// Whether more accounts or seen ids wait than `policy` lets wait.
    pub fn over_bounds(&self, policy: &FlushPolicy) -> bool {
        self.unwritten() >= policy.max_accounts
            || self.seen.values().map(Ids::len).sum::<usize>() >= policy.max_seen
    }

    /// Cuts the partition's next flush as of `now`: every changed account's snapshot, the
    /// offset handled, and, unless a checkpointing job is open, the seen ids and changed
    /// accounts since the last checkpointing job. `None` when nothing changed, the snapshots
    /// of the job taken before may not be written yet, or a checkpointing job is open and no
    /// account has a snapshot to write. The partition forgets what the snapshots write once and
    /// goes on folding; see the module documentation.
    pub fn take(&mut self, now: DateTime<Utc>) -> Option<FlushJob> {
        let since = self.oldest_change.filter(|_| !self.snapshotting)?;
        let checkpoints = self.flushing.is_none();
        let mut writes: Vec<(i64, SnapshotWrite)> = self
            .accounts
            .iter_mut()
            .filter(|(_, t)| t.last > t.stored)
            .map(|(account, t)| {
                let write = SnapshotWrite {
                    account: account.to_string(),
                    range: (t.stored, t.last),
                    pending: Some(t.state.pending()),
                };
                t.state.written(now);
                t.stored = t.last;
                t.in_job = self.taken + 1;
                (t.first_unstored, write)
            })
            .collect();
        // The account whose unwritten events are the oldest goes first (see the module
        // documentation, "Why the oldest change is written first").
        writes.sort_unstable_by_key(|(first, _)| *first);
        let writes: Vec<SnapshotWrite> = writes.into_iter().map(|(_, w)| w).collect();
        if !checkpoints && writes.is_empty() {
            // Records without new events (nothing above was changed): the next checkpointing
            // job takes them, and `finish` makes one due.
            self.oldest_change = None;
            return None;
        }
        self.open += 1;
        self.snapshotting = true;
        self.taken += 1;
        self.oldest_change = None;
        let (changed, seen) = if checkpoints {
            self.flushing = Some(self.through);
            let changed = std::mem::take(&mut self.changed);
            let changed = changed.into_iter().map(String::from).collect();
            (changed, std::mem::take(&mut self.seen))
        } else {
            (Vec::new(), BTreeMap::new())
        };
        Some(FlushJob {
            seq: self.taken,
            epoch: self.epoch,
            through: self.through,
            now,
            since,
            writes,
            checkpoints,
            changed,
            seen,
        })
    }

    /// Jobs taken and not finished.
    pub fn open_jobs(&self) -> usize {
        self.open
    }

    /// The newest job's snapshots are written: the next job may be taken.
    pub fn snapshots_written(&mut self) {
        self.snapshotting = false;
    }

    /// Takes the outcome of a job [`Self::take`] cut and not finished. After
    /// [`Flushed::Through`] its offset is checkpointed, and, unless a newer job's snapshots may
    /// still be unwritten, accounts with nothing left in memory and nothing folded since are
    /// forgotten; if the partition was handled past it meanwhile, the next checkpointing job
    /// is due. After [`Flushed::Fenced`], [`Flushed::Conflict`] or [`Flushed::Stopped`] the
    /// caller drops the partition.
    pub fn finish(&mut self, job: &FlushJob, outcome: Flushed) {
        self.open = self.open.saturating_sub(1);
        if job.seq == self.taken {
            self.snapshotting = false;
        }
        if job.checkpoints {
            self.flushing = None;
        }
        if let Flushed::Through(o) = outcome {
            self.checkpointed = self.checkpointed.max(o);
            let written = self.written_through();
            self.accounts
                .retain(|_, t| !t.is_stored(written) || !t.state.is_empty());
            self.dedup.prune(job.now);
            if self.through > self.checkpointed {
                self.oldest_change.get_or_insert_with(Instant::now);
            }
        }
    }

    /// The newest job whose snapshots are known written: jobs write their snapshots in the
    /// order taken, and a job is taken only once the one before has written them.
    fn written_through(&self) -> u64 {
        if self.snapshotting {
            self.taken - 1
        } else {
            self.taken
        }
    }

    /// Forgets accounts whose state is stored (nothing folded since their last snapshot, and
    /// that snapshot written: not in a job still writing its snapshots), the least recently
    /// used first, until at most `keep` are in memory; an account forgotten is loaded again at
    /// its next event. Returns how many were forgotten.
    ///
    /// Only the newest job can still be writing, so the accounts of every earlier job go too
    /// (this used to wait for no job to be writing, which a backlog rarely allowed).
    pub fn evict(&mut self, keep: usize) -> usize {
        self.evict_but(keep, &BTreeSet::new())
    }

    /// [`Self::evict`], but never the accounts in `spare` (a batch's, about to be folded).
    pub fn evict_but(&mut self, keep: usize, spare: &BTreeSet<&str>) -> usize {
        if self.accounts.len() <= keep {
            return 0;
        }
        let written = self.written_through();
        let mut idle: Vec<(u64, Box<str>)> = self
            .accounts
            .iter()
            .filter(|(a, t)| t.is_stored(written) && !spare.contains(&***a))
            .map(|(a, t)| (t.used, a.clone()))
            .collect();
        let excess = (self.accounts.len() - keep).min(idle.len());
        if excess == 0 {
            return 0;
        }
        if excess < idle.len() {
            idle.select_nth_unstable_by_key(excess, |(used, _)| *used);
        }
        for (_, account) in &idle[..excess] {
            self.accounts.remove(account);
        }
        self.accounts.shrink_to(keep.max(self.accounts.len()));
        excess
    }

    /// Flushes in one go: [`Self::take`], [`FlushJob::run`], [`Self::finish`]. On `Err`, call
    /// again: the job that failed runs again as it is.
    pub async fn flush<C: ConnectionLike + Clone + Send>(
        &mut self,
        writer: &StateWriter<C>,
        now: DateTime<Utc>,
        in_flight: usize,
    ) -> Result<Flushed, SinkError> {
        let Some(mut job) = self.unfinished.take().or_else(|| self.take(now)) else {
            return Ok(Flushed::Nothing);
        };
        match job.run(writer, in_flight).await {
            Ok(outcome) => {
                self.finish(&job, outcome);
                Ok(outcome)
            }
            Err(e) => {
                self.unfinished = Some(job);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request of `account` at `at`, without session or user.
    fn event(account: &str, id: &str, at: DateTime<Utc>) -> UsageEvent {
        UsageEvent {
            event_id: id.into(),
            account_id: meterline_schemas::AccountId::parse(account).unwrap(),
            session_id: None,
            user_id: None,
            ..crate::state::account::tests::event(at, "gpt-4o", "", "")
        }
    }

    #[test]
    fn a_flush_taken_leaves_what_is_folded_after_it_to_the_next() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        p.insert_loaded("a", AccountState::default(), -1);
        p.fold(0, &event("a", "e-0", now), now);
        p.advance(0);
        let changed_at = p.oldest_change.expect("a change");
        let first = p.take(now).expect("a change to flush");
        assert_eq!((first.through(), first.unwritten()), (0, 1));
        assert_eq!(first.since(), changed_at, "waiting since the fold");
        assert!(p.take(now).is_none(), "one flush at a time");
        // Folded while the first flush runs: the next flush's, continuing the first.
        p.fold(1, &event("a", "e-1", now), now);
        p.advance(1);
        let changed_again = p.oldest_change.expect("a change since the first was taken");
        assert!(changed_again >= changed_at);
        assert!(p.take(now).is_none(), "still one flush at a time");
        p.finish(&first, Flushed::Through(0));
        assert_eq!(p.checkpointed(), 0);
        let second = p.take(now).expect("the event folded meanwhile");
        assert_eq!(second.through(), 1);
        assert_eq!(
            second.since(),
            changed_again,
            "waiting since the fold after the first was taken, not since the first's"
        );
        assert_eq!(
            second.writes[0].range,
            (0, 1),
            "continues the first snapshot"
        );
        let snapshot = second.writes[0].pending.as_ref().unwrap().snapshot(now);
        assert_eq!(
            snapshot.cur_fields().get("d:20261203:req"),
            Some(&2),
            "cur is absolute"
        );
    }

    #[test]
    fn a_job_writes_its_accounts_oldest_change_first() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        let name = |k: usize| format!("acct-{k:02}");
        for k in 0..40 {
            p.insert_loaded(&name(k), AccountState::default(), -1);
        }
        // First changes in an order unrelated to the names (and so to the map's order).
        let order: Vec<usize> = (0..40).map(|i| (i * 17 + 5) % 40).collect();
        for (offset, &k) in order.iter().enumerate() {
            p.fold(
                offset as i64,
                &event(&name(k), &format!("e-{offset}"), now),
                now,
            );
        }
        // Changed again last: it keeps the place of its first change.
        p.fold(40, &event(&name(order[0]), "e-40", now), now);
        p.advance(40);
        let accounts = |job: &FlushJob| -> Vec<String> {
            job.writes.iter().map(|w| w.account.clone()).collect()
        };
        let first = p.take(now).unwrap();
        let expected: Vec<String> = order.iter().map(|&k| name(k)).collect();
        assert_eq!(accounts(&first), expected);
        assert_eq!(first.writes[0].range, (-1, 40), "the account changed twice");
        p.finish(&first, Flushed::Through(40));
        // After a snapshot is taken, the account's place is that of its next change.
        let (a, b) = (name(order[0]), name(order[39]));
        p.fold(41, &event(&b, "e-41", now), now);
        p.fold(42, &event(&a, "e-42", now), now);
        p.advance(42);
        assert_eq!(accounts(&p.take(now).unwrap()), [b, a]);
    }

    #[test]
    fn the_next_flush_is_taken_once_the_last_ones_snapshots_are_written() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        p.insert_loaded("a", AccountState::default(), -1);
        p.insert_loaded("b", AccountState::default(), -1);
        p.fold(0, &event("a", "e-0", now), now);
        p.advance(0);
        let first = p.take(now).unwrap();
        p.fold(1, &event("b", "e-1", now), now);
        p.advance(1);
        assert!(
            p.take(now).is_none(),
            "the first job's snapshots may not be written"
        );
        p.snapshots_written();
        // The first job waits for its checkpoint (ClickHouse); the second writes meanwhile.
        let second = p
            .take(now)
            .expect("taken while the first waits to checkpoint");
        assert_eq!((second.through(), second.writes.len()), (1, 1));
        assert!(first.checkpoints() && !second.checkpoints());
        assert_eq!(p.open_jobs(), 2);
        assert_eq!(
            p.evict(0),
            1,
            "the first job's account goes (its snapshot is written), the second's stays"
        );
        assert!(p.holds("b") && !p.holds("a"));
        p.finish(&first, Flushed::Through(0));
        assert_eq!(p.checkpointed(), 0);
        assert_eq!(p.accounts(), 1, "nothing forgotten behind an unwritten job");
        assert!(
            p.take(now).is_none(),
            "the second job's snapshots still run"
        );
        p.finish(&second, Flushed::Nothing);
        assert_eq!((p.checkpointed(), p.open_jobs()), (0, 0));
        let third = p
            .take(now)
            .expect("the second's offset is not checkpointed yet");
        assert!(third.checkpoints());
        assert_eq!((third.through(), third.unwritten()), (1, 0));
        p.finish(&third, Flushed::Through(1));
        assert_eq!((p.checkpointed(), p.open_jobs()), (1, 0));
        assert_eq!(p.evict(0), 1, "written: it may go");
    }

    #[test]
    fn while_a_checkpoint_waits_later_flushes_write_snapshots_and_the_next_checkpoint_takes_their_ids(
    ) {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let day = Grain::Day.window_start(now);
        let mut p = Partition::new(1, -1, Dedup::default());
        p.insert_loaded("a", AccountState::default(), -1);
        let fold = |p: &mut Partition, o: i64| {
            assert!(p.is_new(&format!("e-{o}"), day));
            p.fold(o, &event("a", &format!("e-{o}"), now), now);
            p.advance(o);
        };
        fold(&mut p, 0);
        let waiting = p.take(now).unwrap();
        assert!(waiting.checkpoints());
        assert_eq!(waiting.seen[&day].to_strings(), ["e-0"]);
        p.snapshots_written();
        // ClickHouse stalls: the first checkpoint waits, and many flushes come and go meanwhile,
        // each writing the account's snapshot and none holding a checkpoint of its own.
        for o in 1..=100 {
            fold(&mut p, o);
            let job = p
                .take(now)
                .expect("a snapshot to write while the checkpoint waits");
            assert!(!job.checkpoints());
            assert_eq!((job.through(), job.unwritten()), (o, 1));
            assert!(job.seen.is_empty() && job.changed.is_empty());
            p.snapshots_written();
            p.finish(&job, Flushed::Nothing);
            assert_eq!(p.open_jobs(), 1, "only the waiting checkpoint stays open");
        }
        // A record without a new event while the checkpoint waits: nothing to write yet.
        p.advance(101);
        assert!(p.take(now).is_none());
        assert!(!p.due(Instant::now(), true, &FlushPolicy::default()));
        // ClickHouse is back: the first checkpoint lands, and the next takes everything since.
        p.finish(&waiting, Flushed::Through(0));
        assert!(
            p.due(
                Instant::now() + Duration::from_secs(1),
                true,
                &FlushPolicy::default()
            ),
            "the rest is due for a checkpoint"
        );
        let next = p.take(now).unwrap();
        assert!(next.checkpoints());
        assert_eq!((next.through(), next.unwritten()), (101, 0));
        let ids: Vec<String> = (1..=100).map(|o| format!("e-{o}")).collect();
        assert_eq!(next.seen[&day].to_strings(), ids);
        assert_eq!(next.changed, ["a"]);
        p.finish(&next, Flushed::Through(101));
        assert_eq!((p.checkpointed(), p.has_changes()), (101, false));
    }

    #[test]
    fn eviction_forgets_the_least_recently_used_written_accounts_only() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        let flush = |p: &mut Partition| {
            let job = p.take(now).unwrap();
            let through = job.through();
            p.finish(&job, Flushed::Through(through));
        };
        for (o, a) in ["a", "b", "c"].into_iter().enumerate() {
            p.insert_loaded(a, AccountState::default(), -1);
            p.fold(o as i64, &event(a, &format!("e-{o}"), now), now);
        }
        p.advance(2);
        let job = p.take(now).unwrap();
        assert_eq!(
            p.evict(0),
            0,
            "nothing goes whose snapshot a running job may not have written"
        );
        p.finish(&job, Flushed::Through(2));
        p.fold(3, &event("b", "e-3", now), now);
        p.advance(3);
        flush(&mut p);
        assert_eq!(p.evict(1), 2, "a and c were used least recently");
        assert!(p.holds("b") && !p.holds("a") && !p.holds("c"));
        p.insert_loaded("d", AccountState::default(), 3);
        p.fold(4, &event("d", "e-4", now), now);
        assert_eq!(p.evict(0), 1);
        assert!(p.holds("d"), "an account with events not yet written stays");
    }

    #[test]
    fn room_for_a_batch_spares_the_batchs_own_accounts() {
        let mut p = Partition::new(1, -1, Dedup::default());
        for a in ["a", "b", "c"] {
            p.insert_loaded(a, AccountState::default(), 7);
        }
        let batch: BTreeSet<&str> = ["b", "d"].into();
        assert_eq!(p.evict_but(0, &batch), 2);
        assert!(p.holds("b") && !p.holds("a") && !p.holds("c"));
        assert_eq!(p.evict_but(1, &batch), 0, "within the budget already");
    }

    #[test]
    fn an_id_is_new_once_per_day() {
        let day = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 0, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        assert!(p.is_new("e-1", day));
        assert!(!p.is_new("e-1", day), "a retry is a duplicate");
        assert!(p.is_new("e-2", day));
        assert_eq!(
            p.seen[&day].to_strings(),
            ["e-1", "e-2"],
            "new ids go to the checkpoint once"
        );
    }

    #[test]
    fn folding_a_batch_again_after_a_failed_attempt_counts_each_event_once() {
        // A batch over two partitions: the first folded, the second failed, the batch retried.
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 10, 0, 0).unwrap();
        let e = event("acct-1", "e-1", now);
        let mut p = Partition::new(1, -1, Dedup::default());
        p.insert_loaded("acct-1", AccountState::default(), -1);
        for _attempt in 0..2 {
            p.fold(7, &e, now);
        }
        let cur = p.accounts["acct-1"].state.cur_fields(now);
        assert_eq!(cur.get("d:20261203:req"), Some(&1));
        assert_eq!(p.unwritten(), 1);
    }

    #[test]
    fn seen_days_are_forgotten_when_their_sets_expire() {
        let day = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 1, 0, 0, 0).unwrap();
        let mut d = Dedup::default();
        d.insert("e-1", day);
        let expiry = day + chrono::Duration::seconds(86_400 + SEEN_RETENTION_AFTER_DAY_SECS);
        d.prune(expiry - chrono::Duration::seconds(1));
        assert_eq!(d.len(), 1);
        d.prune(expiry);
        assert!(d.is_empty());
    }

    #[test]
    fn the_flush_policy_waits_less_when_caught_up_and_never_past_its_bounds() {
        let policy = FlushPolicy {
            max_accounts: 2,
            max_seen: 3,
            ..FlushPolicy::default()
        };
        let day = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 3, 0, 0, 0).unwrap();
        let mut p = Partition::new(1, -1, Dedup::default());
        let t0 = Instant::now();
        assert!(
            !p.due(t0 + Duration::from_secs(5), true, &policy),
            "nothing to flush"
        );
        p.advance(10);
        let start = p.oldest_change.unwrap();
        let at = |ms| start + Duration::from_millis(ms);
        assert!(!p.due(at(49), true, &policy));
        assert!(p.due(at(50), true, &policy), "caught up: 50 ms");
        assert!(!p.due(at(999), false, &policy));
        assert!(p.due(at(1000), false, &policy), "behind: 1 s");
        for id in ["a", "b"] {
            p.is_new(id, day);
        }
        assert!(!p.due(at(0), false, &policy));
        p.is_new("c", day);
        assert!(p.due(at(0), false, &policy), "3 seen ids wait");
        let mut p = Partition::new(1, -1, Dedup::default());
        for a in ["a", "b"] {
            p.insert_loaded(a, AccountState::default(), -1);
            p.accounts.get_mut(a).unwrap().last = 0;
        }
        p.advance(0);
        assert!(
            p.due(p.oldest_change.unwrap(), false, &policy),
            "2 accounts wait"
        );
    }
}
