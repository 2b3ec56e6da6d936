//! Test harness: every test gets its own PostgreSQL database, ClickHouse database, Kafka topics,
//! consumer group and Redis key prefix on the real local servers, so tests run in parallel
//! without seeing each other. Like zero-to-production's `spawn_app`, the app is started on a
//! random port.
#![allow(dead_code)]

pub mod proxy;
pub mod standin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use meterline::config::Config;
use meterline::services::{self, Components, Running};
use meterline::{migrate, Config as _Config};
use meterline_ingest::Scope;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A configuration isolated from every other test.
pub fn isolated_config(id: &str) -> Config {
    let mut c = _Config::default();
    c.postgres.url = format!("postgres://postgres@127.0.0.1:5432/mlt_{id}");
    c.postgres.max_connections = 5;
    // Another Kafka-protocol broker than the local tansu (say an Apache Kafka), if given.
    if let Ok(brokers) = std::env::var("METERLINE_TEST_KAFKA_BROKERS") {
        c.kafka.brokers = brokers;
    }
    c.clickhouse.database = format!("mlt_{id}");
    c.kafka.usage_topic = format!("mlt-{id}-usage");
    c.kafka.account_topic = format!("mlt-{id}-account");
    c.kafka.dead_letter_topic = format!("mlt-{id}-dlq");
    c.kafka.signal_topic = format!("mlt-{id}-signals");
    c.kafka.partitions = 3;
    c.redis.key_prefix = format!("mlt:{id}:");
    c.aggregator.group_id = format!("mlt-{id}");
    c.aggregator.batch_max_wait_ms = 100;
    c.aggregator.retry_max_backoff_ms = 1_000;
    c.ingest.auth_cache_ttl_ms = 0;
    c.ingest.produce_timeout_ms = 3_000;
    c.privacy.ip_hash_key = format!("test-key-{id}");
    c
}

/// The `METERLINE_…` variables that reproduce `c` for a child process.
pub fn config_env(c: &Config) -> Vec<(String, String)> {
    vec![
        ("METERLINE_POSTGRES__URL".into(), c.postgres.url.clone()),
        (
            "METERLINE_CLICKHOUSE__DATABASE".into(),
            c.clickhouse.database.clone(),
        ),
        ("METERLINE_KAFKA__BROKERS".into(), c.kafka.brokers.clone()),
        (
            "METERLINE_KAFKA__USAGE_TOPIC".into(),
            c.kafka.usage_topic.clone(),
        ),
        (
            "METERLINE_KAFKA__ACCOUNT_TOPIC".into(),
            c.kafka.account_topic.clone(),
        ),
        (
            "METERLINE_KAFKA__DEAD_LETTER_TOPIC".into(),
            c.kafka.dead_letter_topic.clone(),
        ),
        (
            "METERLINE_KAFKA__SIGNAL_TOPIC".into(),
            c.kafka.signal_topic.clone(),
        ),
        (
            "METERLINE_REDIS__KEY_PREFIX".into(),
            c.redis.key_prefix.clone(),
        ),
        (
            "METERLINE_AGGREGATOR__GROUP_ID".into(),
            c.aggregator.group_id.clone(),
        ),
        (
            "METERLINE_AGGREGATOR__BATCH_MAX_WAIT_MS".into(),
            c.aggregator.batch_max_wait_ms.to_string(),
        ),
        (
            "METERLINE_AGGREGATOR__BATCH_MAX_EVENTS".into(),
            c.aggregator.batch_max_events.to_string(),
        ),
        (
            "METERLINE_PRIVACY__IP_HASH_KEY".into(),
            c.privacy.ip_hash_key.clone(),
        ),
        (
            "METERLINE_HTTP__AGGREGATOR_LISTEN".into(),
            c.http.aggregator_listen.clone(),
        ),
    ]
}

/// A `meterline aggregate` child process with a `/metrics` port of its own, killed when
/// dropped: a failed assertion must not leave it consuming (and holding the test's output open)
/// after the test. `CHILD_LOG=info` (say) shows its logs.
pub struct AggregatorProcess {
    child: std::process::Child,
    pub metrics_url: String,
}

impl AggregatorProcess {
    /// Starts one for `config`, with `env` on top (an instance id, a batch size).
    pub fn spawn(config: &Config, env: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut vars = config_env(config);
        vars.retain(|(k, _)| k != "METERLINE_HTTP__AGGREGATOR_LISTEN");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_meterline"))
            .arg("aggregate")
            .envs(vars)
            .env("METERLINE_HTTP__AGGREGATOR_LISTEN", &listen)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn meterline aggregate");
        Self {
            child,
            metrics_url: format!("http://{listen}/metrics"),
        }
    }

    /// SIGKILL: no chance to commit, flush or leave the group.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TestApp {
    pub config: Config,
    pub addr: SocketAddr,
    pub token: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_events(&self, events: &[Value]) -> (u16, Value) {
        self.post_json("/v1/events", &Value::Array(events.to_vec()))
            .await
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        self.config.clickhouse.client()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.config.redis.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub async fn pg(&self) -> sqlx::PgPool {
        migrate::connect_postgres(&self.config).await.unwrap()
    }

    /// Waits until ClickHouse holds `n` raw usage events (and fails past `timeout`).
    pub async fn wait_for_raw_count(&self, n: u64, timeout: Duration) -> u64 {
        let ch = self.clickhouse();
        let started = Instant::now();
        loop {
            let got: u64 = ch
                .query("SELECT count() FROM usage_events")
                .fetch_one()
                .await
                .unwrap_or(0);
            if got >= n || started.elapsed() > timeout {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }
}

/// Migrates an isolated configuration and creates an ingest token, without starting anything.
pub async fn prepare(config: &Config) -> String {
    migrate::run(config).await.expect("migrations");
    let pool = migrate::connect_postgres(config).await.unwrap();
    let token = services::token_store(config, &pool)
        .create(&format!("gw-{}", unique_suffix()), &[Scope::Ingest], None)
        .await
        .unwrap();
    pool.close().await;
    token
}

pub async fn spawn_with(config: Config, which: Components) -> TestApp {
    let token = prepare(&config).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = services::start(&config, which, Some(listener), CancellationToken::new())
        .await
        .expect("components start");
    TestApp {
        addr: running.ingest_addr.expect("ingest runs"),
        config,
        token,
        http: reqwest::Client::new(),
        running: Some(running),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(
        isolated_config(&unique_suffix()),
        Components {
            ingest: true,
            aggregator: true,
            scorer: false,
            notifier: false,
        },
    )
    .await
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A valid usage event.
pub fn usage_event(
    account: &str,
    at: DateTime<Utc>,
    model: &str,
    input: u64,
    output: u64,
) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": at.to_rfc3339(),
        "account_id": account,
        "api_key_id": format!("key-{account}"),
        "gateway_id": "gw-test",
        "region": "us-east-1",
        "cloud": "aws",
        "provider": "openai",
        "model": model,
        "input_tokens": input,
        "output_tokens": output,
        "cost_micros": input + output,
        "status": 200,
        "client_ip": "198.51.100.7",
    })
}

/// Sums the test computes on its own, independently of the pipeline, per window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sums {
    pub requests: u64,
    pub input: u64,
    pub output: u64,
    pub models: std::collections::BTreeSet<String>,
}

pub type WindowSums = HashMap<(String, i64), Sums>;
