//! Prometheus metrics for the scorer. Labels are bounded (signal kind); account ids go in spans.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct ScorerMetrics {
    pub registry: Registry,
    pub scored: IntCounter,
    pub failures: IntCounter,
    pub signals: IntCounterVec,
    pub batch_seconds: Histogram,
}

impl ScorerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let scored = IntCounter::new("meterline_scorer_accounts_scored_total", "Accounts scored")
            .expect("valid metric");
        let failures = IntCounter::new(
            "meterline_scorer_batch_failures_total",
            "Batches that failed and were put back to be retried",
        )
        .expect("valid metric");
        let signals = IntCounterVec::new(
            Opts::new("meterline_scorer_signals_total", "Signals raised, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("meterline_scorer_batch_seconds", "Time to score one batch")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        for c in [
            Box::new(scored.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(signals.clone()),
            Box::new(batch_seconds.clone()),
        ] {
            registry.register(c).expect("unique");
        }
        Self {
            registry,
            scored,
            failures,
            signals,
            batch_seconds,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for ScorerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
