//! Prometheus metrics for the aggregator. No account ids in labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct AggregatorMetrics {
    pub registry: Registry,
    /// Records read, by stream (usage, account).
    pub records: IntCounterVec,
    /// Events by outcome: counted, duplicate, dead_lettered.
    pub events: IntCounterVec,
    pub batch_failures: IntCounter,
    pub batch_seconds: Histogram,
    pub redis_commands: IntCounter,
    pub last_commit_unix: IntGauge,
}

impl AggregatorMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let records = IntCounterVec::new(
            Opts::new("meterline_aggregator_records_total", "Kafka records read"),
            &["stream"],
        )
        .expect("metric");
        let events = IntCounterVec::new(
            Opts::new(
                "meterline_aggregator_events_total",
                "Events by outcome: counted, duplicate, dead_lettered",
            ),
            &["outcome"],
        )
        .expect("metric");
        let batch_failures = IntCounter::new(
            "meterline_aggregator_batch_failures_total",
            "Failed attempts to write a batch (retried)",
        )
        .expect("metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "meterline_aggregator_batch_seconds",
                "Time to write one batch to every sink",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("metric");
        let redis_commands = IntCounter::new(
            "meterline_aggregator_redis_commands_total",
            "Redis commands sent by the window fold",
        )
        .expect("metric");
        let last_commit_unix = IntGauge::new(
            "meterline_aggregator_last_commit_unixtime",
            "When offsets were last committed",
        )
        .expect("metric");
        for m in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(batch_failures.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(redis_commands.clone()),
            Box::new(last_commit_unix.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            records,
            events,
            batch_failures,
            batch_seconds,
            redis_commands,
            last_commit_unix,
        }
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for AggregatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
