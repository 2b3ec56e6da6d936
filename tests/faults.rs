//! Fault scenarios on the real servers (the short versions run in CI; `FAULT_OUTAGE_SECS`
//! lengthens the outages). Each streams events through ingest while the fault happens and ends
//! by comparing the totals with the unique events that got a 202.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use common::proxy::FaultProxy;
use common::*;
use meterline::services::Components;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands;
use serde_json::Value;

fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("FAULT_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8),
    )
}

/// The group's committed offsets, per partition.
fn committed(config: &meterline::Config) -> Vec<i64> {
    let consumer: StreamConsumer = meterline_ingest::producer::client_config(&config.kafka)
        .set("group.id", &config.aggregator.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.partitions {
        tpl.add_partition(&config.kafka.usage_topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// `n` events for `accounts` accounts in the last minutes, every 10th a repeat (a gateway
/// retry). Returns the batches and the unique count per account.
fn traffic(prefix: &str, n: usize, accounts: usize) -> (Vec<Vec<Value>>, BTreeMap<String, u64>) {
    let now = Utc::now();
    let mut events: Vec<Value> = Vec::new();
    let mut unique = BTreeMap::new();
    for i in 0..n {
        if i % 10 == 9 {
            events.push(events[i - 5].clone());
            continue;
        }
        let account = format!("{prefix}-a{}", i % accounts);
        *unique.entry(account.clone()).or_insert(0) += 1;
        events.push(usage_event(
            &account,
            now - ChronoDuration::seconds((i % 240) as i64),
            "gpt-4o",
            10,
            5,
        ));
    }
    (events.chunks(250).map(|c| c.to_vec()).collect(), unique)
}

async fn day_requests(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    account: &str,
) -> u64 {
    let day = Utc::now().format("%Y%m%d");
    let v: Option<u64> = redis
        .hget(format!("{prefix}u:{account}:d:{day}"), "req")
        .await
        .unwrap();
    v.unwrap_or(0)
}

/// ClickHouse stops while events stream in: ingest keeps answering 202, the aggregator backs
/// off and commits no offset, and once ClickHouse is back every event is counted once, in
/// ClickHouse and in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_commits_nothing_and_loses_nothing() {
    let proxy = FaultProxy::start("127.0.0.1:8123").await;
    let mut config = isolated_config(&unique_suffix());
    let direct = config.clickhouse.clone();
    config.clickhouse.url = format!("http://{}", proxy.addr);
    config.aggregator.retry_max_backoff_ms = 500;
    let mut app = spawn_with(
        config,
        Components {
            ingest: true,
            aggregator: true,
            ..Components::NONE
        },
    )
    .await;
    let ch = direct.client();
    let prefix = unique_suffix();
    let (batches, unique) = traffic(&prefix, 6_000, 20);
    let total: u64 = unique.values().sum();
    let half = batches.len() / 2;
    for b in &batches[..half] {
        let (status, body) = app.post_events(b).await;
        assert_eq!(status, 202, "{body}");
    }
    let count = |ch: clickhouse::Client| async move {
        ch.query("SELECT count() FROM usage_events")
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    let started = Instant::now();
    while count(ch.clone()).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.take_down();
    // Let the batch in flight fail, then hold the offsets and the count while it is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let offsets_down = committed(&app.config);
    let stored_down = count(ch.clone()).await;
    for b in &batches[half..] {
        let (status, body) = app.post_events(b).await;
        assert_eq!(
            status, 202,
            "ingest keeps accepting while ClickHouse is down: {body}"
        );
    }
    tokio::time::sleep(outage()).await;
    assert_eq!(
        committed(&app.config),
        offsets_down,
        "no offset is committed while ClickHouse is down"
    );
    assert_eq!(count(ch.clone()).await, stored_down);

    proxy.bring_up();
    let started = Instant::now();
    let mut redis = app.redis().await;
    let redis_prefix = app.config.redis.key_prefix.clone();
    loop {
        let stored = count(ch.clone()).await;
        let mut redis_total = 0;
        for a in unique.keys() {
            redis_total += day_requests(&mut redis, &redis_prefix, a).await;
        }
        if stored == total && redis_total == total {
            break;
        }
        assert!(
            stored <= total && redis_total <= total,
            "counted twice: ClickHouse {stored}, Redis {redis_total}, unique {total}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after the outage: ClickHouse {stored}, Redis {redis_total}, unique {total}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (a, n) in &unique {
        assert_eq!(day_requests(&mut redis, &redis_prefix, a).await, *n, "{a}");
    }
    assert_ne!(
        committed(&app.config),
        offsets_down,
        "offsets move again once the writes land"
    );
    app.stop().await;
}
