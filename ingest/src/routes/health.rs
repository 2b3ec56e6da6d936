use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use crate::AppState;

/// The process is up
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    security(),
    responses((status = 200, description = "Up", body = Object))
)]
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Kafka is reachable
///
/// Readiness: Kafka answers a metadata request for the usage topic. Until then a load balancer
/// should not send events here, because they could only get 503s.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    security(),
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Not ready", body = Object),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state
        .producer
        .broker_reachable(&state.usage.topic, Duration::from_secs(2))
        .await
    {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "status": "unavailable", "error": "kafka: broker or topic not reachable" }),
            ),
        )
    }
}

/// Prometheus metrics
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    security(),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = state.metrics.render();
        for r in &state.extra_registries {
            text.push_str(
                &prometheus::TextEncoder::new()
                    .encode_to_string(&r.gather())
                    .unwrap_or_default(),
            );
        }
        text
    })
}
