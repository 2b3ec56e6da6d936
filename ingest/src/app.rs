use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use meterline_schemas::avro::Schema;
use meterline_schemas::{IpHasher, UnsubscribeKey};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Checks the email channel's one-click unsubscribe links (`privacy.unsubscribe_key`).
    pub unsubscribe: UnsubscribeKey,
    pub usage: TopicSchema,
    pub account: TopicSchema,
    pub metrics: IngestMetrics,
    /// Other components' metrics, served from the same /metrics when they share the process.
    pub extra_registries: Vec<prometheus::Registry>,
    /// The read endpoints' state; `None` serves ingest alone (the read routes are not mounted).
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
    pub unsubscribe: UnsubscribeKey,
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
            unsubscribe: self.unsubscribe,
            usage: self.usage,
            account: self.account,
            metrics: self.metrics,
            extra_registries: Vec::new(),
            read: self.read,
        })
    }
}

/// The routes and their OpenAPI document, from one list: each handler's `#[utoipa::path]` gives
/// both its route and its documentation. Without a read path (`read` false) the read routes are
/// neither served (they answer 404) nor documented.
pub fn api(read: bool) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use routes::{events, health, notices, openapi, unsubscribe};
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::post_usage_events))
        .routes(routes!(events::post_account_events))
        .routes(routes!(unsubscribe::confirm_page, unsubscribe::unsubscribe))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi));
    if read {
        api = api
            .routes(routes!(routes::read::usage))
            .routes(routes!(routes::read::scores))
            .routes(routes!(routes::read::quota_check))
            .routes(routes!(notices::current))
            .routes(routes!(notices::shown))
            .routes(routes!(notices::clicked))
            .routes(routes!(routes::review::list))
            .routes(routes!(routes::review::show))
            .routes(routes!(routes::review::confirm))
            .routes(routes!(routes::review::clear));
    }
    api.split_for_parts()
}

pub fn router(state: AppState) -> Router {
    api(state.read.is_some()).0.with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use meterline_schemas::avro;
    use tower::ServiceExt;

    /// Ingest as [`AppParts`] builds it without a read path. Nothing here connects: the pool
    /// is lazy and the producer is not asked to deliver.
    fn ingest_alone() -> AppState {
        let topic = |name: &str, text: &str| TopicSchema {
            topic: name.to_owned(),
            schema_id: 1,
            schema: Arc::new(avro::parse_schema(text).unwrap()),
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        AppParts {
            config: IngestConfig::default(),
            kafka: KafkaConfig::default(),
            tokens: TokenStore::new(pool, Duration::from_secs(1)),
            ip_hasher: IpHasher::new("test"),
            unsubscribe: UnsubscribeKey::new("test"),
            usage: topic("usage-events", avro::USAGE_EVENT_SCHEMA),
            account: topic("account-events", avro::ACCOUNT_EVENT_SCHEMA),
            read: None,
            metrics: IngestMetrics::new(),
        }
        .build()
        .unwrap()
    }

    async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from("[]"))
            .unwrap();
        let resp = app.clone().oneshot(request).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    const READ_ROUTES: [(&str, &str); 10] = [
        ("GET", "/v1/accounts/acct-1/usage"),
        ("GET", "/v1/accounts/acct-1/scores"),
        ("GET", "/v1/accounts/acct-1/notice"),
        (
            "POST",
            "/v1/accounts/acct-1/notices/00000000-0000-4000-8000-000000000000/shown",
        ),
        (
            "POST",
            "/v1/accounts/acct-1/notices/00000000-0000-4000-8000-000000000000/clicked",
        ),
        ("POST", "/v1/quota/check"),
        ("GET", "/v1/review"),
        ("GET", "/v1/review/acct-1"),
        ("POST", "/v1/review/acct-1/confirm"),
        ("POST", "/v1/review/acct-1/clear"),
    ];

    #[tokio::test]
    async fn without_a_read_path_the_read_routes_are_not_served_nor_documented() {
        let app = router(ingest_alone());
        for (method, path) in READ_ROUTES {
            let (status, _) = send(&app, method, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
        // Ingest's own routes are there.
        assert_eq!(send(&app, "GET", "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            send(&app, "POST", "/v1/events").await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body) = send(&app, "GET", "/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert!(paths.iter().any(|p| *p == "/v1/events"), "{paths:?}");
        assert!(
            !paths.iter().any(|p| p.starts_with("/v1/accounts")
                || p.starts_with("/v1/review")
                || *p == "/v1/quota/check"),
            "read routes documented without a read path: {paths:?}"
        );
    }

    #[test]
    fn with_a_read_path_the_read_routes_are_documented() {
        let (_, doc) = api(true);
        for path in [
            "/v1/accounts/{id}/usage",
            "/v1/accounts/{id}/scores",
            "/v1/accounts/{id}/notice",
            "/v1/accounts/{id}/notices/{notice_id}/shown",
            "/v1/accounts/{id}/notices/{notice_id}/clicked",
            "/v1/quota/check",
            "/v1/review",
            "/v1/review/{id}",
            "/v1/review/{id}/confirm",
            "/v1/review/{id}/clear",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path}");
        }
    }
}
