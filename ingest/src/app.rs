use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use meterline_schemas::avro::Schema;
use meterline_schemas::IpHasher;

use crate::auth::TokenStore;
use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use crate::producer::EventProducer;
use crate::routes;
use meterline_infra::KafkaConfig;

/// A topic with the schema its records are written with.
#[derive(Clone)]
pub struct TopicSchema {
    pub topic: String,
    pub schema_id: i32,
    pub schema: Arc<Schema>,
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<IngestConfig>,
    pub tokens: TokenStore,
    pub producer: EventProducer,
    pub ip_hasher: IpHasher,
    pub usage: TopicSchema,
    pub account: TopicSchema,
    pub metrics: IngestMetrics,
    /// Other components' metrics, served from the same /metrics when they share the process.
    pub extra_registries: Vec<prometheus::Registry>,
    /// The read endpoints' state; `None` serves ingest alone (they answer 500).
    pub read: Option<crate::read::ReadPath>,
    /// Per-token event budget for the ingest endpoints.
    pub rate_limit: Arc<crate::rate_limit::EventRateLimiter>,
    /// Request-body bytes the ingest endpoints may hold at once, in KiB permits
    /// (`ingest.max_inflight_body_bytes`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.config.produce_timeout_ms)
    }
}

/// Everything needed to build the state, so the binary and the tests assemble it the same way.
pub struct AppParts {
    pub config: IngestConfig,
    pub kafka: KafkaConfig,
    pub tokens: TokenStore,
    pub ip_hasher: IpHasher,
    pub usage: TopicSchema,
    pub account: TopicSchema,
    pub read: Option<crate::read::ReadPath>,
    /// Built before the parts, so the read path's recorder can share its counters.
    pub metrics: IngestMetrics,
}

impl AppParts {
    pub fn build(self) -> Result<AppState, crate::producer::ProduceError> {
        let producer = EventProducer::new(
            &self.kafka,
            Duration::from_millis(self.config.produce_timeout_ms),
        )?;
        let rate_limit = Arc::new(crate::rate_limit::EventRateLimiter::new(
            self.config.rate_limit_events_per_sec,
            self.config.rate_limit_burst_events,
        ));
        let body_budget = Arc::new(tokio::sync::Semaphore::new(
            self.config
                .max_inflight_body_bytes
                .div_ceil(1024)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(AppState {
            rate_limit,
            body_budget,
            config: Arc::new(self.config),
            tokens: self.tokens,
            producer,
            ip_hasher: self.ip_hasher,
            usage: self.usage,
            account: self.account,
            metrics: self.metrics,
            extra_registries: Vec::new(),
            read: self.read,
        })
    }
}

/// Every public endpoint, as `(method, path)`; `openapi.json` documents exactly these (a test
/// holds the two together).
pub const PUBLIC_ROUTES: [(&str, &str); 12] = [
    ("post", "/v1/events"),
    ("post", "/v1/account-events"),
    ("get", "/v1/accounts/{id}/usage"),
    ("get", "/v1/accounts/{id}/scores"),
    ("get", "/v1/accounts/{id}/notice"),
    ("post", "/v1/accounts/{id}/notices/{notice_id}/shown"),
    ("post", "/v1/accounts/{id}/notices/{notice_id}/clicked"),
    ("post", "/v1/quota/check"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/accounts/{id}/usage", get(routes::read::usage))
        .route("/v1/accounts/{id}/scores", get(routes::read::scores))
        .route("/v1/accounts/{id}/notice", get(routes::notices::current))
        .route(
            "/v1/accounts/{id}/notices/{notice_id}/shown",
            post(routes::notices::shown),
        )
        .route(
            "/v1/accounts/{id}/notices/{notice_id}/clicked",
            post(routes::notices::clicked),
        )
        .route("/v1/quota/check", post(routes::read::quota_check))
        .route("/openapi.json", get(routes::openapi::openapi))
        .route("/v1/events", post(routes::events::post_usage_events))
        .route(
            "/v1/account-events",
            post(routes::events::post_account_events),
        )
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .with_state(state)
}
