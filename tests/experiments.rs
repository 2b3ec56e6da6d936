//! Limit A/B experiments on the real servers: assignment at signup through ingest and the
//! aggregator, the guard against lowering limits, and a report over a generated cohort whose
//! rates the test knows, checked figure by figure against a hand computation.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use common::*;
use meterline::services::{self, Components};
use meterline_aggregator::experiments::store;
use meterline_aggregator::experiments::{
    choose_variant, ExperimentError, ExperimentSpec, VariantSpec,
};
use meterline_growth::cohort_report;
use meterline_ingest::Scope;
use serde_json::{json, Value};

fn variant(name: &str, weight: u32, control: bool, limits: &[(&str, f64)]) -> VariantSpec {
    VariantSpec {
        name: name.into(),
        weight,
        control,
        limits: limits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

fn spec(name: &str, starts_at: DateTime<Utc>, variants: Vec<VariantSpec>) -> ExperimentSpec {
    ExperimentSpec {
        name: name.into(),
        description: String::new(),
        plan: "free".into(),
        starts_at,
        ends_at: None,
        variants,
    }
}

fn account_event(account: &str, kind: &str, at: DateTime<Utc>, extra: Value) -> Value {
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

async fn post_account_events(app: &TestApp, events: &[Value]) {
    for chunk in events.chunks(500) {
        let (status, body) = app
            .post_json("/v1/account-events", &Value::Array(chunk.to_vec()))
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

async fn post_usage(app: &TestApp, events: &[Value]) {
    for chunk in events.chunks(500) {
        let (status, body) = app.post_events(chunk).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Marks `accounts` for the scorer and waits until each is scored (and saved) again.
async fn rescore(app: &TestApp, pool: &sqlx::PgPool, accounts: &[String]) {
    let marked = Utc::now();
    let mut redis = app.redis().await;
    let _: () = redis::cmd("SADD")
        .arg(format!("{}dirty", app.config.redis.key_prefix))
        .arg(accounts)
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_for(
        &format!("{} accounts scored again", accounts.len()),
        Duration::from_secs(30),
        || async {
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT a FROM unnest($1::text[]) AS a WHERE NOT EXISTS \
                 (SELECT 1 FROM account_scores s WHERE s.account_id = a AND s.scored_at > $2)",
            )
            .bind(accounts)
            .bind(marked)
            .fetch_all(pool)
            .await
            .unwrap();
            check(stale, |stale| stale.is_empty())
        },
    )
    .await;
}

async fn pg_count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_after_the_start_are_assigned_deterministically_and_earlier_ones_never() {
    let mut config = isolated_config(&unique_suffix());
    config
        .tiers
        .free
        .limits
        .insert("month_requests".into(), 20.0);
    let app = spawn_with(config, Components::none().ingest().aggregator()).await;
    let pool = app.pg().await;
    let now = Utc::now();
    let start = now - ChronoDuration::hours(1);
    let exp = spec(
        "signup-cohort",
        start,
        vec![
            variant("control", 1, true, &[]),
            variant("generous", 1, false, &[("month_requests", 30.0)]),
        ],
    );
    store::create(&pool, &exp).await.unwrap();

    let mut events = Vec::new();
    // Signed up before the start: never eligible.
    for i in 0..20 {
        events.push(account_event(
            &format!("old-{i}"),
            "signup",
            start - ChronoDuration::minutes(30),
            json!({}),
        ));
    }
    // After the start, on the free plan: every one is assigned.
    for i in 0..40 {
        events.push(account_event(
            &format!("new-{i}"),
            "signup",
            start + ChronoDuration::minutes(i),
            json!({}),
        ));
    }
    // After the start but on another plan: not this experiment's population.
    for i in 0..5 {
        events.push(account_event(
            &format!("pro-{i}"),
            "signup",
            start + ChronoDuration::minutes(5),
            json!({"plan": "pro"}),
        ));
    }
    // Signed up before the start, then a second signup event after it: still an existing account.
    events.push(account_event(
        "twice",
        "signup",
        start - ChronoDuration::minutes(10),
        json!({}),
    ));
    events.push(account_event(
        "twice",
        "signup",
        start + ChronoDuration::minutes(10),
        json!({}),
    ));
    post_account_events(&app, &events).await;
    wait_for(
        "every account event applied",
        Duration::from_secs(30),
        || async {
            let n = pg_count(&pool, "SELECT count(*) FROM account_events").await;
            check(n, |n| *n == events.len() as i64)
        },
    )
    .await;

    let assigned: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, variant FROM experiment_assignments WHERE experiment = 'signup-cohort' ORDER BY account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(assigned.len(), 40, "{assigned:?}");
    for (account, v) in &assigned {
        assert!(
            account.starts_with("new-"),
            "{account} should not be assigned"
        );
        let expected = choose_variant("signup-cohort", account, &exp.variants).unwrap();
        assert_eq!(&expected.name, v, "{account}");
    }
    let generous: Vec<&String> = assigned
        .iter()
        .filter(|(_, v)| v == "generous")
        .map(|(a, _)| a)
        .collect();
    assert!(!generous.is_empty() && generous.len() < 40);
    // The variant's limit is the account's override, scoped to the experiment's plan.
    let overrides: Vec<(String, f64, String, Option<String>)> = sqlx::query_as(
        "SELECT account_id, value, source, plan FROM account_limit_overrides ORDER BY account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(overrides.len(), generous.len());
    for (account, value, source, plan) in &overrides {
        assert!(generous.contains(&account), "{account}");
        assert_eq!(*value, 30.0);
        assert_eq!(source, "experiment:signup-cohort");
        assert_eq!(plan.as_deref(), Some("free"));
    }

    // The experiment_assigned events reach ClickHouse.
    let ch = app.clickhouse();
    wait_for("experiment_assigned events in ClickHouse", Duration::from_secs(20), || {
        let ch = ch.clone();
        async move {
            let n = ch.query("SELECT count() FROM experiment_assignments_final WHERE experiment = 'signup-cohort'")
                .fetch_one::<u64>()
                .await
                .unwrap_or(0);
            check(n, |n| *n == 40)
        }
    })
    .await;
    assert_eq!(
        pg_count(
            &pool,
            "SELECT count(*) FROM experiment_assignments WHERE recorded_at IS NULL"
        )
        .await,
        0
    );

    // The quota read path honours the override: a generous account's month_requests is 30, a
    // control account's the plan's 20; after converting, the experiment's override stops.
    let read = services::token_store(&app.config, &pool)
        .create(&format!("reader-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    let control_account = &assigned.iter().find(|(_, v)| v == "control").unwrap().0;
    let month_requests_limit = |body: &Value| -> f64 {
        body["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "month_requests")
            .map(|l| l["limit"].as_f64().unwrap())
            .unwrap_or(-1.0)
    };
    let usage = |account: String| {
        let app = &app;
        let read = read.clone();
        async move {
            let resp = app
                .http
                .get(app.url(&format!("/v1/accounts/{account}/usage")))
                .bearer_auth(&read)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        month_requests_limit(&usage(generous[0].clone()).await),
        30.0
    );
    assert_eq!(
        month_requests_limit(&usage(control_account.clone()).await),
        20.0
    );
    post_account_events(
        &app,
        &[account_event(
            generous[0],
            "plan_changed",
            now,
            json!({"plan": "pro"}),
        )],
    )
    .await;
    let converted = generous[0].clone();
    wait_for(
        "the plan change to reach /usage",
        Duration::from_secs(20),
        || {
            let u = usage(converted.clone());
            async move { check(u.await, |u| u["plan"] == "pro") }
        },
    )
    .await;
    // Pro has no month_requests limit; the free-plan override no longer applies.
    assert_eq!(month_requests_limit(&usage(converted.clone()).await), -1.0);

    // A replayed signup (a new event id for an assigned account) changes nothing.
    let before: Vec<(String, String)> = assigned.clone();
    post_account_events(
        &app,
        &[account_event(
            "new-3",
            "signup",
            start + ChronoDuration::minutes(50),
            json!({}),
        )],
    )
    .await;
    wait_for(
        "the replayed signup applied",
        Duration::from_secs(20),
        || async {
            let n = pg_count(&pool, "SELECT count(*) FROM account_events").await;
            check(n, |n| *n == events.len() as i64 + 2)
        },
    )
    .await;
    let after: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, variant FROM experiment_assignments WHERE experiment = 'signup-cohort' ORDER BY account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(before, after);
    let mut app = app;
    app.stop().await;
}

/// Accounts on the plan with a signup after `start`, assigned the way the aggregator does.
async fn sign_up(pool: &sqlx::PgPool, accounts: &[String], at: DateTime<Utc>) {
    for a in accounts {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO accounts (account_id, plan, signed_up_at) VALUES ($1, 'free', $2)",
        )
        .bind(a)
        .bind(at)
        .execute(&mut *tx)
        .await
        .unwrap();
        store::assign_at_signup(&mut tx, a).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn refusal(e: ExperimentError) -> String {
    match e {
        ExperimentError::Refused(r) => r.to_string(),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_every_way_of_lowering_an_assigned_limit_and_allows_raising() {
    let mut config = isolated_config(&unique_suffix());
    config
        .tiers
        .free
        .limits
        .insert("month_requests".into(), 20.0);
    prepare(&config).await;
    let pool = meterline::migrate::connect_postgres(&config).await.unwrap();
    let tiers = config.tiers.clone();
    let now = Utc::now();
    let exp = spec(
        "guarded",
        now - ChronoDuration::days(1),
        vec![
            variant("control", 1, true, &[]),
            variant("generous", 1, false, &[("month_requests", 30.0)]),
            variant("stingy", 1, false, &[("month_requests", 15.0)]),
        ],
    );
    store::create(&pool, &exp).await.unwrap();
    let accounts: Vec<String> = (0..60).map(|i| format!("acct-{i:02}")).collect();
    sign_up(&pool, &accounts, now - ChronoDuration::hours(1)).await;
    let in_variant = |v: &str| -> Vec<String> {
        accounts
            .iter()
            .filter(|a| choose_variant("guarded", a, &exp.variants).unwrap().name == v)
            .cloned()
            .collect()
    };
    let generous = in_variant("generous");
    let control = in_variant("control");
    let stingy = in_variant("stingy");
    assert!(!generous.is_empty() && !control.is_empty() && !stingy.is_empty());

    // 1. A variant edit that lowers: refused, naming accounts and the limit.
    let lower: BTreeMap<String, f64> = [("month_requests".to_owned(), 25.0)].into();
    let text = refusal(
        store::edit_variant(&pool, "guarded", "generous", &lower, &tiers)
            .await
            .unwrap_err(),
    );
    assert!(
        text.contains("editing variant `generous` of `guarded`"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} assigned account(s)", generous.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}: month_requests 30 -> 25", generous[0])),
        "{text}"
    );
    // Adding a limit below what the plan gives the control's accounts is lowering too.
    let text = refusal(
        store::edit_variant(
            &pool,
            "guarded",
            "control",
            &[("month_requests".to_owned(), 10.0)].into(),
            &tiers,
        )
        .await
        .unwrap_err(),
    );
    assert!(
        text.contains(&format!("{}: month_requests 20 -> 10", control[0])),
        "{text}"
    );
    // A limit the plan does not have is unlimited: any number lowers it.
    let text = refusal(
        store::edit_variant(
            &pool,
            "guarded",
            "control",
            &[("day_sessions".to_owned(), 1_000.0)].into(),
            &tiers,
        )
        .await
        .unwrap_err(),
    );
    assert!(text.contains("day_sessions unlimited -> 1000"), "{text}");
    // Nothing changed.
    let values: Vec<f64> =
        sqlx::query_scalar("SELECT value FROM account_limit_overrides WHERE account_id = ANY($1)")
            .bind(&generous)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(values.iter().all(|v| *v == 30.0), "{values:?}");

    // Raising is allowed, and the assigned accounts get the new value at once.
    let raise: BTreeMap<String, f64> = [("month_requests".to_owned(), 40.0)].into();
    let updated = store::edit_variant(&pool, "guarded", "generous", &raise, &tiers)
        .await
        .unwrap();
    assert_eq!(updated, generous.len() as u64);
    let values: Vec<f64> =
        sqlx::query_scalar("SELECT value FROM account_limit_overrides WHERE account_id = ANY($1)")
            .bind(&generous)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(values.len(), generous.len());
    assert!(values.iter().all(|v| *v == 40.0), "{values:?}");
    let stored = store::get(&pool, "guarded").await.unwrap();
    let g = stored
        .spec
        .variants
        .iter()
        .find(|v| v.name == "generous")
        .unwrap();
    assert_eq!(g.limits["month_requests"], 40.0);

    // 2. A second, overlapping experiment on the same limit with a lower value: refused.
    let second = spec(
        "second",
        now,
        vec![
            variant("control", 1, true, &[]),
            variant("tight", 1, false, &[("month_requests", 35.0)]),
        ],
    );
    let text = refusal(store::create(&pool, &second).await.unwrap_err());
    assert!(text.contains("creating `second`"), "{text}");
    assert!(text.contains("`guarded`"), "{text}");
    assert!(
        text.contains(&format!("{}: month_requests 40 -> 35", generous[0])),
        "{text}"
    );
    assert!(
        store::get(&pool, "second").await.is_err(),
        "nothing was stored"
    );
    // On another limit, or higher on the same one, it is allowed.
    let higher = spec(
        "second",
        now,
        vec![
            variant("control", 1, true, &[]),
            variant("roomy", 1, false, &[("month_requests", 50.0)]),
        ],
    );
    store::create(&pool, &higher).await.unwrap();

    // 3. A stop that reverts to a lower default: refused (generous has 40, the plan 20).
    let text = refusal(
        store::stop(&pool, "guarded", true, &tiers)
            .await
            .unwrap_err(),
    );
    assert!(
        text.contains("stopping `guarded` with --revert-limits"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}: month_requests 40 -> 20", generous[0])),
        "{text}"
    );
    assert!(
        !text.contains(&stingy[0]),
        "reverting stingy's 15 to 20 raises: {text}"
    );
    // A plain stop keeps every assigned account's limits.
    let before: i64 = pg_count(
        &pool,
        "SELECT count(*) FROM account_limit_overrides WHERE source = 'experiment:guarded'",
    )
    .await;
    let stopped = store::stop(&pool, "guarded", false, &tiers).await.unwrap();
    assert_eq!(stopped.assigned, 60);
    assert_eq!(
        pg_count(
            &pool,
            "SELECT count(*) FROM account_limit_overrides WHERE source = 'experiment:guarded'"
        )
        .await,
        before
    );
    assert_eq!(before, (generous.len() + stingy.len()) as i64);
    // No new assignments after the stop.
    sign_up(&pool, &["late-1".to_owned()], now).await;
    assert_eq!(
        pg_count(&pool, "SELECT count(*) FROM experiment_assignments WHERE experiment = 'guarded' AND account_id = 'late-1'").await,
        0
    );
    // Reverting raises only: allowed for an experiment whose variant was below the default.
    let stingy_only = spec(
        "stingy-only",
        now - ChronoDuration::hours(3),
        vec![
            variant("control", 1, true, &[]),
            variant("low", 1, false, &[("day_requests", 100.0)]),
        ],
    );
    store::create(&pool, &stingy_only).await.unwrap();
    let more: Vec<String> = (0..20).map(|i| format!("more-{i:02}")).collect();
    sign_up(&pool, &more, now - ChronoDuration::hours(2)).await;
    let low = pg_count(
        &pool,
        "SELECT count(*) FROM account_limit_overrides WHERE source = 'experiment:stingy-only'",
    )
    .await;
    assert!(low > 0);
    let stopped = store::stop(&pool, "stingy-only", true, &tiers)
        .await
        .unwrap();
    assert_eq!(stopped.reverted, low as u64);
    assert_eq!(
        pg_count(
            &pool,
            "SELECT count(*) FROM account_limit_overrides WHERE source = 'experiment:stingy-only'"
        )
        .await,
        0
    );
}

/// What the test generates for one account, and so knows.
#[derive(Debug, Clone, Default)]
struct Plan {
    hits: bool,
    /// Minutes from signup to the hit.
    hit_after: i64,
    converts: bool,
    churns: bool,
    cost_micros: u64,
}

fn wilson(k: f64, n: f64) -> (f64, f64) {
    // By hand, as in any statistics text: centre ± half-width, z = 1.96 (two-sided 95 %).
    let z: f64 = 1.959_963_984_540_054;
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_the_generated_rates_exactly_with_intervals_tests_and_a_chart() {
    let mut config = isolated_config(&unique_suffix());
    config
        .tiers
        .free
        .limits
        .insert("month_requests".into(), 20.0);
    config.scorer.interval_ms = 200;
    let mut app = spawn_with(config, Components::none().ingest().aggregator().scorer()).await;
    let pool = app.pg().await;
    let now = Utc::now();
    // Everything happens inside the last 45 minutes (the month's window), minute-aligned.
    let base = (now - ChronoDuration::minutes(45))
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    let exp = spec(
        "report-cohort",
        base - ChronoDuration::days(3),
        vec![
            variant("control", 1, true, &[]),
            variant("generous", 1, false, &[("month_requests", 30.0)]),
        ],
    );
    store::create(&pool, &exp).await.unwrap();

    // 200 accounts; the hash splits them. Within each variant, by position: control 40 % hit
    // and 10 % of those convert; generous 60 % hit and 15 % convert; a fifth of the hitters
    // that do not convert churn; 5 % of those that never hit convert.
    let accounts: Vec<String> = (0..200).map(|i| format!("cohort-{i:03}")).collect();
    let mut by_variant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &accounts {
        let v = choose_variant("report-cohort", a, &exp.variants).unwrap();
        by_variant
            .entry(v.name.clone())
            .or_default()
            .push(a.clone());
    }
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    for (v, members) in &by_variant {
        let (hit_share, convert_share) = if v == "control" {
            (0.4, 0.10)
        } else {
            (0.6, 0.15)
        };
        let n = members.len();
        let hitters = (n as f64 * hit_share).round() as usize;
        let converters = (hitters as f64 * convert_share).round() as usize;
        let never_hit_converters = ((n - hitters) as f64 * 0.05).round() as usize;
        for (i, a) in members.iter().enumerate() {
            let hits = i < hitters;
            let p = Plan {
                hits,
                hit_after: if hits { 5 * (1 + (i as i64 % 7)) } else { 0 },
                converts: if hits {
                    i < converters
                } else {
                    i - hitters < never_hit_converters
                },
                churns: hits && i >= converters && (i - converters) % 5 == 0,
                cost_micros: 0,
            };
            plans.insert(a.clone(), p);
        }
    }
    // Signups, then usage: a hitter sends its limit's worth of requests in one minute; the
    // others send 5 (25 % or less of either limit).
    let signups: Vec<Value> = accounts
        .iter()
        .map(|a| account_event(a, "signup", base, json!({})))
        .collect();
    post_account_events(&app, &signups).await;
    wait_for("signups applied", Duration::from_secs(30), || async {
        let n = pg_count(&pool, "SELECT count(*) FROM experiment_assignments").await;
        check(n, |n| *n == 200)
    })
    .await;
    let mut usage = Vec::new();
    let mut expected_hits = 0;
    for (v, members) in &by_variant {
        let limit = if v == "control" { 20 } else { 30 };
        for a in members {
            let p = plans.get_mut(a).unwrap();
            let (n, at) = if p.hits {
                expected_hits += 1;
                (limit, base + ChronoDuration::minutes(p.hit_after))
            } else {
                (5, base + ChronoDuration::minutes(2))
            };
            for _ in 0..n {
                usage.push(usage_event(a, at, "gpt-4o-mini", 10, 5));
                p.cost_micros += 15;
            }
        }
    }
    post_usage(&app, &usage).await;
    // The scorer records every hit (and no other) before anyone converts, as in life.
    let ch = app.clickhouse();
    wait_for("every hit recorded", Duration::from_secs(60), || {
        let ch = ch.clone();
        async move {
            let n = ch
                .query("SELECT count() FROM limit_events WHERE kind = 'hit'")
                .fetch_one::<u64>()
                .await
                .unwrap_or(0);
            check(n, |n| *n >= expected_hits)
        }
    })
    .await;
    // Conversions (5 minutes after the hit, or 10 after signup) and churn (2 after the hit);
    // converted accounts then use more, which no longer counts as free-tier cost.
    let mut later = Vec::new();
    let mut after_conversion = Vec::new();
    for (a, p) in &plans {
        if p.converts {
            let at = if p.hits {
                base + ChronoDuration::minutes(p.hit_after + 5)
            } else {
                base + ChronoDuration::minutes(10)
            };
            later.push(account_event(a, "plan_changed", at, json!({"plan": "pro"})));
            after_conversion.push(usage_event(
                a,
                at + ChronoDuration::minutes(1),
                "gpt-4o-mini",
                500,
                500,
            ));
        }
        if p.churns {
            later.push(account_event(
                a,
                "churned",
                base + ChronoDuration::minutes(p.hit_after + 2),
                json!({}),
            ));
        }
    }
    post_account_events(&app, &later).await;
    post_usage(&app, &after_conversion).await;
    let total_usage = (usage.len() + after_conversion.len()) as u64;
    wait_for(
        "conversions, churn and the later usage in ClickHouse",
        Duration::from_secs(30),
        || {
            let ch = ch.clone();
            let want = later.len() as u64 + 200;
            async move {
                let accounts: u64 = ch
                    .query("SELECT count() FROM account_events")
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                let usage: u64 = ch
                    .query("SELECT count() FROM usage_events")
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                check((accounts, usage), |got| *got == (want, total_usage))
            }
        },
    )
    .await;
    // The scorer must not record hits for the converted accounts' pro usage. Once everything
    // is aggregated, they are scored again on their final state; then a sentinel account is
    // scored after them. The scorer finishes a batch (its hits recorded) before the next, so
    // by then every hit their usage could record is in.
    let records = (signups.len() + usage.len() + later.len() + after_conversion.len()) as u64;
    app.wait_for_aggregated(records, Duration::from_secs(60))
        .await;
    let converted: Vec<String> = plans
        .iter()
        .filter(|(_, p)| p.converts)
        .map(|(a, _)| a.clone())
        .collect();
    rescore(&app, &pool, &converted).await;
    let sentinel = plans
        .iter()
        .find(|(_, p)| !p.hits && !p.converts && !p.churns)
        .map(|(a, _)| a.clone())
        .unwrap();
    rescore(&app, &pool, &[sentinel]).await;

    let experiment = store::get(&pool, "report-cohort").await.unwrap();
    let report = cohort_report::build(&ch, &experiment, Utc::now())
        .await
        .unwrap();
    assert_eq!(report.variants.len(), 2);
    assert!(report.variants[0].control && report.variants[0].variant == "control");
    let control_hit_conversion = report.variants[0].hit_conversion_rate;
    for v in &report.variants {
        let members = &by_variant[&v.variant];
        let ps: Vec<&Plan> = members.iter().map(|a| &plans[a]).collect();
        let n = ps.len() as u64;
        let hit = ps.iter().filter(|p| p.hits).count() as u64;
        let hit_conv = ps.iter().filter(|p| p.hits && p.converts).count() as u64;
        let hit_churn = ps.iter().filter(|p| p.hits && p.churns).count() as u64;
        let no_hit_conv = ps.iter().filter(|p| !p.hits && p.converts).count() as u64;
        assert_eq!(v.accounts, n, "{}", v.variant);
        assert_eq!(
            (v.limit_hit_rate.successes, v.limit_hit_rate.trials),
            (hit, n),
            "{}",
            v.variant
        );
        assert_eq!(
            (
                v.hit_conversion_rate.successes,
                v.hit_conversion_rate.trials
            ),
            (hit_conv, hit),
            "{}",
            v.variant
        );
        assert_eq!(
            (v.hit_churn_rate.successes, v.hit_churn_rate.trials),
            (hit_churn, hit),
            "{}",
            v.variant
        );
        assert_eq!(
            (
                v.no_hit_conversion_rate.successes,
                v.no_hit_conversion_rate.trials
            ),
            (no_hit_conv, n - hit),
            "{}",
            v.variant
        );
        // The generated shares, exactly as generated.
        let target_hit = if v.control { 0.4 } else { 0.6 };
        assert_eq!(v.limit_hit_rate.value.unwrap(), hit as f64 / n as f64);
        assert!((v.limit_hit_rate.value.unwrap() - target_hit).abs() <= 0.5 / n as f64 + 1e-12);
        // Intervals, by hand.
        let (lo, hi) = wilson(hit_conv as f64, hit as f64);
        assert!((v.hit_conversion_rate.ci95_low.unwrap() - lo).abs() < 1e-12);
        assert!((v.hit_conversion_rate.ci95_high.unwrap() - hi).abs() < 1e-12);
        let (lo, hi) = wilson(hit as f64, n as f64);
        assert!((v.limit_hit_rate.ci95_low.unwrap() - lo).abs() < 1e-12);
        assert!((v.limit_hit_rate.ci95_high.unwrap() - hi).abs() < 1e-12);
        // Median time-to-limit from the generated minutes.
        let mut minutes: Vec<i64> = ps.iter().filter(|p| p.hits).map(|p| p.hit_after).collect();
        minutes.sort_unstable();
        let m = minutes.len();
        let median_minutes = if m % 2 == 1 {
            minutes[m / 2] as f64
        } else {
            (minutes[m / 2 - 1] + minutes[m / 2]) as f64 / 2.0
        };
        let got = v.median_hours_to_limit.unwrap();
        assert!(
            (got - median_minutes / 60.0).abs() < 1e-9,
            "{}: {got} vs {median_minutes} min",
            v.variant
        );
        // Free-tier cost: everything before the conversion, per account.
        let cost: u64 = ps.iter().map(|p| p.cost_micros).sum();
        let expected_cost = cost as f64 / n as f64 / 1e6;
        assert!(
            (v.free_cost_usd_per_account - expected_cost).abs() < 1e-12,
            "{} vs {expected_cost}",
            v.free_cost_usd_per_account
        );
        // Against the control, by hand.
        if !v.control {
            let t = v
                .hit_conversion_vs_control
                .expect("a test against the control");
            let (k1, n1) = (hit_conv as f64, hit as f64);
            let (k0, n0) = (
                control_hit_conversion.successes as f64,
                control_hit_conversion.trials as f64,
            );
            let pooled = (k1 + k0) / (n1 + n0);
            let z = (k1 / n1 - k0 / n0) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0)).sqrt();
            assert!((t.z - z).abs() < 1e-9, "{} vs {z}", t.z);
            assert!((t.difference - (k1 / n1 - k0 / n0)).abs() < 1e-12);
            assert!(t.p_value > 0.0 && t.p_value < 1.0);
        }
    }
    // The read window is 3 days: the report says it is too short to read.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("shorter than 60")),
        "{:?}",
        report.warnings
    );
    for v in &report.variants {
        assert_eq!(
            report
                .warnings
                .iter()
                .any(|w| w.contains(&format!("`{}` has", v.variant))),
            v.accounts < 100
        );
    }
    let text = report.text();
    assert!(text.contains("limit-hit → conversion"), "{text}");
    assert!(text.contains("warning: the read window"), "{text}");
    let csv = report.csv();
    assert_eq!(
        csv.lines().next().unwrap(),
        "variant,control,metric,value,ci95_low,ci95_high,successes,trials"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["variants"][1]["limit_hit_rate"]["trials"],
        report.variants[1].accounts
    );

    // The chart: a valid PNG with one line per variant, in its own colour.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conversion.png");
    meterline_growth::chart::draw(&report, &path).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (
            meterline_growth::chart::WIDTH,
            meterline_growth::chart::HEIGHT
        )
    );
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let count = |(r, g, b): (u8, u8, u8)| {
        pixels
            .chunks(channels)
            .filter(|p| p[0] == r && p[1] == g && p[2] == b)
            .count()
    };
    for (i, v) in report.conversion_curves.iter().enumerate() {
        let n = count(meterline_growth::chart::PALETTE[i]);
        assert!(
            n > 300,
            "variant {} drew {n} pixels in its colour",
            v.variant
        );
    }
    for colour in &meterline_growth::chart::PALETTE[report.conversion_curves.len()..] {
        assert_eq!(count(*colour), 0, "a line nobody asked for");
    }
    app.stop().await;
}
