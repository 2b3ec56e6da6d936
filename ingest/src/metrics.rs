//! Prometheus metrics for ingest. Labels are bounded sets (endpoint, outcome): never an
//! account id, which goes in spans instead.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct IngestMetrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub events: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// The read path's one Redis round trip per request, so a slow answer can be told apart
    /// from a slow hot state.
    pub hot_state_seconds: HistogramVec,
    /// Quota decisions by kind (allow, degrade, limit_reached, deny).
    pub decisions: IntCounterVec,
    pub quota_events_recorded: IntCounter,
    pub quota_events_dropped: IntCounter,
}

impl IngestMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "meterline_ingest_requests_total",
                "HTTP requests to the event endpoints, by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "meterline_ingest_events_total",
                "Events by kind and outcome (accepted, rejected, unavailable)",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meterline_ingest_request_seconds",
                "Time from request to answer, including the Kafka acknowledgement",
            )
            // Fine below 2 ms: the quota check's target lives there.
            .buckets(vec![
                0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        let hot_state_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meterline_read_hot_state_seconds",
                "The read path's Redis round trip per request (part of meterline_ingest_request_seconds)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 1.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "meterline_quota_decisions_total",
                "Quota decisions by kind (allow, degrade, limit_reached, deny)",
            ),
            &["decision"],
        )
        .expect("valid metric");
        let quota_events_recorded = IntCounter::new(
            "meterline_quota_events_recorded_total",
            "Quota decisions written to ClickHouse's quota_events",
        )
        .expect("valid metric");
        let quota_events_dropped = IntCounter::new(
            "meterline_quota_events_dropped_total",
            "Quota decisions not recorded (queue full or write failed); a later call retries",
        )
        .expect("valid metric");
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(quota_events_recorded.clone()),
            Box::new(quota_events_dropped.clone()),
        ] {
            registry.register(c).expect("unique");
        }
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        registry.register(Box::new(events.clone())).expect("unique");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("unique");
        registry
            .register(Box::new(hot_state_seconds.clone()))
            .expect("unique");
        Self {
            registry,
            requests,
            events,
            request_seconds,
            hot_state_seconds,
            decisions,
            quota_events_recorded,
            quota_events_dropped,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
