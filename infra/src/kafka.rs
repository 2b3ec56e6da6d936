//! Kafka: where the brokers are, the topics' names, and the librdkafka settings every client
//! starts from.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach Kafka. `properties` are passed to librdkafka as they are, which is how SASL and
/// TLS are switched on (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub usage_topic: String,
    pub account_topic: String,
    pub dead_letter_topic: String,
    /// Where the scorer raises signals for the notifier.
    pub signal_topic: String,
    /// Partitions given to topics that `meterline migrate` creates.
    pub partitions: i32,
    pub replication_factor: i32,
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            usage_topic: "usage-events".into(),
            account_topic: "account-events".into(),
            dead_letter_topic: "dead-letters".into(),
            signal_topic: "account-signals".into(),
            partitions: 6,
            replication_factor: 1,
            properties: BTreeMap::new(),
        }
    }
}

/// Base librdkafka settings shared by every client we create, plus the user's `properties`
/// (security settings) on top.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// librdkafka's `fetch.wait.max.ms` for our consumers, unless `properties` sets it: 50 ms
/// instead of librdkafka's 500. tansu (0.6.0, `tansu-storage` `service/fetch.rs`) sleeps half of
/// a fetch's remaining wait (all of it under 250 ms) after reading, even when it found records,
/// so with 500 ms every fetch took at least 250 ms and a record waited up to that long to be
/// read. A broker that answers as soon as it has `fetch.min.bytes` is not slowed by a shorter
/// wait; an idle consumer polls more often.
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// `cfg` with [`FETCH_WAIT_MAX_MS`] unless it already names a wait.
pub fn with_fetch_wait(mut cfg: ClientConfig) -> ClientConfig {
    if cfg.get("fetch.wait.max.ms").is_none() {
        cfg.set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
    }
    cfg
}
