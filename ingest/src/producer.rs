//! The Kafka producer behind ingest: idempotent, acks=all, and awaited.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use meterline_infra::kafka::{client_config, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka did not acknowledge the batch: {0}")]
    NotAcknowledged(KafkaError),
    #[error("kafka client: {0}")]
    Client(KafkaError),
}

/// One framed record to produce: the partition key and the Avro payload.
pub struct OutgoingRecord {
    pub key: String,
    pub payload: Vec<u8>,
}

/// The producer is behind a lock so that it can be replaced after a failed batch (see
/// `EventProducer::replace_after_failure`); requests already under way keep the clone they
/// started with.
#[derive(Clone)]
pub struct EventProducer {
    producer: Arc<RwLock<FutureProducer>>,
    config: ClientConfig,
    replaced_at: Arc<Mutex<Option<Instant>>>,
}

impl EventProducer {
    pub fn new(kafka: &KafkaConfig, delivery_timeout: Duration) -> Result<Self, ProduceError> {
        let mut cfg = client_config(kafka);
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        let producer: FutureProducer = cfg.create().map_err(ProduceError::Client)?;
        Ok(Self {
            producer: Arc::new(RwLock::new(producer)),
            config: cfg,
            replaced_at: Default::default(),
        })
    }

    fn current(&self) -> FutureProducer {
        self.producer.read().expect("poisoned").clone()
    }

    /// Replaces the producer after a failed batch. A fatal error leaves librdkafka refusing
    /// every further message; and a broker that restarted without the idempotent producer's
    /// state answers the old producer id with errors until a new id is obtained. A fresh
    /// producer (at most one per second) gets a new id. Safe: every batch it replaces was
    /// answered 503, so the gateway resends it and downstream deduplication absorbs repeats.
    fn replace_after_failure(&self, producer: &FutureProducer) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(?code, %reason, "kafka producer hit a fatal error");
        }
        let mut last = self.replaced_at.lock().expect("poisoned");
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *self.producer.write().expect("poisoned") = fresh;
                *last = Some(Instant::now());
                tracing::warn!("replaced the kafka producer after a failed batch");
            }
            Err(e) => tracing::error!(error = %e, "could not create a new kafka producer"),
        }
    }

    /// Produces every record and waits until Kafka has acknowledged all of them. Any failure
    /// fails the whole call: the caller answers 503 and the gateway retries the batch.
    pub async fn produce_all(
        &self,
        topic: &str,
        records: &[OutgoingRecord],
    ) -> Result<(), ProduceError> {
        let producer = self.current();
        let result = Self::produce_with(&producer, topic, records).await;
        if result.is_err() {
            self.replace_after_failure(&producer);
        }
        result
    }

    async fn produce_with(
        producer: &FutureProducer,
        topic: &str,
        records: &[OutgoingRecord],
    ) -> Result<(), ProduceError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let record = FutureRecord::to(topic)
                .key(r.key.as_str())
                .payload(r.payload.as_slice());
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    // Local queue full or client failure. Wait for what was queued so that no
                    // callback outlives the request, then fail it.
                    join_all(pending).await;
                    return Err(ProduceError::NotAcknowledged(e));
                }
            }
        }
        let mut first_error = None;
        for outcome in join_all(pending).await {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_error.get_or_insert(e);
                }
                Err(_canceled) => {
                    first_error.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(ProduceError::NotAcknowledged(e)),
        }
    }

    /// True when the broker answers a metadata request for `topic` within `timeout`.
    pub async fn broker_reachable(&self, topic: &str, timeout: Duration) -> bool {
        let producer = self.current();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Waits for queued messages to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.current().flush(Timeout::After(timeout));
    }
}
