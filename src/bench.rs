//! `meterline bench quota`: `/v1/quota/check` latency at a fixed request rate while ingest and
//! the aggregator take a stream of usage events at the same time, all in this process and on
//! the real services.
//!
//! The quota load is *open loop*: request `i` is due at `start + i / rate`, and its latency is
//! counted from when it was due, not from when it was sent, so a stall shows up in the
//! percentiles instead of quietly lowering the rate (no coordinated omission).

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

use crate::services::{self, Components};
use crate::{migrate, Config};

#[derive(Debug, Clone)]
pub struct QuotaBench {
    /// Quota checks per second.
    pub rate: u64,
    pub duration: Duration,
    pub accounts: usize,
    /// Usage events per second posted through ingest meanwhile (batches of 500); 0 for none.
    pub ingest_rate: u64,
}

const MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "claude-3-haiku", "llama-3-8b"];

fn usage_batch(rng: &mut StdRng, accounts: usize, n: usize) -> String {
    let now = Utc::now().to_rfc3339();
    let events: Vec<_> = (0..n)
        .map(|_| {
            let a = rng.random_range(0..accounts);
            let region = ["us-east-1", "eu-west-1", "ap-south-1"][a % 3];
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": now,
                "account_id": format!("bench-{a}"),
                "api_key_id": format!("key-{a}"),
                "gateway_id": "gw-bench",
                "region": region,
                "cloud": "aws",
                "provider": "openai",
                "model": MODELS[rng.random_range(0..MODELS.len())],
                "input_tokens": rng.random_range(10..4000),
                "output_tokens": rng.random_range(10..1000),
                "cost_micros": rng.random_range(10..5000),
                "status": 200,
                "session_id": format!("s-{a}-{}", rng.random_range(0..5)),
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub async fn quota(config: &Config, bench: QuotaBench) -> Result<()> {
    migrate::run(config).await?;
    let pool = migrate::connect_postgres(config).await?;
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let token = services::token_store(config, &pool)
        .create(&name, &[Scope::Ingest, Scope::Read], None)
        .await
        .context("creating the bench token")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running = services::start(
        config,
        Components {
            ingest: true,
            aggregator: true,
            scorer: false,
            notifier: false,
        },
        Some(listener),
        shutdown.clone(),
    )
    .await?;
    let base = format!("http://{}", running.ingest_addr.context("ingest runs")?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;

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
    let counted = |text: String| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("meterline_aggregator_events_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut last = -1.0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = counted(
            http.get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        );
        if now == last {
            break;
        }
        last = now;
    }
    // Warm the profile cache and connections, as a running gateway fleet would have.
    for a in 0..bench.accounts {
        http.post(format!("{base}/v1/quota/check"))
            .bearer_auth(&token)
            .json(&json!({"account_id": format!("bench-{a}"), "model": "gpt-4o-mini"}))
            .send()
            .await?;
    }

    let stop = CancellationToken::new();
    let ingested = Arc::new(AtomicU64::new(0));
    let ingest_task = if bench.ingest_rate > 0 {
        let (http, base, token, stop, ingested) = (
            http.clone(),
            base.clone(),
            token.clone(),
            stop.clone(),
            ingested.clone(),
        );
        let accounts = bench.accounts;
        let per_sec = bench.ingest_rate;
        Some(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(11);
            let period = Duration::from_secs_f64(500.0 / per_sec as f64);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.is_cancelled() {
                tick.tick().await;
                let body = usage_batch(&mut rng, accounts, 500);
                if let Ok(r) = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    if r.status() == 202 {
                        ingested.fetch_add(500, Ordering::Relaxed);
                    }
                }
            }
        }))
    } else {
        None
    };

    let total = bench.rate * bench.duration.as_secs();
    let period = Duration::from_secs_f64(1.0 / bench.rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    let started = Instant::now();
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..bench.accounts)
            .map(|a| {
                json!({
                    "account_id": format!("bench-{a}"),
                    "model": MODELS[a % MODELS.len()],
                    "estimated_input_tokens": 800,
                    "estimated_output_tokens": 200,
                    "session_id": format!("s-{a}-1"),
                })
                .to_string()
            })
            .collect(),
    );
    // Pace from a plain thread: Tokio's timer ticks in whole milliseconds, which would add up
    // to a millisecond of lateness to every request at this rate.
    let runtime = tokio::runtime::Handle::current();
    let url = format!("{base}/v1/quota/check");
    let (pacer_http, pacer_token) = (http.clone(), token.clone());
    let pacer = std::thread::spawn(move || {
        let mut pick = StdRng::seed_from_u64(13);
        for i in 0..total {
            let due = started + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let body = bodies[pick.random_range(0..bodies.len())].clone();
            let (http, url, token, tx) = (
                pacer_http.clone(),
                url.clone(),
                pacer_token.clone(),
                tx.clone(),
            );
            runtime.spawn(async move {
                let ok = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false);
                let _ = tx.send(ok.then(|| due.elapsed().as_micros() as u64));
            });
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    while let Some(l) = rx.recv().await {
        match l {
            Some(us) => latencies.push(us),
            None => errors += 1,
        }
    }
    pacer.join().expect("pacer thread");
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    if let Some(t) = ingest_task {
        let _ = t.await;
    }
    latencies.sort_unstable();
    println!(
        "quota checks: {} in {elapsed:.1} s ({:.0}/s), errors {errors}",
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
        "ingest meanwhile: {:.0} events/s accepted; process RSS {:.0} MiB",
        ingested.load(Ordering::Relaxed) as f64 / elapsed,
        rss_mib()
    );
    // The server's own view: time from request to answer inside ingest, without the client.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("meterline_ingest_request_seconds_bucket{endpoint=\"quota_check\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), n))
        })
        .collect();
    if let Some(&(_, total)) = buckets.last() {
        let share = |p: f64| {
            buckets
                .iter()
                .find(|(_, n)| *n >= total * p)
                .map_or(f64::NAN, |(le, _)| le * 1000.0)
        };
        println!(
            "server side (histogram buckets, upper bounds) ms: p50 <= {}  p99 <= {}  p99.9 <= {}",
            share(0.5),
            share(0.99),
            share(0.999)
        );
    }
    shutdown.cancel();
    running.stop().await?;
    services::token_store(config, &pool)
        .revoke(&name)
        .await
        .ok();
    Ok(())
}
