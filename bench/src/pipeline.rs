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
//! * e2e: both at once at a fixed rate, with freshness probes (see [`crate::e2e`]).
//!
//! All use their own topics, ClickHouse database (`<database>_bench`) and Redis key prefix, so
//! they never mix with real data; the topics are named after the run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{avro, IpHasher, UsageEventInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use meterline::services::{self};
use meterline::{migrate, Config};

pub(crate) const MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "claude-3-haiku", "llama-3-8b"];
pub(crate) const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];

/// One realistic usage event (the fields a gateway fills in), as the load generators post it.
///
/// A struct serialized by serde instead of a `serde_json::Value`: building the map of 18
/// fields for each event was 10 % of `meterline-bench`'s CPU at 40,000 events/s
/// (BENCHMARKS.md, eleventh session), on the same two cores as what it measures.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BenchEvent {
    pub event_id: String,
    pub occurred_at: String,
    pub account_id: String,
    pub api_key_id: String,
    pub gateway_id: String,
    pub region: &'static str,
    pub cloud: &'static str,
    pub provider: &'static str,
    pub model: &'static str,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cost_micros: u32,
    pub latency_ms: u32,
    pub status: u16,
    pub session_id: String,
    pub user_id: String,
    pub client_ip: String,
    pub prompt_hash: String,
}

/// One realistic usage event for account `a`.
pub(crate) fn event(rng: &mut StdRng, run: &str, a: usize) -> BenchEvent {
    BenchEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Utc::now().to_rfc3339(),
        account_id: format!("bench-{run}-{a}"),
        api_key_id: format!("key-{a}"),
        gateway_id: format!("gw-{}", a % 8),
        region: REGIONS[a % 3],
        cloud: "aws",
        provider: "openai",
        model: MODELS[rng.random_range(0..MODELS.len())],
        input_tokens: rng.random_range(10..4000),
        output_tokens: rng.random_range(10..1000),
        cost_micros: rng.random_range(10..5000),
        latency_ms: rng.random_range(50..3000),
        status: 200,
        session_id: format!("s-{a}-{}", rng.random_range(0..5)),
        user_id: format!("u-{}", rng.random_range(0..20)),
        client_ip: format!("198.51.100.{}", a % 250 + 1),
        prompt_hash: format!("{:016x}", rng.random::<u64>()),
    }
}

/// A JSON array of `events`, as a request body.
pub(crate) fn body(events: &[BenchEvent]) -> String {
    serde_json::to_string(events).expect("a bench event serializes")
}

/// The runs [`bench_config`] set up in this process, for [`clean_up_runs`].
static RUNS: std::sync::Mutex<Vec<Config>> = std::sync::Mutex::new(Vec::new());

/// A configuration whose topics, ClickHouse database, Redis prefix and consumer group belong
/// to this benchmark run, migrated. `main` removes its database and Redis keys after the run,
/// whether it succeeded or not ([`clean_up_runs`]).
pub(crate) async fn bench_config(config: &Config, run: &str) -> Result<Config> {
    let mut c = config.clone();
    c.kafka.usage_topic = format!("bench-{run}-usage");
    c.kafka.account_topic = format!("bench-{run}-account");
    c.kafka.dead_letter_topic = format!("bench-{run}-dlq");
    c.kafka.signal_topic = format!("bench-{run}-signals");
    // A database of the run's own: with one shared by every run, each run's inserts were merged
    // with the rows of the runs before it (ClickHouse's merges were most of its CPU), so later
    // runs measured slower.
    c.clickhouse.database = format!("{}_bench_{run}", config.clickhouse.database);
    c.redis.key_prefix = format!("mlb:{run}:");
    c.aggregator.group_id = format!("bench-{run}");
    c.aggregator.instance_id = String::new();
    // One token carries the whole load here: its budget would cap the measurement.
    c.ingest.rate_limit_events_per_sec = 0;
    RUNS.lock().expect("not poisoned").push(c.clone());
    migrate::run(&c).await?;
    Ok(c)
}

/// Pre-encoded Avro records of `n` events, as ingest would produce them.
pub(crate) async fn encoded(
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
            let v = from_json_naming_field::<UsageEventInput>(&serde_json::to_string(&e)?)
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
pub(crate) async fn produce_all(
    c: &Config,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Result<f64> {
    produce_with(&producer(c)?, topic, records).await
}

/// A producer with ingest's settings. Its librdkafka threads start here and keep this
/// thread's scheduling policy (`bench quota` makes one before it promotes itself to real time).
pub(crate) fn producer(c: &Config) -> Result<FutureProducer> {
    Ok(meterline_infra::kafka::client_config(&c.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?)
}

/// [`produce_all`] with a given producer.
pub(crate) async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Result<f64> {
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

/// Reads a group's committed offsets; one client for every read, so each poll is one request
/// and not a new connection with its own metadata fetch.
pub(crate) struct CommittedOffsets {
    consumer: StreamConsumer,
    partitions: TopicPartitionList,
}

impl CommittedOffsets {
    pub(crate) fn new(c: &Config, group: &str, topic: &str) -> Result<Self> {
        let consumer: StreamConsumer = meterline_infra::kafka::client_config(&c.kafka)
            .set("group.id", group)
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..c.kafka.partitions {
            partitions.add_partition(topic, p);
        }
        Ok(Self {
            consumer,
            partitions,
        })
    }

    /// Sum of the group's committed offsets on the topic.
    pub(crate) fn sum(&self) -> Result<i64> {
        let got = self
            .consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(5))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    }
}

/// Removes what every run of [`bench_config`] in this process left: its ClickHouse database
/// and its Redis keys (how many it deleted).
pub(crate) async fn clean_up_runs() -> Result<u64> {
    let runs = std::mem::take(&mut *RUNS.lock().expect("not poisoned"));
    let mut removed = 0;
    for c in &runs {
        removed += clean_up_run(c).await?;
    }
    Ok(removed)
}

/// Removes one run's ClickHouse database and Redis keys (how many it deleted).
async fn clean_up_run(c: &Config) -> Result<u64> {
    drop_clickhouse_database(c).await?;
    remove_run_keys(c).await
}

/// Drops `c`'s ClickHouse database, if it exists.
pub(crate) async fn drop_clickhouse_database(c: &Config) -> Result<()> {
    c.clickhouse
        .client()
        .with_database("default")
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            c.clickhouse.database
        ))
        .execute()
        .await
        .with_context(|| format!("dropping ClickHouse database {}", c.clickhouse.database))
}

/// Deletes this run's Redis keys (its own prefix): left to expire, a day of runs filled Redis
/// with millions of keys and slowed every later run (see BENCHMARKS.md).
async fn remove_run_keys(c: &Config) -> Result<u64> {
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

/// Redis's CPU seconds so far (user + system), from `INFO cpu`.
pub(crate) async fn redis_cpu_seconds(c: &Config) -> Result<f64> {
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

/// Every command the Redis server has run so far, by name, from `INFO commandstats`: the
/// commands clients send and those scripts call (`redis.call` counts under its own command),
/// without `info`, which is how this is read.
pub(crate) async fn redis_command_counts(
    c: &Config,
) -> Result<std::collections::BTreeMap<String, u64>> {
    Ok(parse_command_counts(&commandstats(c).await?))
}

/// The Redis server's `INFO commandstats`.
async fn commandstats(c: &Config) -> Result<String> {
    let client = redis::Client::open(c.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?)
}

fn parse_command_counts(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// One command's calls and Redis's own time in it so far (µs), from `INFO commandstats`
/// (`evalsha`: the scripts, the time inside them included); `(0, 0)` if it has not run.
pub(crate) async fn redis_command_time(c: &Config, name: &str) -> Result<(u64, u64)> {
    Ok(parse_command_time(&commandstats(c).await?, name))
}

fn parse_command_time(info: &str, name: &str) -> (u64, u64) {
    let prefix = format!("cmdstat_{name}:");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or((0, 0), |rest| {
            let field = |f: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            (field("calls="), field("usec="))
        })
}

/// What ran between two [`redis_command_counts`], most called first.
pub(crate) fn command_deltas(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    let mut d: Vec<(String, u64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_calls_and_time_are_read_from_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=3065,usec=140990,usec_per_call=46.00,rejected_calls=0,failed_calls=0\r\ncmdstat_get:calls=7,usec=9,usec_per_call=1.29\r\n";
        assert_eq!(parse_command_time(info, "evalsha"), (3065, 140990));
        assert_eq!(parse_command_time(info, "get"), (7, 9));
        assert_eq!(parse_command_time(info, "eval"), (0, 0));
    }

    #[test]
    fn the_load_generators_events_are_ones_ingest_accepts_and_posted_as_an_array() {
        let mut rng = StdRng::seed_from_u64(7);
        let hasher = IpHasher::new("bench");
        let now = Utc::now();
        let events: Vec<BenchEvent> = (0..300).map(|a| event(&mut rng, "r1", a)).collect();
        for e in &events {
            let v = from_json_naming_field::<UsageEventInput>(&serde_json::to_string(e).unwrap())
                .unwrap()
                .validate(now, &hasher)
                .unwrap();
            assert_eq!(v.account_id.as_str(), e.account_id);
            assert!(MODELS.contains(&v.model.as_str()), "{}", v.model);
        }
        let posted: Vec<serde_json::Value> = serde_json::from_str(&body(&events)).unwrap();
        assert_eq!(posted.len(), 300);
        assert_eq!(posted[3]["account_id"], "bench-r1-3");
        assert_eq!(posted[3]["status"], 200);
    }

    #[test]
    fn every_command_but_info_is_counted_and_deltas_rank_them() {
        let before = parse_command_counts(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5\r\n\
             cmdstat_info:calls=7,usec=1,usec_per_call=0.1\r\n\
             cmdstat_hincrby:calls=100,usec=9,usec_per_call=0.09,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(before.len(), 2, "{before:?}");
        let after = parse_command_counts(
            "cmdstat_evalsha:calls=12,usec=5\r\ncmdstat_info:calls=9,usec=1\r\n\
             cmdstat_hincrby:calls=130,usec=9\r\ncmdstat_sadd:calls=4,usec=1\r\n",
        );
        assert_eq!(
            command_deltas(&before, &after),
            vec![
                ("hincrby".to_owned(), 30),
                ("sadd".to_owned(), 4),
                ("evalsha".to_owned(), 2)
            ]
        );
    }
}
