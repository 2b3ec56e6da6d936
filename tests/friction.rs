//! Progressive friction and grace end to end: usage posted through ingest, folded by the
//! aggregator into Redis and ClickHouse, and quota checks answered by the read path, with
//! their messages; grace use recorded once per account, limit and window in ClickHouse
//! `grace_usage` (through `quota_events` and migration 0013's materialized view).
//!
//! The free tier allows 100 requests a day with a 15 % grace buffer, so requests 101 to 115
//! are served from grace and the 116th is cut off; Pro allows 100 with no buffer.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use common::*;
use meterline::services::{self, Components};
use meterline::Config;
use meterline_ingest::Scope;
use meterline_schemas::keys::Grain;
use serde_json::{json, Value};

const UP: &str = "https://up.example/upgrade";

fn config() -> Config {
    let mut c = isolated_config(&unique_suffix());
    c.quota.upgrade_url = UP.into();
    for (tier, grace) in [(&mut c.tiers.free, 15.0), (&mut c.tiers.pro, 0.0)] {
        tier.requests_per_minute = 100_000.0;
        tier.allowed_models = vec!["tiny".into(), "small".into()];
        tier.fallback_model = "small".into();
        tier.limits = [("day_requests".to_owned(), 100.0)].into();
        tier.grace_percent = grace;
    }
    c
}

/// "in 3 h 12 min" from `t` to the next UTC midnight, counted here on its own: minutes
/// rounded up, hours and minutes below a day.
fn until_midnight(t: DateTime<Utc>) -> String {
    let next = Grain::Day.next_window(Grain::Day.window_start(t));
    let minutes = ((next - t).num_seconds() + 59) / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("in {m} min"),
        (h, 0) => format!("in {h} h"),
        (h, m) => format!("in {h} h {m} min"),
    }
}

struct Check {
    body: Value,
    /// The reset phrase as it read just before and just after the call (a minute may turn
    /// in between).
    resets: [String; 2],
}

impl Check {
    /// The message, with its reset phrase checked and replaced by `{resets}`.
    fn message(&self) -> String {
        let m = self.body["message"].as_str().unwrap_or_default();
        for r in &self.resets {
            let phrase = format!("resets at 00:00 UTC ({r})");
            if m.contains(&phrase) {
                return m.replace(&phrase, "{resets}");
            }
        }
        panic!("no reset phrase {:?} in {m:?}", self.resets)
    }

    /// The body without the message, which [`Check::message`] checks.
    fn structure(&self) -> Value {
        let mut b = self.body.clone();
        b.as_object_mut().unwrap().remove("message");
        b
    }
}

async fn quota_check(app: &TestApp, reader: &str, account: &str) -> Check {
    let before = Utc::now();
    let body: Value = app
        .http
        .post(app.url("/v1/quota/check"))
        .bearer_auth(reader)
        .json(&json!({"account_id": account, "model": "tiny"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Check {
        body,
        resets: [until_midnight(before), until_midnight(Utc::now())],
    }
}

/// Sleeps past a UTC midnight that is less than five minutes away or ago: usage is posted
/// three minutes back and must land in the day the checks read.
async fn clear_of_midnight() {
    let now = Utc::now();
    let start = Grain::Day.window_start(now);
    let next = Grain::Day.next_window(start);
    let margin = ChronoDuration::minutes(5);
    let until = if now - start < margin {
        start + margin
    } else if next - now < margin {
        next + margin
    } else {
        return;
    };
    tokio::time::sleep((until - now).to_std().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_climb_through_indicator_prompt_grace_and_cutoff() {
    clear_of_midnight().await;
    let mut app = spawn_with(config(), Components::none().ingest().aggregator()).await;
    let pool = app.pg().await;
    let reader = services::token_store(&app.config, &pool)
        .create(&format!("reader-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    let id = unique_suffix();
    let started = Utc::now();
    let at = started - ChronoDuration::minutes(3);
    let day = Grain::Day.stamp(Grain::Day.window_start(at));
    let resets_at = json!(Grain::Day.next_window(Grain::Day.window_start(at)));

    // The Pro account's plan comes through ingest too, before its usage.
    let pro = format!("{id}-pro-102");
    let signup = json!([{"event_id": uuid::Uuid::new_v4().to_string(), "occurred_at": at.to_rfc3339(),
        "account_id": pro, "type": "signup", "plan": "pro"}]);
    let (status, body) = app.post_json("/v1/account-events", &signup).await;
    assert_eq!(status, 202, "{body}");

    // (account, plan, requests posted)
    let free = |n: u64| (format!("{id}-free-{n}"), "free", n);
    let accounts: Vec<(String, &str, u64)> = [72, 96, 102, 114, 115, 117]
        .into_iter()
        .map(free)
        .chain([(pro.clone(), "pro", 102)])
        .collect();
    let mut posted = 0;
    for (account, _, n) in &accounts {
        let events: Vec<Value> = (0..*n)
            .map(|_| usage_event(account, at, "tiny", 10, 0))
            .collect();
        let (status, body) = app.post_events(&events).await;
        assert_eq!(status, 202, "{body}");
        posted += n;
    }
    // Every event (and the signup) written to ClickHouse, Redis and PostgreSQL before the
    // first check: a check on part of an account's usage would record grace it never used.
    app.wait_for_aggregated(posted + 1, Duration::from_secs(60))
        .await;
    // Each account is where it was driven, and the Pro plan is what the read path sees.
    for (account, plan, n) in &accounts {
        wait_for(
            &format!("{account} on {plan} at {n} requests"),
            Duration::from_secs(15),
            || async {
                let c = quota_check(&app, &reader, account).await;
                let used = ["warning", "limit_reached"]
                    .iter()
                    .find_map(|k| c.body[*k]["used"].as_f64());
                check(c.body, |b| used == Some(*n as f64) && b["plan"] == *plan)
            },
        )
        .await;
    }

    let allow = |account: &str, plan: &str| {
        json!({
            "account_id": account,
            "decision": "allow",
            "plan": plan,
            "model": "tiny",
            "warning": null,
            "degraded": null,
            "limit_reached": null,
            "rate": {"requests_per_minute": 0.0, "limit": 100_000.0, "over": false},
        })
    };
    let notice = |stage: u32, used: u64| {
        json!({"limit": "day_requests", "stage": stage, "used": used as f64,
            "limit_value": 100.0, "resets_at": resets_at})
    };
    let cutoff = |plan: &str, up: &str| {
        format!("You have used all 100 of your daily requests on the {plan} plan. Your allowance {{resets}}. Upgrade to {up} to continue right away: {UP}?plan={}", up.to_lowercase())
    };
    let grace = |used: u64| {
        json!({"limit": "day_requests", "used": used as f64, "limit_value": 100.0,
            "grace_percent": 15.0, "served_up_to": 115.0})
    };

    // 72 %: the indicator.
    let (a, ..) = free(72);
    let c = quota_check(&app, &reader, &a).await;
    let mut want = allow(&a, "free");
    want["warning"] = notice(70, 72);
    want["stage_name"] = json!("indicator");
    assert_eq!(c.structure(), want);
    assert_eq!(
        c.message(),
        "You have used 72 of your 100 daily requests (72 %). Your allowance {resets}."
    );

    // 96 %: the explicit upgrade prompt.
    let (a, ..) = free(96);
    let c = quota_check(&app, &reader, &a).await;
    let mut want = allow(&a, "free");
    want["warning"] = notice(95, 96);
    want["stage_name"] = json!("upgrade_prompt");
    assert_eq!(c.structure(), want);
    assert_eq!(
        c.message(),
        format!("Almost out: 4 of your 100 daily requests left (96 % used). Your allowance {{resets}}. Upgrade to Pro now to keep going without interruption: {UP}?plan=pro")
    );

    // 102 %, and 114 % (this request is the 115th: the last in the buffer): served, with the
    // 100 % message; only the gateway sees `grace`.
    for n in [102, 114] {
        let (a, ..) = free(n);
        let c = quota_check(&app, &reader, &a).await;
        let mut want = allow(&a, "free");
        want["warning"] = notice(100, n);
        want["stage_name"] = json!("cutoff");
        want["grace"] = grace(n);
        assert_eq!(c.structure(), want, "{n} requests");
        assert_eq!(c.message(), cutoff("Free", "Pro"), "{n} requests");
    }

    // 115 % (the buffer is full: this would be the 116th) and 117 %: the warm cutoff, with the
    // same words.
    for n in [115, 117] {
        let (a, ..) = free(n);
        let c = quota_check(&app, &reader, &a).await;
        let mut want = allow(&a, "free");
        want["decision"] = json!("limit_reached");
        let mut reached = notice(100, n);
        reached["upgrade"] = json!({"plan": "pro", "upgrade_url": format!("{UP}?plan=pro")});
        want["limit_reached"] = reached;
        want["stage_name"] = json!("cutoff");
        assert_eq!(c.structure(), want, "{n} requests");
        assert_eq!(c.message(), cutoff("Free", "Pro"), "{n} requests");
    }

    // Pro has no buffer: 102 % is cut off, and the way up is Enterprise.
    let c = quota_check(&app, &reader, &pro).await;
    assert_eq!(c.body["decision"], "limit_reached", "{}", c.body);
    assert!(c.body.get("grace").is_none(), "{}", c.body);
    assert_eq!(c.message(), cutoff("Pro", "Enterprise"));

    // Grace use is recorded once per account, limit and window however often it is served:
    // more checks, then a sentinel decision queued behind them (a model the plan does not
    // include, recorded as a downgrade), and once that is in ClickHouse, so is all before it.
    for _ in 0..3 {
        for n in [102, 114, 115, 117] {
            quota_check(&app, &reader, &free(n).0).await;
        }
    }
    let sentinel = format!("{id}-sentinel");
    let body: Value = app
        .http
        .post(app.url("/v1/quota/check"))
        .bearer_auth(&reader)
        .json(&json!({"account_id": sentinel, "model": "gpt-5"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["decision"], "degrade", "{body}");
    assert_eq!(
        body["message"],
        format!("gpt-5 is not included in the Free plan, so small answered instead. Upgrade to Pro to use it: {UP}?plan=pro"),
    );
    let ch = app.clickhouse();
    wait_for(
        "the sentinel's downgrade",
        Duration::from_secs(15),
        || async {
            let n: u64 = ch
                .query("SELECT count() FROM quota_events WHERE account_id = ?")
                .bind(&sentinel)
                .fetch_one()
                .await
                .unwrap();
            check(n, |n| *n == 1)
        },
    )
    .await;

    #[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
    struct GraceRow {
        account_id: String,
        plan: String,
        limit_name: String,
        window_id: String,
        first_at: u32,
        used: f64,
        limit_value: f64,
    }
    // Every row as written (no FINAL, no GROUP BY): a duplicate would show.
    let rows: Vec<GraceRow> = ch
        .query("SELECT account_id, plan, limit_name, window_id, toUInt32(first_at) AS first_at, used, limit_value FROM grace_usage ORDER BY account_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (row, n) in rows.iter().zip([102, 114]) {
        assert_eq!(
            (
                row.account_id.as_str(),
                row.plan.as_str(),
                row.limit_name.as_str(),
                row.window_id.as_str(),
                row.used,
                row.limit_value
            ),
            (
                free(n).0.as_str(),
                "free",
                "day_requests",
                day.as_str(),
                n as f64,
                100.0
            ),
        );
        let first = i64::from(row.first_at);
        assert!(
            first >= started.timestamp() && first <= Utc::now().timestamp(),
            "{row:?}"
        );
    }
    // Beside them, in quota_events, each 100 % warning once too.
    let n: u64 = ch
        .query("SELECT count() FROM quota_events WHERE event_type = 'grace_used'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 2);
    app.stop().await;
}

/// The new fields are in the served OpenAPI document, described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_message_stage_name_and_grace() {
    let mut app = spawn_with(
        isolated_config(&unique_suffix()),
        Components::none().ingest(),
    )
    .await;
    let doc = app.get_json("/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    let decision = &schemas["Decision"]["properties"];
    for field in ["message", "stage_name", "grace"] {
        let d = decision[field].to_string();
        assert!(d.contains("description"), "{field}: {d}");
    }
    assert!(decision["grace"].to_string().contains("Grace"));
    let grace = &schemas["Grace"]["properties"];
    for field in [
        "limit",
        "used",
        "limit_value",
        "grace_percent",
        "served_up_to",
    ] {
        assert!(grace.get(field).is_some(), "Grace.{field}: {grace}");
    }
    let reasons = schemas["DegradeReason"].to_string();
    assert!(reasons.contains("budget_near"), "{reasons}");
    app.stop().await;
}
