//! The dead-letter topic. A poison record is copied there byte for byte, with headers naming
//! where it came from and why it could not be decoded; the partition then moves on.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::decode::Poison;
use crate::SinkError;

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// Produces every poison record and waits for Kafka to acknowledge them all.
    pub async fn send(&self, poison: &[Poison]) -> Result<(), SinkError> {
        for p in poison {
            let partition = p.record.partition.to_string();
            let offset = p.record.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "meterline.reason",
                    value: Some(p.reason.as_str()),
                })
                .insert(Header {
                    key: "meterline.source.topic",
                    value: Some(p.record.topic.as_str()),
                })
                .insert(Header {
                    key: "meterline.source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "meterline.source.offset",
                    value: Some(offset.as_str()),
                });
            let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic).headers(headers);
            if let Some(k) = &p.record.key {
                record = record.key(k);
            }
            if let Some(v) = &p.record.payload {
                record = record.payload(v);
            }
            self.producer
                .send(record, Timeout::Never)
                .await
                .map_err(|(e, _)| SinkError::Kafka(e))?;
            tracing::warn!(
                topic = %p.record.topic, partition = p.record.partition, offset = p.record.offset,
                reason = %p.reason, "undecodable record sent to the dead-letter topic"
            );
        }
        Ok(())
    }
}
