//! Serving the HTTP API with limits on slow clients. `axum::serve` waits for a request's headers
//! for as long as the client likes, so a slowloris client holds connections open forever; here
//! every connection must deliver its request headers within `header_read_timeout` (hyper then
//! closes it), and ingest bounds the body read on its own (`ingest.body_read_timeout_ms`).
//! Shutdown is graceful: requests in progress finish, for up to ten seconds.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::component::{Component, RunFuture};

pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s of shutdown; closing them");
    }
    Ok(())
}

/// `/healthz` and `/metrics` for a process that runs components but not ingest (whose router
/// serves both itself).
pub struct MetricsServer {
    pub listener: TcpListener,
    pub registries: Vec<prometheus::Registry>,
    pub header_read_timeout: Duration,
}

impl MetricsServer {
    fn router(registries: Vec<prometheus::Registry>) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/metrics",
                get(move || {
                    let text = render(&registries);
                    async move { text }
                }),
            )
    }
}

/// The text exposition of every metric in `registries`, one after the other.
pub fn render(registries: &[prometheus::Registry]) -> String {
    let encoder = prometheus::TextEncoder::new();
    let mut out = String::new();
    for r in registries {
        if let Ok(text) = encoder.encode_to_string(&r.gather()) {
            out.push_str(&text);
        }
    }
    out
}

impl Component for MetricsServer {
    fn name(&self) -> &'static str {
        "metrics server"
    }

    fn metrics(&self) -> prometheus::Registry {
        prometheus::Registry::new()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> RunFuture {
        Box::pin(async move {
            let app = Self::router(self.registries);
            serve(self.listener, app, self.header_read_timeout, shutdown).await?;
            Ok(())
        })
    }
}
