//! Prometheus metrics for the notifier. Labels are bounded (destination kind, outcome); account
//! ids go in spans, never here.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct NotifierMetrics {
    pub registry: Registry,
    /// Signals read, by outcome: queued, skipped (an email not to send), duplicate, held,
    /// unrouted, rejected.
    pub signals: IntCounterVec,
    /// Send attempts, by destination kind (slack, hubspot, email, local) and outcome.
    pub sends: IntCounterVec,
    /// Notifications that went to the dead-letter state.
    pub dead: IntCounterVec,
    pub backlog: IntGauge,
}

impl NotifierMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let signals = IntCounterVec::new(
            Opts::new(
                "meterline_notifier_signals_total",
                "Signals read, by what became of them",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let sends = IntCounterVec::new(
            Opts::new(
                "meterline_notifier_sends_total",
                "Send attempts, by destination and outcome",
            ),
            &["destination", "outcome"],
        )
        .expect("valid metric");
        let dead = IntCounterVec::new(
            Opts::new(
                "meterline_notifier_dead_letters_total",
                "Notifications moved to the dead-letter state",
            ),
            &["destination"],
        )
        .expect("valid metric");
        let backlog = IntGauge::new(
            "meterline_notifier_claimed_last_poll",
            "Notifications claimed by the last outbox poll",
        )
        .expect("valid metric");
        for c in [
            Box::new(signals.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sends.clone()),
            Box::new(dead.clone()),
            Box::new(backlog.clone()),
        ] {
            registry.register(c).expect("unique");
        }
        Self {
            registry,
            signals,
            sends,
            dead,
            backlog,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for NotifierMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The bounded label for a destination: `slack:enterprise_inbound` → `slack`.
pub fn destination_label(destination: &str) -> &'static str {
    match destination.split(':').next() {
        Some("slack") => "slack",
        Some("hubspot") => "hubspot",
        Some("notice") => "notice",
        Some("email") => "email",
        _ => "other",
    }
}
