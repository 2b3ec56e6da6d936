//! `meterline bench hostile`: ingest's memory and its service to a well-behaved gateway while
//! slow and hostile clients hit it at once.
//!
//! Ingest runs as a child process, so its resident memory is its own (`/proc/<pid>/status`).
//! For `--duration` seconds the benchmark sends, all together:
//!
//! - full-size bodies (`ingest.max_body_bytes` of events that fail validation) from
//!   `--large-senders` connections, back to back, without honouring `Retry-After`;
//! - slowloris connections that trickle one header line a second and never finish;
//! - requests with 1 MiB of headers;
//! - 100,000 levels of nested JSON;
//! - batches of 10,000 garbage events;
//!
//! while one gateway posts 100 valid events every 100 ms. It prints the baseline and peak RSS
//! next to the in-flight body budget (`ingest.max_inflight_body_bytes`), each attack's
//! outcomes, and the gateway's latency and statuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::common::{
    free_port, percentile, proc_status_mib, spawn_child, usage_batch, wait_healthy, ChildProcesses,
};
use meterline::{migrate, services, Config};

#[derive(Debug, Clone)]
pub struct HostileBench {
    pub duration: Duration,
    /// Connections sending full-size bodies back to back.
    pub large_senders: usize,
    /// Slowloris connections held open at once.
    pub slowloris: usize,
    /// The configuration file the ingest child loads.
    pub config_path: Option<std::path::PathBuf>,
}

/// Outcome counts per attack, e.g. `("large body", "503") -> 1234`.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<(&'static str, String), u64>>>);

impl Tally {
    fn add(&self, attack: &'static str, outcome: impl Into<String>) {
        *self
            .0
            .lock()
            .expect("tally lock")
            .entry((attack, outcome.into()))
            .or_default() += 1;
    }
}

/// A JSON array of `max_events` events, each padded so the whole is close to `max_bytes`; every
/// event lacks the required fields, so ingest parses all of it and accepts none.
fn large_body(max_bytes: usize, max_events: usize) -> Bytes {
    let per_event = (max_bytes / max_events).saturating_sub(64).max(16);
    let pad = "x".repeat(per_event);
    let mut body = String::with_capacity(max_bytes);
    body.push('[');
    for i in 0..max_events {
        if i > 0 {
            body.push(',');
        }
        let event = format!(r#"{{"event_id":"hostile-{i}","junk":"{pad}"}}"#);
        if body.len() + event.len() + 1 > max_bytes {
            break;
        }
        body.push_str(&event);
    }
    body.push(']');
    Bytes::from(body)
}

const LARGE_BODY: &str = "full-size body of invalid events";

/// What every posting attacker shares.
struct Attackers {
    http: reqwest::Client,
    url: String,
    token: String,
    stop: CancellationToken,
    tally: Tally,
}

impl Attackers {
    /// `connections` tasks posting `body` back to back until the stop, each answer tallied
    /// under `attack`; `Retry-After` is not honoured (that is what makes them hostile).
    fn post_back_to_back(
        &self,
        connections: usize,
        attack: &'static str,
        body: Bytes,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..connections)
            .map(|_| {
                let (http, url, token, body, stop, tally) = (
                    self.http.clone(),
                    self.url.clone(),
                    self.token.clone(),
                    body.clone(),
                    self.stop.clone(),
                    self.tally.clone(),
                );
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let r = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        tally.add(attack, status_of(r));
                    }
                })
            })
            .collect()
    }
}

fn status_of(r: reqwest::Result<reqwest::Response>) -> String {
    match r {
        Ok(r) => r.status().as_u16().to_string(),
        // A refused body may be cut off mid-send: the server answered without reading it.
        Err(e) if e.is_request() || e.is_body() => "closed while sending".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Reads until the server closes the connection or `limit` passes; returns the status line's
/// code, "closed" (closed without an answer) or "still open".
async fn answer_or_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                }
            }
            Err(_) => return "still open".into(),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.split_whitespace()
        .nth(1)
        .filter(|_| head.starts_with("HTTP/1.1"))
        .map_or_else(|| "closed".into(), str::to_owned)
}

pub async fn hostile(config: &Config, bench: HostileBench) -> Result<()> {
    migrate::run(config).await?;
    let pool = migrate::connect_postgres(config).await?;
    let name = format!("bench-hostile-{}", uuid::Uuid::new_v4().simple());
    let token = services::token_store(config, &pool)
        .create(&name, &[Scope::Ingest], None)
        .await
        .context("creating the bench token")?;
    // The well-behaved gateway has a token of its own, so the attackers' rate limit is not its.
    let gateway_name = format!("{name}-gateway");
    let gateway_token = services::token_store(config, &pool)
        .create(&gateway_name, &[Scope::Ingest], None)
        .await
        .context("creating the gateway's token")?;
    let port = free_port()?;
    let child = spawn_child(
        "hostile-ingest",
        "ingest",
        &[("METERLINE_HTTP__LISTEN".into(), format!("127.0.0.1:{port}"))],
        0,
        bench.config_path.as_deref(),
    )?;
    let pid = child.id().to_string();
    let children = ChildProcesses(vec![("ingest".into(), child)]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    wait_healthy(&http, &base).await?;

    // Warm up with valid traffic, so the baseline includes a working producer and caches.
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..20 {
        let r = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(usage_batch(&mut rng, 1000, 500))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "warm-up: {}", r.status());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = proc_status_mib(&pid, "VmRSS:");

    let stop = CancellationToken::new();
    let tally = Tally::default();
    let peak_kib = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    {
        let (pid, stop, peak_kib) = (pid.clone(), stop.clone(), peak_kib.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let kib = (proc_status_mib(&pid, "VmRSS:") * 1024.0) as u64;
                peak_kib.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let url = format!("{base}/v1/events");
    let body = large_body(config.ingest.max_body_bytes, config.ingest.max_events);
    let attackers = Attackers {
        http: http.clone(),
        url: url.clone(),
        token: token.clone(),
        stop: stop.clone(),
        tally: tally.clone(),
    };
    tasks.extend(attackers.post_back_to_back(bench.large_senders, LARGE_BODY, body.clone()));
    for i in 0..bench.slowloris {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the connections over a second, as a real attack's would be.
            tokio::time::sleep(Duration::from_millis((i % 1000) as u64)).await;
            while !stop.is_cancelled() {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                    tally.add("slowloris", "connect failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let opened = Instant::now();
                let _ = s
                    .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
                    .await;
                let mut line = 0;
                let outcome = loop {
                    let mut buf = [0u8; 512];
                    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break "closed",
                        Ok(Ok(_)) => break "answered",
                        Err(_) => {}
                    }
                    if stop.is_cancelled() {
                        break "still open at the end";
                    }
                    line += 1;
                    if s.write_all(format!("X-Slow-{line}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break "closed";
                    }
                };
                let held = opened.elapsed().as_secs();
                tally.add("slowloris", format!("{outcome} after {held} s"));
            }
        }));
    }
    for _ in 0..4 {
        let (stop, tally) = (stop.clone(), tally.clone());
        let big = "a".repeat(1 << 20);
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                    tally.add("1 MiB of headers", "connect failed");
                    continue;
                };
                let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
                let _ = s.write_all(request.as_bytes()).await;
                let outcome = answer_or_close(&mut s, Duration::from_secs(15)).await;
                tally.add("1 MiB of headers", outcome);
            }
        }));
    }
    let nested = Bytes::from("[".repeat(100_000));
    let garbage = Bytes::from(
        serde_json::to_string(
            &(0..10_000)
                .map(|i| serde_json::json!({"junk": i, "nested": [[[[i]]]]}))
                .collect::<Vec<_>>(),
        )
        .expect("garbage serialises"),
    );
    tasks.extend(attackers.post_back_to_back(2, "100,000 levels of nested JSON", nested));
    tasks.extend(attackers.post_back_to_back(2, "10,000 garbage events", garbage));
    // The well-behaved gateway: 100 valid events every 100 ms, latency from when each was due.
    let gateway = {
        // Its own client and connections, as a gateway on another host would have.
        let (http, url, token, stop) = (
            reqwest::Client::new(),
            url.clone(),
            gateway_token.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(9);
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.is_cancelled() {
                let due = tick.tick().await;
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(usage_batch(&mut rng, 1000, 100))
                    .send()
                    .await;
                latencies.push(due.elapsed().as_micros() as u64);
                *statuses.entry(status_of(r)).or_default() += 1;
            }
            (latencies, statuses)
        })
    };

    let started = Instant::now();
    tokio::time::sleep(bench.duration).await;
    stop.cancel();
    let (mut latencies, statuses) = gateway.await?;
    // Attack tasks end at their next request boundary; slowloris ones within a second.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let peak = peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
    let hwm = proc_status_mib(&pid, "VmHWM:");
    let budget = config.ingest.max_inflight_body_bytes as f64 / (1 << 20) as f64;
    latencies.sort_unstable();

    println!(
        "hostile clients for {elapsed:.0} s against one ingest process (pid {pid}){}",
        if drained.is_err() {
            "; some attackers were still busy 30 s after the end"
        } else {
            ""
        }
    );
    println!(
        "ingest RSS MiB: baseline {baseline:.0}, peak sampled {peak:.0}, VmHWM {hwm:.0}; \
         in-flight body budget {budget:.0}, max body {:.0}",
        config.ingest.max_body_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "peak over baseline: {:.0} MiB = {:.2} x the in-flight body budget",
        hwm - baseline,
        (hwm - baseline) / budget
    );
    let large_sent: u64 = tally
        .0
        .lock()
        .expect("tally lock")
        .iter()
        .filter(|((attack, _), _)| *attack == LARGE_BODY)
        .map(|(_, n)| n)
        .sum();
    println!(
        "full-size body requests: {large_sent}, each announcing {:.1} MiB (refused ones are not read)",
        body.len() as f64 / (1 << 20) as f64
    );
    println!("attack outcomes:");
    for ((attack, outcome), n) in tally.0.lock().expect("tally lock").iter() {
        println!("  {attack:<32} {outcome:<28} {n}");
    }
    println!(
        "well-behaved gateway: {} batches of 100; statuses {statuses:?}; latency ms p50 {:.1}  p99 {:.1}  max {:.1}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    drop(children);
    for token_name in [&name, &gateway_name] {
        services::token_store(config, &pool)
            .revoke(token_name)
            .await
            .ok();
    }
    Ok(())
}
