//! What the health page asks Kafka: the aggregator's consumer lag per partition (the
//! partition's high watermark minus the group's committed offset) and the records waiting in
//! the dead-letter topic (high minus low watermark, summed over its partitions).
//!
//! One consumer with the aggregator's group id, made at the first look and kept (its broker
//! connections with it), reads the group's committed offsets (an OffsetFetch; it never
//! subscribes, joins the group or commits) and the watermarks. librdkafka's calls block, so
//! they run on the blocking pool, each bounded by [`TIMEOUT`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to look.
#[derive(Clone)]
pub struct KafkaProbe {
    /// The brokers and client properties (`meterline_infra::kafka::client_config`).
    pub base: ClientConfig,
    /// The aggregator's consumer group.
    pub group_id: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    consumer: Arc<Mutex<Option<BaseConsumer>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None` before its first commit.
    pub committed: Option<i64>,
    pub high_watermark: i64,
    /// Records not yet committed by the group.
    pub lag: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KafkaHealth {
    pub partitions: Vec<PartitionLag>,
    /// Records held in the dead-letter topic.
    pub dead_lettered: i64,
}

impl KafkaProbe {
    pub fn new(
        base: ClientConfig,
        group_id: String,
        topics: Vec<String>,
        dead_letter_topic: String,
    ) -> Self {
        Self {
            base,
            group_id,
            topics,
            dead_letter_topic,
            consumer: Default::default(),
        }
    }

    /// Asks the brokers; the error says what failed.
    pub async fn read(&self) -> Result<KafkaHealth, String> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.read_blocking())
            .await
            .map_err(|e| format!("kafka probe: {e}"))?
    }

    fn read_blocking(&self) -> Result<KafkaHealth, String> {
        // One look at a time; a failed look drops the consumer, the next one makes another.
        let mut slot = self.consumer.lock().expect("poisoned");
        if slot.is_none() {
            *slot = Some(
                self.base
                    .clone()
                    .set("group.id", &self.group_id)
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(|e| format!("kafka: {e}"))?,
            );
        }
        let consumer = slot.as_ref().expect("made above");
        let result = Self::look(self, consumer);
        if result.is_err() {
            *slot = None;
        }
        result
    }

    fn look(&self, consumer: &BaseConsumer) -> Result<KafkaHealth, String> {
        let metadata = consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| format!("kafka metadata: {e}"))?;
        let partitions_of = |topic: &str| -> Vec<i32> {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default()
        };
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            for p in partitions_of(topic) {
                tpl.add_partition(topic, p);
            }
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| format!("kafka committed offsets of {}: {e}", self.group_id))?;
        let mut partitions = Vec::new();
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
                .map_err(|err| {
                    format!("kafka watermarks of {}/{}: {err}", e.topic(), e.partition())
                })?;
            let committed = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            partitions.push(PartitionLag {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                committed,
                high_watermark: high,
                lag: (high - committed.unwrap_or(low)).max(0),
            });
        }
        let mut dead_lettered = 0;
        for p in partitions_of(&self.dead_letter_topic) {
            let (low, high) = consumer
                .fetch_watermarks(&self.dead_letter_topic, p, TIMEOUT)
                .map_err(|e| format!("kafka watermarks of {}/{p}: {e}", self.dead_letter_topic))?;
            dead_lettered += (high - low).max(0);
        }
        Ok(KafkaHealth {
            partitions,
            dead_lettered,
        })
    }
}
