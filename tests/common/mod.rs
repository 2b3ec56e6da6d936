//! Test harness: every test gets its own PostgreSQL database, ClickHouse database, Kafka topics,
//! consumer group and Redis key prefix on the real local servers, so tests run in parallel
//! without seeing each other. Like zero-to-production's `spawn_app`, the app is started on a
//! random port.
#![allow(dead_code)]

pub mod console;
pub mod proxy;
pub mod signals;
pub mod smtp;
pub mod standin;

use std::collections::{BTreeMap, HashMap};
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
    // The notifier's own group and static member id: with the defaults every test's notifier
    // joined one group as the same static member `notifier-0`, so notifiers of tests running
    // at the same time fenced each other, and tansu (which never expires a member) kept old
    // runs' members in it; signal_scope once waited 60 s for commits that never came.
    c.notifier.group_id = format!("mlt-{id}-notifier");
    c.notifier.instance_id = format!("notifier-{id}");
    c.aggregator.batch_max_wait_ms = 100;
    c.aggregator.retry_max_backoff_ms = 1_000;
    c.ingest.auth_cache_ttl_ms = 0;
    c.ingest.produce_timeout_ms = 3_000;
    c.privacy.ip_hash_key = format!("test-key-{id}");
    c
}

/// The test's whole configuration in a TOML file, for a child process: a child started with
/// [`ConfigFile::command`] loads exactly the `Config` the test holds, every key of it. The file
/// lives as long as this value.
pub struct ConfigFile {
    path: tempfile::TempPath,
}

impl ConfigFile {
    pub fn write(config: &Config) -> Self {
        // `Secret`s serialise as their values (only their Debug and Display redact), so the
        // child gets the webhooks and tokens too; the file is the test's own temporary file.
        let text = toml::to_string(config).expect("the configuration serialises as TOML");
        let mut file = tempfile::Builder::new()
            .prefix("meterline-test-")
            .suffix(".toml")
            .tempfile()
            .expect("a temporary configuration file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("configuration written");
        Self {
            path: file.into_temp_path(),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// `meterline --config <this file>`, with this process's environment except every
    /// `METERLINE_` variable that could change a key or name another file (only
    /// `METERLINE_LOG_FORMAT` is passed on). Add the subcommand and its arguments.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meterline"));
        cmd.arg("--config").arg(self.path());
        cmd.env_clear().envs(std::env::vars_os().filter(|(var, _)| {
            let name = var.to_string_lossy();
            !name.starts_with(meterline::config::ENV_PREFIX) || name == "METERLINE_LOG_FORMAT"
        }));
        cmd
    }

    /// The configuration a child started with `cmd` (from [`ConfigFile::command`]) loads: this
    /// file under exactly the environment the command gives, as `meterline` does at start.
    pub fn load_as_child(&self, cmd: &std::process::Command) -> Config {
        let env = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())));
        Config::load(Some(self.path()), env).expect("the child's configuration loads")
    }
}

/// Every key of a configuration with its value, for comparing two of them.
pub fn config_table(c: &Config) -> toml::Table {
    toml::Table::try_from(c).expect("the configuration serialises")
}

/// How often [`wait_for`] looks.
const POLL: Duration = Duration::from_millis(100);

/// Polls `probe` until it reports `Ok(value)` and returns that value; `Err(observed)` means
/// "not yet". Past `timeout` the test fails, naming `what` it waited for and the last value
/// it observed.
pub async fn wait_for<T, O, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, O>>,
    O: std::fmt::Debug,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(observed) if started.elapsed() >= timeout => {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last observed: {observed:#?}"
                )
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `Ok(value)` when `done(&value)`, else `Err(value)`: a [`wait_for`] probe's answer.
pub fn check<T>(value: T, done: impl FnOnce(&T) -> bool) -> Result<T, T> {
    if done(&value) {
        Ok(value)
    } else {
        Err(value)
    }
}

/// A `meterline aggregate` child process with a `/metrics` port of its own, killed when
/// dropped: a failed assertion must not leave it consuming (and holding the test's output open)
/// after the test. `CHILD_LOG=info` (say) shows its logs.
pub struct AggregatorProcess {
    child: std::process::Child,
    _config: ConfigFile,
    pub metrics_url: String,
}

impl AggregatorProcess {
    /// Starts one with exactly `config` (set an instance id, a batch size there), except its
    /// `/metrics` address, which is a free port.
    pub fn spawn(config: &Config) -> Self {
        let mut config = config.clone();
        config.http.aggregator_listen = format!("127.0.0.1:{}", free_port());
        let file = ConfigFile::write(&config);
        let child = file
            .command()
            .arg("aggregate")
            .env(
                "RUST_LOG",
                std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn meterline aggregate");
        Self {
            child,
            _config: file,
            metrics_url: format!("http://{}/metrics", config.http.aggregator_listen),
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

    /// `GET path`, with `token` as its bearer (`None` for a public route): the JSON body.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("a JSON body")
    }

    pub async fn post_events(&self, events: &[Value]) -> (u16, Value) {
        self.post_json("/v1/events", &Value::Array(events.to_vec()))
            .await
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        self.config.clickhouse.client()
    }

    /// The app's Redis: the standalone server, or the cluster when the app runs on one.
    pub async fn redis(&self) -> meterline_infra::redis::HotConn {
        self.config.redis.connect().await.unwrap()
    }

    /// The scorer's queue, over every share (`meterline_scorer::queue`).
    pub async fn scorer_queue(&self) -> meterline_scorer::queue::Queue {
        meterline_scorer::queue::Queue::new(
            self.config.redis.connect().await.unwrap(),
            meterline_schemas::keys::hot::HotKeys::new(self.config.redis.key_prefix.clone())
                .unwrap(),
        )
    }

    pub async fn pg(&self) -> sqlx::PgPool {
        migrate::connect_postgres(&self.config).await.unwrap()
    }

    /// Waits until ClickHouse holds at least `n` raw usage events (and fails past `timeout`).
    pub async fn wait_for_raw_count(&self, n: u64, timeout: Duration) -> u64 {
        let ch = self.clickhouse();
        wait_for(
            &format!("{n} raw events in ClickHouse"),
            timeout,
            || async {
                let got: u64 = ch
                    .query("SELECT count() FROM usage_events")
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                check(got, |&got| got >= n)
            },
        )
        .await
    }

    /// Waits until the aggregator running in this process has written at least `n` records
    /// (counted, or found to be duplicates) to ClickHouse, Redis and PostgreSQL: a batch is
    /// counted only once all of it is written.
    pub async fn wait_for_aggregated(&self, n: u64, timeout: Duration) -> u64 {
        let metrics = &self
            .running
            .as_ref()
            .expect("components running")
            .aggregator_metrics;
        wait_for(&format!("{n} records aggregated"), timeout, || async {
            let done: u64 = ["counted", "duplicate"]
                .iter()
                .map(|o| metrics.events.with_label_values(&[*o]).get())
                .sum();
            check(done, |done| *done >= n)
        })
        .await
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
    // The components' warnings and errors go to the test's captured output (shown when it
    // fails); RUST_LOG says otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
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
        Components::none().ingest().aggregator(),
    )
    .await
}

/// The value of a Prometheus metric (summed over its labels) at `url`; 0 when absent or
/// unreachable.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = match http.get(url).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// A usage event as the aggregator decodes it: one request of `account` at `at`, with no tokens
/// and every optional field empty. Tests set what they need with struct update syntax.
pub fn usage_record(
    id: impl Into<String>,
    account: &str,
    at: DateTime<Utc>,
) -> meterline_schemas::UsageEvent {
    meterline_schemas::UsageEvent {
        event_id: id.into(),
        occurred_at: at.timestamp_micros(),
        received_at: at.timestamp_micros(),
        account_id: meterline_schemas::AccountId::parse(account).unwrap(),
        api_key_id: "k1".into(),
        gateway_id: "g1".into(),
        region: "eu-west-1".into(),
        cloud: "aws".into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input_tokens: 0,
        output_tokens: 0,
        cost_micros: None,
        latency_ms: None,
        status: Some(200),
        session_id: None,
        user_id: None,
        plugins: vec![],
        pii_detected: false,
        client_ip_hash: None,
        device_id: None,
        prompt_hash: None,
    }
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

/// Where a test that runs the whole app puts its Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    Standalone,
    /// The local three-master cluster of `scripts/redis-cluster.sh` (`TEST_REDIS_CLUSTER`).
    Cluster,
}

impl Deployment {
    /// `config` on this deployment. `None` for the cluster when `TEST_REDIS_CLUSTER` is not set
    /// (`scripts/test.sh` sets it), with a note in the test's output.
    pub fn apply(self, mut config: Config) -> Option<Config> {
        if self == Deployment::Cluster {
            match std::env::var("TEST_REDIS_CLUSTER") {
                Ok(nodes) if !nodes.trim().is_empty() => config.redis.cluster_nodes = nodes,
                _ => {
                    eprintln!("TEST_REDIS_CLUSTER is not set: the cluster run is skipped (scripts/test.sh runs it)");
                    return None;
                }
            }
        }
        Some(config)
    }
}

/// The Redis deployments the hot-state v2 tests run on, under `config`'s prefix: the standalone
/// server, and the local cluster of `scripts/redis-cluster.sh` when
/// `TEST_REDIS_CLUSTER` names its nodes (`scripts/test.sh` starts it and sets it).
pub fn hot_deployments(config: &Config) -> Vec<meterline_infra::RedisConfig> {
    [Deployment::Standalone, Deployment::Cluster]
        .into_iter()
        .filter_map(|d| d.apply(config.clone()))
        .map(|c| c.redis)
        .collect()
}

/// Runs `test` on each Redis of [`hot_deployments`], under a fresh configuration's prefix.
pub async fn on_each_hot_deployment<F, Fut>(test: F)
where
    F: Fn(meterline_infra::RedisConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let config = isolated_config(&unique_suffix());
    for deployment in hot_deployments(&config) {
        test(deployment).await;
    }
}

/// Runs the test function `$name(Deployment)` twice, as `$name::standalone` and
/// `$name::cluster` (the cluster run returns early where `Deployment::apply` says so).
#[allow(unused_macros)]
macro_rules! on_every_redis {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$name(Deployment::Standalone).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(Deployment::Cluster).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_every_redis;

/// Every key under `redis.key_prefix` on every node of `redis` (one server, or each node of a
/// cluster: `SCAN` walks one node's keys), by node URL.
pub async fn hot_key_names(redis: &meterline_infra::RedisConfig) -> Vec<(String, Vec<String>)> {
    let nodes = match redis.cluster_node_list() {
        nodes if nodes.is_empty() => vec![redis.url.clone()],
        nodes => nodes,
    };
    let mut out = Vec::new();
    for node in nodes {
        let mut conn = redis::Client::open(node.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", redis.key_prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.push((node, keys));
    }
    out
}

/// Deletes every key under `redis.key_prefix` on every node of `redis`, one key per command
/// since a cluster refuses commands across slots.
pub async fn remove_hot_keys(redis: &meterline_infra::RedisConfig) {
    for (node, keys) in hot_key_names(redis).await {
        let mut conn = redis::Client::open(node.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("UNLINK").arg(key).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
}

/// Writes `events` into the hot state under `redis`'s prefix the way the aggregator's state
/// store does (layout v2): each account is loaded from Redis (claimed for a fresh epoch of a
/// `lay` partition), folds its events at `now`, and is written back. For tests that need
/// usage in Redis without running the pipeline.
pub async fn lay_usage(
    redis: &meterline_infra::RedisConfig,
    events: &[meterline_schemas::UsageEvent],
    now: DateTime<Utc>,
) {
    use meterline_aggregator::state::writer::{StateWriter, Written};
    let keys = meterline_schemas::keys::hot::HotKeys::new(redis.key_prefix.clone()).unwrap();
    let mut writer = StateWriter::new(redis.connect().await.unwrap(), keys, "lay", 0);
    let (epoch, _) = writer.claim().await.unwrap();
    let mut by_account: std::collections::BTreeMap<&str, Vec<&meterline_schemas::UsageEvent>> =
        Default::default();
    for e in events {
        by_account.entry(e.account_id.as_str()).or_default().push(e);
    }
    for (account, events) in by_account {
        let (mut state, o) = writer.load_account(epoch, account).await.unwrap().unwrap();
        for e in &events {
            state.fold(e, now);
        }
        let written = writer
            .write_account(
                epoch,
                account,
                (o, o + events.len() as i64),
                &mut state,
                now,
            )
            .await
            .unwrap();
        assert_eq!(written, Written::Applied, "{account}");
    }
}

/// A hash of the hot state as numbers, without the writer's `_` fields.
pub async fn hot_hash(
    redis: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> meterline_schemas::limits::WindowCounters {
    meterline_schemas::keys::hot::counters(
        redis::cmd("HGETALL")
            .arg(key)
            .query_async::<HashMap<String, String>>(redis)
            .await
            .unwrap(),
    )
}

/// An account's `cur` as stored (`keys::hot::decode_cur`): its guard and its fields; read, as
/// the readers do, from the hash written before 2026-12-05 when there is no value (`_e`, `_tp`
/// and `_o` as the guard); and epoch 0, offset -1 and no fields when there is neither.
pub async fn hot_cur(
    redis: &mut impl redis::aio::ConnectionLike,
    keys: &meterline_schemas::keys::hot::HotKeys,
    account: &str,
) -> meterline_schemas::keys::hot::Cur {
    use meterline_schemas::keys::hot;
    let (value, hash): (Option<Vec<u8>>, HashMap<String, String>) = redis::pipe()
        .get(keys.cur(account))
        .hgetall(keys.cur_hash(account))
        .query_async(redis)
        .await
        .unwrap();
    if let Some(value) = value {
        return hot::decode_cur(&value);
    }
    hot::Cur {
        epoch: hash.get("_e").map_or(0, |e| e.parse().unwrap()),
        offset: hash.get("_o").map_or(-1, |o| o.parse().unwrap()),
        topic_partition: hash.get("_tp").cloned().unwrap_or_default(),
        fields: hot::counters(hash),
    }
}

/// One window of an account in the hot state (layout v2): from `cur` while it is there, else
/// from its closed hash (`keys::hot::window`), with the TTL of the hash that holds it.
pub async fn hot_window(
    redis: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    account: &str,
    grain: meterline_schemas::keys::Grain,
    start: DateTime<Utc>,
) -> (meterline_schemas::limits::WindowCounters, i64) {
    use meterline_schemas::keys::hot;
    let keys = hot::HotKeys::new(prefix).unwrap();
    let cur = hot_cur(redis, &keys, account).await.fields;
    let live = hot::window(&cur, None, grain, start);
    let key = if live.is_empty() {
        keys.closed(account, grain, start)
    } else {
        keys.cur(account)
    };
    let closed = hot_hash(redis, &keys.closed(account, grain, start)).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(redis)
        .await
        .unwrap();
    (hot::window(&cur, Some(&closed), grain, start), ttl)
}

/// A month's distinct members of a listed dimension (models, providers, regions, clouds) in the
/// hot state: `v:` fields of `cur` while the month is there, else of its closed hash.
pub async fn hot_month_members(
    redis: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    account: &str,
    month: DateTime<Utc>,
    dim: meterline_schemas::keys::Dim,
) -> std::collections::BTreeSet<String> {
    use meterline_schemas::keys::{hot, Grain};
    let keys = hot::HotKeys::new(prefix).unwrap();
    let cur = hot_cur(redis, &keys, account).await.fields;
    let in_cur = format!("{}:v:{}:", hot::stamp(Grain::Month, month), dim.as_str());
    let mut out: std::collections::BTreeSet<String> = cur
        .keys()
        .filter_map(|f| f.strip_prefix(&in_cur).map(str::to_owned))
        .collect();
    if out.is_empty() {
        let closed = hot_hash(redis, &keys.closed(account, Grain::Month, month)).await;
        let prefix = format!("v:{}:", dim.as_str());
        out = closed
            .keys()
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
            .collect();
    }
    out
}

/// The hot state under `deployment`'s prefix as readers see it, each entry with its content (and, for the
/// keys whose expiry is a function of their content, the expiry):
/// - every window of every account, read from `cur` while it is there, else from its closed
///   hash (a window can sit in `cur` on one side and in its closed hash on the other), with its
///   counters, distinct counts and listed members; windows whose retention ends before
///   `live_after` are left out (they may expire between two snapshots);
/// - each account's `_tp` and `_o` (not `_e`, the writer's epoch) and open-session marks;
/// - session hashes, `dims` hashes and the partitions' seen sets and account indexes.
pub async fn hot_state_as_read(
    deployment: &meterline_infra::RedisConfig,
    live_after: i64,
) -> BTreeMap<String, String> {
    use meterline_schemas::keys::Grain;
    use redis::AsyncCommands;
    let prefix = deployment.key_prefix.as_str();
    let mut keys: Vec<String> = hot_key_names(deployment)
        .await
        .into_iter()
        .flat_map(|(_, keys)| keys)
        .collect();
    let redis = &mut deployment.connect().await.unwrap();
    let mut out = BTreeMap::new();
    let mut windows: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    keys.sort();
    for k in keys {
        let rest = &k[prefix.len()..];
        let expires: i64 = redis::cmd("EXPIRETIME")
            .arg(&k)
            .query_async(redis)
            .await
            .unwrap();
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(redis).await.unwrap();
        if kind == "set" {
            if rest.contains("seen:") || rest.ends_with("accounts") {
                let mut m: Vec<String> = redis.smembers(&k).await.unwrap();
                m.sort();
                out.insert(rest.to_owned(), format!("{m:?} expires {expires}"));
            }
            continue;
        }
        if rest.contains("}ids:") {
            // The counted ids: which checkpoint stored an id is the writer's business; the ids
            // are what deduplication reads back.
            let mut ids = Vec::new();
            for value in redis.lrange::<_, Vec<Vec<u8>>>(&k, 0, -1).await.unwrap() {
                meterline_aggregator::state::seen::decode_into(&value, &mut ids).unwrap();
            }
            ids.sort();
            ids.dedup();
            out.insert(rest.to_owned(), format!("{ids:?} expires {expires}"));
            continue;
        }
        let Some(account_rest) = rest.strip_prefix("u:{") else {
            continue; // checkpoints: their epoch differs, and their offset is ClickHouse's
        };
        let (account, what) = account_rest.split_once("}:").unwrap();
        if what == "live" {
            let value: Vec<u8> = redis.get(&k).await.unwrap();
            let cur = meterline_schemas::keys::hot::decode_cur(&value);
            let mut meta = BTreeMap::from([
                ("_tp".to_owned(), cur.topic_partition),
                ("_o".to_owned(), cur.offset.to_string()),
            ]);
            for (f, v) in cur.fields {
                let v = v.to_string();
                let parts: Vec<&str> = f.splitn(3, ':').collect();
                match parts.as_slice() {
                    [g, stamp, name] if Grain::from_code(g).is_some() => {
                        windows
                            .entry((account.to_owned(), format!("{g}:{stamp}")))
                            .or_default()
                            .insert((*name).to_owned(), v);
                    }
                    _ => {
                        meta.insert(f, v);
                    }
                }
            }
            out.insert(format!("{account} cur"), format!("{meta:?}"));
            continue;
        }
        let h: BTreeMap<String, String> = redis.hgetall(&k).await.unwrap();
        if what.starts_with("s:") || what.ends_with(":dims") {
            out.insert(
                format!("{account} {what}"),
                format!("{h:?} expires {expires}"),
            );
        } else {
            // A closed window: `cur`'s fields win when it is also there (it is not).
            let w = windows
                .entry((account.to_owned(), what.to_owned()))
                .or_default();
            for (f, v) in h {
                w.entry(f).or_insert(v);
            }
        }
    }
    for ((account, stamp), fields) in windows {
        let (g, s) = stamp.split_once(':').unwrap();
        let grain = Grain::from_code(g).unwrap();
        if grain.expires_at(grain.parse_stamp(s).unwrap()) <= live_after {
            continue;
        }
        let fields: BTreeMap<String, String> =
            fields.into_iter().filter(|(_, v)| v != "0").collect();
        out.insert(format!("{account} {stamp}"), format!("{fields:?}"));
    }
    out
}

/// Waits until the scorer has nothing left to do, so that every signal it raises is on the
/// topic: every share of its queue is empty, then `quiet` (an account whose scoring raises
/// nothing) is queued and scored again. A batch is scored, saved and raised whole before the
/// next starts, so the batch in progress when the queue ran empty is done by then.
pub async fn wait_until_scorer_idle(app: &TestApp, pool: &sqlx::PgPool, quiet: &str) {
    let queue = app.scorer_queue().await;
    wait_for(
        "the scorer's queue drained",
        Duration::from_secs(90),
        || async { check(queue.queued().await.unwrap(), |left| *left == 0) },
    )
    .await;
    let marked = Utc::now();
    queue.put_back(&[quiet.to_owned()]).await.unwrap();
    wait_for(
        &format!("{quiet} scored again"),
        Duration::from_secs(60),
        || async {
            let scored: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT scored_at FROM account_scores WHERE account_id = $1")
                    .bind(quiet)
                    .fetch_optional(pool)
                    .await
                    .unwrap();
            check(scored, |s| s.is_some_and(|s| s > marked))
        },
    )
    .await;
}
