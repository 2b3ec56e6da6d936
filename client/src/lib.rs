//! The gateway client: how a gateway reports usage to Meterline without ever slowing a request.
//!
//! ```no_run
//! # async fn demo() {
//! use meterline_client::{ClientConfig, GatewayClient, UsageEvent};
//! let client = GatewayClient::start(ClientConfig::new("http://127.0.0.1:8080", "mlt_…"));
//! client.record(UsageEvent::new("acct-42", "key-1", "gw-eu-1", "eu-west-1", "aws", "openai", "gpt-4o", 1200, 300));
//! client.shutdown().await; // sends what is buffered
//! # }
//! ```
//!
//! * [`GatewayClient::record`] only appends to a bounded in-memory buffer: no I/O, no `await`.
//!   When the buffer is full the *oldest* event is dropped and counted (`dropped`): the buffer
//!   never grows without limit, and fresh usage matters more than stale.
//! * A background task sends batches of up to `batch_size` events every `flush_interval`, or
//!   as soon as a batch is full, to `POST /v1/events` ([`GatewayClient::record_account`]'s
//!   account events to `POST /v1/account-events`, before the usage of the same batch).
//! * On `503`, `429` or a network error it retries the same batch (so the same `event_id`s,
//!   which ingest counts once) with exponential backoff and jitter, waiting at least what
//!   `Retry-After` asks. It gives a batch up only when ingest says the events themselves are
//!   invalid (`400`, `413`, `415`), and logs why. Events ingest rejects one by one in a `202`
//!   are counted as `rejected`.
//! * [`GatewayClient::flush`] waits until everything recorded so far is settled;
//!   [`GatewayClient::shutdown`] flushes and stops the task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One usage event, as the event contract in Meterline's README defines it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageEvent {
    /// The idempotency key; set once, kept across retries.
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: String,
    pub api_key_id: String,
    pub gateway_id: String,
    pub region: String,
    pub cloud: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    pub pii_detected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_hash: Option<String>,
}

impl UsageEvent {
    /// An event happening now, with a fresh id and the required fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account_id: &str,
        api_key_id: &str,
        gateway_id: &str,
        region: &str,
        cloud: &str,
        provider: &str,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: Utc::now(),
            account_id: account_id.into(),
            api_key_id: api_key_id.into(),
            gateway_id: gateway_id.into(),
            region: region.into(),
            cloud: cloud.into(),
            provider: provider.into(),
            model: model.into(),
            input_tokens,
            output_tokens,
            cost_micros: None,
            latency_ms: None,
            status: None,
            session_id: None,
            user_id: None,
            plugins: vec![],
            pii_detected: false,
            client_ip: None,
            device_id: None,
            prompt_hash: None,
        }
    }
}

/// One account event (signup, plan or seat change, notice interaction, churn), as the event
/// contract in Meterline's README defines it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountEvent {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: String,
    /// `signup`, `plan_changed`, `seats_changed`, `profile_updated`, `upgrade_page_viewed`,
    /// `notice_shown`, `notice_clicked`, `email_unsubscribed` or `churned`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signup_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_signature: Option<String>,
    /// The account holder's contact email (`signup`, `profile_updated`): personal data, where
    /// the email channel writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
}

impl AccountEvent {
    /// An event of `kind` happening now, with a fresh id.
    pub fn new(account_id: &str, kind: &str) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: Utc::now(),
            account_id: account_id.into(),
            kind: kind.into(),
            plan: None,
            seats: None,
            email_domain: None,
            company_size: None,
            signup_ip: None,
            device_id: None,
            browser_signature: None,
            contact_email: None,
        }
    }
}

/// What the buffer holds: either kind of event, sent to its own endpoint.
#[derive(Debug, Clone)]
enum Outgoing {
    Usage(UsageEvent),
    Account(AccountEvent),
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Ingest's base URL, e.g. `http://127.0.0.1:8080`.
    pub endpoint: String,
    /// A token with the `ingest` scope.
    pub token: String,
    /// Most events held in memory; past it the oldest are dropped.
    pub buffer_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: &str, token: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            buffer_capacity: 100_000,
            batch_size: 500,
            flush_interval: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What happened to recorded events so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accepted by ingest (in Kafka).
    pub sent: u64,
    /// Sent again after a failed attempt (counted per event and attempt).
    pub retried: u64,
    /// Dropped from a full buffer, oldest first.
    pub dropped: u64,
    /// Refused by ingest as invalid.
    pub rejected: u64,
}

#[derive(Default)]
struct Shared {
    buffer: Mutex<VecDeque<Outgoing>>,
    wake: Notify,
    closing: AtomicBool,
    /// Force a send of whatever is buffered, full batch or not.
    flush_now: AtomicBool,
    recorded: AtomicU64,
    sent: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn settled(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
            + self.dropped.load(Ordering::Acquire)
            + self.rejected.load(Ordering::Acquire)
    }
}

pub struct GatewayClient {
    shared: Arc<Shared>,
    capacity: usize,
    batch_size: usize,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Worth retrying: `Retry-After` if the server gave one.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The events are invalid; retrying cannot help.
    #[error("{0}")]
    Invalid(String),
}

impl GatewayClient {
    /// Starts the sender task on the current Tokio runtime.
    pub fn start(config: ClientConfig) -> Self {
        let shared = Arc::new(Shared::default());
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .expect("an HTTP client with default TLS");
        let sender = Sender {
            shared: shared.clone(),
            http,
            config: config.clone(),
        };
        Self {
            shared,
            capacity: config.buffer_capacity.max(1),
            batch_size: config.batch_size.max(1),
            worker: Mutex::new(Some(tokio::spawn(sender.run()))),
        }
    }

    /// Buffers `event` for sending. Never waits on the network.
    pub fn record(&self, event: UsageEvent) {
        self.push(Outgoing::Usage(event));
    }

    /// Buffers an account event for `POST /v1/account-events`, with the same batching, retries
    /// and counters as usage events. Never waits on the network.
    pub fn record_account(&self, event: AccountEvent) {
        self.push(Outgoing::Account(event));
    }

    fn push(&self, event: Outgoing) {
        let len = {
            let mut b = self.shared.buffer.lock().expect("poisoned");
            if b.len() >= self.capacity {
                b.pop_front();
                self.shared.dropped.fetch_add(1, Ordering::AcqRel);
            }
            b.push_back(event);
            b.len()
        };
        self.shared.recorded.fetch_add(1, Ordering::AcqRel);
        if len >= self.batch_size {
            self.shared.wake.notify_one();
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            sent: self.shared.sent.load(Ordering::Acquire),
            retried: self.shared.retried.load(Ordering::Acquire),
            dropped: self.shared.dropped.load(Ordering::Acquire),
            rejected: self.shared.rejected.load(Ordering::Acquire),
        }
    }

    /// Why the latest failed attempt failed, for operators (cleared by a success).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().expect("poisoned").clone()
    }

    /// Events recorded and not yet sent, rejected or dropped.
    pub fn pending(&self) -> u64 {
        self.shared
            .recorded
            .load(Ordering::Acquire)
            .saturating_sub(self.shared.settled())
    }

    /// Sends what is buffered now and waits until every event recorded before the call is
    /// settled (sent, rejected or dropped). While ingest is down this waits for it.
    pub async fn flush(&self) {
        let target = self.shared.recorded.load(Ordering::Acquire);
        while self.shared.settled() < target {
            self.shared.flush_now.store(true, Ordering::Release);
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Flushes, then stops the sender.
    pub async fn shutdown(&self) {
        self.flush().await;
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let worker = self.worker.lock().expect("poisoned").take();
        if let Some(w) = worker {
            let _ = w.await;
        }
    }
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        // Without `shutdown`, the task stops at once; unsent events are lost.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

struct Sender {
    shared: Arc<Shared>,
    http: reqwest::Client,
    config: ClientConfig,
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Sender {
    async fn run(self) {
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                return;
            }
            let ready = {
                let b = self.shared.buffer.lock().expect("poisoned");
                b.len() >= self.config.batch_size
            };
            if !ready && !self.shared.flush_now.swap(false, Ordering::AcqRel) {
                // Until the interval passes, a batch fills up, or someone flushes; then send
                // whatever is there.
                let _ =
                    tokio::time::timeout(self.config.flush_interval, self.shared.wake.notified())
                        .await;
                self.shared.flush_now.store(false, Ordering::Release);
            }
            loop {
                let batch: Vec<Outgoing> = {
                    let mut b = self.shared.buffer.lock().expect("poisoned");
                    let n = b.len().min(self.config.batch_size);
                    b.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == self.config.batch_size;
                let (mut usage, mut accounts) = (Vec::new(), Vec::new());
                for e in batch {
                    match e {
                        Outgoing::Usage(u) => usage.push(u),
                        Outgoing::Account(a) => accounts.push(a),
                    }
                }
                // Account events first: a signup then lands before its account's usage.
                if !accounts.is_empty() {
                    self.deliver("/v1/account-events", &accounts).await;
                }
                if !usage.is_empty() {
                    self.deliver("/v1/events", &usage).await;
                }
                if !full || self.shared.closing.load(Ordering::Acquire) {
                    break;
                }
            }
        }
    }

    /// Sends one batch until ingest takes it or says it is invalid.
    async fn deliver<T: Serialize>(&self, path: &str, batch: &[T]) {
        let body = match serde_json::to_vec(batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "could not encode a batch; dropping it");
                self.shared
                    .rejected
                    .fetch_add(batch.len() as u64, Ordering::AcqRel);
                return;
            }
        };
        let mut backoff = self.config.initial_backoff;
        loop {
            match self.send(path, &body).await {
                Ok((accepted, rejected)) => {
                    *self.shared.last_error.lock().expect("poisoned") = None;
                    self.shared.sent.fetch_add(accepted, Ordering::AcqRel);
                    self.shared.rejected.fetch_add(rejected, Ordering::AcqRel);
                    return;
                }
                Err(SendError::Invalid(why)) => {
                    tracing::warn!(events = batch.len(), reason = %why, "ingest refused the batch as invalid; dropping it");
                    self.shared
                        .rejected
                        .fetch_add(batch.len() as u64, Ordering::AcqRel);
                    return;
                }
                Err(SendError::Retry { reason, after }) => {
                    *self.shared.last_error.lock().expect("poisoned") = Some(reason.clone());
                    if self.shared.closing.load(Ordering::Acquire) {
                        tracing::warn!(events = batch.len(), %reason, "closing with a batch unsent");
                        return;
                    }
                    let jitter = rand::rng().random_range(0.5..1.0);
                    let wait = backoff.mul_f64(jitter).max(after.unwrap_or_default());
                    tracing::debug!(%reason, wait_ms = wait.as_millis() as u64, "retrying a batch");
                    self.shared
                        .retried
                        .fetch_add(batch.len() as u64, Ordering::AcqRel);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// Returns (accepted, rejected).
    async fn send(&self, path: &str, body: &[u8]) -> Result<(u64, u64), SendError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.config.endpoint))
            .bearer_auth(&self.config.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("network: {e}"),
                after: None,
            })?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let text = resp.text().await.unwrap_or_default();
        match status {
            202 => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let accepted = v["accepted"].as_u64().unwrap_or(0);
                let rejected = v["rejected"].as_array().map_or(0, |r| r.len() as u64);
                for r in v["rejected"].as_array().into_iter().flatten() {
                    tracing::warn!(event_id = %r["event_id"], error = %r["error"], "ingest rejected an event");
                }
                Ok((accepted, rejected))
            }
            400 | 413 | 415 | 422 => Err(SendError::Invalid(format!("{status}: {text}"))),
            _ => Err(SendError::Retry {
                reason: format!("{status}: {text}"),
                after,
            }),
        }
    }
}
