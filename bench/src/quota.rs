//! `meterline bench quota`: `/v1/quota/check` latency at a fixed request rate while ingest and
//! the aggregator take a stream of usage events at the same time, on the real services.
//!
//! `--layout split` runs the read path as a gateway deployment would: a `meterline ingest`
//! process that only answers checks, and the write path (`meterline ingest` taking the events,
//! `meterline aggregate`) in processes of its own, optionally at a lower CPU priority
//! (`--write-path-nice`), so the two compete for the machine the way separate services do
//! rather than for one Tokio runtime. `--read-path-realtime` puts the load generator, a local
//! Redis and the read process under `SCHED_FIFO` for the run: on two shared cores a woken
//! check otherwise waits for whatever write-path task holds the CPU.
//!
//! The quota load is *open loop* ([`crate::http_load`]): request `i` is due at
//! `start + i / rate`, and its latency is counted from when it was due, not from when it was
//! sent, so a stall shows up in the percentiles instead of quietly lowering the rate (no
//! coordinated omission). Alongside, a probe issues the check's own Redis reads straight from
//! this process ([`RedisProbe`]): the floor the check's latency is compared with, measured in
//! the same run. Each run keeps its hot state under a Redis prefix of its own and deletes it at
//! the end.
//!
//! A share of the accounts (`--notice-share`, 10 % by default) hold an unseen dashboard notice,
//! written to PostgreSQL before the services start, so the read process loads them as it would
//! in production and the measured checks include the notice lookup (and, for those accounts,
//! the notice in the answer). The warm-up asks for every account once and fails the run unless
//! exactly the accounts with a notice get theirs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod notices;

use crate::common::*;
use crate::http_load;
use crate::scrape::*;
use meterline::services::{self, Components};
use meterline::{migrate, Config};

#[derive(Debug, Clone)]
pub struct QuotaBench {
    /// Quota checks per second.
    pub rate: u64,
    pub duration: Duration,
    pub accounts: usize,
    /// Usage events per second posted through ingest meanwhile (batches of 500); 0 for none.
    pub ingest_rate: u64,
    pub layout: Layout,
    /// The configuration file the child processes of the split layout load.
    pub config_path: Option<std::path::PathBuf>,
    /// The share of the accounts holding an unseen dashboard notice ([`notices::BenchNotices`]).
    pub notice_share: f64,
    /// Usage events put straight on the topic just before the measured run, so the aggregator
    /// folds flat out while the checks are measured; 0 for none.
    pub backlog: usize,
}

/// Where the services under test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Ingest and the aggregator inside the benchmark's own process, sharing its runtime.
    Shared,
    /// A read-only `meterline ingest` for the checks, and the write path (`meterline ingest`,
    /// `meterline aggregate`) as separate processes at `write_path_nice`. With
    /// `read_path_realtime`, the read path (that process, Redis when it runs on this machine,
    /// and the load generator) runs under the `SCHED_FIFO` real-time policy for the run, as a
    /// gateway host that reserves the CPU for quota decisions would.
    Split {
        write_path_nice: i32,
        read_path_realtime: bool,
    },
}

/// Processes moved to `SCHED_FIFO` for the run, returned to `SCHED_OTHER` when dropped.
struct RealtimeProcesses(Vec<u32>);

impl RealtimeProcesses {
    /// `priority` is low in the policy's range (1–99): above every normal task, below the
    /// kernel's own real-time threads.
    fn promote(&mut self, pid: u32, priority: u8) -> Result<()> {
        let status = std::process::Command::new("chrt")
            .args([
                "--all-tasks",
                "--fifo",
                "--pid",
                &priority.to_string(),
                &pid.to_string(),
            ])
            .status()
            .context("running chrt (util-linux)")?;
        anyhow::ensure!(
            status.success(),
            "chrt --fifo on pid {pid} failed (needs CAP_SYS_NICE)"
        );
        self.0.push(pid);
        Ok(())
    }
}

impl Drop for RealtimeProcesses {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("chrt")
                .args(["--all-tasks", "--other", "--pid", "0", &pid.to_string()])
                .status();
        }
    }
}

/// The pid of the Redis server at `url`, if it runs on this machine (loopback).
async fn local_redis_pid(url: &str) -> Result<Option<u32>> {
    let client = redis::Client::open(url)?;
    let host = client.get_connection_info().addr.to_string();
    if !(host.contains("127.0.0.1") || host.contains("localhost") || host.contains("[::1]")) {
        return Ok(None);
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok()))
}

/// The URLs the benchmark talks to.
struct Endpoints {
    /// Takes the usage events.
    write: String,
    /// Answers the quota checks.
    read: String,
    /// Serves `meterline_aggregator_events_total`.
    aggregator_metrics: String,
}

/// What runs the services, so they are stopped however the benchmark ends.
enum Deployment {
    InProcess {
        shutdown: CancellationToken,
        running: services::Running,
    },
    Children(ChildProcesses),
}
/// Starts the services `bench.layout` asks for; child processes get `run_env` (the run's
/// changes to the configuration they would load).
async fn deploy(
    config: &Config,
    run_env: &[(String, String)],
    bench: &QuotaBench,
    http: &reqwest::Client,
) -> Result<(Endpoints, Deployment)> {
    match bench.layout {
        Layout::Shared => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let shutdown = CancellationToken::new();
            let running = services::start(
                config,
                Components::none().ingest().aggregator(),
                Some(listener),
                shutdown.clone(),
            )
            .await?;
            let base = format!("http://{}", running.ingest_addr.context("ingest runs")?);
            let endpoints = Endpoints {
                write: base.clone(),
                read: base.clone(),
                aggregator_metrics: format!("{base}/metrics"),
            };
            Ok((endpoints, Deployment::InProcess { shutdown, running }))
        }
        Layout::Split {
            write_path_nice, ..
        } => {
            let (read, write, aggregator) = (free_port()?, free_port()?, free_port()?);
            let path = bench.config_path.as_deref();
            let listen = |port: u16| format!("127.0.0.1:{port}");
            let with_run = |(var, value): (&str, String)| {
                let mut env = run_env.to_vec();
                env.push((var.to_owned(), value));
                env
            };
            let mut children = ChildProcesses(Vec::new());
            let reader = spawn_child(
                "quota-read",
                "ingest",
                &with_run(("METERLINE_HTTP__LISTEN", listen(read))),
                0,
                path,
            )?;
            children.0.push(("read".into(), reader));
            let writer = spawn_child(
                "quota-write",
                "ingest",
                &with_run(("METERLINE_HTTP__LISTEN", listen(write))),
                write_path_nice,
                path,
            )?;
            children.0.push(("write".into(), writer));
            let aggregator_child = spawn_child(
                "quota-aggregator",
                "aggregate",
                // A dynamic member of the run's own group (`bench_config`): a static one
                // rejoining right after the previous run's left is slow on tansu, and once made
                // its SQLite storage panic.
                &with_run(("METERLINE_HTTP__AGGREGATOR_LISTEN", listen(aggregator))),
                write_path_nice,
                path,
            )?;
            children.0.push(("aggregator".into(), aggregator_child));
            let endpoints = Endpoints {
                write: format!("http://{}", listen(write)),
                read: format!("http://{}", listen(read)),
                aggregator_metrics: format!("http://{}/metrics", listen(aggregator)),
            };
            for base in [
                &endpoints.read,
                &endpoints.write,
                &format!("http://{}", listen(aggregator)),
            ] {
                wait_healthy(http, base).await?;
            }
            Ok((endpoints, Deployment::Children(children)))
        }
    }
}

/// The floor under the check's latency, measured in the same run: the Redis round trip a
/// quota check makes (`HotState::usage`, one pipeline), issued straight from a thread of this
/// process, open loop at [`RedisProbe::RATE`] per second. A check's latency minus this is
/// what HTTP and the read process add.
struct RedisProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<u64>>>,
}

impl RedisProbe {
    const RATE: u64 = 200;

    async fn start(config: &Config, accounts: usize) -> Result<Self> {
        let redis = config.redis.clone();
        let hot_keys = meterline_schemas::keys::hot::HotKeys::new(config.redis.key_prefix.clone())?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("redis-probe".into())
            .spawn(move || -> Result<Vec<u64>> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let conn = redis.connect().await?;
                    let hot = meterline_ingest::read::HotState::new(conn, hot_keys);
                    let mut pick = StdRng::seed_from_u64(17);
                    let period = Duration::from_secs_f64(1.0 / Self::RATE as f64);
                    let started = Instant::now();
                    let mut out = Vec::new();
                    for i in 0.. {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        let due = started + period.mul_f64(i as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let a = pick.random_range(0..accounts);
                        let session = format!("s-{a}-1");
                        hot.usage(&format!("bench-{a}"), Some(&session), Utc::now())
                            .await?;
                        out.push(due.elapsed().as_micros() as u64);
                    }
                    Ok(out)
                })
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops probing; the latencies in microseconds.
    fn finish(self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe thread")
    }
}

pub async fn quota(config: &Config, bench: QuotaBench) -> Result<()> {
    // The run's own topics, ClickHouse database, Redis prefix and consumer group, as the other
    // benchmarks have: in the main ones, its sessions (hours long over repeated runs) became
    // most of the day's sessions, and the scorer's population median with them. Its Redis
    // keys are deleted at the end: left behind, runs filled Redis and slowed later ones.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (base, config) = (
        config,
        &crate::pipeline::bench_config(config, &run[..8]).await?,
    );
    let run_env = config.env_changes(base)?;
    let pool = migrate::connect_postgres(config).await?;
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let token = services::token_store(config, &pool)
        .create(&name, &[Scope::Ingest, Scope::Read], None)
        .await
        .context("creating the bench token")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let notices =
        notices::BenchNotices::write(&pool, &run, bench.accounts, bench.notice_share).await?;
    // Encoded before any service starts, so the work does not land on the measured processes.
    let backlog = if bench.backlog > 0 {
        crate::pipeline::encoded(config, &run[..8], bench.accounts, bench.backlog).await?
    } else {
        Vec::new()
    };
    let (endpoints, deployment) = deploy(config, &run_env, &bench, &http).await?;
    // The backlog's producer stands for the gateways' ingest, not for the load generator, but
    // `chrt --all-tasks` below moves every thread this process has, its librdkafka threads
    // too, so they run real time with it (a context-switch trace showed them at its priority).
    // This run's own waiting line (below) put this process's threads at about 0.13 of a core
    // in all while the backlog went out (BENCHMARKS.md, thirteenth session), so they take
    // little from Redis and the read process; promoting only the load generator's and the
    // probe's threads would be exact.
    let backlog_producer = crate::pipeline::producer(config)?;
    let mut realtime = RealtimeProcesses(Vec::new());
    if let (
        Layout::Split {
            read_path_realtime: true,
            ..
        },
        Deployment::Children(children),
    ) = (bench.layout, &deployment)
    {
        let reader = children.0.iter().find(|(role, _)| role == "read");
        // A FIFO task runs until it blocks. Redis goes above the read process, since every
        // check waits on it. The load generator goes above both: it stands for gateways on
        // other machines, and at the bottom its own waits for the CPU were counted as the read
        // path's latency (it takes little CPU, so it starves nobody).
        realtime.promote(reader.context("the read process runs")?.1.id(), 3)?;
        realtime.promote(std::process::id(), 5)?;
        match local_redis_pid(&config.redis.url).await? {
            Some(pid) => realtime.promote(pid, 4)?,
            None => tracing::warn!("Redis is not on this machine; it keeps its own priority"),
        }
    }
    let base = endpoints.write.clone();

    // Seed: every account gets usage, so checks read real windows.
    let mut rng = StdRng::seed_from_u64(7);
    let seed_batches = bench.accounts.div_ceil(500) * 2;
    for _ in 0..seed_batches {
        let body = usage_batch(&mut rng, bench.accounts, 500);
        let r = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "seeding: {}", r.status());
    }
    // Measure a pipeline at rest: wait until the aggregator has consumed everything (this
    // seed, and any backlog an earlier run left on the topics).
    let counted = |text: String| -> f64 { counter_sum(&text, "meterline_aggregator_events_total") };
    let mut last = -1.0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = counted(metrics_text(&http, &endpoints.aggregator_metrics).await?);
        if now == last {
            break;
        }
        last = now;
    }
    // Warm the profile cache and connections, as a running gateway fleet would have, and check
    // that exactly the accounts holding a notice get theirs.
    let base = endpoints.read.clone();
    for a in 0..bench.accounts {
        let r = http
            .post(format!("{base}/v1/quota/check"))
            .bearer_auth(&token)
            .json(&json!({"account_id": format!("bench-{a}"), "model": "gpt-4o-mini"}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "warm-up check: {}", r.status());
        notices.check(a, &r.json::<serde_json::Value>().await?)?;
    }
    println!(
        "dashboard notices: {} of {} accounts hold one; every warm-up decision carried exactly its own",
        notices.ids.len(),
        bench.accounts
    );

    let produced_before_run = (seed_batches * 500) as f64;
    let folded_before_run = counted(metrics_text(&http, &endpoints.aggregator_metrics).await?);

    let read_metrics = format!("{base}/metrics");
    let before = metrics_text(&http, &read_metrics).await?;

    let stop = CancellationToken::new();
    let ingested = Arc::new(AtomicU64::new(0));
    let ingest_task = if bench.ingest_rate > 0 {
        let (http, base, token, stop, ingested) = (
            http.clone(),
            endpoints.write.clone(),
            token.clone(),
            stop.clone(),
            ingested.clone(),
        );
        let per_sec = bench.ingest_rate;
        // Built before the clock starts: making 500 events' JSON takes a millisecond or two,
        // which must not land on a worker that is answering checks.
        let mut rng = StdRng::seed_from_u64(11);
        let batches = (per_sec * bench.duration.as_secs()).div_ceil(500) + 1;
        let bodies: Vec<String> = (0..batches)
            .map(|_| usage_batch(&mut rng, bench.accounts, 500))
            .collect();
        Some(tokio::spawn(async move {
            // Open loop: a batch is posted when due, whether or not the previous one has been
            // answered, so a slow write path shows as a lower accepted rate, not a lower ask.
            let period = Duration::from_secs_f64(500.0 / per_sec as f64);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut posts = tokio::task::JoinSet::new();
            for body in bodies {
                if stop.is_cancelled() {
                    break;
                }
                tick.tick().await;
                let (http, base, token, ingested) =
                    (http.clone(), base.clone(), token.clone(), ingested.clone());
                posts.spawn(async move {
                    let answer = http
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == 202 => {
                            ingested.fetch_add(500, Ordering::Relaxed);
                        }
                        Ok(r) => tracing::warn!(status = %r.status(), "ingest refused a batch"),
                        Err(e) => tracing::warn!(error = %e, "posting a batch failed"),
                    }
                });
            }
            posts.abort_all();
        }))
    } else {
        None
    };

    let total = bench.rate * bench.duration.as_secs();
    let read_addr: std::net::SocketAddr = base
        .strip_prefix("http://")
        .context("the read endpoint is http://")?
        .parse()
        .context("the read endpoint is an address")?;
    let requests: Vec<Vec<u8>> = (0..bench.accounts)
        .map(|a| {
            let body = json!({
                "account_id": format!("bench-{a}"),
                "model": MODELS[a % MODELS.len()],
                "estimated_input_tokens": 800,
                "estimated_output_tokens": 200,
                "session_id": format!("s-{a}-1"),
            })
            .to_string();
            http_load::post_request(&read_addr.to_string(), "/v1/quota/check", &token, &body)
        })
        .collect();
    // The backlog goes on the topic from the start of the measured run, faster than the
    // aggregator folds, so it folds flat out while the checks are measured.
    let backlog_len = backlog.len();
    let backlog_task = (!backlog.is_empty()).then(|| {
        let topic = config.kafka.usage_topic.clone();
        tokio::spawn(async move {
            crate::pipeline::produce_with(&backlog_producer, &topic, &backlog).await
        })
    });
    let (rate, accounts) = (bench.rate, bench.accounts);
    let probe = RedisProbe::start(config, accounts).await?;
    tracing::info!(seconds = bench.duration.as_secs(), "measuring");
    let waits_before = cpu_waits();
    let started = Instant::now();
    // The load generator has a thread of its own (see `http_load`), off this runtime, which
    // keeps posting the ingest load meanwhile.
    let load = tokio::task::spawn_blocking(move || {
        let mut pick = StdRng::seed_from_u64(13);
        http_load::run(read_addr, requests, rate, total, move |_| {
            pick.random_range(0..accounts)
        })
    })
    .await
    .context("load generator")??;
    let elapsed = started.elapsed().as_secs_f64();
    let waits = cpu_wait_line(&waits_before, &cpu_waits(), elapsed);
    stop.cancel();
    if let Some(t) = ingest_task {
        let _ = t.await;
    }
    let mut probed = probe.finish()?;
    probed.sort_unstable();
    let http_load::LoadResult {
        latencies_us: mut latencies,
        errors,
        error_kinds,
        connections,
    } = load;
    latencies.sort_unstable();
    println!("layout: {:?}", bench.layout);
    println!(
        "quota checks: {} in {elapsed:.1} s ({:.0}/s), errors {errors} {error_kinds:?}, {connections} connections",
        latencies.len(),
        latencies.len() as f64 / elapsed
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
    );
    println!(
        "the same Redis reads issued directly ({} probes), ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}",
        probed.len(),
        percentile(&probed, 0.50),
        percentile(&probed, 0.90),
        percentile(&probed, 0.99),
        percentile(&probed, 0.999),
    );
    println!("waiting for a core during the checks: {waits}");
    println!(
        "ingest meanwhile: {:.0} events/s accepted; benchmark process RSS {:.0} MiB",
        ingested.load(Ordering::Relaxed) as f64 / elapsed,
        rss_mib()
    );
    let folded = counted(metrics_text(&http, &endpoints.aggregator_metrics).await?);
    let backlog_put = match backlog_task {
        Some(t) if t.is_finished() => {
            let rate = t.await??;
            println!(
                "backlog: {backlog_len} events put on the topic during the run at {rate:.0} events/s"
            );
            Some(backlog_len)
        }
        Some(t) => {
            t.abort();
            println!("backlog: still being put on the topic when the run ended ({backlog_len} events asked)");
            None
        }
        None => Some(0),
    };
    let rate_folded = (folded - folded_before_run) / elapsed;
    match backlog_put {
        Some(put) => println!(
            "aggregator meanwhile: {rate_folded:.0} events/s folded; {:.0} events on the topic not yet folded at the end",
            produced_before_run + (ingested.load(Ordering::Relaxed) as usize + put) as f64 - folded
        ),
        None => println!(
            "aggregator meanwhile: {rate_folded:.0} events/s folded while the backlog was still arriving"
        ),
    }
    // The server's own view, counted over the measured run only (the warm-up is subtracted):
    // time from request to answer inside ingest, and within it the Redis round trip.
    let after = metrics_text(&http, &read_metrics).await?;
    for (what, series) in [
        ("server side", QUOTA_CHECK_SECONDS),
        ("of which Redis", QUOTA_CHECK_REDIS_SECONDS),
    ] {
        let run = histogram_buckets(&after, series)
            .into_iter()
            .zip(
                histogram_buckets(&before, series)
                    .into_iter()
                    .chain(std::iter::repeat((0.0, 0.0))),
            )
            .map(|((le, n), (_, was))| (le, n - was))
            .collect::<Vec<_>>();
        println!(
            "{what} (histogram buckets, upper bounds) ms: p50 <= {}  p90 <= {}  p99 <= {}  p99.9 <= {}",
            bucket_quantile(&run, 0.5),
            bucket_quantile(&run, 0.9),
            bucket_quantile(&run, 0.99),
            bucket_quantile(&run, 0.999)
        );
    }
    drop(realtime);
    match deployment {
        Deployment::InProcess { shutdown, running } => {
            shutdown.cancel();
            running.stop().await?;
        }
        Deployment::Children(children) => drop(children),
    }
    services::token_store(config, &pool)
        .revoke(&name)
        .await
        .ok();
    notices.remove(&pool).await?;
    Ok(())
}
