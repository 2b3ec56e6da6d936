//! `meterline-bench e2e`: ingest and aggregation together at a fixed rate, with freshness
//! probes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{
    cpu_by_process, cpu_shares, cpu_wait_line, cpu_waits, histogram_line, percentile, rss_mib,
    stage_breakdown,
};
use crate::pipeline::*;
use meterline::services::{self, Components};
use meterline::{migrate, Config};

/// Probes sent before this are left out of the settled freshness line.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct E2eBench {
    pub accounts: usize,
    pub rate: u64,
    pub duration: Duration,
    pub connections: usize,
    /// Also time each probe's record at a consumer of its own ([`BrokerWatch`]).
    pub watch_broker: bool,
}

/// When each probe's record was first read from the broker, by a consumer of its own group
/// that reads the usage topic from its start, as the aggregator does: ingest 202 → this is the
/// broker's share of freshness (with the consumer's fetch settings), the rest is the
/// aggregator's.
#[derive(Clone)]
struct BrokerWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    /// The broker's request round trips as librdkafka measures them (mostly fetches, each of
    /// which may wait up to `fetch.wait.max.ms` for records), p50 and p99 in ms, one pair per
    /// statistics window.
    rtt: Arc<Mutex<Vec<(f64, f64)>>>,
}

/// How often librdkafka reports the watch's statistics: each report's round-trip window covers
/// this long.
const WATCH_STATS_MS: &str = "5000";

/// Keeps each statistics window's broker round trips.
struct WatchContext(Arc<Mutex<Vec<(f64, f64)>>>);

impl ClientContext for WatchContext {
    fn stats(&self, statistics: Statistics) {
        // The brokers learned from metadata: not the bootstrap address or the logical
        // group coordinator, which repeat the same connection's figures.
        for broker in statistics
            .brokers
            .values()
            .filter(|b| b.source == "learned")
        {
            if let Some(rtt) = broker.rtt.as_ref().filter(|w| w.cnt > 0) {
                self.0
                    .lock()
                    .expect("not poisoned")
                    .push((rtt.p50 as f64 / 1000.0, rtt.p99 as f64 / 1000.0));
            }
        }
    }
}

impl ConsumerContext for WatchContext {}

impl BrokerWatch {
    /// Reads `c`'s usage topic until `shutdown`, noting the first read of each key that starts
    /// with `prefix` (the probes' accounts: records are keyed by account).
    fn spawn(c: &Config, run: &str, prefix: String, shutdown: CancellationToken) -> Result<Self> {
        let rtt: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
        let consumer: StreamConsumer<WatchContext> = meterline_infra::kafka::with_fetch_wait(
            meterline_infra::kafka::client_config(&c.kafka),
        )
        .set("group.id", format!("bench-{run}-watch"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", WATCH_STATS_MS)
        .create_with_context(WatchContext(rtt.clone()))?;
        consumer.subscribe(&[&c.kafka.usage_topic])?;
        let watch = Self {
            seen: Arc::default(),
            rtt,
        };
        let seen = watch.seen.clone();
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = consumer.recv() => m,
                };
                match m {
                    Ok(m) => {
                        if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                            if key.starts_with(&prefix) {
                                let mut seen = seen.lock().expect("not poisoned");
                                seen.entry(key.to_owned()).or_insert_with(Instant::now);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "broker watch: read failed"),
                }
            }
        });
        Ok(watch)
    }

    /// When `key`'s record was first read, waiting for it until `limit` after `since`.
    async fn read_at(&self, key: &str, since: Instant, limit: Duration) -> Option<Instant> {
        loop {
            if let Some(at) = self.seen.lock().expect("not poisoned").get(key) {
                return Some(*at);
            }
            if since.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// `bench e2e`: gateways post at `rate` events/s through ingest while the aggregator folds
/// them; probe events (one every 200 ms, each for an account of its own) measure freshness:
/// from the 202 of the batch that carried it to the counter visible in Redis, and to the
/// rollup row visible in ClickHouse; with `watch_broker`, also to the record read from the
/// broker ([`BrokerWatch`]). Ingest and the aggregator run in this process, so the
/// RSS printed is theirs together, with the load generator.
pub async fn e2e(config: &Config, b: E2eBench) -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let c = bench_config(config, &run).await?;
    let pool = migrate::connect_postgres(&c).await?;
    let name = format!("bench-{run}");
    let token = services::token_store(&c, &pool)
        .create(&name, &[Scope::Ingest], None)
        .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running = services::start(
        &c,
        Components::none().ingest().aggregator(),
        Some(listener),
        shutdown.clone(),
    )
    .await?;
    let url = format!(
        "http://{}/v1/events",
        running.ingest_addr.context("ingest runs")?
    );
    let probe_prefix = format!("bench-{run}-probe-");
    let watch = if b.watch_broker {
        Some(BrokerWatch::spawn(
            &c,
            &run,
            probe_prefix.clone(),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_by_process();
    let waits_before = cpu_waits();
    let scripts_before = redis_command_time(&c, "evalsha").await?;
    let started = Instant::now();
    let deadline = started + b.duration;
    // Open loop: each connection posts a batch of 500 every `interval`, fresh events each time
    // (the aggregator deduplicates, so repeats would not be counted).
    let interval = Duration::from_secs_f64(500.0 * b.connections as f64 / b.rate.max(1) as f64);
    let mut tasks = Vec::new();
    for k in 0..b.connections {
        let (url, token, accepted, run) =
            (url.clone(), token.clone(), accepted.clone(), run.clone());
        let accounts = b.accounts;
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut rng = StdRng::seed_from_u64(100 + k as u64);
            let mut next = Instant::now() + interval.mul_f64(k as f64 / b.connections as f64);
            while Instant::now() < deadline {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let body = body(
                    &(0..500)
                        .map(|_| {
                            let a = rng.random_range(0..accounts);
                            event(&mut rng, &run, a)
                        })
                        .collect::<Vec<_>>(),
                );
                if let Ok(r) = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    if r.status() == 202 {
                        accepted.fetch_add(500, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The probes.
    let redis_client = redis::Client::open(c.redis.url.as_str())?;
    let ch = c.clickhouse.client();
    let month = Utc::now().format("%Y%m").to_string();
    let mut probes = Vec::new();
    let mut p = 0u64;
    let mut rss_peak = 0f64;
    while Instant::now() < deadline {
        let account = format!("{probe_prefix}{p}");
        p += 1;
        let mut rng = StdRng::seed_from_u64(p);
        let mut e = event(&mut rng, &run, 0);
        e.account_id = account.clone();
        let (url, token, watch) = (url.clone(), token.clone(), watch.clone());
        let (redis_client, ch, month, key) = (
            redis_client.clone(),
            ch.clone(),
            month.clone(),
            meterline_schemas::keys::hot::HotKeys::new(c.redis.key_prefix.clone())
                .expect("redis.key_prefix")
                .cur(&account),
        );
        let sent = started.elapsed();
        probes.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let posted = Instant::now();
            let r = match http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body(&[e]))
                .send()
                .await
            {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(error = %err, "probe not sent");
                    return None;
                }
            };
            if r.status() != 202 {
                tracing::warn!(status = %r.status(), "probe not acknowledged");
                return None;
            }
            let acked = Instant::now();
            // Ingest answers once the broker has acknowledged the record, whose Kafka timestamp
            // its producer set before sending it: this is how much of the record's age
            // (`record_age_seconds`) came before the 202.
            let post = acked - posted;
            let mut conn = match redis_client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(error = %err, "probe: no Redis connection");
                    return None;
                }
            };
            let limit = Duration::from_secs(120);
            let to_redis = loop {
                let v: Option<i64> = match redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                {
                    Ok(v) => v.and_then(|v| {
                        meterline_schemas::keys::hot::decode_cur(&v)
                            .fields
                            .get(&format!("M:{month}:req"))
                            .copied()
                    }),
                    Err(err) => {
                        tracing::warn!(error = %err, "probe: GET failed");
                        return None;
                    }
                };
                if v.unwrap_or(0) >= 1 {
                    break acked.elapsed();
                }
                if acked.elapsed() > limit {
                    tracing::warn!(%key, "probe not in Redis after 120 s");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            // A probe late in ClickHouse still counts in Redis's figures: during a ClickHouse
            // stall the counters are what the figures are about, and dropping the probes whose
            // rollup took longer than the limit dropped the ones sent early in the stall.
            let to_clickhouse = loop {
                let n: u64 = ch
                    .query("SELECT count() FROM usage_minute WHERE account_id = ?")
                    .bind(&account)
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                if n >= 1 {
                    break Some(acked.elapsed());
                }
                if acked.elapsed() > limit {
                    break None;
                }
                // Every 100 ms: a query every 20 ms from each probe in flight loaded ClickHouse
                // with hundreds of queries a second, slowing the inserts it measures.
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // Read before the 202 arrived (ingest answers after the broker has the record):
            // counted as 0.
            let to_broker = match &watch {
                Some(w) => match w.read_at(&account, acked, limit).await {
                    Some(at) => Some(at.saturating_duration_since(acked)),
                    None => {
                        tracing::warn!(%account, "probe not read by the broker watch after 120 s");
                        None
                    }
                },
                None => None,
            };
            Some((sent, post, to_broker, to_redis, to_clickhouse))
        }));
        rss_peak = rss_peak.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_shares(&cpu_before, &cpu_by_process(), elapsed);
    let waits = cpu_wait_line(&waits_before, &cpu_waits(), elapsed);
    let scripts = redis_command_time(&c, "evalsha").await?;
    let (script_calls, script_usec) = (
        scripts.0.saturating_sub(scripts_before.0),
        scripts.1.saturating_sub(scripts_before.1),
    );
    let mut to_broker = Vec::new();
    let mut posts = Vec::new();
    let mut to_redis = Vec::new();
    let mut to_clickhouse = Vec::new();
    // The probes sent after the first 10 s: the aggregator past loading every account once.
    let mut settled = Vec::new();
    let mut settled_broker = Vec::new();
    let mut lost = 0;
    let mut late_in_clickhouse = 0;
    for probe in probes {
        match probe.await? {
            Some((sent, post, b, r, c)) => {
                posts.push(post.as_micros() as u64);
                let b = b.map(|b| b.as_micros() as u64);
                to_broker.extend(b);
                to_redis.push(r.as_micros() as u64);
                match c {
                    Some(c) => to_clickhouse.push(c.as_micros() as u64),
                    None => late_in_clickhouse += 1,
                }
                if sent >= SETTLE {
                    settled.push(r.as_micros() as u64);
                    settled_broker.extend(b);
                }
            }
            None => lost += 1,
        }
    }
    for v in [
        &mut to_broker,
        &mut posts,
        &mut to_redis,
        &mut to_clickhouse,
        &mut settled,
        &mut settled_broker,
    ] {
        v.sort_unstable();
    }
    let ours = accepted.load(Ordering::Relaxed) as f64 / elapsed;
    let m = running.aggregator_metrics.clone();
    let counted = m.events.with_label_values(&["counted"]).get();
    // Where the aggregator's time went over the whole run: how often it wrote, how long a write
    // took, and its stages (collect is waiting for records, the rest is work).
    let batches = m.batch_seconds.get_sample_count();
    let batch_mean_ms = 1000.0 * m.batch_seconds.get_sample_sum() / batches.max(1) as f64;
    let stages: Vec<(&str, f64)> = meterline_aggregator::metrics::STAGES
        .iter()
        .map(|s| (*s, m.stage_seconds.with_label_values(&[s]).get()))
        .collect();
    let flushes: Vec<String> = [
        ("snapshots", "until its snapshots were written"),
        ("checkpoint", "until its checkpoint was written"),
        (
            "snapshots_since_change",
            "from its oldest change until its snapshots were written",
        ),
    ]
    .iter()
    .map(|(until, what)| {
        format!(
            "{what}: {}",
            histogram_line(&m.flush_seconds.with_label_values(&[until]), "flushes")
        )
    })
    .collect();
    // The broker's part, before the aggregator's: every usage record's age when the consumer
    // received it, by its Kafka timestamp (ingest's producer set it; one clock here).
    let record_age = histogram_line(
        &m.record_age_seconds.with_label_values(&["usage"]),
        "records",
    );
    let snapshot_writes = histogram_line(&m.snapshot_write_seconds, "snapshots");
    let inserting = m
        .stage_seconds
        .with_label_values(&[meterline_aggregator::metrics::INSERT_STAGE])
        .get();
    let inserts = m.insert_events.get_sample_count();
    let inserted = m.insert_events.get_sample_sum();
    shutdown.cancel();
    running.stop().await?;
    services::token_store(&c, &pool).revoke(&name).await.ok();
    println!(
        "e2e: {ours:.0} events/s accepted of {} asked ({} connections, {elapsed:.0} s, {} accounts); the aggregator counted {counted} of them",
        b.rate, b.connections, b.accounts
    );
    let line = |what: &str, v: &[u64]| {
        println!(
            "freshness, ingest 202 → {what}: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} probes)",
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 1.0),
            v.len()
        )
    };
    if let Some(w) = &watch {
        let rtt: Vec<String> = w
            .rtt
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(p50, p99)| format!("{p50:.0}/{p99:.0}"))
            .collect();
        println!(
            "broker request round trips at the watch's consumer (librdkafka's rtt, p50/p99 ms per {WATCH_STATS_MS} ms window): {}",
            rtt.join(", ")
        );
        line("record read from the broker", &to_broker);
        line(
            "record read from the broker, probes after the first 10 s",
            &settled_broker,
        );
    }
    println!(
        "a probe's POST, sent → 202 (ingest's produce, acknowledged by the broker): p50 {:.0} ms  p99 {:.0} ms  ({} probes)",
        percentile(&posts, 0.5),
        percentile(&posts, 0.99),
        posts.len()
    );
    line("counter in Redis", &to_redis);
    line("counter in Redis, probes after the first 10 s", &settled);
    line("rollup in ClickHouse", &to_clickhouse);
    if lost > 0 {
        println!("{lost} probes were not in Redis within 120 s (or not acknowledged)");
    }
    if late_in_clickhouse > 0 {
        println!(
            "{late_in_clickhouse} probes counted in Redis were not in ClickHouse within 120 s (not in its line above)"
        );
    }
    println!(
        "aggregator: {batches} batches, {:.0} records each on average, a write took {batch_mean_ms:.0} ms on average; wall time by stage {}",
        m.records.with_label_values(&["usage"]).get() as f64 / batches.max(1) as f64,
        stage_breakdown(&stages)
    );
    println!(
        "the broker's part, a usage record from its Kafka timestamp (ingest produced it) until the aggregator received it: {record_age}"
    );
    println!(
        "a partition's flush, from its start (on its own task, alongside the loop): {}",
        flushes.join("; ")
    );
    println!(
        "a snapshot's write, from its call until its answer was read: {snapshot_writes}; Redis's own time per script call (EVALSHA, snapshots and the rest): {:.0} µs over {script_calls} calls",
        script_usec as f64 / script_calls.max(1) as f64
    );
    println!(
        "ClickHouse insert task (alongside the loop): busy {inserting:.1} s, {:.0} % of the run; {inserts} inserts of {:.0} events on average",
        100.0 * inserting / elapsed,
        inserted / inserts.max(1) as f64
    );
    println!("process RSS (ingest + aggregator + load generator): peak {rss_peak:.0} MiB");
    println!(
        "CPU over the load (cores used on average; meterline-bench is ingest, the aggregator and the load generator): {cpu}"
    );
    println!("waiting for a core over the load: {waits}");
    Ok(())
}
