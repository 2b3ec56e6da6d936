//! `meterline bench ingest` and `meterline bench aggregate`: throughput of the two halves of
//! the pipeline, each next to the ceiling the broker allows measured in the same run, on the
//! same broker and servers.
//!
//! * ingest: HTTP batches of 500 events posted by `--connections` concurrent clients to ingest
//!   (in this process), against rdkafka producing the same events, already Avro-encoded,
//!   straight to the broker with the same producer settings (idempotent, `acks=all`);
//! * aggregate: a topic pre-filled with `--events` events, consumed and written to ClickHouse,
//!   Redis and PostgreSQL by the aggregator, against rdkafka consuming the same topic and
//!   discarding the records.
//!
//! * e2e: both at once at a fixed rate, with freshness probes (see [`e2e`]).
//!
//! All use their own topics, ClickHouse database (`<database>_bench`) and Redis key prefix, so
//! they never mix with real data; the topics are named after the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use meterline_ingest::Scope;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{avro, IpHasher, UsageEventInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bench::{percentile, rss_mib};
use crate::services::{self, Components};
use crate::{migrate, Config};

const MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "claude-3-haiku", "llama-3-8b"];
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];

/// One realistic usage event (the fields a gateway fills in), for account `a`.
fn event(rng: &mut StdRng, run: &str, a: usize) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": Utc::now().to_rfc3339(),
        "account_id": format!("bench-{run}-{a}"),
        "api_key_id": format!("key-{a}"),
        "gateway_id": format!("gw-{}", a % 8),
        "region": REGIONS[a % 3],
        "cloud": "aws",
        "provider": "openai",
        "model": MODELS[rng.random_range(0..MODELS.len())],
        "input_tokens": rng.random_range(10..4000),
        "output_tokens": rng.random_range(10..1000),
        "cost_micros": rng.random_range(10..5000),
        "latency_ms": rng.random_range(50..3000),
        "status": 200,
        "session_id": format!("s-{a}-{}", rng.random_range(0..5)),
        "user_id": format!("u-{}", rng.random_range(0..20)),
        "client_ip": format!("198.51.100.{}", a % 250 + 1),
        "prompt_hash": format!("{:016x}", rng.random::<u64>()),
    })
}

/// A configuration whose topics, ClickHouse database, Redis prefix and consumer group belong
/// to this benchmark run, migrated.
pub(crate) async fn bench_config(config: &Config, run: &str) -> Result<Config> {
    let mut c = config.clone();
    c.kafka.usage_topic = format!("bench-{run}-usage");
    c.kafka.account_topic = format!("bench-{run}-account");
    c.kafka.dead_letter_topic = format!("bench-{run}-dlq");
    c.kafka.signal_topic = format!("bench-{run}-signals");
    c.clickhouse.database = format!("{}_bench", config.clickhouse.database);
    c.redis.key_prefix = format!("mlb:{run}:");
    c.aggregator.group_id = format!("bench-{run}");
    c.aggregator.instance_id = String::new();
    // One token carries the whole load here: its budget would cap the measurement.
    c.ingest.rate_limit_events_per_sec = 0;
    migrate::run(&c).await?;
    Ok(c)
}

/// Pre-encoded Avro records of `n` events, as ingest would produce them.
async fn encoded(
    c: &Config,
    run: &str,
    accounts: usize,
    n: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let pool = migrate::connect_postgres(c).await?;
    let id = services::registry(c, &pool)
        .register(
            &format!("{}-value", c.kafka.usage_topic),
            avro::USAGE_EVENT_SCHEMA,
        )
        .await?;
    let schema = avro::parse_schema(avro::USAGE_EVENT_SCHEMA)?;
    let hasher = IpHasher::new(&c.privacy.ip_hash_key);
    let mut rng = StdRng::seed_from_u64(5);
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let a = if i < accounts {
                i
            } else {
                rng.random_range(0..accounts)
            };
            let e = event(&mut rng, run, a);
            let v = from_json_naming_field::<UsageEventInput>(&e.to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .validate(now, &hasher)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((
                v.account_id.as_str().to_owned(),
                avro::encode(id, &schema, &v)?,
            ))
        })
        .collect()
}

/// Produces `records` to `topic` as fast as the broker takes them with ingest's producer
/// settings; returns events/s.
async fn produce_all(c: &Config, topic: &str, records: &[(String, Vec<u8>)]) -> Result<f64> {
    let producer: FutureProducer = meterline_ingest::producer::client_config(&c.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let started = Instant::now();
    for chunk in records.chunks(10_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (key, payload) in chunk {
            loop {
                match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((e, _)) => {
                        // Local queue full: let deliveries drain.
                        tracing::debug!(error = %e, "producer queue full");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        for d in futures::future::join_all(pending).await {
            match d {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("the broker refused a record: {e}"),
                Err(_) => bail!("a delivery was cancelled"),
            }
        }
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

#[derive(Debug, Clone)]
pub struct IngestBench {
    pub accounts: usize,
    pub duration: Duration,
    pub connections: usize,
}

/// `bench ingest`: HTTP batches of 500 through ingest to Kafka, then the raw produce ceiling.
pub async fn ingest(config: &Config, b: IngestBench) -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let c = bench_config(config, &run).await?;
    let pool = migrate::connect_postgres(&c).await?;
    let name = format!("bench-{run}");
    let token = services::token_store(&c, &pool)
        .create(&name, &[Scope::Ingest], None)
        .await?;
    // 200 distinct batches of 500, posted round-robin (ingest does not deduplicate; the
    // aggregator is not running here).
    let mut rng = StdRng::seed_from_u64(3);
    let batches: Arc<Vec<String>> = Arc::new(
        (0..200)
            .map(|_| {
                Value::Array(
                    (0..500)
                        .map(|_| {
                            let a = rng.random_range(0..b.accounts);
                            event(&mut rng, &run, a)
                        })
                        .collect(),
                )
                .to_string()
            })
            .collect(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running = services::start(
        &c,
        Components {
            ingest: true,
            ..Components::NONE
        },
        Some(listener),
        shutdown.clone(),
    )
    .await?;
    let url = format!(
        "http://{}/v1/events",
        running.ingest_addr.context("ingest runs")?
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + b.duration;
    let mut tasks = Vec::new();
    for k in 0..b.connections {
        let (batches, url, token, accepted) = (
            batches.clone(),
            url.clone(),
            token.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            let mut i = k;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(batches[i % batches.len()].clone())
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 202 {
                        accepted.fetch_add(500, Ordering::Relaxed);
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                }
                i += b.connections.max(1);
            }
            latencies
        }));
    }
    let mut rss_peak = 0f64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_peak = rss_peak.max(rss_mib());
    }
    let mut latencies: Vec<u64> = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ours = accepted.load(Ordering::Relaxed) as f64 / elapsed;
    shutdown.cancel();
    running.stop().await?;
    services::token_store(&c, &pool).revoke(&name).await.ok();

    // The ceiling: the same kind of events, already encoded, straight to the broker.
    let n = ((ours * b.duration.as_secs_f64()) as usize).clamp(50_000, 2_000_000);
    let records = encoded(&c, &run, b.accounts, n).await?;
    let ceiling = produce_all(&c, &c.kafka.usage_topic, &records).await?;
    println!(
        "ingest: {ours:.0} events/s accepted (HTTP batches of 500, {} connections, {:.0} s)",
        b.connections, elapsed
    );
    println!(
        "batch latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!("ceiling: rdkafka producing the same Avro records (idempotent, acks=all): {ceiling:.0} events/s ({n} records)");
    println!("ratio: {:.2} of the ceiling", ours / ceiling);
    println!("process RSS while ingesting (ingest and the load generator): peak {rss_peak:.0} MiB");
    Ok(())
}

#[derive(Debug, Clone)]
pub struct AggregateBench {
    pub accounts: usize,
    pub events: usize,
    /// Aggregators in one consumer group; more than one shows the partitions being split.
    pub aggregators: usize,
}

/// Sum of the group's committed offsets on `topic`.
async fn committed(c: &Config, group: &str, topic: &str) -> Result<i64> {
    let consumer: StreamConsumer = meterline_ingest::producer::client_config(&c.kafka)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..c.kafka.partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

/// `bench aggregate`: a pre-filled topic through the aggregator, then the raw consume ceiling.
pub async fn aggregate(config: &Config, b: AggregateBench) -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let c = bench_config(config, &run).await?;
    println!("encoding {} events over {} accounts…", b.events, b.accounts);
    let records = encoded(&c, &run, b.accounts, b.events).await?;
    let produced = produce_all(&c, &c.kafka.usage_topic, &records).await?;
    drop(records);
    println!(
        "pre-filled {} at {produced:.0} events/s",
        c.kafka.usage_topic
    );

    // The ceiling: consume everything and discard it.
    let consumer: StreamConsumer = meterline_ingest::producer::client_config(&c.kafka)
        .set("group.id", format!("bench-{run}-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&c.kafka.usage_topic])?;
    let started = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < b.events {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the raw consumer stalled")??;
        bytes += m.payload().map_or(0, |p| p.len());
        seen += 1;
    }
    let ceiling = seen as f64 / started.elapsed().as_secs_f64();
    drop(consumer);

    // Ours: the aggregators from the start of the topic to their last committed offset, as
    // dynamic members of one group (`bench_config` leaves the instance id empty: a static
    // member's first join took seconds longer on tansu, which the figure would include).
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut members = Vec::new();
    for _ in 0..b.aggregators.max(1) {
        let mut member = c.clone();
        member.http.aggregator_listen = "127.0.0.1:0".into();
        let components = Components {
            aggregator: true,
            ..Components::NONE
        };
        members.push(services::start(&member, components, None, shutdown.clone()).await?);
    }
    let dedup_before = redis_calls(&c, "smismember").await?;
    let inner_before = script_inner_calls(&c).await?;
    let redis_cpu_before = redis_cpu_seconds(&c).await?;
    let mut rss_peak = 0f64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(rss_mib());
        let done = committed(&c, &c.aggregator.group_id, &c.kafka.usage_topic).await?;
        if done as usize >= b.events {
            break;
        }
        if started.elapsed() > Duration::from_secs(1_800) {
            bail!(
                "the aggregator committed {done} of {} in 30 minutes",
                b.events
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let ours = b.events as f64 / wall;
    let metrics: Vec<&meterline_aggregator::metrics::AggregatorMetrics> =
        members.iter().map(|m| &m.aggregator_metrics).collect();
    let fold_commands: u64 = metrics.iter().map(|m| m.redis_commands.get()).sum();
    let dedup_commands = redis_calls(&c, "smismember").await? - dedup_before;
    let inner_calls = script_inner_calls(&c).await? - inner_before;
    let redis_cpu = redis_cpu_seconds(&c).await? - redis_cpu_before;
    let stages: Vec<(&str, f64)> = meterline_aggregator::metrics::STAGES
        .iter()
        .map(|s| {
            let secs = metrics
                .iter()
                .map(|m| m.stage_seconds.with_label_values(&[s]).get())
                .sum();
            (*s, secs)
        })
        .collect();
    let split: Vec<String> = metrics
        .iter()
        .map(|m| m.records.with_label_values(&["usage"]).get().to_string())
        .collect();
    shutdown.cancel();
    for m in members {
        m.stop().await?;
    }
    let removed = remove_run_keys(&c).await?;
    println!(
        "aggregate: {ours:.0} events/s from Kafka to ClickHouse + Redis, offsets committed ({} events, {} accounts, {} aggregator(s))",
        b.events, b.accounts, b.aggregators
    );
    if b.aggregators > 1 {
        println!("records read per aggregator: {}", split.join(" + "));
    }
    println!("ceiling: rdkafka consuming the same topic and discarding: {ceiling:.0} events/s ({:.0} bytes/event)", bytes as f64 / seen as f64);
    println!("ratio: {:.2} of the ceiling", ours / ceiling);
    println!("aggregator process RSS: peak {rss_peak:.0} MiB");
    println!("removed this run's {removed} Redis keys");
    println!(
        "Redis commands per event: window fold {:.4} ({fold_commands} EVAL/MULTI/EXEC for {} events); deduplication {:.4} ({dedup_commands} SMISMEMBER)",
        fold_commands as f64 / b.events as f64,
        b.events,
        dedup_commands as f64 / b.events as f64
    );
    println!(
        "inside the fold's scripts: {inner_calls} HINCRBY/SADD/EXPIRETIME/EXPIREAT calls, {:.1} per event; Redis CPU {redis_cpu:.1} s of {wall:.1} s wall ({:.0} %)",
        inner_calls as f64 / b.events as f64,
        100.0 * redis_cpu / wall
    );
    let staged: f64 = stages.iter().map(|(_, s)| s).sum();
    let breakdown: Vec<String> = stages
        .iter()
        .map(|(name, secs)| format!("{name} {:.0} %", 100.0 * secs / staged.max(1e-9)))
        .collect();
    println!(
        "aggregator wall time by stage ({staged:.1} s): {}",
        breakdown.join(", ")
    );
    Ok(())
}

/// Deletes this run's Redis keys (its own prefix): left to expire, a day of runs filled Redis
/// with millions of keys and slowed every later run (see BENCHMARKS.md).
pub(crate) async fn remove_run_keys(c: &Config) -> Result<u64> {
    let client = redis::Client::open(c.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}*", c.redis.key_prefix);
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            // A SCAN or UNLINK of 10,000 keys held Redis for 20 ms; other clients use it too.
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += keys.len() as u64;
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// Calls the fold's script makes inside Redis, from `INFO commandstats`.
async fn script_inner_calls(c: &Config) -> Result<u64> {
    let mut total = 0;
    for command in ["hincrby", "sadd", "expiretime", "expireat"] {
        total += redis_calls(c, command).await?;
    }
    Ok(total)
}

/// Redis's CPU seconds so far (user + system), from `INFO cpu`.
async fn redis_cpu_seconds(c: &Config) -> Result<f64> {
    let client = redis::Client::open(c.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum())
}

/// How many times clients called `command` on the Redis server so far (`INFO commandstats`).
async fn redis_calls(c: &Config, command: &str) -> Result<u64> {
    let client = redis::Client::open(c.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let prefix = format!("cmdstat_{command}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

#[derive(Debug, Clone)]
pub struct E2eBench {
    pub accounts: usize,
    pub rate: u64,
    pub duration: Duration,
    pub connections: usize,
}

/// `bench e2e`: gateways post at `rate` events/s through ingest while the aggregator folds
/// them; probe events (one every 200 ms, each for an account of its own) measure freshness:
/// from the 202 of the batch that carried it to the counter visible in Redis, and to the
/// rollup row visible in ClickHouse. Ingest and the aggregator run in this process, so the
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
        Components {
            ingest: true,
            aggregator: true,
            ..Components::NONE
        },
        Some(listener),
        shutdown.clone(),
    )
    .await?;
    let url = format!(
        "http://{}/v1/events",
        running.ingest_addr.context("ingest runs")?
    );
    let accepted = Arc::new(AtomicU64::new(0));
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
                let body = Value::Array(
                    (0..500)
                        .map(|_| {
                            let a = rng.random_range(0..accounts);
                            event(&mut rng, &run, a)
                        })
                        .collect(),
                )
                .to_string();
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
        let account = format!("bench-{run}-probe-{p}");
        p += 1;
        let mut rng = StdRng::seed_from_u64(p);
        let mut e = event(&mut rng, &run, 0);
        e["account_id"] = Value::from(account.clone());
        let (url, token) = (url.clone(), token.clone());
        let (redis_client, ch, key) = (
            redis_client.clone(),
            ch.clone(),
            format!("{}u:{account}:M:{month}", c.redis.key_prefix),
        );
        probes.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let r = match http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(Value::Array(vec![e]).to_string())
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
            let mut conn = match redis_client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(error = %err, "probe: no Redis connection");
                    return None;
                }
            };
            let limit = Duration::from_secs(120);
            let to_redis = loop {
                let v: Option<u64> = match redis::cmd("HGET")
                    .arg(&key)
                    .arg("req")
                    .query_async(&mut conn)
                    .await
                {
                    Ok(v) => v,
                    Err(err) => {
                        tracing::warn!(error = %err, "probe: HGET failed");
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
            let to_clickhouse = loop {
                let n: u64 = ch
                    .query("SELECT count() FROM usage_minute WHERE account_id = ?")
                    .bind(&account)
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                if n >= 1 {
                    break acked.elapsed();
                }
                if acked.elapsed() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            Some((to_redis, to_clickhouse))
        }));
        rss_peak = rss_peak.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut to_redis = Vec::new();
    let mut to_clickhouse = Vec::new();
    let mut lost = 0;
    for probe in probes {
        match probe.await? {
            Some((r, c)) => {
                to_redis.push(r.as_micros() as u64);
                to_clickhouse.push(c.as_micros() as u64);
            }
            None => lost += 1,
        }
    }
    to_redis.sort_unstable();
    to_clickhouse.sort_unstable();
    let ours = accepted.load(Ordering::Relaxed) as f64 / elapsed;
    let counted = running
        .aggregator_metrics
        .events
        .with_label_values(&["counted"])
        .get();
    shutdown.cancel();
    running.stop().await?;
    remove_run_keys(&c).await?;
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
    line("counter in Redis", &to_redis);
    line("rollup in ClickHouse", &to_clickhouse);
    if lost > 0 {
        println!("{lost} probes were not visible within 120 s (or not acknowledged)");
    }
    println!("process RSS (ingest + aggregator + load generator): peak {rss_peak:.0} MiB");
    Ok(())
}
