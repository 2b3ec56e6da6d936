//! A person in the loop before enforcement, on the real servers, through ingest: the scorer
//! puts accounts in review, a suspected free account gets stricter limits and the fallback
//! model, a person's confirmation (CLI or HTTP) denies and a clearance allows within seconds,
//! the same episode does not flag a cleared account again unless its score rises by the
//! margin, the high-confidence rule denies a brand-new free account and never a paying one,
//! and every decision is in ClickHouse `account_events` with its actor and reason.
//!
//! Issue 19: misfire 1 (a paying customer's CI is denied) and acceptance 2 (the review queue).

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use clickhouse::Row;
use common::*;
use meterline::services::{self, Components};
use meterline::Config;
use meterline_ingest::Scope;
use meterline_schemas::keys::Grain;
use serde::Deserialize;
use serde_json::{json, Value};

fn config() -> Config {
    let mut c = isolated_config(&unique_suffix());
    c.scorer.interval_ms = 200;
    c
}

struct ReviewApp {
    app: TestApp,
    pool: sqlx::PgPool,
    /// An `admin` token: the review queue, and (admin holds every scope) quota checks.
    admin: String,
}

/// Ingest, the aggregator and the scorer, with an admin token. Sessions "today" need a few
/// minutes of today behind us, so in the first minutes of a UTC day this waits.
async fn spawn() -> ReviewApp {
    let now = Utc::now();
    let day_start = Grain::Day.window_start(now);
    if now - day_start < ChronoDuration::minutes(12) {
        tokio::time::sleep(
            (day_start + ChronoDuration::minutes(12) - now)
                .to_std()
                .unwrap(),
        )
        .await;
    }
    let app = spawn_with(config(), Components::none().ingest().aggregator().scorer()).await;
    let pool = app.pg().await;
    let admin = services::token_store(&app.config, &pool)
        .create(&format!("admin-{}", unique_suffix()), &[Scope::Admin], None)
        .await
        .unwrap();
    ReviewApp { app, pool, admin }
}

/// `sessions` sessions starting `gap_secs` apart from `start`, each of `per_session` requests
/// five seconds apart, every one with the same fixture prompt: a CI pipeline's shape.
fn fixture_traffic(
    account: &str,
    start: DateTime<Utc>,
    sessions: i64,
    gap_secs: i64,
    per_session: i64,
) -> Vec<Value> {
    let mut out = Vec::new();
    for s in 0..sessions {
        let session_start = start + ChronoDuration::seconds(s * gap_secs);
        for r in 0..per_session {
            let mut e = usage_event(
                account,
                session_start + ChronoDuration::seconds(r * 5),
                "gpt-4o-mini",
                200,
                50,
            );
            e["session_id"] = json!(format!("{}-{s}", start.timestamp()));
            e["prompt_hash"] = json!("fixture-prompt");
            out.push(e);
        }
    }
    out
}

impl ReviewApp {
    async fn post_usage(&self, events: &[Value]) {
        let (status, body) = self.app.post_events(events).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], events.len(), "{body}");
    }

    async fn account_event(
        &self,
        account: &str,
        at: DateTime<Utc>,
        kind: &str,
        plan: Option<&str>,
    ) -> String {
        let event_id = uuid::Uuid::new_v4().to_string();
        let mut e = json!({
            "event_id": event_id,
            "occurred_at": at.to_rfc3339(),
            "account_id": account,
            "type": kind,
        });
        if let Some(p) = plan {
            e["plan"] = json!(p);
        }
        let (status, body) = self.app.post_json("/v1/account-events", &json!([e])).await;
        assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");
        event_id
    }

    async fn quota(&self, account: &str, model: &str) -> Value {
        let resp = self
            .app
            .http
            .post(self.app.url("/v1/quota/check"))
            .bearer_auth(&self.admin)
            .json(&json!({"account_id": account, "model": model,
                "estimated_input_tokens": 100, "estimated_output_tokens": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Waits until a quota check for `account` answers `decision`.
    async fn wait_decision(&self, what: &str, account: &str, model: &str, decision: &str) -> Value {
        wait_for(what, Duration::from_secs(15), || async {
            let body = self.quota(account, model).await;
            check(body, |b| b["decision"] == decision)
        })
        .await
    }

    /// (review_state, review_actor, review_score, review_seq) of the account.
    async fn review_row(
        &self,
        account: &str,
    ) -> (Option<String>, Option<String>, Option<i32>, i64) {
        sqlx::query_as(
            "SELECT review_state, review_actor, review_score, review_seq FROM accounts WHERE account_id = $1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
        .unwrap_or((None, None, None, 0))
    }

    async fn wait_state(
        &self,
        account: &str,
        state: &str,
    ) -> (Option<String>, Option<String>, Option<i32>, i64) {
        wait_for(
            &format!("{account} {state}"),
            Duration::from_secs(30),
            || async {
                let row = self.review_row(account).await;
                check(row, |r| r.0.as_deref() == Some(state))
            },
        )
        .await
    }

    /// Waits until the scorer has scored `account` with `sessions` sessions today (and the
    /// abuse score `abuse`, when given).
    async fn wait_scored(&self, account: &str, sessions: u64, abuse: Option<i32>) {
        wait_for(
            &format!("{account} scored with {sessions} sessions today"),
            Duration::from_secs(30),
            || async {
                let row: Option<(i32, Value)> = sqlx::query_as(
                    "SELECT abuse, scores -> 'inputs' FROM account_scores WHERE account_id = $1",
                )
                .bind(account)
                .fetch_optional(&self.pool)
                .await
                .unwrap();
                check(row, |r| {
                    r.as_ref().is_some_and(|(a, i)| {
                        abuse.is_none_or(|want| *a == want)
                            && i["sessions_today"].as_u64() == Some(sessions)
                    })
                })
            },
        )
        .await;
    }

    /// Every review move the scorer has decided for `account` so far is applied: the account is
    /// scored once more (a batch is scored, saved and moved whole before the next starts, so
    /// the earlier scorings' moves are on Kafka), then a sentinel account event for it (same
    /// key, same partition, after them) is applied by the aggregator.
    async fn settled(&self, account: &str) {
        let dirty = format!("{}dirty", self.app.config.redis.key_prefix);
        let marked = Utc::now();
        let mut redis = self.app.redis().await;
        let _: () = redis::cmd("SADD")
            .arg(&dirty)
            .arg(account)
            .query_async(&mut redis)
            .await
            .unwrap();
        wait_for(
            &format!("{account} scored again"),
            Duration::from_secs(30),
            || async {
                let at: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT scored_at FROM account_scores WHERE account_id = $1",
                )
                .bind(account)
                .fetch_optional(&self.pool)
                .await
                .unwrap();
                check(at, |at| at.is_some_and(|at| at > marked))
            },
        )
        .await;
        let sentinel = self
            .account_event(account, Utc::now(), "upgrade_page_viewed", None)
            .await;
        wait_for(
            &format!("the sentinel for {account} applied"),
            Duration::from_secs(30),
            || async {
                let applied: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM account_events WHERE event_id = $1::uuid)",
                )
                .bind(&sentinel)
                .fetch_one(&self.pool)
                .await
                .unwrap();
                check(applied, |a| *a)
            },
        )
        .await;
    }

    async fn http_decide(
        &self,
        account: &str,
        verdict: &str,
        actor: &str,
        reason: &str,
    ) -> (u16, Value) {
        let resp = self
            .app
            .http
            .post(self.app.url(&format!("/v1/review/{account}/{verdict}")))
            .bearer_auth(&self.admin)
            .json(&json!({"actor": actor, "reason": reason}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `meterline review ARGS…` as a child process with the test's configuration.
    fn cli(&self, args: &[&str]) -> String {
        let file = ConfigFile::write(&self.app.config);
        let out = file
            .command()
            .arg("review")
            .args(args)
            .output()
            .expect("meterline review runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meterline review {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    async fn day_requests_limit(&self, account: &str) -> f64 {
        let body = self
            .app
            .get_json(&format!("/v1/accounts/{account}/usage"), Some(&self.admin))
            .await;
        body["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "day_requests")
            .unwrap()["limit"]
            .as_f64()
            .unwrap()
    }
}

/// Misfire 1: a pro account whose CI runs 40 sessions a day, seconds apart, with one fixture
/// prompt scores 70 on the abuse formula, and keeps getting `allow` for its production traffic.
/// Its twin, a free account with the same traffic, is suspected: stricter limits and the
/// fallback model, not `deny`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paying_ci_keeps_allow_and_its_free_twin_is_restricted() {
    let mut r = spawn().await;
    let id = unique_suffix();
    let pro = format!("{id}-pro-ci");
    let free = format!("{id}-free-ci");
    let now = Utc::now();
    let start = now - ChronoDuration::minutes(10);
    for (account, plan) in [(&pro, "pro"), (&free, "free")] {
        r.account_event(
            account,
            now - ChronoDuration::days(20),
            "signup",
            Some(plan),
        )
        .await;
        // 40 sessions two seconds apart, one request each, one prompt: 25 + 25 + 20.
        r.post_usage(&fixture_traffic(account, start, 40, 2, 1))
            .await;
    }

    // The twin: suspected by the scorer, restricted by the read path.
    let (_, actor, score, _) = r.wait_state(&free, "suspected").await;
    assert_eq!(
        (actor.as_deref(), score),
        (Some("meterline:scorer"), Some(70))
    );
    let body = r
        .wait_decision("the twin restricted", &free, "claude-3-haiku", "degrade")
        .await;
    assert_eq!(
        (&body["model"], &body["reason"], &body["degraded"]["reason"]),
        (
            &json!("gpt-4o-mini"),
            &json!("abuse_suspected"),
            &json!("abuse_suspected")
        ),
        "{body}"
    );
    // A quarter of the free tier's 5,000 requests a day.
    assert_eq!(r.day_requests_limit(&free).await, 1_250.0);

    // The paying account: same formula, and once everything the scorer decided for it is
    // applied, its production traffic is still allowed, on the model it asked for.
    r.wait_scored(&pro, 40, None).await;
    r.settled(&pro).await;
    let body = r.quota(&pro, "gpt-4o").await;
    assert_eq!(
        (&body["decision"], &body["model"], &body["reason"]),
        (&json!("allow"), &json!("gpt-4o"), &Value::Null),
        "{body}"
    );
    assert_eq!(r.day_requests_limit(&pro).await, 200_000.0);
    r.app.stop().await;
}

#[derive(Debug, Row, Deserialize)]
struct ReviewEventRow {
    kind: String,
    actor: String,
    reason: String,
    abuse_score: Option<i64>,
}

/// Acceptance 2, end to end: a suspected free account gets the stricter limits; confirming it
/// (CLI) denies within seconds; clearing it (HTTP) allows; more of the same traffic in the
/// episode flags nothing, a rise by the margin flags it again; confirming over HTTP and clearing
/// on the command line work the same; every decision is in ClickHouse with actor and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_queue_end_to_end() {
    let mut r = spawn().await;
    let account = format!("{}-suspect", unique_suffix());
    let now = Utc::now();
    let t0 = now - ChronoDuration::minutes(10);
    // 40 minutes old (new account, 30) with one prompt over 12 requests (20): 50, suspected;
    // under the high-confidence rule's 80.
    r.account_event(&account, now - ChronoDuration::minutes(40), "signup", None)
        .await;
    r.post_usage(&fixture_traffic(&account, t0, 3, 60, 4)).await;
    let (_, actor, score, _) = r.wait_state(&account, "suspected").await;
    assert_eq!(
        (actor.as_deref(), score),
        (Some("meterline:scorer"), Some(50))
    );
    let body = r
        .wait_decision("stricter limits", &account, "claude-3-haiku", "degrade")
        .await;
    assert_eq!(
        (&body["model"], &body["reason"]),
        (&json!("gpt-4o-mini"), &json!("abuse_suspected"))
    );
    assert_eq!(r.day_requests_limit(&account).await, 1_250.0);

    // The queue shows it with its score, reasons, state and since when (CLI and HTTP).
    let listed = r.cli(&["list", "--json"]);
    let entry: Value = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["account_id"] == account.as_str())
        .unwrap_or_else(|| panic!("{account} not listed: {listed}"));
    assert_eq!(entry["state"], "suspected");
    assert_eq!(entry["abuse_score"], 50);
    assert!(entry["since"].is_string());
    let reasons: Vec<&str> = entry["abuse_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("new_account (+30)"))
            && reasons
                .iter()
                .any(|r| r.starts_with("low_input_diversity (+20)")),
        "{reasons:?}"
    );
    let listed: Value = r
        .app
        .http
        .get(r.app.url("/v1/review?state=suspected"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["account_id"] == account.as_str()),
        "{listed}"
    );
    let shown: Value = serde_json::from_str(&r.cli(&["show", &account, "--json"])).unwrap();
    assert_eq!(shown["abuse"]["value"], 50);
    assert_eq!(shown["inputs"]["sessions_today"], 3);
    assert_eq!(shown["history"][0]["type"], "review_suspected");

    // An actor and a reason are required.
    let (status, body) = r.http_decide(&account, "confirm", "", "x").await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("actor: must not be empty"))
    );
    let resp = r
        .app
        .http
        .post(r.app.url(&format!("/v1/review/{account}/confirm")))
        .bearer_auth(&r.admin)
        .json(&json!({"actor": "ana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "reason: required"
    );

    // Confirmed on the command line: deny within seconds.
    let out = r.cli(&[
        "confirm",
        &account,
        "--actor",
        "ana@trust.example",
        "--reason",
        "one fixture prompt from a 40-minute-old account",
    ]);
    assert!(out.starts_with("review_confirmed"), "{out}");
    let body = r
        .wait_decision("deny after confirming", &account, "gpt-4o-mini", "deny")
        .await;
    assert_eq!(body["reason"], "abuse_confirmed");

    // Cleared over HTTP: allow, on the normal limits.
    let (status, body) = r
        .http_decide(
            &account,
            "clear",
            "bo@trust.example",
            "a student's test harness",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["type"], &body["actor"], &body["abuse_score"]),
        (
            &json!("review_cleared"),
            &json!("bo@trust.example"),
            &json!(50)
        )
    );
    let body = r
        .wait_decision("allow after clearing", &account, "claude-3-haiku", "allow")
        .await;
    assert_eq!(
        (&body["model"], &body["reason"]),
        (&json!("claude-3-haiku"), &Value::Null)
    );
    assert_eq!(r.day_requests_limit(&account).await, 5_000.0);

    // More of the same traffic in the episode: scored (still 50), not flagged again.
    let (_, _, _, seq_after_clear) = r.review_row(&account).await;
    r.post_usage(&fixture_traffic(
        &account,
        t0 + ChronoDuration::minutes(4),
        3,
        60,
        4,
    ))
    .await;
    r.wait_scored(&account, 6, Some(50)).await;
    r.settled(&account).await;
    let (state, _, _, seq) = r.review_row(&account).await;
    assert_eq!(
        (state.as_deref(), seq),
        (Some("cleared"), seq_after_clear),
        "the same episode flagged the cleared account again"
    );
    assert_eq!(
        r.quota(&account, "claude-3-haiku").await["decision"],
        "allow"
    );

    // Ten sessions a second apart: machine speed (+25), 75 = 50 + the margin of 20 and more.
    r.post_usage(&fixture_traffic(
        &account,
        t0 + ChronoDuration::minutes(7),
        10,
        1,
        1,
    ))
    .await;
    let (_, actor, score, _) = r.wait_state(&account, "suspected").await;
    assert_eq!(
        (actor.as_deref(), score),
        (Some("meterline:scorer"), Some(75))
    );
    r.wait_decision("restricted again", &account, "claude-3-haiku", "degrade")
        .await;

    // Confirmed over HTTP, cleared on the command line.
    let (status, body) = r
        .http_decide(
            &account,
            "confirm",
            "cy@trust.example",
            "the burst is automated",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    r.wait_decision(
        "deny after confirming over HTTP",
        &account,
        "gpt-4o-mini",
        "deny",
    )
    .await;
    let out = r.cli(&[
        "clear",
        &account,
        "--actor",
        "dee@trust.example",
        "--reason",
        "customer explained the load test",
    ]);
    assert!(out.starts_with("review_cleared"), "{out}");
    r.wait_decision(
        "allow after clearing on the command line",
        &account,
        "claude-3-haiku",
        "allow",
    )
    .await;

    // Every move is an account event in ClickHouse, in order, with who, why and the score.
    let ch = r.app.clickhouse();
    let rows: Vec<ReviewEventRow> = wait_for(
        "six review events in ClickHouse",
        Duration::from_secs(15),
        || async {
            let rows: Vec<ReviewEventRow> = ch
                .query(
                    "SELECT type AS kind, actor, reason, abuse_score FROM account_events \
                     WHERE account_id = ? AND type LIKE 'review_%' ORDER BY kafka_offset",
                )
                .bind(&account)
                .fetch_all()
                .await
                .unwrap_or_default();
            check(rows, |rows| rows.len() >= 6)
        },
    )
    .await;
    let got: Vec<(&str, &str, Option<i64>)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.actor.as_str(), r.abuse_score))
        .collect();
    assert_eq!(
        got,
        vec![
            ("review_suspected", "meterline:scorer", Some(50)),
            ("review_confirmed", "ana@trust.example", Some(50)),
            ("review_cleared", "bo@trust.example", Some(50)),
            ("review_suspected", "meterline:scorer", Some(75)),
            ("review_confirmed", "cy@trust.example", Some(75)),
            ("review_cleared", "dee@trust.example", Some(75)),
        ]
    );
    assert_eq!(
        rows[1].reason,
        "one fixture prompt from a 40-minute-old account"
    );
    assert!(
        rows[0].reason.contains("new_account (+30)"),
        "{}",
        rows[0].reason
    );
    assert!(
        rows[3].reason.contains("machine_speed (+25)"),
        "{}",
        rows[3].reason
    );
    r.app.stop().await;
}

/// The high-confidence rule denies a brand-new free account above its score without a person,
/// and never a paying account with the same traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_confidence_rule_denies_a_new_free_account_never_a_pro_one() {
    let mut r = spawn().await;
    let id = unique_suffix();
    let free = format!("{id}-new-free");
    let pro = format!("{id}-new-pro");
    let now = Utc::now();
    let start = now - ChronoDuration::minutes(8);
    for (account, plan) in [(&free, "free"), (&pro, "pro")] {
        r.account_event(
            account,
            now - ChronoDuration::minutes(10),
            "signup",
            Some(plan),
        )
        .await;
        // 10 minutes old (30), 22 sessions a second apart (25 + 25), one prompt (20): 100.
        r.post_usage(&fixture_traffic(account, start, 22, 1, 2))
            .await;
    }
    let (_, actor, score, _) = r.wait_state(&free, "auto_denied").await;
    assert_eq!(
        (actor.as_deref(), score),
        (Some("meterline:high-confidence-rule"), Some(100))
    );
    let body = r
        .wait_decision("the rule's deny", &free, "gpt-4o-mini", "deny")
        .await;
    assert_eq!(body["reason"], "abuse_high_confidence");

    r.wait_scored(&pro, 22, None).await;
    r.settled(&pro).await;
    let (state, _, _, _) = r.review_row(&pro).await;
    assert_ne!(
        state.as_deref(),
        Some("auto_denied"),
        "the rule never takes a paying account"
    );
    let body = r.quota(&pro, "gpt-4o").await;
    assert_eq!(
        (&body["decision"], &body["reason"]),
        (&json!("allow"), &Value::Null),
        "{body}"
    );
    r.app.stop().await;
}
