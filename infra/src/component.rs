//! One shape for every long-running part of the pipeline.
//!
//! `meterline run` starts some set of ingest, the aggregator, the scorer and the notifier in
//! one process; `meterline aggregate` starts one of them. Either way the binary builds each
//! component from configuration, collects their Prometheus registries (so one `/metrics` page
//! serves them all), and then runs each through this trait until the shutdown token is
//! cancelled. A component that returns before shutdown has failed, and the process stops.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

/// The error a component stops with: its own typed error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What [`Component::run`] returns.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

pub trait Component: Send + 'static {
    /// A short name for logs and errors (`aggregator`, `ingest`, …).
    fn name(&self) -> &'static str;

    /// The component's metrics. Served at `/metrics` by ingest when it runs in the same
    /// process, otherwise by a [`crate::http_server::MetricsServer`].
    fn metrics(&self) -> prometheus::Registry;

    /// Runs until `shutdown` is cancelled (`Ok`) or the component fails (`Err`).
    fn run(self: Box<Self>, shutdown: CancellationToken) -> RunFuture;
}
