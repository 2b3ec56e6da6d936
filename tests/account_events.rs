//! Account events keep PostgreSQL's `accounts` current, once per event, and late events never
//! undo newer ones; ClickHouse keeps their history.

mod common;

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_events_update_accounts_exactly_once() {
    let mut app = spawn_app().await;
    let now = Utc::now();
    let ev = |kind: &str, minutes_ago: i64, extra: serde_json::Value| {
        let mut e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": (now - ChronoDuration::minutes(minutes_ago)).to_rfc3339(),
            "account_id": "acct-life",
            "type": kind,
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let signup = ev(
        "signup",
        60,
        json!({"email_domain": "Example.com", "company_size": 500, "signup_ip": "203.0.113.9", "device_id": "dev-1", "browser_signature": "sig-1"}),
    );
    let to_pro = ev("plan_changed", 30, json!({"plan": "pro"}));
    let seats = ev("seats_changed", 20, json!({"seats": 25}));
    let late_free = ev("plan_changed", 45, json!({"plan": "free"}));
    let batch = json!([signup, to_pro, seats, to_pro, late_free]);
    let (status, body) = app.post_json("/v1/account-events", &batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 5);
    // The same events again, as a retrying gateway would send them.
    assert_eq!(app.post_json("/v1/account-events", &batch).await.0, 202);
    // A sentinel behind them in the account's partition, which changes none of the fields
    // checked below: once it is applied, so is every copy before it.
    let sentinel = ev("upgrade_page_viewed", 1, json!({}));
    let (status, body) = app
        .post_json("/v1/account-events", &json!([sentinel]))
        .await;
    assert_eq!(status, 202, "{body}");

    let pool = app.pg().await;
    let sentinel_id = sentinel["event_id"].as_str().unwrap().to_owned();
    wait_for(
        "the sentinel account event",
        Duration::from_secs(60),
        || async {
            let applied: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM account_events WHERE event_id = $1::uuid)",
            )
            .bind(&sentinel_id)
            .fetch_one(&pool)
            .await
            .unwrap();
            check(applied, |a| *a)
        },
    )
    .await;
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_events WHERE account_id = 'acct-life'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(applied, 5, "four distinct events and the sentinel");
    let row: (String, Option<i64>, Option<String>, Option<i64>, Option<String>, bool) = sqlx::query_as(
        "SELECT plan, seats, email_domain, company_size, device_id, signed_up_at IS NOT NULL FROM accounts WHERE account_id = 'acct-life'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "pro".into(),
            Some(25),
            Some("example.com".into()),
            Some(500),
            Some("dev-1".into()),
            true
        )
    );
    let ip_hash: Option<String> =
        sqlx::query_scalar("SELECT signup_ip_hash FROM accounts WHERE account_id = 'acct-life'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let ip_hash = ip_hash.unwrap();
    assert_eq!(ip_hash.len(), 32);
    assert!(!ip_hash.contains("203.0"));

    let ch = app.clickhouse();
    let n = wait_for(
        "five account events in ClickHouse",
        Duration::from_secs(30),
        || async {
            let n: u64 = ch
                .query("SELECT count() FROM account_events")
                .fetch_one()
                .await
                .unwrap();
            assert!(n <= 5, "ClickHouse history counts each event once, got {n}");
            check(n, |n| *n == 5)
        },
    )
    .await;
    assert_eq!(n, 5);
    app.stop().await;
}
