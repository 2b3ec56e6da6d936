//! The read path against real Redis and PostgreSQL: every tier and granularity at its
//! boundaries, with the exact decision body; `/usage`; token scoping; recorded decisions.
//!
//! Usage is laid into Redis by the aggregator's own state store and writer (the code that
//! writes it in production, `common::lay_usage`), so these tests exercise the key contract both
//! sides share.
//!
//! Every test runs on the standalone Redis and, under `scripts/test.sh`, on a local Redis
//! Cluster (issue 21), where each quota check must keep to its account's slot.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use common::*;
use meterline::services::{self, Components};
use meterline::Config;
use meterline_ingest::read::directory::set_limit_override;
use meterline_ingest::Scope;
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::{QuotaConfig, TierConfig};
use meterline_schemas::UsageEvent;
use serde_json::{json, Value};

/// Round-number tiers, so every boundary is an exact integer.
fn test_config() -> Config {
    let mut c = isolated_config(&unique_suffix());
    c.quota = QuotaConfig {
        stages: vec![70, 85, 95, 100],
        upgrade_url: "https://up.example/upgrade".into(),
        input_weight: 1.0,
        output_weight: 3.0,
        default_model_weight: 1.0,
        model_weights: [("big".to_owned(), 2.0)].into(),
        ..QuotaConfig::default()
    };
    let limits = |v: &[(&str, f64)]| v.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    c.tiers.free = TierConfig {
        weight_multiplier: 1.0,
        requests_per_minute: 100.0,
        allowed_models: vec!["small".into(), "tiny".into()],
        fallback_model: "small".into(),
        audit_retention_days: 7,
        upgrade_to: "pro".into(),
        limits: limits(&[
            ("session_weighted_tokens", 1_000.0),
            ("day_weighted_tokens", 10_000.0),
            ("month_weighted_tokens", 100_000.0),
            ("day_requests", 100.0),
            ("month_sessions", 10.0),
        ]),
        plugins: vec![],
        // No grace buffer: these tests put the cutoff at the limit (tests/friction.rs has
        // grace).
        grace_percent: 0.0,
        budget_steer: false,
        budget_steer_stage: 95,
        messages: Default::default(),
    };
    c.tiers.pro = TierConfig {
        weight_multiplier: 0.5,
        requests_per_minute: 1_000.0,
        allowed_models: vec!["small".into(), "tiny".into(), "big".into()],
        fallback_model: "small".into(),
        audit_retention_days: 90,
        upgrade_to: "enterprise".into(),
        limits: limits(&[
            ("month_weighted_tokens", 100_000.0),
            ("day_requests", 1_000.0),
        ]),
        plugins: vec![],
        // No grace buffer: these tests put the cutoff at the limit (tests/friction.rs has
        // grace).
        grace_percent: 0.0,
        budget_steer: false,
        budget_steer_stage: 95,
        messages: Default::default(),
    };
    c.tiers.enterprise = TierConfig {
        weight_multiplier: 0.2,
        requests_per_minute: -1.0,
        allowed_models: vec!["*".into()],
        fallback_model: String::new(),
        audit_retention_days: 2557,
        upgrade_to: String::new(),
        limits: limits(&[("month_weighted_tokens", -1.0), ("day_requests", -1.0)]),
        plugins: vec![],
        // No grace buffer: these tests put the cutoff at the limit (tests/friction.rs has
        // grace).
        grace_percent: 0.0,
        budget_steer: false,
        budget_steer_stage: 95,
        messages: Default::default(),
    };
    c
}

struct ReadApp {
    app: TestApp,
    read_token: String,
    pool: sqlx::PgPool,
    /// When laid-down usage happened: this UTC day, outside the rolling minute.
    at: DateTime<Utc>,
}

/// The app on `redis`; `None` when that deployment is not available.
async fn spawn_read_app(redis: Deployment) -> Option<ReadApp> {
    // Usage is laid down a few minutes back, so it lands in today's day window but not in
    // the rolling per-minute rate. In the first minutes of a UTC day, wait for that to be true.
    let now = Utc::now();
    let day_start = Grain::Day.window_start(now);
    if now - day_start < ChronoDuration::minutes(4) {
        let wait = (day_start + ChronoDuration::minutes(4) - now)
            .to_std()
            .unwrap();
        tokio::time::sleep(wait).await;
    }
    let config = redis.apply(test_config())?;
    let app = spawn_with(config, Components::none().ingest()).await;
    let pool = app.pg().await;
    let read_token = services::token_store(&app.config, &pool)
        .create(&format!("reader-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    Some(ReadApp {
        app,
        read_token,
        pool,
        at: Utc::now() - ChronoDuration::minutes(3),
    })
}

fn event(
    account: &str,
    at: DateTime<Utc>,
    model: &str,
    input: i64,
    session: Option<&str>,
) -> UsageEvent {
    UsageEvent {
        model: model.into(),
        input_tokens: input,
        cost_micros: Some(0),
        session_id: session.map(str::to_owned),
        ..usage_record(uuid::Uuid::new_v4().to_string(), account, at)
    }
}

impl ReadApp {
    /// Folds `events` into Redis exactly as the aggregator's state store does.
    async fn lay(&self, events: &[UsageEvent]) {
        lay_usage(&self.app.config.redis, events, Utc::now()).await;
    }

    /// One request's worth of `tokens` raw input tokens on model `tiny` (weight 1).
    async fn lay_tokens(&self, account: &str, tokens: i64) {
        self.lay(&[event(account, self.at, "tiny", tokens, None)])
            .await;
    }

    async fn check(&self, body: Value) -> (u16, Value) {
        self.check_as(&self.read_token.clone(), body).await
    }

    async fn check_as(&self, token: &str, body: Value) -> (u16, Value) {
        let resp = self
            .app
            .http
            .post(self.app.url("/v1/quota/check"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.json().await.unwrap_or(Value::Null);
        // The words for people (`message`, `stage_name`) are tests/friction.rs's subject and
        // the schemas crate's table-driven tests'; here the structure is compared exactly.
        if let Some(o) = body.as_object_mut() {
            o.remove("message");
            o.remove("stage_name");
        }
        (status, body)
    }

    async fn usage(&self, token: Option<&str>, account: &str) -> (u16, Value) {
        let mut req = self
            .app
            .http
            .get(self.app.url(&format!("/v1/accounts/{account}/usage")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Puts an account in a review state, as the aggregator does when it applies a review
    /// event (tests/review.rs covers that path end to end).
    async fn set_review(&self, account: &str, state: &str) {
        sqlx::query(
            "INSERT INTO accounts (account_id, review_state, review_changed_at) VALUES ($1, $2, now()) \
             ON CONFLICT (account_id) DO UPDATE SET review_state = EXCLUDED.review_state, review_changed_at = now()",
        )
        .bind(account)
        .bind(state)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn set_plan(&self, account: &str, plan: &str) {
        sqlx::query("INSERT INTO accounts (account_id, plan) VALUES ($1, $2) ON CONFLICT (account_id) DO UPDATE SET plan = EXCLUDED.plan")
            .bind(account)
            .bind(plan)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

fn next_day() -> Value {
    let start = Grain::Day.window_start(Utc::now());
    json!(Grain::Day.next_window(start))
}

fn next_month() -> Value {
    let start = Grain::Month.window_start(Utc::now());
    json!(Grain::Month.next_window(start))
}

fn allow(account: &str, plan: &str, model: &str, rpm_limit: f64) -> Value {
    json!({
        "decision": "allow",
        "account_id": account,
        "plan": plan,
        "model": model,
        "warning": null,
        "degraded": null,
        "limit_reached": null,
        "rate": {"requests_per_minute": 0.0, "limit": rpm_limit, "over": false},
    })
}

fn warning(limit: &str, stage: u32, used: f64, limit_value: f64, resets_at: Value) -> Value {
    json!({"limit": limit, "stage": stage, "used": used, "limit_value": limit_value, "resets_at": resets_at})
}

fn req(account: &str, model: &str) -> Value {
    json!({"account_id": account, "model": model, "estimated_input_tokens": 0, "estimated_output_tokens": 0})
}

on_every_redis!(free_tier_day_budget_at_every_stage);
async fn free_tier_day_budget_at_every_stage(redis: Deployment) {
    let Some(mut r) = spawn_read_app(redis).await else {
        return;
    };
    let id = unique_suffix();
    // (weighted tokens used, expected warning stage)
    let cases: [(i64, Option<u32>); 5] = [
        (6_999, None),
        (7_000, Some(70)),
        (8_500, Some(85)),
        (9_500, Some(95)),
        (9_999, Some(95)),
    ];
    for (used, stage) in cases {
        let account = format!("{id}-day-{used}");
        r.lay_tokens(&account, used).await;
        let (status, body) = r.check(req(&account, "tiny")).await;
        assert_eq!(status, 200, "{body}");
        let mut want = allow(&account, "free", "tiny", 100.0);
        if let Some(s) = stage {
            want["warning"] = warning("day_weighted_tokens", s, used as f64, 10_000.0, next_day());
        }
        assert_eq!(body, want, "day usage {used}");
    }

    // Exactly 100 %: the budget is spent; the tier's fallback model serves instead.
    let account = format!("{id}-day-full");
    r.lay_tokens(&account, 10_000).await;
    let (_, body) = r.check(req(&account, "tiny")).await;
    let mut want = allow(&account, "free", "small", 100.0);
    want["decision"] = json!("degrade");
    want["degraded"] = json!({
        "reason": "budget_spent",
        "requested_model": "tiny",
        "fallback_model": "small",
        "budget": warning("day_weighted_tokens", 100, 10_000.0, 10_000.0, next_day()),
    });
    assert_eq!(body, want);

    // Over 100 % and already on the fallback: the limit is reached, with the way up.
    let account = format!("{id}-day-over");
    r.lay_tokens(&account, 12_000).await;
    let (status, body) = r.check(req(&account, "small")).await;
    assert_eq!(status, 200, "never a bare 429");
    let mut want = allow(&account, "free", "small", 100.0);
    want["decision"] = json!("limit_reached");
    let mut reached = warning("day_weighted_tokens", 100, 12_000.0, 10_000.0, next_day());
    reached["upgrade"] =
        json!({"plan": "pro", "upgrade_url": "https://up.example/upgrade?plan=pro"});
    want["limit_reached"] = reached;
    assert_eq!(body, want);

    // The request's own estimate counts: 1,000 left fits 1,000 and not 1,001.
    let account = format!("{id}-day-estimate");
    r.lay_tokens(&account, 9_000).await;
    let mut fits = req(&account, "tiny");
    fits["estimated_input_tokens"] = json!(1_000);
    let (_, body) = r.check(fits).await;
    assert_eq!(body["decision"], "allow", "{body}");
    assert_eq!(body["warning"]["stage"], 85);
    let mut too_big = req(&account, "tiny");
    too_big["estimated_input_tokens"] = json!(1_001);
    let (_, body) = r.check(too_big).await;
    assert_eq!(body["decision"], "degrade", "{body}");
    assert_eq!(body["degraded"]["reason"], "budget_spent");
    r.app.stop().await;
}

on_every_redis!(month_and_session_granularities_and_counts);
async fn month_and_session_granularities_and_counts(redis: Deployment) {
    let Some(mut r) = spawn_read_app(redis).await else {
        return;
    };
    let id = unique_suffix();

    // Month: the day budget is lifted by an override, so only the month speaks.
    for (used, stage) in [(69_999_i64, None), (70_000, Some(70)), (95_000, Some(95))] {
        let account = format!("{id}-month-{used}");
        set_limit_override(&r.pool, &account, "day_weighted_tokens", -1.0, "manual")
            .await
            .unwrap();
        r.lay_tokens(&account, used).await;
        let (_, body) = r.check(req(&account, "tiny")).await;
        let mut want = allow(&account, "free", "tiny", 100.0);
        if let Some(s) = stage {
            want["warning"] = warning(
                "month_weighted_tokens",
                s,
                used as f64,
                100_000.0,
                next_month(),
            );
        }
        assert_eq!(body, want, "month usage {used}");
    }

    // A session over its budget while the day is well under its own.
    let account = format!("{id}-session");
    r.lay(&[event(&account, r.at, "tiny", 1_200, Some("s-1"))])
        .await;
    let mut in_session = req(&account, "tiny");
    in_session["session_id"] = json!("s-1");
    let (_, body) = r.check(in_session).await;
    let mut want = allow(&account, "free", "small", 100.0);
    want["decision"] = json!("degrade");
    want["degraded"] = json!({
        "reason": "budget_spent",
        "requested_model": "tiny",
        "fallback_model": "small",
        "budget": warning("session_weighted_tokens", 100, 1_200.0, 1_000.0, Value::Null),
    });
    assert_eq!(body, want);
    // A new session of the same account is fine: the day is at 12 %.
    let mut new_session = req(&account, "tiny");
    new_session["session_id"] = json!("s-2");
    let (_, body) = r.check(new_session).await;
    assert_eq!(body, allow(&account, "free", "tiny", 100.0));

    // Counts are used up, and a cheaper model does not help with them.
    let account = format!("{id}-requests");
    let events: Vec<_> = (0..100)
        .map(|_| event(&account, r.at, "tiny", 1, None))
        .collect();
    r.lay(&events).await;
    let (_, body) = r.check(req(&account, "tiny")).await;
    assert_eq!(body["decision"], "limit_reached", "{body}");
    let mut reached = warning("day_requests", 100, 100.0, 100.0, next_day());
    reached["upgrade"] =
        json!({"plan": "pro", "upgrade_url": "https://up.example/upgrade?plan=pro"});
    assert_eq!(body["limit_reached"], reached);

    // Ten sessions this month: an eleventh is refused, a known one continues.
    let account = format!("{id}-sessions");
    let events: Vec<_> = (0..10)
        .map(|i| event(&account, r.at, "tiny", 1, Some(&format!("s{i}"))))
        .collect();
    r.lay(&events).await;
    let mut known = req(&account, "tiny");
    known["session_id"] = json!("s3");
    let (_, body) = r.check(known).await;
    assert_eq!(body["decision"], "allow", "{body}");
    assert_eq!(
        body["warning"],
        warning("month_sessions", 100, 10.0, 10.0, next_month())
    );
    let mut eleventh = req(&account, "tiny");
    eleventh["session_id"] = json!("s-new");
    let (_, body) = r.check(eleventh).await;
    assert_eq!(body["decision"], "limit_reached", "{body}");
    assert_eq!(body["limit_reached"]["limit"], "month_sessions");
    r.app.stop().await;
}

on_every_redis!(models_plans_rate_and_abuse);
async fn models_plans_rate_and_abuse(redis: Deployment) {
    let Some(mut r) = spawn_read_app(redis).await else {
        return;
    };
    let id = unique_suffix();

    // An unknown (not allowed) model is degraded to the fallback.
    let account = format!("{id}-model");
    let (_, body) = r.check(req(&account, "gpt-5")).await;
    let mut want = allow(&account, "free", "small", 100.0);
    want["decision"] = json!("degrade");
    want["degraded"] = json!({"reason": "model_not_allowed", "requested_model": "gpt-5", "fallback_model": "small"});
    assert_eq!(body, want);

    // Pro: tokens weigh half. 170,000 raw tokens of a weight-1 model are 85,000 of 100,000.
    let account = format!("{id}-pro");
    r.set_plan(&account, "pro").await;
    r.lay_tokens(&account, 170_000).await;
    let (_, body) = r.check(req(&account, "big")).await;
    let mut want = allow(&account, "pro", "big", 1_000.0);
    want["warning"] = warning(
        "month_weighted_tokens",
        85,
        85_000.0,
        100_000.0,
        next_month(),
    );
    assert_eq!(body, want);

    // Enterprise: -1 is unlimited, every model is allowed.
    let account = format!("{id}-ent");
    r.set_plan(&account, "enterprise").await;
    r.lay_tokens(&account, 50_000_000).await;
    let (_, body) = r.check(req(&account, "anything-at-all")).await;
    assert_eq!(body, allow(&account, "enterprise", "anything-at-all", -1.0));

    // A plan change reaches the cached profile without a restart.
    let account = format!("{id}-upgrade");
    let (_, body) = r.check(req(&account, "big")).await;
    assert_eq!(body["decision"], "degrade");
    r.set_plan(&account, "pro").await;
    let body = wait_for(
        "the plan change in the cache",
        Duration::from_secs(5),
        || async {
            let (_, body) = r.check(req(&account, "big")).await;
            check(body, |b| b["decision"] == "allow")
        },
    )
    .await;
    assert_eq!(body["plan"], "pro");

    // The rate limit is soft: 150 requests this minute are allowed, with a warning.
    let account = format!("{id}-rate");
    set_limit_override(&r.pool, &account, "day_requests", -1.0, "manual")
        .await
        .unwrap();
    // Lay them early in a minute, so the minute does not turn before the check.
    if Utc::now().second() > 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - Utc::now().second()))).await;
    }
    let now = Utc::now();
    let events: Vec<_> = (0..150)
        .map(|_| event(&account, now, "tiny", 1, None))
        .collect();
    r.lay(&events).await;
    let (_, body) = r.check(req(&account, "tiny")).await;
    assert_eq!(body["decision"], "allow", "{body}");
    assert_eq!(body["rate"]["over"], true);
    assert_eq!(body["warning"]["limit"], "requests_per_minute");
    assert!(body["rate"]["requests_per_minute"].as_f64().unwrap() >= 150.0);

    // Deny follows a person's confirmation, and it reaches a cached profile by notification.
    let account = format!("{id}-abuser");
    let (_, body) = r.check(req(&account, "tiny")).await;
    assert_eq!(body["decision"], "allow", "{body}");
    r.set_review(&account, "confirmed").await;
    let body = wait_for(
        "the confirmation in the cache",
        Duration::from_secs(5),
        || async {
            let (_, body) = r.check(req(&account, "tiny")).await;
            check(body, |b| b["decision"] == "deny")
        },
    )
    .await;
    assert_eq!(body["reason"], "abuse_confirmed");

    // A suspected free account is served the fallback model, with a quarter of the limits:
    // 25 of its 100 requests a day.
    let account = format!("{id}-suspect");
    r.set_review(&account, "suspected").await;
    let (_, body) = r.check(req(&account, "tiny")).await;
    assert_eq!(
        (&body["decision"], &body["model"], &body["reason"]),
        (
            &json!("degrade"),
            &json!("small"),
            &json!("abuse_suspected")
        ),
        "{body}"
    );
    assert_eq!(body["degraded"]["reason"], "abuse_suspected");
    let events: Vec<_> = (0..25)
        .map(|_| event(&account, r.at, "small", 1, None))
        .collect();
    r.lay(&events).await;
    let (_, body) = r.check(req(&account, "small")).await;
    assert_eq!(body["decision"], "limit_reached", "{body}");
    assert_eq!(body["limit_reached"]["limit"], "day_requests");
    assert_eq!(body["limit_reached"]["limit_value"], 25.0);
    let (_, usage) = r.usage(Some(&r.read_token), &account).await;
    let day = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "day_requests")
        .unwrap()
        .clone();
    assert_eq!(
        (day["used"].clone(), day["limit"].clone()),
        (json!(25.0), json!(25.0))
    );

    // Paying accounts are never denied or restricted without a person, whatever the state
    // says (defence in depth: the read path holds to it even if the scorer did not).
    for state in ["auto_denied", "suspected"] {
        let account = format!("{id}-paying-{state}");
        r.set_plan(&account, "pro").await;
        r.set_review(&account, state).await;
        // Set before the first check, so the profile is read fresh from PostgreSQL.
        let (_, body) = r.check(req(&account, "big")).await;
        assert_eq!(
            (&body["decision"], &body["model"], &body["reason"]),
            (&json!("allow"), &json!("big"), &Value::Null),
            "pro, {state}: {body}"
        );
    }
    r.app.stop().await;
}

on_every_redis!(usage_report_and_token_scoping);
async fn usage_report_and_token_scoping(redis: Deployment) {
    let Some(mut r) = spawn_read_app(redis).await else {
        return;
    };
    let id = unique_suffix();
    let a = format!("{id}-a");
    let b = format!("{id}-b");
    let mut e = event(&a, r.at, "big", 1_000, Some("s1"));
    e.output_tokens = 100;
    e.cost_micros = Some(250_000);
    r.lay(&[e, event(&a, r.at, "tiny", 500, None)]).await;

    let (status, body) = r.usage(Some(&r.read_token), &a).await;
    assert_eq!(status, 200, "{body}");
    // big: (1,000 + 100 × 3) × 2 = 2,600; tiny: 500. 3,100 weighted tokens in all.
    let limits: Vec<(String, Value, f64)> = body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["used"].clone(),
                l["limit"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        limits,
        vec![
            ("session_weighted_tokens".into(), Value::Null, 1_000.0),
            ("day_requests".into(), json!(2.0), 100.0),
            ("day_weighted_tokens".into(), json!(3_100.0), 10_000.0),
            ("month_sessions".into(), json!(1.0), 10.0),
            ("month_weighted_tokens".into(), json!(3_100.0), 100_000.0),
        ]
    );
    let day = &body["limits"][2];
    assert_eq!(day["ratio"], json!(0.31));
    assert_eq!(day["stage"], Value::Null);
    assert_eq!(day["resets_at"], next_day());
    assert_eq!(body["plan"], "free");
    assert_eq!(
        body["requests_per_minute"],
        json!({"rolling": 0.0, "limit": 100.0})
    );
    assert_eq!(
        body["month"],
        json!({"models": ["big", "tiny"], "providers": ["openai"], "regions": ["eu-west-1"]})
    );

    // No token: 401. A token for account A: 403 on B, for usage and for quota checks.
    let (status, _) = r.usage(None, &a).await;
    assert_eq!(status, 401);
    let scoped = services::token_store(&r.app.config, &r.pool)
        .create(&format!("dash-{id}"), &[Scope::Read], Some(&a))
        .await
        .unwrap();
    let (status, _) = r.usage(Some(&scoped), &a).await;
    assert_eq!(status, 200);
    let (status, body) = r.usage(Some(&scoped), &b).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = r.check_as(&scoped, req(&b, "tiny")).await;
    assert_eq!(status, 403);
    let (status, _) = r.check_as(&scoped, req(&a, "tiny")).await;
    assert_eq!(status, 200);
    // An ingest-only token cannot read.
    let (status, _) = r.usage(Some(&r.app.token.clone()), &a).await;
    assert_eq!(status, 403);

    // Bad input names the field.
    let (status, body) = r.check(json!({"model": "tiny"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("account_id: required"))
    );
    let (status, body) = r.check(json!({"account_id": "a b", "model": "tiny"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("account_id:"),
        "{body}"
    );
    let (status, body) = r
        .check(json!({"account_id": "a", "model": "tiny", "estimated_input_tokens": -4}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("estimated_input_tokens"),
        "{body}"
    );
    r.app.stop().await;
}

on_every_redis!(warnings_degradations_and_reached_limits_are_recorded_once_per_window);
async fn warnings_degradations_and_reached_limits_are_recorded_once_per_window(redis: Deployment) {
    let Some(mut r) = spawn_read_app(redis).await else {
        return;
    };
    let id = unique_suffix();
    let warned = format!("{id}-warned");
    r.lay_tokens(&warned, 7_500).await;
    let reached = format!("{id}-reached");
    r.lay_tokens(&reached, 20_000).await;
    for _ in 0..5 {
        r.check(req(&warned, "tiny")).await;
        r.check(req(&reached, "small")).await;
        r.check(req(&reached, "tiny")).await;
        r.check(req(&warned, "gpt-5")).await;
    }
    #[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
    struct Row {
        account_id: String,
        event_type: String,
        limit_name: String,
        stage: u8,
        n: u64,
    }
    let ch = r.app.clickhouse();
    let want = vec![
        Row {
            account_id: reached.clone(),
            event_type: "limit_reached".into(),
            limit_name: "day_weighted_tokens".into(),
            stage: 100,
            n: 1,
        },
        Row {
            account_id: reached.clone(),
            event_type: "model_downgrade_triggered".into(),
            limit_name: "day_weighted_tokens".into(),
            stage: 100,
            n: 1,
        },
        Row {
            account_id: warned.clone(),
            event_type: "model_downgrade_triggered".into(),
            limit_name: "allowed_models".into(),
            stage: 100,
            n: 1,
        },
        Row {
            account_id: warned.clone(),
            event_type: "quota_warning_shown".into(),
            limit_name: "day_weighted_tokens".into(),
            stage: 70,
            n: 1,
        },
    ];
    wait_for("the four quota events", Duration::from_secs(15), || async {
        let rows: Vec<Row> = ch
            .query("SELECT account_id, event_type, limit_name, stage, count() AS n FROM quota_events GROUP BY account_id, event_type, limit_name, stage ORDER BY account_id, event_type")
            .fetch_all()
            .await
            .unwrap();
        check(rows, |rows| *rows == want)
    })
    .await;
    // Calls after the first are answered from the recorded markers, not written again: a
    // sentinel warning queued behind them is written, and nothing else.
    for _ in 0..3 {
        r.check(req(&warned, "tiny")).await;
    }
    let sentinel = format!("{id}-sentinel");
    r.lay_tokens(&sentinel, 7_500).await;
    let (_, body) = r.check(req(&sentinel, "tiny")).await;
    assert_eq!(body["warning"]["stage"], 70, "{body}");
    wait_for(
        "the sentinel's warning",
        Duration::from_secs(15),
        || async {
            let n: u64 = ch
                .query("SELECT count() FROM quota_events WHERE account_id = ?")
                .bind(&sentinel)
                .fetch_one()
                .await
                .unwrap();
            check(n, |n| *n > 0)
        },
    )
    .await;
    let n: u64 = ch
        .query("SELECT count() FROM quota_events WHERE account_id != ?")
        .bind(&sentinel)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 4);
    r.app.stop().await;
}

on_every_redis!(posted_events_move_an_account_through_every_stage);
/// End to end: events posted through ingest move an account across every stage of its
/// monthly budget, and `/usage` and `/quota/check` follow within a second of the aggregator
/// writing them.
async fn posted_events_move_an_account_through_every_stage(redis: Deployment) {
    let Some(mut config) = redis.apply(test_config()) else {
        return;
    };
    config.tiers.free.limits = [("month_weighted_tokens".to_owned(), 10_000.0)].into();
    let mut app = spawn_with(config, Components::none().ingest().aggregator()).await;
    let pool = app.pg().await;
    let reader = services::token_store(&app.config, &pool)
        .create(&format!("reader-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    let account = format!("{}-climber", unique_suffix());
    let mut posted = 0u64;
    let mut used = 0.0;
    for (tokens, stage, decision) in [
        (6_999_u64, Value::Null, "allow"),
        (1, json!(70), "allow"),
        (1_500, json!(85), "allow"),
        (1_000, json!(95), "allow"),
        (500, json!(100), "degrade"),
    ] {
        let (status, body) = app
            .post_events(&[usage_event(&account, Utc::now(), "tiny", tokens, 0)])
            .await;
        assert_eq!(status, 202, "{body}");
        posted += 1;
        used += tokens as f64;
        // The aggregator's flush: ClickHouse has the event (Redis is written right after).
        assert_eq!(
            app.wait_for_raw_count(posted, Duration::from_secs(30))
                .await,
            posted
        );
        let (usage, check) = wait_for(
            &format!("/usage to show {used} within a second of the flush"),
            Duration::from_secs(1),
            || async {
                let usage = app
                    .get_json(&format!("/v1/accounts/{account}/usage"), Some(&reader))
                    .await;
                let check: Value = app
                    .http
                    .post(app.url("/v1/quota/check"))
                    .bearer_auth(&reader)
                    .json(&req(&account, "tiny"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if usage["limits"][0]["used"] == json!(used) {
                    Ok((usage, check))
                } else {
                    Err(usage)
                }
            },
        )
        .await;
        let month = &usage["limits"][0];
        assert_eq!(month["name"], "month_weighted_tokens");
        assert_eq!(month["stage"], stage, "{usage}");
        assert_eq!(check["decision"], decision, "{check}");
        if decision == "allow" && !stage.is_null() {
            assert_eq!(check["warning"]["stage"], stage, "{check}");
        }
        if decision == "degrade" {
            assert_eq!(check["model"], "small");
        }
    }
    app.stop().await;
}
