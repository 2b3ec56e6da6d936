//! The state store as the consumer drives it (`HotStore`), against a real Redis: what the
//! consumer is told to commit and to seek, across a Redis outage in the middle of a background
//! flush and a restart whose Kafka position is past the checkpoint (issue 21, design §3.2–3.3).
//! The expected hot state is summed from the records the test made, apart from the store.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meterline_aggregator::batch::UsageSpan;
use meterline_aggregator::clickhouse_sink::ClickHouseSink;
use meterline_aggregator::decode::Decoded;
use meterline_aggregator::inserter::{InsertJob, InsertPolicy, Inserter};
use meterline_aggregator::metrics::AggregatorMetrics;
use meterline_aggregator::state::partition::FlushPolicy;
use meterline_aggregator::state::store::{FlushAction, HotStore};
use meterline_infra::redis::HotConn;
use meterline_infra::RedisConfig;
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::keys::Grain;
use meterline_schemas::UsageEvent;

const TOPIC: &str = "usage";

/// `n` records of partition 0 from `first`, round-robin over `accounts` accounts.
fn records(first: i64, n: i64, accounts: i64, now: DateTime<Utc>) -> Vec<Decoded<UsageEvent>> {
    (first..first + n)
        .map(|offset| Decoded {
            partition: 0,
            offset,
            event: UsageEvent {
                input_tokens: 10,
                ..common::usage_record(
                    format!("e-{offset}"),
                    &format!("acct-{}", offset % accounts),
                    now,
                )
            },
        })
        .collect()
}

/// `n` records from `first` in each of `partitions`, round-robin over `accounts` accounts, with
/// event ids of their partition's own.
fn records_in(
    partitions: &[i32],
    first: i64,
    n: i64,
    accounts: i64,
    now: DateTime<Utc>,
) -> Vec<Decoded<UsageEvent>> {
    partitions
        .iter()
        .flat_map(|&p| {
            records(first, n, accounts, now)
                .into_iter()
                .map(move |mut d| {
                    d.partition = p;
                    d.event.event_id = format!("p{p}-{}", d.offset);
                    d
                })
        })
        .collect()
}

/// The tests' flush policy: a flush whenever one is asked for, retries soon.
fn policy() -> FlushPolicy {
    FlushPolicy {
        interval: Duration::ZERO,
        retry_max_backoff: Duration::from_millis(200),
        ..FlushPolicy::default()
    }
}

fn store(conn: HotConn, keys: &HotKeys) -> HotStore {
    HotStore::new(conn, keys.clone(), TOPIC, policy())
}

/// The local Redis under a key prefix of the test's own.
fn isolated_redis() -> RedisConfig {
    RedisConfig {
        key_prefix: format!("mlt_{}:", common::unique_suffix()),
        ..RedisConfig::default()
    }
}

/// The offset partition 0's stored checkpoint holds (`None`: never checkpointed).
async fn checkpointed(conn: &mut HotConn, keys: &HotKeys) -> Option<i64> {
    let (o,): (Option<i64>,) = redis::pipe()
        .hget(keys.checkpoint(0, TOPIC), "o")
        .query_async(conn)
        .await
        .unwrap();
    o
}

fn span(batch: &[Decoded<UsageEvent>]) -> UsageSpan {
    UsageSpan::of(batch.iter().map(|d| (d.partition, d.offset)))
}

/// One batch as the consumer writes it: decide, (ClickHouse), fold, count.
async fn write(hot: &mut HotStore, batch: &[Decoded<UsageEvent>], now: DateTime<Utc>) {
    let span = span(batch);
    let decisions = hot.decide(batch, &span.first, now).await.unwrap();
    hot.fold(batch, &decisions, &span.last, now).await.unwrap();
    hot.count(batch, &decisions);
}

/// Each account's requests today in `cur`, as the read path reads them.
async fn day_requests(
    conn: &mut HotConn,
    keys: &HotKeys,
    accounts: i64,
    now: DateTime<Utc>,
) -> BTreeMap<String, i64> {
    let field = format!("d:{}:req", Grain::Day.stamp(Grain::Day.window_start(now)));
    let mut out = BTreeMap::new();
    for a in 0..accounts {
        let account = format!("acct-{a}");
        let cur = common::hot_cur(conn, keys, &account).await.fields;
        out.insert(account, cur.get(&field).copied().unwrap_or(0));
    }
    out
}

fn expected(events: i64, accounts: i64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for offset in 0..events {
        *out.entry(format!("acct-{}", offset % accounts))
            .or_insert(0) += 1;
    }
    out
}

/// A flush cut by a Redis outage retries on its own task while the next batch is folded; the
/// consumer is told to commit nothing until it has landed whole, then each checkpoint once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cut_by_a_redis_outage_retries_in_the_background_and_commits_once_landed() {
    let proxy = common::proxy::FaultProxy::start("127.0.0.1:6379").await;
    let redis = RedisConfig {
        url: format!("redis://{}", proxy.addr),
        ..isolated_redis()
    };
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut hot = store(redis.connect().await.unwrap(), &keys);
    let now = Utc::now();
    const ACCOUNTS: i64 = 5_000;

    write(&mut hot, &records(0, 10_000, ACCOUNTS, now), now).await;
    assert!(
        hot.flush_due(true, false, now).await.is_empty(),
        "started, not finished"
    );
    // Redis goes away while the flush's 5,000 snapshots are on their way.
    proxy.take_down();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.bring_up();
    // The next batch is folded while the first flush retries.
    write(&mut hot, &records(10_000, 2_000, ACCOUNTS, now), now).await;
    // The second batch's flush may start once the first one's snapshots are written, and
    // finish in the same collection; the checkpoints still come in order, each once.
    let mut commits = Vec::new();
    while commits.is_empty() {
        commits = hot.flush_due(true, false, Utc::now()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hot.take_failures() > 0, "the outage failed an attempt");
    commits.extend(hot.flush_due(true, true, Utc::now()).await);
    assert_eq!(
        commits,
        [
            (
                0,
                FlushAction::Commit {
                    offset: 10_000,
                    counted: 10_000,
                    duplicates: 0
                }
            ),
            (
                0,
                FlushAction::Commit {
                    offset: 12_000,
                    counted: 2_000,
                    duplicates: 0
                }
            )
        ],
        "the first flush's checkpoint once it landed, then the second's"
    );
    let mut conn = RedisConfig {
        url: "redis://127.0.0.1:6379".into(),
        ..redis.clone()
    }
    .connect()
    .await
    .unwrap();
    assert_eq!(
        day_requests(&mut conn, &keys, ACCOUNTS, now).await,
        expected(12_000, ACCOUNTS),
        "every event counted once"
    );
    assert_eq!(checkpointed(&mut conn, &keys).await, Some(11_999));
    common::remove_hot_keys(&redis).await;
}

/// With the checkpoints gated on ClickHouse, a flush writes its snapshots at once (the read
/// path sees the events) but its checkpoint only once the insert task says ClickHouse holds the
/// partition that far; the next flush meanwhile writes its own snapshots, and the checkpoints
/// come in order. A gate closed at shutdown stops the waiting flushes without a checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_wait_for_clickhouse_and_snapshots_do_not() {
    let redis = isolated_redis();
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut conn = redis.connect().await.unwrap();
    let mut hot = store(conn.clone(), &keys);
    let inserted = hot.gate_on_clickhouse();
    let now = Utc::now();
    const ACCOUNTS: i64 = 50;
    // How far each batch was handled, as the insert task would raise it.
    let upto = |o: i64| BTreeMap::from([(0, o)]);

    write(&mut hot, &records(0, 1_000, ACCOUNTS, now), now).await;
    let mut commits = hot.flush_due(true, false, now).await;
    // The snapshots land without ClickHouse…
    while day_requests(&mut conn, &keys, ACCOUNTS, now).await != expected(1_000, ACCOUNTS) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and the next batch's flush writes its snapshots while the first waits.
    write(&mut hot, &records(1_000, 500, ACCOUNTS, now), now).await;
    while day_requests(&mut conn, &keys, ACCOUNTS, now).await != expected(1_500, ACCOUNTS) {
        commits.extend(hot.flush_due(true, false, Utc::now()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both flushes' snapshots are written, and neither could checkpoint: the gate is shut.
    commits.extend(hot.flush_due(true, false, Utc::now()).await);
    assert_eq!(commits, [], "nothing to commit before ClickHouse holds it");
    assert_eq!(checkpointed(&mut conn, &keys).await, None);

    // ClickHouse holds the first batch: its checkpoint, and only its.
    inserted.raise(&upto(999));
    while commits.is_empty() {
        commits = hot.flush_due(true, false, Utc::now()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let commit = |offset, counted| {
        (
            0,
            FlushAction::Commit {
                offset,
                counted,
                duplicates: 0,
            },
        )
    };
    assert_eq!(commits, [commit(1_000, 1_000)]);
    assert_eq!(checkpointed(&mut conn, &keys).await, Some(999));

    // A third batch, not in ClickHouse when the insert task stops (shutdown): the second
    // batch's checkpoint lands, the third's flush stops without one, and the partition goes.
    write(&mut hot, &records(1_500, 100, ACCOUNTS, now), now).await;
    inserted.raise(&upto(1_499));
    drop(inserted);
    let last = hot.flush_due(true, true, Utc::now()).await;
    assert_eq!(last, [commit(1_500, 500)]);
    assert_eq!(checkpointed(&mut conn, &keys).await, Some(1_499));
    assert_eq!(hot.take_dropped().get("stopped"), Some(&1));
    assert_eq!(hot.accounts(), 0, "the partition was dropped");
    common::remove_hot_keys(&redis).await;
}

/// A ClickHouse stall holds up the checkpoints but not the quota counters: while ClickHouse
/// holds nothing, flush after flush writes its batch's snapshots, far past `max_jobs` flushes,
/// because only one checkpoint of the partition is open and the flushes behind it write
/// snapshots only. Once ClickHouse holds everything, the waiting checkpoint lands and one more
/// carries all the rest, each event counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_stall_holds_up_the_checkpoints_but_not_the_quota_counters() {
    let redis = isolated_redis();
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut conn = redis.connect().await.unwrap();
    let mut hot = HotStore::new(
        conn.clone(),
        keys.clone(),
        TOPIC,
        FlushPolicy {
            max_jobs: 3,
            ..policy()
        },
    );
    let inserted = hot.gate_on_clickhouse();
    let now = Utc::now();
    const ACCOUNTS: i64 = 20;
    const BATCHES: i64 = 12;
    let mut commits = Vec::new();
    for batch in 0..BATCHES {
        let first = batch * 100;
        write(&mut hot, &records(first, 100, ACCOUNTS, now), now).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while day_requests(&mut conn, &keys, ACCOUNTS, now).await != expected(first + 100, ACCOUNTS)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the counters stopped following at batch {batch} of {BATCHES}"
            );
            commits.extend(hot.flush_due(true, false, Utc::now()).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    commits.extend(hot.flush_due(true, false, Utc::now()).await);
    assert_eq!(commits, [], "nothing to commit before ClickHouse holds it");
    assert_eq!(checkpointed(&mut conn, &keys).await, None);

    let last = BATCHES * 100 - 1;
    inserted.raise(&BTreeMap::from([(0, last)]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while checkpointed(&mut conn, &keys).await != Some(last) {
        assert!(std::time::Instant::now() < deadline, "{commits:?}");
        commits.extend(hot.flush_due(true, false, Utc::now()).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    commits.extend(hot.flush_due(true, true, Utc::now()).await);
    let commit = |offset, counted| {
        (
            0,
            FlushAction::Commit {
                offset,
                counted,
                duplicates: 0,
            },
        )
    };
    assert_eq!(
        commits,
        [
            commit(100, 100),
            commit(last + 1, (BATCHES as u64 - 1) * 100)
        ],
        "the first batch's checkpoint, then one for every batch flushed behind it"
    );
    assert_eq!(
        day_requests(&mut conn, &keys, ACCOUNTS, now).await,
        expected(BATCHES * 100, ACCOUNTS)
    );
    common::remove_hot_keys(&redis).await;
}

/// The insert task inserts a batch's events in ClickHouse and then says how far it holds each
/// partition; the events of a partition dropped while they waited (a newer owner fenced it) are
/// left out, and its offset is not raised.
#[tokio::test]
async fn the_insert_task_leaves_out_partitions_dropped_while_their_events_waited() {
    let config = common::isolated_config(&common::unique_suffix());
    meterline::migrate::run(&config).await.unwrap();
    let keys = HotKeys::new(config.redis.key_prefix.clone()).unwrap();
    let mut hot = store(config.redis.connect().await.unwrap(), &keys);
    let inserted = hot.gate_on_clickhouse();
    let now = Utc::now();
    // Partitions 0 and 1, ten records each, as one batch folded by the store.
    let batch = records_in(&[0, 1], 0, 10, 3, now);
    write(&mut hot, &batch, now).await;
    let held = |p| (9, hot.claim_of(p).expect("claimed by the write"));
    let upto = BTreeMap::from([(0, held(0)), (1, held(1))]);
    // Partition 1 goes to a newer owner before its events are inserted.
    upto[&1]
        .1
        .store(false, std::sync::atomic::Ordering::Release);
    let ch = config.clickhouse.client();
    let inserter = Inserter::spawn(
        ClickHouseSink::new(ch.clone(), TOPIC, "accounts"),
        inserted,
        AggregatorMetrics::new(),
        InsertPolicy {
            backlog: meterline_aggregator::inserter::MAX_WAITING_EVENTS,
            batches: meterline_aggregator::inserter::MAX_WAITING_BATCHES,
            linger: Duration::ZERO,
            retry_max_backoff: Duration::from_millis(200),
        },
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    inserter
        .send(InsertJob {
            events: batch,
            upto,
        })
        .await
        .unwrap();
    inserter.close().await;
    let rows: Vec<(u32, u64)> = ch
        .query("SELECT kafka_partition, count() FROM usage_events GROUP BY kafka_partition ORDER BY kafka_partition")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, [(0, 10)], "only the partition still held");
    assert_eq!(hot.inserted_through(0), Some(9));
    assert_eq!(
        hot.inserted_through(1),
        None,
        "not raised for the dropped one"
    );
    common::remove_hot_keys(&config.redis).await;
}

/// A restarted store whose first records are past its checkpoint + 1 (Kafka's commit ahead of
/// Redis) holds them back, asks for a seek to the checkpoint, and counts the records in between
/// once they come; so does one whose first batch held only records that did not decode.
#[tokio::test]
async fn records_past_the_checkpoint_are_read_again_from_it() {
    let redis = isolated_redis();
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut conn = redis.connect().await.unwrap();
    let now = Utc::now();
    let mut first = store(conn.clone(), &keys);
    write(&mut first, &records(0, 100, 7, now), now).await;
    assert!(matches!(
        first.flush_due(true, true, now).await[..],
        [(0, FlushAction::Commit { offset: 100, .. })]
    ));
    drop(first);

    // Only records that did not decode (dead-lettered): nothing to decide, but the partition
    // is positioned and not advanced.
    let mut poisoned = store(conn.clone(), &keys);
    let only_poison = UsageSpan::of([(0, 150), (0, 160)]);
    let decisions = poisoned.decide(&[], &only_poison.first, now).await.unwrap();
    poisoned
        .fold(&[], &decisions, &only_poison.last, now)
        .await
        .unwrap();
    assert_eq!(poisoned.pending_seeks(), [(0, 100)]);
    assert!(
        poisoned.flush_due(true, true, now).await.is_empty(),
        "nothing past the checkpoint is committed"
    );
    drop(poisoned);

    let mut second = store(conn.clone(), &keys);
    let ahead = records(150, 50, 7, now);
    let decisions = second
        .decide(&ahead, &span(&ahead).first, now)
        .await
        .unwrap();
    assert!(decisions.new.is_empty(), "held back: {decisions:?}");
    assert!(decisions.held_back.contains(&0));
    assert_eq!(second.pending_seeks(), [(0, 100)]);
    second.sought(0);
    write(&mut second, &records(100, 100, 7, now), now).await;
    assert!(matches!(
        second.flush_due(true, true, now).await[..],
        [(0, FlushAction::Commit { offset: 200, .. })]
    ));
    assert_eq!(
        day_requests(&mut conn, &keys, 7, now).await,
        expected(200, 7)
    );
    common::remove_hot_keys(&redis).await;
}

/// A store over its budget of accounts in memory keeps to the budget plus one batch: before it
/// loads a batch's accounts, it waits for its running flush to write its snapshots and forgets
/// those accounts (which a backlog of batches over many accounts otherwise kept in memory, two
/// batches' worth), and every event still counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_past_its_budget_waits_for_written_snapshots_and_keeps_within_one_batch() {
    let redis = isolated_redis();
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut conn = redis.connect().await.unwrap();
    let now = Utc::now();
    const ACCOUNTS: i64 = 10_000;
    const BATCH: i64 = 2_000;
    const BUDGET: usize = 1_000;
    let mut hot = HotStore::new(
        conn.clone(),
        keys.clone(),
        TOPIC,
        FlushPolicy {
            max_resident: BUDGET,
            ..policy()
        },
    );
    let mut commits = Vec::new();
    for k in 0..6 {
        // Each batch is 2,000 accounts the store does not hold (the first 2,000 come back in
        // the last batch, after they were forgotten).
        write(&mut hot, &records(k * BATCH, BATCH, ACCOUNTS, now), now).await;
        assert!(
            hot.accounts() <= BUDGET + BATCH as usize,
            "batch {k}: {} accounts in memory",
            hot.accounts()
        );
        // Takes the batch's flush at once: the partition is past its share.
        commits.extend(hot.flush_due(false, false, now).await);
    }
    assert!(hot.take_evicted() > 0);
    commits.extend(hot.flush_due(true, true, now).await);
    assert!(
        matches!(commits.last(), Some((0, FlushAction::Commit { offset, .. })) if *offset == 6 * BATCH),
        "the last commit is past every record: {commits:?}"
    );
    let counted: u64 = commits
        .iter()
        .map(|(_, a)| match a {
            FlushAction::Commit { counted, .. } => *counted,
            FlushAction::Rewind(_) => panic!("nothing is rewound: {a:?}"),
        })
        .sum();
    assert_eq!(counted, 6 * BATCH as u64);
    assert_eq!(
        day_requests(&mut conn, &keys, ACCOUNTS, now).await,
        expected(6 * BATCH, ACCOUNTS),
        "every event counted once, the reloaded accounts too"
    );
    common::remove_hot_keys(&redis).await;
}

/// Before a batch is decided, the store reads the stored epoch of every partition it holds
/// (together, in one round): a partition a newer owner claimed since is dropped as fenced, its
/// state with it, and claimed afresh; the others keep their claims.
#[tokio::test]
async fn a_batch_drops_exactly_the_held_partitions_a_newer_owner_claimed() {
    let redis = isolated_redis();
    let keys = HotKeys::new(redis.key_prefix.clone()).unwrap();
    let now = Utc::now();
    let of = |partitions: &[i32], first: i64| records_in(partitions, first, 3, 2, now);
    let mut old = store(redis.connect().await.unwrap(), &keys);
    write(&mut old, &of(&[0, 1, 2, 3], 0), now).await;
    let before: Vec<_> = (0..4).map(|p| old.claim_of(p).expect("held")).collect();
    // A newer owner claims partitions 1 and 3.
    let mut new = store(redis.connect().await.unwrap(), &keys);
    write(&mut new, &of(&[1, 3], 0), now).await;
    write(&mut old, &of(&[0, 1, 2, 3], 3), now).await;
    assert_eq!(old.take_dropped().get("fenced"), Some(&2));
    let alive = |p: usize| before[p].load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(
        (alive(0), alive(1), alive(2), alive(3)),
        (true, false, true, false),
        "only the partitions claimed by the newer owner were dropped"
    );
    common::remove_hot_keys(&redis).await;
}
