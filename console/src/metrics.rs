//! The console's Prometheus metrics, served on ingest's `/metrics`. Labels are bounded sets
//! (the route's template, the status, the action, how it ended): never an account id, which
//! goes in spans instead.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::ConsoleState;

#[derive(Clone)]
pub struct ConsoleMetrics {
    pub registry: Registry,
    /// Time to answer, by route template and status.
    pub page_seconds: HistogramVec,
    /// Actions by kind and outcome (`done`, `refused`, `failed`).
    pub actions: IntCounterVec,
}

impl Default for ConsoleMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let page_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meterline_console_page_seconds",
                "Console requests: time to answer, by route and status",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5]),
            &["route", "status"],
        )
        .expect("valid metric");
        let actions = IntCounterVec::new(
            Opts::new(
                "meterline_console_actions_total",
                "Console actions (sign-in, sign-out, review decisions, retries) by outcome",
            ),
            &["action", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(page_seconds.clone()))
            .expect("registered once");
        registry
            .register(Box::new(actions.clone()))
            .expect("registered once");
        Self {
            registry,
            page_seconds,
            actions,
        }
    }

    /// Counts an action by the first word of its outcome (`done: viewer` is `done`).
    pub fn action(&self, action: &str, outcome: &str) {
        let class = outcome.split(':').next().unwrap_or(outcome);
        self.actions.with_label_values(&[action, class]).inc();
    }
}

/// Times every console request by its route's template.
pub async fn track(State(state): State<ConsoleState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .page_seconds
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}
