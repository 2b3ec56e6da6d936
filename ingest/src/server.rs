//! Ingest as a running component: its router served over HTTP (with the header-read limit of
//! `meterline_infra::http_server`) until shutdown, then the producer flushed.

use std::time::Duration;

use meterline_infra::{Component, RunFuture};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AppState;

pub struct IngestServer {
    pub state: AppState,
    pub listener: TcpListener,
    pub header_read_timeout: Duration,
    /// Routes served beside ingest's own on the same listener (the web console).
    pub extra_routes: Option<axum::Router>,
}

impl Component for IngestServer {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn metrics(&self) -> prometheus::Registry {
        self.state.metrics.registry.clone()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> RunFuture {
        Box::pin(async move {
            let producer = self.state.producer.clone();
            let mut app = crate::router(self.state);
            if let Some(extra) = self.extra_routes {
                app = app.merge(extra);
            }
            meterline_infra::http_server::serve(
                self.listener,
                app,
                self.header_read_timeout,
                shutdown,
            )
            .await?;
            producer.flush(Duration::from_secs(5));
            Ok(())
        })
    }
}
