//! The state store written to a real Redis over forty simulated minutes (issue 21, design
//! §3–4), against a ground truth computed from the log alone.
//!
//! One partition's log is built up front: six accounts, mostly fresh events, some late by
//! minutes (their minute is closed) or by days (their hour is gone, their day closed), and
//! retried copies of earlier events. Each simulated minute, the records that arrived are
//! handled the way the aggregator will handle them (deduplicate, load the accounts, fold,
//! advance), then at random:
//! - the partition flushes (snapshots, then checkpoint);
//! - the owner crashes, losing what it had not flushed;
//! - the owner crashes between its snapshots and its checkpoint;
//! - the partition takes a flush and folds the next minute's records before the flush runs, as
//!   the aggregator's background flush does (and the owner may crash between that flush's
//!   snapshots and its checkpoint);
//! - nothing happens yet.
//!
//! After a crash a new owner claims the partition (a higher epoch), reads the deduplication
//! back from the seen sets, loads accounts from Redis as their records come, and replays from
//! the checkpoint. Windows move out of `cur` as they close and late events add to closed
//! hashes, across all of that.
//!
//! At the end, every window (counters and per-model counters), read from `cur` or else from its
//! closed hash, every distinct count and every session in Redis equals the truth: each event id
//! counted once, in each window whose key had not expired when it arrived (the log keeps clear
//! of those boundaries). The checkpoint holds the last offset.
//!
//! The same log run by an owner that never crashes must leave the same hot state, as readers see
//! it (every window, count, member, session and seen id, and each account's `_o`).
//!
//! It runs on the standalone Redis and, under `scripts/test.sh`, on a local three-master Redis
//! Cluster, where every script must keep to one slot (`common::hot_deployments`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, DurationRound, Utc};
use meterline_aggregator::state::partition::{FlushJob, Flushed, Partition};
use meterline_aggregator::state::seen::Ids;
use meterline_aggregator::state::writer::StateWriter;
use meterline_infra::redis::HotConn;
use meterline_infra::RedisConfig;
use meterline_schemas::keys::hot::{self, HotKeys};
use meterline_schemas::keys::{Dim, Grain, SESSION_RETENTION_SECS};
use meterline_schemas::limits::WindowCounters;
use meterline_schemas::UsageEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "usage";
const MINUTES: i64 = 40;

/// A record of the log: when it reaches the broker, and its event.
struct Record {
    arrives: DateTime<Utc>,
    event: UsageEvent,
}

fn build_log(rng: &mut StdRng, t0: DateTime<Utc>) -> Vec<Record> {
    let mut log: Vec<Record> = Vec::new();
    let mut n = 0;
    for minute in 0..MINUTES {
        for _ in 0..rng.random_range(0..14) {
            let arrives =
                t0 + Duration::minutes(minute) + Duration::seconds(rng.random_range(0..60));
            if !log.is_empty() && rng.random_bool(0.1) {
                // A gateway's retry: the same event again.
                let copy = log[rng.random_range(0..log.len())].event.clone();
                log.push(Record {
                    arrives,
                    event: copy,
                });
                continue;
            }
            let age = match rng.random_range(0..10) {
                0 => Duration::minutes(rng.random_range(5..55)),
                1 => {
                    Duration::days(rng.random_range(3..20))
                        + Duration::seconds(rng.random_range(0..86_400))
                }
                _ => Duration::seconds(rng.random_range(0..20)),
            };
            let at = arrives - age;
            n += 1;
            log.push(Record {
                arrives,
                event: {
                    let account = format!("store-{}", rng.random_range(0..6));
                    UsageEvent {
                        received_at: arrives.timestamp_micros(),
                        api_key_id: format!("k-{}", rng.random_range(0..3)),
                        region: ["eu-west-1", "us-east-1"][rng.random_range(0..2)].into(),
                        model: ["gpt-4o", "gpt-4o-mini", "claude-3-haiku"][rng.random_range(0..3)]
                            .into(),
                        input_tokens: rng.random_range(0..500),
                        output_tokens: rng.random_range(0..100),
                        cost_micros: Some(rng.random_range(0..50)),
                        status: Some(if rng.random_bool(0.1) { 500 } else { 200 }),
                        session_id: rng
                            .random_bool(0.8)
                            .then(|| format!("s-{}", rng.random_range(0..5))),
                        user_id: rng
                            .random_bool(0.7)
                            .then(|| format!("u-{}", rng.random_range(0..4))),
                        client_ip_hash: rng
                            .random_bool(0.5)
                            .then(|| format!("ip-{}", rng.random_range(0..3))),
                        ..common::usage_record(format!("e-{n}"), &account, at)
                    }
                },
            });
        }
    }
    log.sort_by_key(|r| r.arrives);
    log
}

/// What Redis must hold, computed from the log with no code of the state store.
#[derive(Default)]
struct Truth {
    /// (account, grain, start) → today's window fields.
    windows: BTreeMap<(String, Grain, DateTime<Utc>), WindowCounters>,
    /// (account, grain, start, dim) → distinct members.
    members: BTreeMap<(String, Grain, DateTime<Utc>, Dim), BTreeSet<String>>,
    /// (account, session) → the session hash's fields.
    sessions: BTreeMap<(String, String), WindowCounters>,
}

impl Truth {
    fn of(log: &[Record]) -> Self {
        let mut t = Truth::default();
        let mut ids = BTreeSet::new();
        for r in log {
            let e = &r.event;
            if !ids.insert(e.event_id.clone()) {
                continue;
            }
            let account = e.account_id.as_str().to_owned();
            let at = DateTime::from_timestamp(e.occurred_at / 1_000_000, 0).unwrap();
            let err = i64::from(e.is_error());
            let base = [
                ("req", 1),
                ("err", err),
                ("in", e.input_tokens),
                ("out", e.output_tokens),
                ("cost", e.cost_micros.unwrap_or(0)),
            ];
            for grain in Grain::ALL {
                let start = grain.window_start(at);
                if grain.expires_at(start) <= r.arrives.timestamp() {
                    continue;
                }
                let w = t
                    .windows
                    .entry((account.clone(), grain, start))
                    .or_default();
                for (f, v) in base {
                    *w.entry(f.into()).or_default() += v;
                }
                if matches!(grain, Grain::Day | Grain::Month) {
                    for (c, v) in [("req", 1), ("in", e.input_tokens), ("out", e.output_tokens)] {
                        *w.entry(format!("m:{}:{c}", e.model)).or_default() += v;
                    }
                }
                let mut member = |dim: Dim, m: Option<&str>| {
                    if let Some(m) = m.filter(|m| !m.is_empty()) {
                        t.members
                            .entry((account.clone(), grain, start, dim))
                            .or_default()
                            .insert(m.to_owned());
                    }
                };
                match grain {
                    Grain::Month => {
                        member(Dim::Models, Some(&e.model));
                        member(Dim::Providers, Some(&e.provider));
                        member(Dim::Regions, Some(&e.region));
                        member(Dim::Clouds, Some(&e.cloud));
                        member(Dim::Users, e.user_id.as_deref());
                        member(Dim::ApiKeys, Some(&e.api_key_id));
                        member(Dim::IpHashes, e.client_ip_hash.as_deref());
                        member(Dim::Sessions, e.session_id.as_deref());
                    }
                    Grain::Day => member(Dim::Sessions, e.session_id.as_deref()),
                    _ => {}
                }
            }
            if let Some(s) = &e.session_id {
                if at.timestamp() + SESSION_RETENTION_SECS > r.arrives.timestamp() {
                    let h = t.sessions.entry((account.clone(), s.clone())).or_default();
                    for (f, v) in base {
                        *h.entry(f.into()).or_default() += v;
                    }
                    *h.entry(format!("m:{}:in", e.model)).or_default() += e.input_tokens;
                    *h.entry(format!("m:{}:out", e.model)).or_default() += e.output_tokens;
                }
            }
        }
        for fields in t.windows.values_mut().chain(t.sessions.values_mut()) {
            fields.retain(|_, v| *v != 0);
        }
        t
    }
}

/// The owner of the partition: its writer and its state.
struct Owner {
    writer: StateWriter<HotConn>,
    partition: Partition,
    /// A flush taken in an earlier minute and still running, as the aggregator runs it while
    /// it folds on.
    running: Option<FlushJob>,
}

/// What the test's owner did, to show that every path was taken.
#[derive(Debug, Default)]
struct Paths {
    flushes: usize,
    crashes: usize,
    torn_flushes: usize,
    /// Flushes that finished after the next minute's records were folded.
    overlapped: usize,
    /// Crashes between the snapshots and the checkpoint of such a flush.
    torn_overlapped: usize,
    /// Flushes of snapshots only, taken while such a flush's checkpoint waited (for ClickHouse).
    snapshots_only: usize,
    /// Windows found in their closed hash (moved, or only ever late).
    read_closed: usize,
}

/// Runs the seed's log through a partition owner under `deployment`'s prefix, crashing it at
/// random (unless `crashes` is false), checks Redis against the truth, and returns the hot
/// state as readers see it (`common::hot_state_as_read`).
async fn run_seed(
    seed: u64,
    t0: DateTime<Utc>,
    deployment: &RedisConfig,
    crashes: bool,
    paths: &mut Paths,
) -> BTreeMap<String, String> {
    let keys = HotKeys::new(deployment.key_prefix.clone()).unwrap();
    let mut redis = deployment.connect().await.unwrap();
    let writer = StateWriter::new(redis.clone(), keys.clone(), TOPIC, 0);

    let mut rng = StdRng::seed_from_u64(seed);
    let log = build_log(&mut rng, t0);
    let truth = Truth::of(&log);

    let mut owner: Option<Owner> = None;
    let mut next = 0usize;
    let end = t0 + Duration::minutes(MINUTES);
    let mut now = t0;
    while now <= end {
        now += Duration::minutes(1);
        let mut o = match owner.take() {
            Some(o) => o,
            None => {
                let mut w = writer.clone();
                let partition = Partition::claim(&mut w, now).await.unwrap();
                next = usize::try_from(partition.checkpointed() + 1).unwrap();
                Owner {
                    writer: w,
                    partition,
                    running: None,
                }
            }
        };
        let arrived = log[next..].iter().take_while(|r| r.arrives < now).count();
        let batch: Vec<(i64, &UsageEvent)> = (next..next + arrived)
            .map(|i| (i as i64, &log[i].event))
            .collect();
        next += arrived;
        let p = &mut o.partition;
        let new: Vec<(i64, &UsageEvent)> = batch
            .iter()
            .copied()
            .filter(|(_, e)| {
                let day = Grain::Day
                    .window_start(DateTime::from_timestamp(e.occurred_at / 1_000_000, 0).unwrap());
                p.is_new(&e.event_id, day)
            })
            .collect();
        assert!(p
            .load(&o.writer, new.iter().map(|(_, e)| e.account_id.as_str()), 4)
            .await
            .unwrap());
        for (offset, e) in &new {
            p.fold(*offset, e, now);
        }
        if let Some((last, _)) = batch.last() {
            p.advance(*last);
        }
        let last_minute = now > end;
        if let Some(mut job) = o.running.take() {
            // The flush ran while this minute's records were folded.
            if rng.random_bool(0.4) {
                // Its snapshots are written and its checkpoint waits (for ClickHouse): this
                // minute's flush writes its snapshots only, and the next checkpoint carries
                // its ids and offset. A crash below tears both.
                assert_eq!(job.write_snapshots(&o.writer, 8).await.unwrap(), None);
                o.partition.snapshots_written();
                if let Some(mut later) = o.partition.take(now) {
                    assert!(!later.checkpoints());
                    assert_eq!(later.run(&o.writer, 8).await.unwrap(), Flushed::Nothing);
                    o.partition.finish(&later, Flushed::Nothing);
                    paths.snapshots_only += 1;
                }
            }
            if crashes && !last_minute && rng.random_bool(0.25) {
                assert_eq!(job.write_snapshots(&o.writer, 8).await.unwrap(), None);
                paths.torn_overlapped += 1;
                continue;
            }
            let outcome = job.run(&o.writer, 8).await.unwrap();
            assert!(matches!(outcome, Flushed::Through(_)), "{outcome:?}");
            o.partition.finish(&job, outcome);
            paths.overlapped += 1;
        }
        let p = &mut o.partition;
        match rng.random_range(if crashes { 0 } else { 2 }..12) {
            _ if last_minute => {
                let through = p.flush(&o.writer, now, 8).await.unwrap();
                assert!(matches!(through, Flushed::Through(_) | Flushed::Nothing));
                owner = Some(o);
            }
            0 => paths.crashes += 1,
            1 => {
                if let Some(mut job) = p.take(now) {
                    assert_eq!(job.write_snapshots(&o.writer, 8).await.unwrap(), None);
                }
                paths.torn_flushes += 1;
            }
            2..=4 => owner = Some(o),
            10 | 11 => {
                o.running = p.take(now);
                owner = Some(o);
            }
            _ => {
                assert!(matches!(
                    p.flush(&o.writer, now, 8).await.unwrap(),
                    Flushed::Through(_) | Flushed::Nothing
                ));
                paths.flushes += 1;
                owner = Some(o);
            }
        }
    }
    assert_eq!(next, log.len());
    let ckpt: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.checkpoint(0, TOPIC))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ckpt["o"], log.len() as i64 - 1, "seed {seed}");

    // Read every account back.
    let hash = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async::<HashMap<String, String>>(&mut redis)
                .await
                .unwrap()
                .into_iter()
                .filter(|(f, _)| !f.starts_with('_'))
                .map(|(f, v)| (f, v.parse::<i64>().unwrap()))
                .collect::<WindowCounters>()
        }
    };
    let accounts: BTreeSet<&str> = log.iter().map(|r| r.event.account_id.as_str()).collect();
    let mut curs = HashMap::new();
    for a in &accounts {
        curs.insert(
            *a,
            common::hot_cur(&mut redis.clone(), &keys, a).await.fields,
        );
    }
    let mut checked = 0;
    for ((a, grain, start), want) in &truth.windows {
        let cur = &curs[a.as_str()];
        let closed = hash(keys.closed(a, *grain, *start)).await;
        let got = hot::window(cur, Some(&closed), *grain, *start);
        assert_eq!(&got, want, "seed {seed}: {a} {grain:?} {start}");
        checked += 1;
        if hot::window(cur, None, *grain, *start).is_empty() {
            paths.read_closed += 1;
        }
    }
    for ((a, grain, start, dim), members) in &truth.members {
        let name = hot::count_name(*dim);
        let in_cur = curs[a.as_str()]
            .get(&hot::field(*grain, *start, &name))
            .copied();
        let count = match in_cur {
            Some(n) => n,
            None => hash(keys.closed(a, *grain, *start))
                .await
                .get(&name)
                .copied()
                .unwrap_or(0),
        };
        assert_eq!(
            count,
            members.len() as i64,
            "seed {seed}: {a} {grain:?} {start} {dim:?}"
        );
    }
    for ((a, s), want) in &truth.sessions {
        assert_eq!(
            &hash(keys.session(a, s)).await,
            want,
            "seed {seed}: {a} session {s}"
        );
    }
    assert!(checked > 100, "seed {seed}: only {checked} windows");
    let state = common::hot_state_as_read(deployment, end.timestamp()).await;
    common::remove_hot_keys(deployment).await;
    state
}

#[tokio::test]
async fn a_state_store_that_crashes_and_replays_leaves_exactly_the_logs_sums_in_redis() {
    let paths = std::cell::RefCell::new(Paths::default());
    common::on_each_hot_deployment(|deployment| {
        let paths = &paths;
        async move {
            let calm = RedisConfig {
                key_prefix: format!("{}calm:", deployment.key_prefix),
                ..deployment.clone()
            };
            for seed in 1..=6 {
                // Simulated time starts at the real minute, so Redis's expiries (real time)
                // keep every key; both runs of a seed share it.
                let t0 = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
                let mut taken = paths.take();
                let crashed = run_seed(seed, t0, &deployment, true, &mut taken).await;
                paths.replace(taken);
                let calm = run_seed(seed, t0, &calm, false, &mut Paths::default()).await;
                // Design §6 commit 6: the store that crashed and replayed left Redis as the one
                // that never stopped did, as readers see it.
                assert_eq!(crashed, calm, "seed {seed}");
            }
        }
    })
    .await;
    let paths = paths.into_inner();
    assert!(
        paths.flushes > 20
            && paths.crashes > 3
            && paths.torn_flushes > 3
            && paths.overlapped > 10
            && paths.torn_overlapped > 2
            && paths.snapshots_only > 5
            && paths.read_closed > 50,
        "{paths:?}"
    );
}

/// Lua's `unpack` takes a few thousand values at most: a flush that checkpoints 20,000 new ids,
/// of an account with 10,000 new members, still goes through, on every deployment, and its ids
/// read back whole.
#[tokio::test]
async fn a_flush_of_twenty_thousand_ids_and_ten_thousand_members_lands_whole() {
    common::on_each_hot_deployment(|deployment| async move {
        let keys = HotKeys::new(deployment.key_prefix.clone()).unwrap();
        let mut redis = deployment.connect().await.unwrap();
        let writer = StateWriter::new(redis.clone(), keys.clone(), TOPIC, 3);
        let now = Utc::now();
        let mut p = Partition::claim(&mut writer.clone(), now).await.unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let mut e = build_log(&mut rng, now)
            .into_iter()
            .find(|r| r.event.occurred_at > (now - Duration::minutes(1)).timestamp_micros())
            .expect("a fresh event")
            .event;
        assert!(p.load(&writer, [e.account_id.as_str()], 1).await.unwrap());
        for i in 0..20_000i64 {
            // Half canonical UUIDs (stored as 16 bytes), half other ids (stored as text).
            e.event_id = if i % 2 == 0 {
                uuid::Uuid::from_u128(i as u128 * 0x9e37_79b9).to_string()
            } else {
                format!("big-{i}")
            };
            e.user_id = (i < 10_000).then(|| format!("user-{i}"));
            // 400 models: `cur` gets thousands of fields, more than one HSET slice of snap.lua.
            e.model = format!("model-{}", i % 400);
            assert!(p.is_new(&e.event_id, Grain::Day.window_start(now)));
            p.fold(i, &e, now);
        }
        p.advance(19_999);
        assert_eq!(
            p.flush(&writer, now, 8).await.unwrap(),
            Flushed::Through(19_999)
        );
        let seen: BTreeSet<String> = writer
            .clone()
            .seen_ids(Grain::Day.window_start(now))
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(seen.len(), 20_000);
        assert!(seen.contains(&uuid::Uuid::from_u128(19_998 * 0x9e37_79b9).to_string()));
        assert!(seen.contains("big-19999"));
        let dims: u64 = redis::cmd("HLEN")
            .arg(keys.dims(e.account_id.as_str(), Grain::Month.window_start(now)))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(dims >= 10_000, "{dims}");
        let day = Grain::Day.window_start(DateTime::from_timestamp_micros(e.occurred_at).unwrap());
        let cur = common::hot_cur(&mut redis, &keys, e.account_id.as_str()).await;
        assert!(cur.fields.len() > 1_000, "{}", cur.fields.len());
        for model in ["model-0", "model-399"] {
            let req = hot::field(Grain::Day, day, &format!("m:{model}:req"));
            assert_eq!(cur.fields.get(&req), Some(&50), "{req}");
        }
        assert_eq!(cur.offset, 19999);
        common::remove_hot_keys(&deployment).await;
    })
    .await;
}

/// A claim reads back the ids of every checkpoint, several at one offset too, and of the sets
/// that held them before (`HotKeys::seen`, no longer written but kept until they expire), so an
/// upgrade counts no retried event twice.
#[tokio::test]
async fn a_claim_deduplicates_with_the_ids_of_both_the_checkpoints_and_the_older_sets() {
    common::on_each_hot_deployment(|deployment| async move {
        let keys = HotKeys::new(deployment.key_prefix.clone()).unwrap();
        let mut redis = deployment.connect().await.unwrap();
        let mut writer = StateWriter::new(redis.clone(), keys.clone(), TOPIC, 2);
        let now = Utc::now();
        let day = Grain::Day.window_start(now);
        let yesterday = day - Duration::days(1);
        let old_id = "4b8c1c9e-55b0-4f0e-9a3c-5a1d2f3e4c5b";
        redis::cmd("SADD")
            .arg(keys.seen(2, day))
            .arg(&["old-1", old_id][..])
            .query_async::<()>(&mut redis)
            .await
            .unwrap();

        let mut p = Partition::claim(&mut writer, now).await.unwrap();
        assert!(!p.is_new("old-1", day) && !p.is_new(old_id, day));
        let counted = BTreeMap::from([
            (day, Ids::from_iter(["new-1"])),
            (yesterday, Ids::from_iter(["new-2"])),
        ]);
        assert!(writer
            .checkpoint(p.epoch(), 0, &[], &counted)
            .await
            .unwrap());
        // A second lot at the same offset, as `rebuild-hot-state` writes its ids in lots of
        // 5,000 before it moves the offset: it adds to the first.
        let more = BTreeMap::from([(day, Ids::from_iter(["new-4"]))]);
        assert!(writer.checkpoint(p.epoch(), 0, &[], &more).await.unwrap());

        let mut p = Partition::claim(&mut writer, now).await.unwrap();
        for (id, day) in [
            ("old-1", day),
            (old_id, day),
            ("new-1", day),
            ("new-2", yesterday),
            ("new-4", day),
        ] {
            assert!(!p.is_new(id, day), "{id} was counted");
        }
        // The same ids on other days, and other ids, are new.
        assert!(p.is_new("new-1", yesterday) && p.is_new("new-2", day) && p.is_new("new-3", day));
        common::remove_hot_keys(&deployment).await;
    })
    .await;
}
