//! The exactly-once watermark is per topic: after the usage and account topics are renamed
//! (or deleted and recreated), their offsets start again from 0, and those events must still
//! reach ClickHouse. With a watermark per stream only, every one of them sat below the old
//! topic's watermark and was skipped as "already inserted" while Redis counted it.

mod common;

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use meterline::services::Components;
use serde_json::{json, Value};

const BOTH: Components = Components::none().ingest().aggregator();

fn batch(prefix: &str, n: usize) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            usage_event(
                &format!("{prefix}-a{}", i % 30),
                now - ChronoDuration::seconds((i % 60) as i64),
                "gpt-4o",
                10,
                5,
            )
        })
        .collect()
}

async fn account_events_in_clickhouse(app: &TestApp) -> u64 {
    app.clickhouse()
        .query("SELECT count() FROM account_events")
        .fetch_one()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_renamed_topic_starting_at_offset_zero_still_reach_clickhouse() {
    let config = isolated_config(&unique_suffix());
    let mut first = spawn_with(config.clone(), BOTH).await;
    for _ in 0..4 {
        let (status, body) = first.post_events(&batch("old", 500)).await;
        assert_eq!(status, 202, "{body}");
    }
    let signup = |account: &str| {
        json!([{
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": Utc::now().to_rfc3339(),
            "account_id": account,
            "type": "signup",
        }])
    };
    let (status, body) = first
        .post_json("/v1/account-events", &signup("old-a1"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        first
            .wait_for_raw_count(2_000, Duration::from_secs(60))
            .await,
        2_000
    );
    first.stop().await;

    // Same ClickHouse database, Redis prefix and PostgreSQL; new topics and a new group.
    let mut renamed = config.clone();
    renamed.kafka.usage_topic = format!("{}-v2", config.kafka.usage_topic);
    renamed.kafka.account_topic = format!("{}-v2", config.kafka.account_topic);
    renamed.aggregator.group_id = format!("{}-v2", config.aggregator.group_id);
    let mut second = spawn_with(renamed, BOTH).await;
    let (status, body) = second.post_events(&batch("new", 500)).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = second
        .post_json("/v1/account-events", &signup("new-a1"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        second
            .wait_for_raw_count(2_500, Duration::from_secs(60))
            .await,
        2_500,
        "the renamed topic's events are in ClickHouse"
    );
    wait_for(
        "the second signup in ClickHouse",
        Duration::from_secs(30),
        || async { check(account_events_in_clickhouse(&second).await, |n| *n >= 2) },
    )
    .await;
    assert_eq!(account_events_in_clickhouse(&second).await, 2);
    second.stop().await;
}
