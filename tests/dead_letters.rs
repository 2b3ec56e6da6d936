//! Records the aggregator cannot decode go to the dead-letter topic with a reason, and the good
//! records around them are still counted.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_consumption_goes_on() {
    let mut app = spawn_app().await;
    let now = Utc::now();
    let before: Vec<_> = (0..5)
        .map(|i| usage_event("acct-p", now, "gpt-4o", 10 + i, 1))
        .collect();
    assert_eq!(app.post_events(&before).await.0, 202);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.config.kafka.brokers)
        .create()
        .unwrap();
    // A valid frame to truncate: the first event, re-encoded as ingest would.
    let schema =
        meterline_schemas::avro::parse_schema(meterline_schemas::avro::USAGE_EVENT_SCHEMA).unwrap();
    let input: meterline_schemas::UsageEventInput =
        serde_json::from_value(before[0].clone()).unwrap();
    let event = input
        .validate(now, &meterline_schemas::IpHasher::new("k"))
        .unwrap();
    let pool = app.pg().await;
    let id: i32 = sqlx::query_scalar("SELECT id FROM avro_schemas ORDER BY id LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let good_frame = meterline_schemas::avro::encode(id, &schema, &event).unwrap();
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"json\": true}".to_vec(), "bad magic byte"),
        (
            vec![0, 0x7f, 0xff, 0xff, 0xfe, 1, 2, 3],
            "unknown schema id",
        ),
        (good_frame[..good_frame.len() / 2].to_vec(), "avro"),
    ];
    for (payload, _) in &poison {
        producer
            .send(
                FutureRecord::to(&app.config.kafka.usage_topic)
                    .key("acct-p")
                    .payload(payload),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let after: Vec<_> = (0..5)
        .map(|i| usage_event("acct-p", now, "gpt-4o", 100 + i, 1))
        .collect();
    assert_eq!(app.post_events(&after).await.0, 202);

    assert_eq!(
        app.wait_for_raw_count(10, Duration::from_secs(60)).await,
        10
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.config.kafka.brokers)
        .set("group.id", format!("dlq-reader-{}", unique_suffix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&app.config.kafka.dead_letter_topic])
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        let headers = m.headers().expect("dead letters carry headers");
        let mut reason = None;
        let mut source = None;
        for h in headers.iter() {
            match h.key {
                "meterline.reason" => {
                    reason = h.value.map(|v| String::from_utf8_lossy(v).into_owned())
                }
                "meterline.source.topic" => {
                    source = h.value.map(|v| String::from_utf8_lossy(v).into_owned())
                }
                _ => {}
            }
        }
        assert_eq!(
            source.as_deref(),
            Some(app.config.kafka.usage_topic.as_str())
        );
        let payload = m.payload().unwrap().to_vec();
        assert!(
            poison.iter().any(|(p, _)| *p == payload),
            "the record is copied as it was"
        );
        reasons.push(reason.expect("a reason"));
    }
    for (_, expected) in &poison {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected} in {reasons:?}"
        );
    }
    app.stop().await;
}
