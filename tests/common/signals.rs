//! The account-signals topic from the scorer's side: signals encoded in Avro with the
//! Confluent framing (the schema registered first, as the scorer does) and produced with a key,
//! so the tests of the notifier put on the topic exactly what a scorer would.

use std::time::Duration;

use meterline::config::Config;
use meterline::services;
use meterline_schemas::{avro, AccountSignal};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The signals as framed records, the signal schema registered in the test's registry.
pub async fn encode_signals(c: &Config, signals: &[AccountSignal]) -> Vec<Vec<u8>> {
    let pool = meterline::migrate::connect_postgres(c).await.unwrap();
    let id = services::registry(c, &pool)
        .register(
            &format!("{}-value", c.kafka.signal_topic),
            avro::ACCOUNT_SIGNAL_SCHEMA,
        )
        .await
        .unwrap();
    let schema = avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).unwrap();
    signals
        .iter()
        .map(|s| s.encode(id, &schema).unwrap())
        .collect()
}

/// Produces framed records onto the signal topic, all with `key` (one partition, in order),
/// each acknowledged by the broker.
pub async fn publish_signal_records(c: &Config, records: &[Vec<u8>], key: &str) {
    let producer: FutureProducer = meterline_infra::kafka::client_config(&c.kafka)
        .set("acks", "all")
        .create()
        .unwrap();
    for r in records {
        producer
            .send(
                FutureRecord::to(&c.kafka.signal_topic).key(key).payload(r),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("signal produced");
    }
}

/// [`encode_signals`] then [`publish_signal_records`].
pub async fn publish_signals(c: &Config, signals: &[AccountSignal], key: &str) {
    let records = encode_signals(c, signals).await;
    publish_signal_records(c, &records, key).await;
}
