//! Acceptance for the foundation: 20,000 usage events for 50 accounts over 3 hours of event
//! time, 10 % repeated ids and 1 % invalid, through HTTP ingest, Kafka, the aggregator, and into
//! ClickHouse and Redis, with sums checked against ones the test computes itself.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Timelike, Utc};
use clickhouse::Row;
use common::*;
use meterline::services::Components;
use meterline_schemas::keys::{Dim, Grain};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::Value;

const EVENTS: usize = 20_000;
const ACCOUNTS: usize = 50;
const BATCH: usize = 500;
const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b"];

/// The generated traffic and what it must add up to.
struct Traffic {
    batches: Vec<Vec<Value>>,
    /// Per batch, the indices that must be rejected.
    invalid: Vec<BTreeSet<usize>>,
    unique_valid: Vec<Value>,
}

fn generate(seed: u64, prefix: &str) -> Traffic {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let start = now - ChronoDuration::hours(3);
    let mut unique: Vec<Value> = Vec::new();
    let mut all = Vec::with_capacity(EVENTS);
    let mut invalid_flags = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        if i % 100 == 57 {
            // 1 %: invalid, in rotating ways.
            let mut e = usage_event(&format!("{prefix}-acct-0"), now, "gpt-4o", 1, 1);
            match (i / 100) % 5 {
                0 => {
                    e["occurred_at"] = Value::from((now + ChronoDuration::minutes(10)).to_rfc3339())
                }
                1 => e["input_tokens"] = Value::from("many"),
                2 => {
                    e.as_object_mut().unwrap().remove("model");
                }
                3 => e["account_id"] = Value::from("has spaces"),
                _ => e["event_id"] = Value::from("not-a-uuid"),
            }
            all.push(e);
            invalid_flags.push(true);
        } else if i % 10 == 3 && !unique.is_empty() {
            // 10 %: an exact repeat of an earlier event (a gateway retry).
            let j = rng.random_range(0..unique.len());
            all.push(unique[j].clone());
            invalid_flags.push(false);
        } else {
            let account = format!("{prefix}-acct-{}", rng.random_range(0..ACCOUNTS));
            let offset_ms = rng.random_range(0..3 * 3600 * 1000 - 1000);
            let at = start + ChronoDuration::milliseconds(offset_ms);
            let model = MODELS[rng.random_range(0..MODELS.len())];
            let e = usage_event(
                &account,
                at,
                model,
                rng.random_range(1..5000),
                rng.random_range(1..2000),
            );
            unique.push(e.clone());
            all.push(e);
            invalid_flags.push(false);
        }
    }
    let mut batches = Vec::new();
    let mut invalid = Vec::new();
    for (chunk, flags) in all.chunks(BATCH).zip(invalid_flags.chunks(BATCH)) {
        batches.push(chunk.to_vec());
        invalid.push(
            flags
                .iter()
                .enumerate()
                .filter(|(_, f)| **f)
                .map(|(i, _)| i)
                .collect(),
        );
    }
    Traffic {
        batches,
        invalid,
        unique_valid: unique,
    }
}

fn window_start(at: DateTime<Utc>, grain: &str) -> DateTime<Utc> {
    let t = at.with_nanosecond(0).unwrap().with_second(0).unwrap();
    match grain {
        "minute" => t,
        "hour" => t.with_minute(0).unwrap(),
        "day" => t.with_minute(0).unwrap().with_hour(0).unwrap(),
        _ => unreachable!(),
    }
}

fn expected(events: &[Value], grain: &str) -> WindowSums {
    let mut out: WindowSums = HashMap::new();
    for e in events {
        let at = DateTime::parse_from_rfc3339(e["occurred_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        let key = (
            e["account_id"].as_str().unwrap().to_owned(),
            window_start(at, grain).timestamp(),
        );
        let s = out.entry(key).or_default();
        s.requests += 1;
        s.input += e["input_tokens"].as_u64().unwrap();
        s.output += e["output_tokens"].as_u64().unwrap();
        s.models.insert(e["model"].as_str().unwrap().to_owned());
    }
    out
}

#[derive(Debug, Row, Deserialize)]
struct RollupRow {
    account_id: String,
    window_start: u32,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    models: u64,
}

async fn post_all(app: &TestApp, traffic: &Traffic, batches: std::ops::Range<usize>) {
    for b in batches {
        let (status, body) = app.post_events(&traffic.batches[b]).await;
        assert_eq!(status, 202, "batch {b}: {body}");
        let expected_rejects = &traffic.invalid[b];
        assert_eq!(
            body["accepted"].as_u64().unwrap() as usize,
            traffic.batches[b].len() - expected_rejects.len(),
            "batch {b}: {body}"
        );
        let got: BTreeSet<usize> = body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(&got, expected_rejects, "batch {b}");
        for r in body["rejected"].as_array().unwrap() {
            let err = r["error"].as_str().unwrap();
            let field = err.split(':').next().unwrap();
            assert!(
                [
                    "occurred_at",
                    "input_tokens",
                    "model",
                    "account_id",
                    "event_id"
                ]
                .contains(&field),
                "rejection names its field: {err}"
            );
        }
    }
}

/// The model of the sentinel events [`assert_totals`] sends.
const SENTINEL_MODEL: &str = "sentinel-model";

async fn assert_totals(app: &TestApp, traffic: &Traffic) {
    // A sentinel per account, behind all of its traffic in its partition: once every sentinel
    // is in ClickHouse, so is every copy of the traffic the aggregator will ever write, and a
    // duplicate insert would be there to count. The sentinels add up with the traffic. An
    // insert's raw rows are visible before its rollups are, so the wait covers every table.
    let accounts: BTreeSet<&str> = traffic
        .unique_valid
        .iter()
        .map(|e| e["account_id"].as_str().unwrap())
        .collect();
    let sentinels: Vec<Value> = accounts
        .iter()
        .map(|a| usage_event(a, Utc::now(), SENTINEL_MODEL, 1, 1))
        .collect();
    let (status, body) = app.post_events(&sentinels).await;
    assert_eq!(status, 202, "{body}");
    let traffic = &Traffic {
        batches: Vec::new(),
        invalid: Vec::new(),
        unique_valid: traffic
            .unique_valid
            .iter()
            .chain(&sentinels)
            .cloned()
            .collect(),
    };
    let ch = app.clickhouse();
    let n = sentinels.len() as u64;
    wait_for(
        &format!("the {n} sentinel events in ClickHouse"),
        Duration::from_secs(120),
        || async {
            let mut got = Vec::new();
            for (table, count) in [
                ("usage_events", "count()"),
                ("usage_minute", "sum(requests)"),
                ("usage_hour", "sum(requests)"),
                ("usage_day", "sum(requests)"),
            ] {
                let seen: u64 = ch
                    .query(&format!("SELECT {count} FROM {table} WHERE model = ?"))
                    .bind(SENTINEL_MODEL)
                    .fetch_one()
                    .await
                    .unwrap();
                got.push((table, seen));
            }
            check(got, |got| got.iter().all(|(_, seen)| *seen == n))
        },
    )
    .await;
    let unique = traffic.unique_valid.len() as u64;
    let raw: u64 = ch
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        raw, unique,
        "ClickHouse raw count equals the unique valid events"
    );
    let distinct: u64 = ch
        .query("SELECT uniqExact(event_id) FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(distinct, unique);

    for grain in ["minute", "hour", "day"] {
        let want = expected(&traffic.unique_valid, grain);
        let rows: Vec<RollupRow> = ch
            .query(&format!(
                "SELECT account_id, toUInt32(window_start) AS window_start, requests, input_tokens, output_tokens, models FROM usage_{grain}_totals"
            ))
            .fetch_all()
            .await
            .unwrap();
        // (requests, input tokens, output tokens, distinct models) per (account, window).
        let got: HashMap<(String, i64), (u64, u64, u64, u64)> = rows
            .into_iter()
            .map(|r| {
                (
                    (r.account_id, r.window_start as i64),
                    (r.requests, r.input_tokens, r.output_tokens, r.models),
                )
            })
            .collect();
        let want_counts: HashMap<(String, i64), (u64, u64, u64, u64)> = want
            .into_iter()
            .map(|(k, s)| (k, (s.requests, s.input, s.output, s.models.len() as u64)))
            .collect();
        assert_eq!(
            got.len(),
            want_counts.len(),
            "{grain}: number of (account, window) rollups"
        );
        for (k, w) in &want_counts {
            assert_eq!(got.get(k), Some(w), "{grain} rollup for {k:?}");
        }
    }

    // Redis is written after ClickHouse (see aggregator/src/batch.rs), so the last batch can
    // still be on its way there: wait for it, then require every key to be exact.
    wait_for("exact Redis counters", Duration::from_secs(60), || async {
        let mismatches = redis_mismatches(app, traffic).await;
        let described = format!(
            "{} keys differ, e.g. {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(described)
        }
    })
    .await;
}

/// A counter as the hot state holds it: layout v2 leaves zeros out.
fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Every Redis window whose counters differ from what the traffic adds up to, described.
async fn redis_mismatches(app: &TestApp, traffic: &Traffic) -> Vec<String> {
    let mut out = Vec::new();
    // Redis: every hour and day window, the month, and the minute buckets of the last 100
    // minutes (older minute buckets are allowed to have expired).
    let mut redis = app.redis().await;
    let prefix = &app.config.redis.key_prefix;
    let now = Utc::now();
    for (grain, hot_grain) in [
        ("hour", Grain::Hour),
        ("day", Grain::Day),
        ("minute", Grain::Minute),
    ] {
        for ((account, start), w) in expected(&traffic.unique_valid, grain) {
            let start_t = Utc.timestamp_opt(start, 0).unwrap();
            if grain == "minute" && now - start_t > ChronoDuration::minutes(100) {
                continue;
            }
            let (window, ttl) = hot_window(&mut redis, prefix, &account, hot_grain, start_t).await;
            let get = |f: &str| window.get(f).map(|v| *v as u64);
            let (req, input, output) = (get("req"), get("in"), get("out"));
            let want = (Some(w.requests), nonzero(w.input), nonzero(w.output));
            if (req, input, output) != want {
                out.push(format!(
                    "{account} {grain} {start_t}: got {req:?}/{input:?}/{output:?}, want {w:?}"
                ));
                continue;
            }
            if ttl <= 0 {
                out.push(format!(
                    "{account} {grain} {start_t} has no expiry (TTL {ttl})"
                ));
            }
        }
    }
    // The month: totals and the distinct-model set.
    let mut months: HashMap<(String, String), Sums> = HashMap::new();
    for e in &traffic.unique_valid {
        let at = DateTime::parse_from_rfc3339(e["occurred_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        let s = months
            .entry((
                e["account_id"].as_str().unwrap().to_owned(),
                at.format("%Y%m").to_string(),
            ))
            .or_default();
        s.requests += 1;
        s.input += e["input_tokens"].as_u64().unwrap();
        s.output += e["output_tokens"].as_u64().unwrap();
        s.models.insert(e["model"].as_str().unwrap().to_owned());
    }
    for ((account, month), w) in months {
        let month_t = Grain::Month.parse_stamp(&month).unwrap();
        let (window, _) = hot_window(&mut redis, prefix, &account, Grain::Month, month_t).await;
        let get = |f: &str| window.get(f).map(|v| *v as u64);
        let (req, input, output) = (get("req"), get("in"), get("out"));
        if (req, input, output) != (Some(w.requests), nonzero(w.input), nonzero(w.output)) {
            out.push(format!(
                "{account} month {month}: got {req:?}/{input:?}/{output:?}, want {w:?}"
            ));
            continue;
        }
        let models = hot_month_members(&mut redis, prefix, &account, month_t, Dim::Models).await;
        if models != w.models {
            out.push(format!(
                "{account} month {month} models: got {models:?}, want {:?}",
                w.models
            ));
        }
    }
    out
}

on_every_redis!(twenty_thousand_events_add_up_exactly_in_clickhouse_and_redis);
async fn twenty_thousand_events_add_up_exactly_in_clickhouse_and_redis(redis: Deployment) {
    let Some(config) = redis.apply(isolated_config(&unique_suffix())) else {
        return;
    };
    let mut app = spawn_with(config, Components::none().ingest().aggregator()).await;
    let traffic = generate(7, &unique_suffix());
    post_all(&app, &traffic, 0..traffic.batches.len()).await;
    assert_totals(&app, &traffic).await;
    // Nothing waits for ClickHouse once every event is in it.
    let waiting = || {
        app.running
            .as_ref()
            .unwrap()
            .aggregator_metrics
            .clickhouse_waiting_events
            .get()
    };
    wait_for(
        "no event waiting for ClickHouse",
        Duration::from_secs(30),
        || async { check(waiting(), |n| *n == 0) },
    )
    .await;

    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("meterline_ingest_events_total{kind=\"usage\",outcome=\"accepted\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("meterline_aggregator_events_total{outcome=\"duplicate\"}"));
    assert!(metrics.contains("meterline_aggregator_clickhouse_waiting_events 0"));
    // Every usage record read had its age at the consumer observed (the broker's share of
    // freshness), by its Kafka timestamp.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics"))
    };
    let read = value("meterline_aggregator_records_total{stream=\"usage\"}");
    assert!(read > 0.0);
    assert_eq!(
        value("meterline_aggregator_record_age_seconds_count{stream=\"usage\"}"),
        read
    );
    assert!(
        !metrics.contains("-acct-"),
        "no account id in metric labels"
    );
    app.stop().await;
}

on_every_redis!(killing_the_aggregator_mid_stream_loses_nothing_and_counts_nothing_twice);
/// The aggregator runs as its own process and is killed with SIGKILL while events stream in;
/// a fresh one picks up from the committed offsets and the totals are still exact.
async fn killing_the_aggregator_mid_stream_loses_nothing_and_counts_nothing_twice(
    redis: Deployment,
) {
    let Some(mut config) = redis.apply(isolated_config(&unique_suffix())) else {
        return;
    };
    config.http.aggregator_listen = format!("127.0.0.1:{}", free_port());
    // Small batches so the kill lands between many writes.
    config.aggregator.batch_max_events = 700;
    config.aggregator.batch_max_wait_ms = 20;
    let mut app = spawn_with(config, Components::none().ingest()).await;
    let traffic = generate(11, &unique_suffix());
    let n = traffic.batches.len();
    let mut first = AggregatorProcess::spawn(&app.config);
    post_all(&app, &traffic, 0..n / 2).await;
    // Wait until the first aggregator is visibly mid-way, then kill it hard.
    let _ = app.wait_for_raw_count(2_000, Duration::from_secs(60)).await;
    let post_rest = {
        let traffic_batches = n / 2..n;
        post_all(&app, &traffic, traffic_batches)
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.kill();
    };
    tokio::join!(post_rest, killer);
    let second = AggregatorProcess::spawn(&app.config);
    assert_totals(&app, &traffic).await;
    drop(second);
    app.stop().await;
}

/// Scale-out: two aggregator processes in one consumer group split the partitions between
/// them, and the totals are still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_split_the_partitions_and_the_totals_are_exact() {
    let config = isolated_config(&unique_suffix());
    let mut app = spawn_with(config, Components::none().ingest()).await;
    let children: Vec<AggregatorProcess> = (0..2)
        .map(|i| {
            let mut config = app.config.clone();
            config.aggregator.instance_id = format!("aggregator-{i}");
            AggregatorProcess::spawn(&config)
        })
        .collect();
    let metric_urls: Vec<String> = children.iter().map(|c| c.metrics_url.clone()).collect();
    // Both must hold partitions before the traffic comes, or the first could read it all; and
    // every partition of both topics has exactly one owner.
    let assigned = wait_for(
        "partitions for both aggregators",
        Duration::from_secs(90),
        || async {
            let mut assigned = Vec::new();
            for url in &metric_urls {
                assigned
                    .push(metric(&app.http, url, "meterline_aggregator_assigned_partitions").await);
            }
            check(assigned, |a| a.iter().all(|a| *a > 0.0))
        },
    )
    .await;
    assert_eq!(
        assigned.iter().sum::<f64>() as i64,
        2 * i64::from(app.config.kafka.partitions),
        "every partition of both topics has exactly one owner: {assigned:?}"
    );
    let traffic = generate(13, &unique_suffix());
    post_all(&app, &traffic, 0..traffic.batches.len()).await;
    assert_totals(&app, &traffic).await;
    // Each process wrote a share: both hold partitions.
    for url in &metric_urls {
        let text = app
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let written: f64 = text
            .lines()
            .filter(|l| l.starts_with("meterline_aggregator_events_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(written > 0.0, "{url} aggregated nothing:\n{text}");
    }
    drop(children);
    app.stop().await;
}
