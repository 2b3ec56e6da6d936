//! The gateway client against a real ingest: an outage loses nothing and doubles nothing; a
//! full buffer drops the oldest events and counts them.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use meterline::services::{self, Components, Running};
use meterline::Config;
use meterline_client::{ClientConfig, GatewayClient, UsageEvent};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn event(account: &str, i: u64) -> UsageEvent {
    UsageEvent::new(
        account,
        "key-1",
        "gw-test",
        "eu-west-1",
        "aws",
        "openai",
        "gpt-4o",
        i,
        1,
    )
}

async fn start_ingest(config: &Config, port: u16) -> Running {
    // The old socket may linger for a moment after a stop.
    let listener = wait_for(
        &format!("port {port} to be free"),
        Duration::from_secs(5),
        || async {
            TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    services::start(
        config,
        Components::none().ingest(),
        Some(listener),
        CancellationToken::new(),
    )
    .await
    .expect("ingest starts")
}

async fn ids_in_clickhouse(config: &Config) -> Vec<String> {
    config
        .clickhouse
        .client()
        .query("SELECT event_id FROM usage_events ORDER BY event_id")
        .fetch_all::<String>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_outage_loses_nothing_and_doubles_nothing() {
    let mut config = isolated_config(&unique_suffix());
    config.http.aggregator_listen = format!("127.0.0.1:{}", free_port());
    let token = prepare(&config).await;
    let aggregator = services::start(
        &config,
        Components::none().aggregator(),
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let port = free_port();
    let mut ingest = Some(start_ingest(&config, port).await);

    let mut cc = ClientConfig::new(&format!("http://127.0.0.1:{port}"), &token);
    cc.initial_backoff = Duration::from_millis(50);
    cc.max_backoff = Duration::from_millis(400);
    let client = GatewayClient::start(cc);
    let account = format!("{}-gw", unique_suffix());
    let mut ids = BTreeSet::new();
    // 3 seconds of traffic; ingest is down from 1 s to 2 s.
    let started = std::time::Instant::now();
    let mut i = 0u64;
    let mut restarted = false;
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..20 {
            let e = event(&account, i);
            ids.insert(e.event_id.clone());
            client.record(e);
            i += 1;
        }
        if started.elapsed() > Duration::from_secs(1) && !restarted && ingest.is_some() {
            ingest.take().unwrap().stop().await.unwrap();
        }
        if started.elapsed() > Duration::from_secs(2) && !restarted {
            ingest = Some(start_ingest(&config, port).await);
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if tokio::time::timeout(Duration::from_secs(60), client.flush())
        .await
        .is_err()
    {
        panic!(
            "flush did not complete once ingest was back: {:?}, {} pending of {}, last error {:?}",
            client.counters(),
            client.pending(),
            ids.len(),
            client.last_error()
        );
    }
    let c = client.counters();
    assert_eq!(c.sent, ids.len() as u64, "{c:?}");
    assert_eq!((c.dropped, c.rejected), (0, 0), "{c:?}");
    assert!(c.retried > 0, "the outage made the client retry: {c:?}");

    // A sentinel behind all of them, for the same account (so in the same partition): once it
    // is in ClickHouse, so is every copy the retries could have made.
    let sentinel = event(&account, i);
    let sentinel_id = sentinel.event_id.clone();
    client.record(sentinel);
    tokio::time::timeout(Duration::from_secs(30), client.flush())
        .await
        .expect("the sentinel flushed");
    wait_for(
        "the sentinel in ClickHouse",
        Duration::from_secs(60),
        || async {
            check(ids_in_clickhouse(&config).await, |got| {
                got.contains(&sentinel_id)
            })
        },
    )
    .await;
    let mut got = ids_in_clickhouse(&config).await;
    got.retain(|id| *id != sentinel_id);
    assert_eq!(got.len(), ids.len(), "nothing doubled");
    assert_eq!(
        got.into_iter().collect::<BTreeSet<_>>(),
        ids,
        "nothing lost"
    );
    client.shutdown().await;
    ingest.unwrap().stop().await.unwrap();
    aggregator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_and_counts_them() {
    let config = isolated_config(&unique_suffix());
    let token = prepare(&config).await;
    let port = free_port();
    let mut cc = ClientConfig::new(&format!("http://127.0.0.1:{port}"), &token);
    cc.buffer_capacity = 100;
    // Nothing is sent until the test flushes.
    cc.flush_interval = Duration::from_secs(3600);
    let client = GatewayClient::start(cc);
    let account = format!("{}-full", unique_suffix());
    let events: Vec<UsageEvent> = (0..150).map(|i| event(&account, i)).collect();
    for e in &events {
        client.record(e.clone());
    }
    assert_eq!(client.counters().dropped, 50);
    assert_eq!(client.pending(), 100);

    let aggregator_and_ingest = {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        services::start(
            &config,
            Components::none().ingest().aggregator(),
            Some(listener),
            CancellationToken::new(),
        )
        .await
        .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(30), client.flush())
        .await
        .expect("flush");
    let c = client.counters();
    assert_eq!((c.sent, c.dropped, c.rejected), (100, 50, 0), "{c:?}");
    let app = TestApp {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        config: config.clone(),
        token,
        http: reqwest::Client::new(),
        running: None,
    };
    assert_eq!(
        app.wait_for_raw_count(100, Duration::from_secs(30)).await,
        100
    );
    let got: BTreeSet<String> = ids_in_clickhouse(&config).await.into_iter().collect();
    let newest: BTreeSet<String> = events[50..].iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(got, newest, "the 100 newest were kept");
    client.shutdown().await;
    aggregator_and_ingest.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_counted_as_rejected_not_retried() {
    let mut app = spawn_app().await;
    let client = GatewayClient::start(ClientConfig::new(&app.url(""), &app.token));
    let account = format!("{}-bad", unique_suffix());
    let good = event(&account, 1);
    let mut bad = event(&account, 2);
    bad.account_id = "has spaces".into();
    client.record(good);
    client.record(bad);
    tokio::time::timeout(Duration::from_secs(30), client.flush())
        .await
        .expect("flush");
    let c = client.counters();
    assert_eq!((c.sent, c.rejected, c.retried), (1, 1, 0), "{c:?}");
    client.shutdown().await;
    app.stop().await;
}
