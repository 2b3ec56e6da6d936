//! `meterline-bench ingest` and `meterline-bench aggregate`: each half of the pipeline next to
//! the broker's ceiling, measured in the same run (see [`crate::pipeline`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{
    cpu_by_process, cpu_shares, cpu_wait_line, cpu_waits, free_port, percentile, proc_status_mib,
    rss_mib, spawn_child, stage_breakdown, ChildProcesses,
};
use crate::pipeline::*;
use crate::scrape::{counter_sum, metrics_text};
use meterline::services::{self, Components};
use meterline::{migrate, Config};

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
                body(
                    &(0..500)
                        .map(|_| {
                            let a = rng.random_range(0..b.accounts);
                            event(&mut rng, &run, a)
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running = services::start(
        &c,
        Components::none().ingest(),
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
    /// The configuration file the aggregator processes load.
    pub config_path: Option<std::path::PathBuf>,
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

    // The ceiling: consume everything and discard it, with the aggregator's fetch settings.
    let consumer: StreamConsumer =
        meterline_infra::kafka::with_fetch_wait(meterline_infra::kafka::client_config(&c.kafka))
            .set("group.id", format!("bench-{run}-raw"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
    consumer.subscribe(&[&c.kafka.usage_topic])?;
    let cpu_raw_before = cpu_by_process();
    let waits_raw_before = cpu_waits();
    let started = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut raw_first = None;
    while seen < b.events {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the raw consumer stalled")??;
        raw_first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        bytes += m.payload().map_or(0, |p| p.len());
        seen += 1;
    }
    let raw_wall = started.elapsed().as_secs_f64();
    let raw_first = raw_first.unwrap_or(raw_wall);
    let ceiling = seen as f64 / raw_wall;
    let cpu_raw = cpu_shares(&cpu_raw_before, &cpu_by_process(), raw_wall);
    let waits_raw = cpu_wait_line(&waits_raw_before, &cpu_waits(), raw_wall);
    drop(consumer);

    // Ours: the aggregators from the start of the topic to their last committed offset, each a
    // child `meterline aggregate` as deployed (so its peak RSS is its own), as dynamic members
    // of one group (`bench_config` leaves the instance id empty: a static member's first join
    // took seconds longer on tansu, which the figure would include).
    let run_env = c.env_changes(config)?;
    let http = reqwest::Client::new();
    let redis_before = redis_command_counts(&c).await?;
    let redis_cpu_before = redis_cpu_seconds(&c).await?;
    let cpu_before = cpu_by_process();
    let waits_before = cpu_waits();
    let started = Instant::now();
    let mut members = ChildProcesses(Vec::new());
    let mut metrics_urls = Vec::new();
    for i in 0..b.aggregators.max(1) {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let mut env = run_env.clone();
        env.push(("METERLINE_HTTP__AGGREGATOR_LISTEN".into(), listen.clone()));
        let child = spawn_child(
            &format!("aggregate-{i}"),
            "aggregate",
            &env,
            0,
            b.config_path.as_deref(),
        )?;
        members.0.push((format!("aggregator {i}"), child));
        metrics_urls.push(format!("http://{listen}/metrics"));
    }
    // When the first offset was committed, and when half of them were: the start (process,
    // connections, group join) apart from the steady rate.
    let (mut first_commit, mut half_commit) = (None, None);
    let offsets = CommittedOffsets::new(&c, &c.aggregator.group_id, &c.kafka.usage_topic)?;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (role, child) in &mut members.0 {
            if let Some(status) = child.try_wait()? {
                bail!("{role} exited ({status}); see .local/log/bench-aggregate-*.log");
            }
        }
        // tansu may answer an offset fetch late while the group forms; the run's deadline
        // below still bounds the wait.
        let done = match offsets.sum() {
            Ok(done) => done,
            Err(e) if started.elapsed() < Duration::from_secs(1_800) => {
                eprintln!("committed offsets not read this time ({e}); asking again");
                continue;
            }
            Err(e) => return Err(e.context("the aggregator's committed offsets")),
        };
        if done > 0 {
            first_commit.get_or_insert_with(|| started.elapsed().as_secs_f64());
        }
        if done as usize >= b.events / 2 {
            half_commit.get_or_insert_with(|| started.elapsed().as_secs_f64());
        }
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
    // Read while the aggregators still run, so their time is in it.
    let cpu_ours = cpu_shares(&cpu_before, &cpu_by_process(), wall);
    let waits_ours = cpu_wait_line(&waits_before, &cpu_waits(), wall);
    let redis_cpu = redis_cpu_seconds(&c).await? - redis_cpu_before;
    let redis_commands = command_deltas(&redis_before, &redis_command_counts(&c).await?);
    // Peak resident memory, read while the processes still run.
    let peaks: Vec<f64> = members
        .0
        .iter()
        .map(|(_, child)| proc_status_mib(&child.id().to_string(), "VmHWM:"))
        .collect();
    let mut scraped = Vec::new();
    for url in &metrics_urls {
        scraped.push(metrics_text(&http, url).await?);
    }
    drop(members);
    let sum = |series: &str| -> f64 { scraped.iter().map(|t| counter_sum(t, series)).sum() };
    let fold_commands = sum("meterline_aggregator_redis_commands_total");
    let stages: Vec<(&str, f64)> = meterline_aggregator::metrics::STAGES
        .iter()
        .map(|s| {
            let series = format!("meterline_aggregator_stage_seconds_total{{stage=\"{s}\"");
            (*s, sum(&series))
        })
        .collect();
    let inserting = sum(&format!(
        "meterline_aggregator_stage_seconds_total{{stage=\"{}\"",
        meterline_aggregator::metrics::INSERT_STAGE
    ));
    let inserts = sum("meterline_aggregator_clickhouse_insert_events_count");
    let inserted = sum("meterline_aggregator_clickhouse_insert_events_sum");
    let split: Vec<String> = scraped
        .iter()
        .map(|t| counter_sum(t, "meterline_aggregator_records_total{stream=\"usage\"").to_string())
        .collect();
    println!(
        "aggregate: {ours:.0} events/s from Kafka to ClickHouse + Redis, offsets committed ({} events, {} accounts, {} aggregator(s))",
        b.events, b.accounts, b.aggregators
    );
    if b.aggregators > 1 {
        println!("records read per aggregator: {}", split.join(" + "));
    }
    println!("ceiling: rdkafka consuming the same topic and discarding: {ceiling:.0} events/s ({:.0} bytes/event)", bytes as f64 / seen as f64);
    println!("ratio: {:.2} of the ceiling", ours / ceiling);
    println!(
        "start: the raw consumer read its first record {raw_first:.1} s after subscribing ({:.0} events/s from then); the aggregator committed its first offsets {:.1} s after it was started, half of them at {:.1} s, all at {wall:.1} s (offsets are read every 250 ms)",
        seen as f64 / (raw_wall - raw_first).max(1e-3),
        first_commit.unwrap_or(f64::NAN),
        half_commit.unwrap_or(f64::NAN),
    );
    println!("CPU while the aggregator ran (cores used on average): {cpu_ours}");
    println!("CPU while the raw consumer ran: {cpu_raw}");
    println!("waiting for a core while the aggregator ran: {waits_ours}");
    println!("waiting for a core while the raw consumer ran: {waits_raw}");
    let peaks: Vec<String> = peaks.iter().map(|p| format!("{p:.0}")).collect();
    println!(
        "aggregator process peak RSS (VmHWM): {} MiB",
        peaks.join(" + ")
    );
    let all: u64 = redis_commands.iter().map(|(_, n)| n).sum();
    let top: Vec<String> = redis_commands
        .iter()
        .take(8)
        .map(|(name, n)| format!("{name} {:.2}", *n as f64 / b.events as f64))
        .collect();
    println!(
        "Redis commands per event: {:.2} ({all} commands of every kind, sent and run inside scripts, for {} events; the aggregator sent {fold_commands:.0} script calls); per event by command: {}",
        all as f64 / b.events as f64,
        b.events,
        top.join(", ")
    );
    println!(
        "Redis CPU: {:.1} µs per event ({redis_cpu:.1} s of {wall:.1} s wall, {:.0} % of a core)",
        redis_cpu * 1e6 / b.events as f64,
        100.0 * redis_cpu / wall
    );
    println!("aggregator wall time by stage {}", stage_breakdown(&stages));
    println!(
        "ClickHouse insert task (alongside the loop): busy {inserting:.1} s, {:.0} % of the wall time; {inserts:.0} inserts of {:.0} events on average",
        100.0 * inserting / wall,
        inserted / inserts.max(1.0)
    );
    Ok(())
}
