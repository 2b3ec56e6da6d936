//! Fencing of hot-state layout v2's writers, against a real Redis (issue 21, design §2.5):
//! a writer from an older assignment of a partition cannot overwrite state written under a
//! newer one. Two `StateWriter`s share partition 0 of one topic:
//!
//! 1. A claims the partition (epoch 1), folds offsets 0–99, writes every account and
//!    checkpoints at 99.
//! 2. B claims it (epoch 2), claims each account, folds 0–149 and writes; accounts with no
//!    event in 100–149 are already stored (`HAVE`). It checkpoints at 149.
//! 3. A, a zombie still holding its state, folds 100–199 and writes: every account answers
//!    `FENCED`, and so does its checkpoint. For the accounts B did not need to write, A's
//!    snapshot continues the stored one exactly (the offset guard alone would let it in), so
//!    only the epoch stops it.
//!
//! Redis then holds B's state for every account, and the checkpoint `e = 2, o = 149`.
//!
//! A second test has B claim every account of the partition's index first, as the background
//! claim after an assignment does, before it writes anything: the zombie is then refused
//! everywhere although no account has newer data.
//!
//! A third test has B load what A wrote instead of replaying it (design §3.2): B claims the
//! partition, loads each account its records touch from Redis, folds only 100–149 and writes.
//! Redis then equals what one writer folding 0–149 would have written.
//! A fourth test runs a zombie's whole flush through the state store: once its first snapshots
//! come back `FENCED`, it sends no further one. A fifth has B claim an account nobody has
//! written yet, and the zombie's first snapshot of it is refused. A sixth repeats the third from
//! `cur` as the hash written before 2026-12-05: the read path reads it the same, and B's claims
//! move it into the value.
//! (tansu never expires a dead consumer-group member, so the end-to-end zombie case waits for a
//! broker that does; this is the part that does not need one.)

mod common;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use meterline_aggregator::state::account::AccountState;
use meterline_aggregator::state::partition::{Flushed, Partition};
use meterline_aggregator::state::writer::{StateWriter, Written};
use meterline_infra::redis::HotConn;
use meterline_infra::RedisConfig;
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::limits::WindowCounters;
use meterline_schemas::UsageEvent;

const TOPIC: &str = "usage";

/// The account of the record at `offset`: twelve accounts, but only the first ten have
/// records in 100–149.
fn account_of(offset: i64) -> String {
    let n = if (100..150).contains(&offset) {
        offset % 10
    } else {
        offset % 12
    };
    format!("fence-{n}")
}

fn record(offset: i64, now: DateTime<Utc>) -> UsageEvent {
    let at = now - Duration::seconds(200 - offset);
    UsageEvent {
        api_key_id: format!("k-{}", offset % 3),
        model: ["gpt-4o", "gpt-4o-mini"][(offset % 2) as usize].into(),
        input_tokens: 10 + offset,
        output_tokens: 5,
        cost_micros: Some(offset),
        status: Some(if offset % 7 == 0 { 500 } else { 200 }),
        session_id: Some(format!("s-{}", offset % 4)),
        user_id: Some(format!("u-{}", offset % 5)),
        ..common::usage_record(format!("e-{offset}"), &account_of(offset), at)
    }
}

/// A writer's memory: each account's state and the offset of its last folded record.
#[derive(Default, Clone)]
struct Memory(BTreeMap<String, (AccountState, i64)>);

impl Memory {
    fn fold(&mut self, offsets: std::ops::Range<i64>, now: DateTime<Utc>) {
        for o in offsets {
            let e = record(o, now);
            let (state, last) = self.0.entry(e.account_id.as_str().to_owned()).or_default();
            state.fold(&e, now);
            *last = o;
        }
    }
}

/// What `cur` must hold for `state` written by `epoch` up to `o`.
fn expected_cur(state: &AccountState, epoch: i64, o: i64, now: DateTime<Utc>) -> WindowCounters {
    let mut cur = state.snapshot(now).cur_fields();
    cur.insert("_e".into(), epoch);
    cur.insert("_o".into(), o);
    cur
}

/// One test's Redis under its own prefix, the two writers of partition 0, and its clock.
struct Setup {
    keys: HotKeys,
    deployment: RedisConfig,
    redis: HotConn,
    a: StateWriter<HotConn>,
    b: StateWriter<HotConn>,
    now: DateTime<Utc>,
}

impl Setup {
    async fn new(deployment: RedisConfig) -> Self {
        let keys = HotKeys::new(deployment.key_prefix.clone()).unwrap();
        let redis = deployment.connect().await.unwrap();
        Self {
            deployment,
            a: StateWriter::new(redis.clone(), keys.clone(), TOPIC, 0),
            b: StateWriter::new(redis.clone(), keys.clone(), TOPIC, 0),
            keys,
            redis,
            now: Utc::now(),
        }
    }

    /// Step 1 of every test: A claims the fresh partition (epoch 1), folds offsets 0–99, writes
    /// every account and checkpoints at 99 with them. A's epoch, its memory, and what each
    /// account's `cur` must now hold ([`expected_cur`]).
    async fn a_writes_the_first_hundred(
        &mut self,
    ) -> (i64, Memory, HashMap<String, WindowCounters>) {
        let (ea, from) = self.a.claim().await.unwrap();
        assert_eq!((ea, from), (1, -1));
        let mut mem_a = Memory::default();
        mem_a.fold(0..100, self.now);
        let mut written = HashMap::new();
        for (account, (state, last)) in &mut mem_a.0 {
            written.insert(account.clone(), expected_cur(state, ea, *last, self.now));
            let w = self
                .a
                .write_account(ea, account, (-1, *last), state, self.now)
                .await
                .unwrap();
            assert_eq!(w, Written::Applied, "{account}");
        }
        let changed: Vec<&str> = mem_a.0.keys().map(String::as_str).collect();
        assert!(self
            .a
            .checkpoint(ea, 99, &changed, &BTreeMap::new())
            .await
            .unwrap());
        (ea, mem_a, written)
    }
}

/// An account's `cur` as stored: its fields and, as `_o`, the offset its header holds (not the
/// writer's epoch or partition).
async fn stored_cur(redis: &mut HotConn, keys: &HotKeys, account: &str) -> WindowCounters {
    let cur = common::hot_cur(redis, keys, account).await;
    let mut fields = cur.fields;
    fields.insert("_o".into(), cur.offset);
    fields
}

/// Asserts that Redis holds `account`'s sessions as `state` has them: each of the four session
/// ids the records use ([`record`]), one `state` does not have as no hash at all.
async fn assert_sessions(
    redis: &mut HotConn,
    keys: &HotKeys,
    account: &str,
    state: &AccountState,
    now: DateTime<Utc>,
) {
    let sessions = state.sessions(now);
    for s in ["s-0", "s-1", "s-2", "s-3"] {
        let stored: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys.session(account, s))
            .query_async(redis)
            .await
            .unwrap();
        let want: HashMap<String, i64> = sessions
            .iter()
            .find(|session| session.id == s)
            .map(|session| session.fields.clone().into_iter().collect())
            .unwrap_or_default();
        assert_eq!(stored, want, "{account} {s}");
    }
}

#[tokio::test]
async fn a_new_owner_loads_what_the_old_one_wrote_and_ends_where_one_writer_would() {
    common::on_each_hot_deployment(|d| {
        a_new_owner_loads_what_the_old_one_wrote_and_ends_where_one_writer_would_on(d, false)
    })
    .await;
}

/// The same, from `cur` as the hash written before 2026-12-05 (layout v2's first form): the
/// read path reads it as it read the value, B's claim moves it into the value with its expiry,
/// and B then ends where one writer would.
#[tokio::test]
async fn an_account_written_as_a_hash_is_read_the_same_and_moved_into_one_value_at_its_claim() {
    common::on_each_hot_deployment(|d| {
        a_new_owner_loads_what_the_old_one_wrote_and_ends_where_one_writer_would_on(d, true)
    })
    .await;
}

/// Turns each account's `cur` into the hash it was before 2026-12-05: its fields, with the
/// header as `_e`, `_tp` and `_o`, and the same expiry.
async fn as_written_before_the_value(
    redis: &mut HotConn,
    keys: &HotKeys,
    accounts: impl Iterator<Item = &String>,
) {
    for account in accounts {
        let cur = common::hot_cur(redis, keys, account).await;
        let expires: i64 = redis::cmd("EXPIRETIME")
            .arg(keys.cur(account))
            .query_async(redis)
            .await
            .unwrap();
        assert!(expires > 0, "{account}: cur has an expiry");
        let mut hset = redis::cmd("HSET");
        hset.arg(keys.cur_hash(account))
            .arg("_e")
            .arg(cur.epoch)
            .arg("_tp")
            .arg(&cur.topic_partition)
            .arg("_o")
            .arg(cur.offset);
        for (f, v) in &cur.fields {
            hset.arg(f).arg(v);
        }
        redis::pipe()
            .add_command(hset)
            .cmd("EXPIREAT")
            .arg(keys.cur_hash(account))
            .arg(expires)
            .del(keys.cur(account))
            .query_async::<()>(redis)
            .await
            .unwrap();
    }
}

async fn a_new_owner_loads_what_the_old_one_wrote_and_ends_where_one_writer_would_on(
    deployment: RedisConfig,
    from_hash: bool,
) {
    let mut t = Setup::new(deployment).await;
    let (_, mem_a, _) = t.a_writes_the_first_hundred().await;
    let reader = meterline_ingest::read::hot_state::HotState::new(t.redis.clone(), t.keys.clone());
    let mut read_before = BTreeMap::new();
    for account in mem_a.0.keys() {
        let usage = reader.usage(account, Some("s-1"), t.now).await.unwrap();
        assert!(usage.month.get("req").is_some_and(|n| *n > 0), "{account}");
        read_before.insert(account.clone(), usage);
    }
    let expiries = |redis: HotConn,
                    keys: HotKeys,
                    accounts: Vec<String>,
                    key_of: fn(&HotKeys, &str) -> String| async move {
        let mut out = BTreeMap::new();
        for a in accounts {
            let at: i64 = redis::cmd("EXPIRETIME")
                .arg(key_of(&keys, &a))
                .query_async(&mut redis.clone())
                .await
                .unwrap();
            out.insert(a, at);
        }
        out
    };
    let accounts: Vec<String> = mem_a.0.keys().cloned().collect();
    if from_hash {
        let expired_at = expiries(
            t.redis.clone(),
            t.keys.clone(),
            accounts.clone(),
            HotKeys::cur,
        )
        .await;
        as_written_before_the_value(&mut t.redis, &t.keys, mem_a.0.keys()).await;
        for account in mem_a.0.keys() {
            assert_eq!(
                reader.usage(account, Some("s-1"), t.now).await.unwrap(),
                read_before[account],
                "{account}: the hash reads as the value did"
            );
        }
        // B's claims move each account it loads; fence-10 and fence-11 have no record in
        // 100-149 and stay a hash, read as before.
        let mut b = t.b.clone();
        let (eb, _) = b.claim().await.unwrap();
        for account in mem_a
            .0
            .keys()
            .filter(|a| !a.ends_with("-10") && !a.ends_with("-11"))
        {
            assert!(b.load_account(eb, account).await.unwrap().is_some());
        }
        let moved: Vec<String> = accounts
            .iter()
            .filter(|a| !a.ends_with("-10") && !a.ends_with("-11"))
            .cloned()
            .collect();
        assert_eq!(
            expiries(t.redis.clone(), t.keys.clone(), moved.clone(), HotKeys::cur).await,
            moved.iter().map(|a| (a.clone(), expired_at[a])).collect(),
            "a moved cur keeps the hash's expiry"
        );
        assert_eq!(moved.len(), 10);
        assert_eq!(
            expiries(t.redis.clone(), t.keys.clone(), moved, HotKeys::cur_hash)
                .await
                .into_values()
                .collect::<Vec<_>>(),
            vec![-2; 10],
            "the hash is gone once moved"
        );
        for account in mem_a.0.keys() {
            assert_eq!(
                reader.usage(account, Some("s-1"), t.now).await.unwrap(),
                read_before[account],
                "{account}: read the same once moved"
            );
        }
    }
    let Setup {
        deployment,
        keys,
        mut redis,
        mut b,
        now,
        ..
    } = t;
    let no_seen = BTreeMap::new();

    // B resumes after the checkpoint, loading only the accounts its records touch.
    let (eb, from) = b.claim().await.unwrap();
    assert_eq!(from, 99);
    let mut mem_b: BTreeMap<String, (AccountState, i64, i64)> = BTreeMap::new();
    for o in from + 1..150 {
        let e = record(o, now);
        let account = e.account_id.as_str().to_owned();
        if !mem_b.contains_key(&account) {
            let (state, stored) = b
                .load_account(eb, &account)
                .await
                .unwrap()
                .expect("not fenced");
            assert_eq!(stored, mem_a.0[&account].1, "{account}: the offset A wrote");
            mem_b.insert(account.clone(), (state, stored, stored));
        }
        let (state, _, last) = mem_b.get_mut(&account).unwrap();
        state.fold(&e, now);
        *last = o;
    }
    assert_eq!(
        mem_b.len(),
        10,
        "fence-10 and fence-11 have no record in 100-149"
    );
    for (account, (state, loaded, last)) in &mut mem_b {
        let w = b
            .write_account(eb, account, (*loaded, *last), state, now)
            .await
            .unwrap();
        assert_eq!(w, Written::Applied, "{account}");
    }
    assert!(b.checkpoint(eb, 149, &[], &no_seen).await.unwrap());

    // One writer folding 0-149 would have written this.
    let mut single = Memory::default();
    single.fold(0..150, now);
    for (account, (state, last)) in &single.0 {
        let mut want = expected_cur(state, 0, *last, now);
        want.remove("_e");
        assert_eq!(
            stored_cur(&mut redis, &keys, account).await,
            want,
            "{account}"
        );
        assert_sessions(&mut redis, &keys, account, state, now).await;
    }
    common::remove_hot_keys(&deployment).await;
}

#[tokio::test]
async fn a_writer_from_an_older_assignment_cannot_overwrite_newer_state() {
    common::on_each_hot_deployment(
        a_writer_from_an_older_assignment_cannot_overwrite_newer_state_on,
    )
    .await;
}

async fn a_writer_from_an_older_assignment_cannot_overwrite_newer_state_on(
    deployment: RedisConfig,
) {
    // 1. A owns the partition.
    let mut t = Setup::new(deployment).await;
    let (ea, mut mem_a, _) = t.a_writes_the_first_hundred().await;
    let Setup {
        deployment,
        keys,
        mut redis,
        mut a,
        mut b,
        now,
    } = t;
    let no_seen = BTreeMap::new();

    // 2. B takes it over and continues from the checkpoint.
    let (eb, from) = b.claim().await.unwrap();
    assert_eq!((eb, from), (2, 99));
    let mut mem_b = Memory::default();
    mem_b.fold(0..150, now);
    let mut expected = HashMap::new();
    let mut outcomes = BTreeMap::new();
    for (account, (state, last)) in &mut mem_b.0 {
        let stored = b
            .claim_account(eb, account)
            .await
            .unwrap()
            .expect("not fenced");
        expected.insert(account.clone(), expected_cur(state, eb, *last, now));
        let w = b
            .write_account(eb, account, (stored, *last), state, now)
            .await
            .unwrap();
        outcomes.insert(account.clone(), w);
    }
    for (account, w) in &outcomes {
        let untouched = account == "fence-10" || account == "fence-11";
        let want = if untouched {
            Written::Have
        } else {
            Written::Applied
        };
        assert_eq!(*w, want, "{account}");
    }
    let changed: Vec<&str> = mem_b.0.keys().map(String::as_str).collect();
    assert!(b.checkpoint(eb, 149, &changed, &no_seen).await.unwrap());

    // 3. A, stale, goes on: refused everywhere.
    let before: HashMap<String, i64> = mem_a.0.iter().map(|(k, (_, o))| (k.clone(), *o)).collect();
    mem_a.fold(100..200, now);
    for (account, (state, last)) in &mut mem_a.0 {
        let o_prev = before.get(account).copied().unwrap_or(-1);
        if account == "fence-10" || account == "fence-11" {
            let stored = common::hot_cur(&mut redis, &keys, account).await.offset;
            assert_eq!(
                stored, o_prev,
                "{account}: only the epoch can refuse this write"
            );
        }
        let w = a
            .write_account(ea, account, (o_prev, *last), state, now)
            .await
            .unwrap();
        assert_eq!(w, Written::Fenced, "{account}");
    }
    let changed: Vec<&str> = mem_a.0.keys().map(String::as_str).collect();
    assert!(!a.checkpoint(ea, 199, &changed, &no_seen).await.unwrap());

    // Redis holds B's state.
    for (account, want) in &expected {
        let cur = common::hot_cur(&mut redis, &keys, account).await;
        assert_eq!(cur.topic_partition, "usage:0");
        let mut got = cur.fields;
        got.insert("_e".into(), cur.epoch);
        got.insert("_o".into(), cur.offset);
        got.retain(|_, v| *v != 0);
        assert_eq!(&got, want, "{account}");
        assert_sessions(&mut redis, &keys, account, &mem_b.0[account].0, now).await;
    }
    let ckpt: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.checkpoint(0, TOPIC))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ckpt, HashMap::from([("e".into(), 2), ("o".into(), 149)]));
    let queued: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.dirty(0))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(queued.len(), 12, "A's and B's changes, once each");

    common::remove_hot_keys(&deployment).await;
}

/// An account nobody has written yet: once the new owner has claimed it, the zombie's first
/// snapshot of it is refused by the epoch. (Before `cur` was one value, such a claim set only the
/// epoch and no partition, so the zombie's snapshot passed and the new owner's own write then
/// met `CONFLICT` and replayed.)
#[tokio::test]
async fn a_claim_of_an_account_never_written_fences_the_older_owner_there_too() {
    common::on_each_hot_deployment(
        a_claim_of_an_account_never_written_fences_the_older_owner_there_too_on,
    )
    .await;
}

async fn a_claim_of_an_account_never_written_fences_the_older_owner_there_too_on(
    deployment: RedisConfig,
) {
    let Setup {
        deployment,
        keys,
        mut redis,
        mut a,
        mut b,
        now,
    } = Setup::new(deployment).await;
    let (ea, _) = a.claim().await.unwrap();
    let mut zombie = AccountState::default();
    zombie.fold(&common::usage_record("e-z", "never-1", now), now);
    let (eb, _) = b.claim().await.unwrap();
    assert_eq!(b.claim_account(eb, "never-1").await.unwrap(), Some(-1));
    let claimed = common::hot_cur(&mut redis, &keys, "never-1").await;
    assert_eq!(
        (
            claimed.epoch,
            claimed.offset,
            claimed.topic_partition.as_str()
        ),
        (eb, -1, "usage:0"),
        "the claim names the partition"
    );
    assert!(claimed.fields.is_empty());
    assert_eq!(
        a.write_account(ea, "never-1", (-1, 0), &mut zombie, now)
            .await
            .unwrap(),
        Written::Fenced
    );
    let mut owner = AccountState::default();
    owner.fold(&common::usage_record("e-o", "never-1", now), now);
    assert_eq!(
        b.write_account(eb, "never-1", (-1, 0), &mut owner, now)
            .await
            .unwrap(),
        Written::Applied,
        "the new owner continues the claimed account"
    );
    common::remove_hot_keys(&deployment).await;
}

#[tokio::test]
async fn after_the_new_owners_claim_the_zombie_is_refused_everywhere() {
    common::on_each_hot_deployment(after_the_new_owners_claim_the_zombie_is_refused_everywhere_on)
        .await;
}

async fn after_the_new_owners_claim_the_zombie_is_refused_everywhere_on(deployment: RedisConfig) {
    let mut t = Setup::new(deployment).await;
    let (ea, mut mem_a, written) = t.a_writes_the_first_hundred().await;
    let Setup {
        deployment,
        keys,
        mut redis,
        mut a,
        mut b,
        now,
    } = t;
    let no_seen = BTreeMap::new();

    // B takes the partition and claims every account the index names; it writes nothing.
    let (eb, _) = b.claim().await.unwrap();
    let index: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.accounts(0))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(index.len(), 12);
    for account in &index {
        assert!(b.claim_account(eb, account).await.unwrap().is_some());
    }

    // A's continuations are exactly what the offset guard admits, and each is refused.
    let before: HashMap<String, i64> = mem_a.0.iter().map(|(k, (_, o))| (k.clone(), *o)).collect();
    mem_a.fold(100..200, now);
    for (account, (state, last)) in &mut mem_a.0 {
        let w = a
            .write_account(ea, account, (before[account], *last), state, now)
            .await
            .unwrap();
        assert_eq!(w, Written::Fenced, "{account}");
        assert_eq!(
            a.claim_account(ea, account).await.unwrap(),
            None,
            "{account}"
        );
    }
    let changed: Vec<&str> = mem_a.0.keys().map(String::as_str).collect();
    assert!(!a.checkpoint(ea, 199, &changed, &no_seen).await.unwrap());
    for (account, mut want) in written {
        want.remove("_e");
        assert_eq!(
            stored_cur(&mut redis, &keys, &account).await,
            want,
            "{account}"
        );
    }
    common::remove_hot_keys(&deployment).await;
}

/// A [`HotConn`] that notes the account of every snapshot script call sent through it: the
/// watched account whose `cur` is the first key of an `EVALSHA` or `EVAL`.
#[derive(Clone)]
struct NotingSnapshots {
    inner: HotConn,
    /// Each watched account by the name of its `cur`.
    by_cur: HashMap<String, String>,
    accounts: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl NotingSnapshots {
    fn new(inner: HotConn, keys: &HotKeys, watched: &[String]) -> Self {
        Self {
            inner,
            by_cur: watched.iter().map(|a| (keys.cur(a), a.clone())).collect(),
            accounts: Default::default(),
        }
    }

    fn note(&self, cmd: &redis::Cmd) {
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(a) => Some(a.to_vec()),
                redis::Arg::Cursor => None,
            })
            .collect();
        let is_script = args
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"EVALSHA") || c.eq_ignore_ascii_case(b"EVAL"));
        if !is_script {
            return;
        }
        // EVALSHA sha numkeys cur …: the account whose `cur` comes first.
        let first_key = String::from_utf8(args[3].clone()).unwrap();
        if let Some(account) = self.by_cur.get(&first_key) {
            self.accounts.lock().unwrap().insert(account.clone());
        }
    }
}

impl redis::aio::ConnectionLike for NotingSnapshots {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.note(cmd);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        for c in cmd.cmd_iter() {
            self.note(c);
        }
        self.inner.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Loads the accounts of the records at `offsets` into `partition` and folds them.
async fn fold_into(
    partition: &mut Partition,
    writer: &StateWriter<HotConn>,
    offsets: std::ops::Range<i64>,
    now: DateTime<Utc>,
) {
    let records: Vec<(i64, UsageEvent)> = offsets.map(|o| (o, record(o, now))).collect();
    assert!(partition
        .load(
            writer,
            records.iter().map(|(_, e)| e.account_id.as_str()),
            4
        )
        .await
        .unwrap());
    for (o, e) in &records {
        partition.fold(*o, e, now);
    }
    partition.advance(records.last().unwrap().0);
}

/// A flush whose first snapshots are refused stops there. A flushes offsets 0–99 of the
/// partition through its state store, and folds 100–199; B then takes the partition and
/// claims every account. A's flush of the twelve accounts, two in flight at a time, ends
/// `Fenced` after sending only the two it had in flight, and Redis holds what it held before.
#[tokio::test]
async fn a_fenced_flush_writes_no_further_snapshot() {
    common::on_each_hot_deployment(a_fenced_flush_writes_no_further_snapshot_on).await;
}

async fn a_fenced_flush_writes_no_further_snapshot_on(deployment: RedisConfig) {
    let Setup {
        deployment,
        keys,
        mut redis,
        mut a,
        mut b,
        now,
    } = Setup::new(deployment).await;
    let accounts: Vec<String> = (0..12).map(account_of).collect();
    let mut partition = Partition::claim(&mut a, now).await.unwrap();
    assert_eq!(partition.epoch(), 1);
    fold_into(&mut partition, &a, 0..100, now).await;
    assert_eq!(
        partition.flush(&a, now, 4).await.unwrap(),
        Flushed::Through(99)
    );
    fold_into(&mut partition, &a, 100..200, now).await;
    let mut job = partition.take(now).expect("twelve accounts to flush");
    assert_eq!(job.unwritten(), 12);

    // B takes the partition over and claims every account, as its background claim does.
    let (eb, from) = b.claim().await.unwrap();
    assert_eq!((eb, from), (2, 99));
    let mut before = HashMap::new();
    for account in &accounts {
        assert!(b.claim_account(eb, account).await.unwrap().is_some());
        before.insert(account, stored_cur(&mut redis, &keys, account).await);
    }

    // A's flush runs through a connection that notes each snapshot it sends.
    let noting = NotingSnapshots::new(redis.clone(), &keys, &accounts);
    let zombie = StateWriter::new(noting.clone(), keys.clone(), TOPIC, 0);
    assert_eq!(job.run(&zombie, 2).await.unwrap(), Flushed::Fenced);
    let sent = noting.accounts.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "only the two in flight were sent: {sent:?}");
    assert_eq!(job.unwritten(), 12, "and neither was written");
    for account in &accounts {
        assert_eq!(
            stored_cur(&mut redis, &keys, account).await,
            before[account],
            "{account}"
        );
    }
    assert_eq!(b.stored_checkpoint().await.unwrap(), (2, 99));
    common::remove_hot_keys(&deployment).await;
}
