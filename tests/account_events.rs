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

/// A signup from last year and the move to Enterprise in March, as an existing customer's
/// history: the first and the last day of the time window such a history covers.
fn last_year_and_march(
    now: chrono::DateTime<Utc>,
) -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    use chrono::{Datelike, TimeZone};
    // March of this year once it is over, else last year's.
    let march_year = if now.month() > 3 {
        now.year()
    } else {
        now.year() - 1
    };
    let march = Utc.with_ymd_and_hms(march_year, 3, 10, 9, 0, 0).unwrap();
    let signup = Utc
        .with_ymd_and_hms(march_year - 1, 6, 15, 14, 30, 0)
        .unwrap();
    (signup, march)
}

fn account_event(
    account: &str,
    kind: &str,
    at: chrono::DateTime<Utc>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut e = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": at.to_rfc3339(),
        "account_id": account,
        "type": kind,
    });
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

/// Waits until PostgreSQL has applied the account event `id`.
async fn wait_applied(pool: &sqlx::PgPool, id: &str) {
    wait_for(
        &format!("account event {id} applied"),
        Duration::from_secs(60),
        || async {
            let applied: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM account_events WHERE event_id = $1::uuid)",
            )
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
            check(applied, |a| *a)
        },
    )
    .await;
}

/// Misfire 2 of issue 19: an existing customer's history is accepted, whatever its age, and
/// the account is Enterprise in PostgreSQL, in ClickHouse's history and in the read path. Its
/// twin: a usage event 36 days old is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_customers_old_history_is_accepted_and_old_usage_still_refused() {
    let mut app = spawn_app().await;
    let now = Utc::now();
    let (signup_at, march) = last_year_and_march(now);
    let account = "acct-since-last-year";
    let signup = account_event(
        account,
        "signup",
        signup_at,
        json!({"email_domain": "acme.example", "company_size": 900}),
    );
    let to_enterprise = account_event(
        account,
        "plan_changed",
        march,
        json!({"plan": "enterprise", "seats": 60}),
    );
    let (status, body) = app
        .post_json("/v1/account-events", &json!([signup, to_enterprise]))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 2, "rejected": []}));

    // The twin: usage keeps its 35-day window, next to an acceptable usage event.
    let old_usage = usage_event(account, now - ChronoDuration::days(36), "gpt-4o", 10, 5);
    let fresh_usage = usage_event(account, now - ChronoDuration::minutes(1), "gpt-4o", 10, 5);
    let (status, body) = app.post_events(&[old_usage.clone(), fresh_usage]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(
        body["rejected"],
        json!([{"index": 0, "event_id": old_usage["event_id"], "error": "occurred_at: more than 35 days old"}])
    );

    let pool = app.pg().await;
    wait_applied(&pool, to_enterprise["event_id"].as_str().unwrap()).await;
    wait_applied(&pool, signup["event_id"].as_str().unwrap()).await;
    type Time = Option<chrono::DateTime<Utc>>;
    let row: (String, Option<i64>, Option<String>, Time, Time) = sqlx::query_as(
        "SELECT plan, seats, email_domain, signed_up_at, plan_changed_at FROM accounts WHERE account_id = $1",
    )
    .bind(account)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "enterprise".into(),
            Some(60),
            Some("acme.example".into()),
            Some(signup_at),
            Some(march)
        )
    );

    // ClickHouse's history has both, in their own (old) monthly partitions.
    let ch = app.clickhouse();
    let months = wait_for("the history in ClickHouse", Duration::from_secs(30), || async {
        let months: Vec<u32> = ch
            .query("SELECT toYYYYMM(occurred_at) AS m FROM account_events WHERE account_id = ? ORDER BY m")
            .bind(account)
            .fetch_all()
            .await
            .unwrap();
        check(months, |m| m.len() == 2)
    })
    .await;
    let month = |t: chrono::DateTime<Utc>| t.format("%Y%m").to_string().parse::<u32>().unwrap();
    assert_eq!(months, vec![month(signup_at), month(march)]);

    // The read path answers with the enterprise tier: gpt-4o, not a free model, is allowed.
    let read_token = meterline::services::token_store(&app.config, &pool)
        .create(
            &format!("reader-{}", unique_suffix()),
            &[meterline_ingest::Scope::Read],
            None,
        )
        .await
        .unwrap();
    let resp = app
        .http
        .get(app.url(&format!("/v1/accounts/{account}/usage")))
        .bearer_auth(&read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let usage: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(usage["plan"], "enterprise", "{usage}");
    let resp = app
        .http
        .post(app.url("/v1/quota/check"))
        .bearer_auth(&read_token)
        .json(&json!({"account_id": account, "model": "gpt-4o", "estimated_input_tokens": 800, "estimated_output_tokens": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let decision: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (&decision["decision"], &decision["model"]),
        (&json!("allow"), &json!("gpt-4o")),
        "{decision}"
    );
    app.stop().await;
}

/// Order by event time, months apart: a plan change from January posted after the move to
/// Enterprise in March leaves Enterprise, and March's seats and profile; the old events sent
/// again are applied and written to ClickHouse once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_plan_change_arriving_later_leaves_the_newer_plan() {
    let mut app = spawn_app().await;
    let now = Utc::now();
    let (signup_at, march) = last_year_and_march(now);
    let january = march - ChronoDuration::days(60);
    let account = "acct-late-history";
    let signup = account_event(
        account,
        "signup",
        signup_at,
        json!({"email_domain": "first.example", "company_size": 10}),
    );
    let to_enterprise = account_event(
        account,
        "plan_changed",
        march,
        json!({"plan": "enterprise", "seats": 60, "email_domain": "acme.example", "company_size": 900}),
    );
    let to_pro_earlier = account_event(
        account,
        "plan_changed",
        january,
        json!({"plan": "pro", "seats": 3, "email_domain": "stale.example", "company_size": 5}),
    );
    let (status, body) = app
        .post_json("/v1/account-events", &json!([signup, to_enterprise]))
        .await;
    assert_eq!((status, &body["accepted"]), (202, &json!(2)), "{body}");
    let pool = app.pg().await;
    wait_applied(&pool, to_enterprise["event_id"].as_str().unwrap()).await;
    let state = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, Option<i64>, Option<String>, Option<i64>)>(
            "SELECT plan, seats, email_domain, company_size FROM accounts WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let march_state = (
        "enterprise".to_owned(),
        Some(60),
        Some("acme.example".to_owned()),
        Some(900),
    );
    assert_eq!(state(pool.clone()).await, march_state);

    // The older change arrives later, with every earlier event sent again, then a sentinel
    // in the same partition (same account) that changes no plan.
    let (status, body) = app
        .post_json(
            "/v1/account-events",
            &json!([to_pro_earlier, signup, to_enterprise]),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (202, &json!(3)), "{body}");
    let sentinel = account_event(account, "upgrade_page_viewed", now, json!({}));
    assert_eq!(
        app.post_json("/v1/account-events", &json!([sentinel]))
            .await
            .0,
        202
    );
    wait_applied(&pool, sentinel["event_id"].as_str().unwrap()).await;
    assert_eq!(
        state(pool.clone()).await,
        march_state,
        "the January change must not undo March's plan, seats or profile"
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_events WHERE account_id = $1")
            .bind(account)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied, 4,
        "signup, two plan changes, the sentinel: each once"
    );

    // ClickHouse writes a batch before PostgreSQL applies it: the sentinel is there too, and
    // each old event once.
    let ch = app.clickhouse();
    let rows: Vec<(String, u64)> = ch
        .query("SELECT event_id, count() FROM account_events WHERE account_id = ? GROUP BY event_id ORDER BY event_id")
        .bind(account)
        .fetch_all()
        .await
        .unwrap();
    let mut want: Vec<(String, u64)> = [&signup, &to_enterprise, &to_pro_earlier, &sentinel]
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_owned(), 1))
        .collect();
    want.sort();
    assert_eq!(rows, want);
    app.stop().await;
}
