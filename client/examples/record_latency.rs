//! How long `record` takes while ingest is down (nothing listens at the endpoint), so the
//! buffer fills, the sender retries, and the oldest events are dropped.
//!
//!   cargo run --release -p meterline-client --example record_latency
//!
//! Prints p50, p99, p99.9 and max of 1,000,000 calls, each timed on its own.

use std::time::{Duration, Instant};

use meterline_client::{ClientConfig, GatewayClient, UsageEvent};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // A port nothing listens on: bind, read the port, let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ClientConfig::new(&format!("http://127.0.0.1:{port}"), "unused");
    config.buffer_capacity = 10_000;
    config.initial_backoff = Duration::from_millis(10);
    let client = GatewayClient::start(config);
    let template = UsageEvent::new(
        "acct-bench",
        "key-1",
        "gw-1",
        "eu-west-1",
        "aws",
        "openai",
        "gpt-4o",
        1200,
        300,
    );
    let n = 1_000_000;
    let mut ns = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = template.clone();
        e.input_tokens = i as u64;
        let t = Instant::now();
        client.record(e);
        ns.push(t.elapsed().as_nanos() as u64);
        if i % 1000 == 0 {
            // Let the sender run, as a real request path would between requests.
            tokio::task::yield_now().await;
        }
    }
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "record(): p50 {:.3} µs  p99 {:.3} µs  p99.9 {:.3} µs  max {:.3} µs; {:?}",
        p(0.5),
        p(0.99),
        p(0.999),
        p(1.0),
        client.counters()
    );
}
