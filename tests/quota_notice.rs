//! The unseen dashboard notice inside the quota decision, on the real servers: notices are
//! written to PostgreSQL `dashboard_notices` as the notifier writes them, and reach the
//! decision through the read path's in-process cache, kept fresh by PostgreSQL notifications.
//!
//! A decision that must *not* carry a notice is asked only after a sentinel: a notice for a
//! fresh account, committed after the change under test, has reached that account's decision.
//! The cache applies notifications in commit order, so by then it has applied the change too.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use common::*;
use meterline::services::{self, Components};
use meterline_ingest::Scope;
use serde_json::{json, Value};
use uuid::Uuid;

struct App {
    app: TestApp,
    read_token: String,
    pool: sqlx::PgPool,
    /// Makes this test's account ids unique on the shared servers.
    id: String,
}

async fn spawn() -> App {
    let id = unique_suffix();
    let app = spawn_with(isolated_config(&id), Components::none().ingest()).await;
    let pool = app.pg().await;
    let read_token = services::token_store(&app.config, &pool)
        .create(&format!("reader-{id}"), &[Scope::Read], None)
        .await
        .unwrap();
    App {
        app,
        read_token,
        pool,
        id,
    }
}

/// A notice as the notifier writes one (`notifier/src/intake.rs`).
struct NewNotice<'a> {
    account: &'a str,
    kind: &'a str,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl App {
    fn account(&self, name: &str) -> String {
        format!("{name}-{}", self.id)
    }

    /// Writes the notice; returns its id and the body a decision should carry for it.
    async fn insert(&self, n: NewNotice<'_>) -> (Uuid, Value) {
        let notice_id = Uuid::new_v4();
        // PostgreSQL keeps microseconds.
        let (created, expires) = (n.created_at.trunc_subsecs(6), n.expires_at.trunc_subsecs(6));
        let message = format!("You're growing fast, {}!", n.account);
        sqlx::query(
            "INSERT INTO dashboard_notices \
               (notice_id, account_id, kind, message, upgrade_url, plan, signal_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'https://up.example/upgrade?plan=pro', 'pro', $5, $6, $7)",
        )
        .bind(notice_id)
        .bind(n.account)
        .bind(n.kind)
        .bind(&message)
        .bind(format!("signal-{notice_id}"))
        .bind(created)
        .bind(expires)
        .execute(&self.pool)
        .await
        .unwrap();
        let body = json!({
            "notice_id": notice_id,
            "kind": n.kind,
            "message": message,
            "upgrade_url": "https://up.example/upgrade?plan=pro",
            "plan": "pro",
            "created_at": created,
            "expires_at": expires,
        });
        (notice_id, body)
    }

    /// A current notice for `account`, created now (less `age`), expiring in a week.
    async fn notice(&self, account: &str, age: ChronoDuration) -> (Uuid, Value) {
        let now = Utc::now();
        self.insert(NewNotice {
            account,
            kind: "rate_limit_sustained",
            created_at: now - age,
            expires_at: now + ChronoDuration::days(7),
        })
        .await
    }

    async fn decide(&self, account: &str) -> Value {
        let resp = self
            .app
            .http
            .post(self.app.url("/v1/quota/check"))
            .bearer_auth(&self.read_token)
            .json(&json!({"account_id": account, "model": "gpt-4o-mini"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "quota check for {account}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["account_id"], account, "{body}");
        assert_eq!(body["decision"], "allow", "{body}");
        body
    }

    /// Waits until `account`'s decision carries the notice `want`, and returns the decision.
    async fn decision_with(&self, account: &str, want: Uuid) -> Value {
        wait_for(
            &format!("notice {want} in {account}'s decision"),
            Duration::from_secs(10),
            || async {
                let d = self.decide(account).await;
                check(d, |d| d["dashboard_notice"]["notice_id"] == json!(want))
            },
        )
        .await
    }

    /// Returns once the cache has applied every change committed before this call (see the
    /// module documentation).
    async fn settle(&self) {
        let sentinel = self.account(&format!("sentinel-{}", unique_suffix()));
        let (id, _) = self.notice(&sentinel, ChronoDuration::zero()).await;
        self.decision_with(&sentinel, id).await;
    }

    /// `POST /v1/accounts/{account}/notices/{notice}/{what}`: 202.
    async fn report(&self, account: &str, notice: Uuid, what: &str) {
        let resp = self
            .app
            .http
            .post(
                self.app
                    .url(&format!("/v1/accounts/{account}/notices/{notice}/{what}")),
            )
            .bearer_auth(&self.read_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{what} {notice}");
    }

    /// `GET /v1/accounts/{account}/notice`.
    async fn current_notice(&self, account: &str) -> Value {
        self.app
            .get_json(
                &format!("/v1/accounts/{account}/notice"),
                Some(&self.read_token),
            )
            .await
    }

    async fn shown_at(&self, notice: Uuid) -> Option<DateTime<Utc>> {
        sqlx::query_scalar("SELECT shown_at FROM dashboard_notices WHERE notice_id = $1")
            .bind(notice)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseen_notice_rides_in_the_decision_until_the_gateway_reports_it_shown() {
    let a = spawn().await;
    let (holder, other) = (a.account("holder"), a.account("other"));
    let (id, want) = a.notice(&holder, ChronoDuration::zero()).await;

    let decision = a.decision_with(&holder, id).await;
    assert_eq!(
        decision["dashboard_notice"], want,
        "the notice, field for field"
    );
    // Asking again does not use it up: only the gateway's report marks it shown.
    let again = a.decide(&holder).await;
    assert_eq!(again["dashboard_notice"], want);
    assert_eq!(a.shown_at(id).await, None, "a quota check marks nothing");

    // The OpenAPI document describes exactly what arrived.
    let doc = a.app.get_json("/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    // `Decision` is flattened in, so the decision's own fields sit in an `allOf` member.
    let field = schemas["QuotaDecision"]["allOf"]
        .as_array()
        .expect("QuotaDecision is Decision plus its own fields")
        .iter()
        .map(|part| &part["properties"]["dashboard_notice"])
        .find(|f| !f.is_null())
        .expect("QuotaDecision documents dashboard_notice");
    assert!(
        field
            .to_string()
            .contains("#/components/schemas/DashboardNotice"),
        "{field}"
    );
    let documented: std::collections::BTreeSet<&str> = schemas["DashboardNotice"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: std::collections::BTreeSet<&str> = schemas["DashboardNotice"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let sent: std::collections::BTreeSet<&str> = want
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, sent);
    assert_eq!(required, sent, "every field is always there");

    // Another account's decision never carries it: no field at all.
    let theirs = a.decide(&other).await;
    assert!(theirs.get("dashboard_notice").is_none(), "{theirs}");

    a.report(&holder, id, "shown").await;
    assert!(a.shown_at(id).await.is_some());
    a.settle().await;
    let after = a.decide(&holder).await;
    assert!(
        after.get("dashboard_notice").is_none(),
        "shown: later decisions leave it out: {after}"
    );
    // The dashboard's own endpoint still answers it until it is clicked or expires.
    let current = a.current_notice(&holder).await;
    assert_eq!(current["notice_id"], json!(id), "{current}");
    assert!(current["shown_at"].is_string(), "{current}");
    // The other account's decision is unchanged by all this.
    assert!(a.decide(&other).await.get("dashboard_notice").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicked_expired_and_superseded_notices_stay_out_of_the_decision() {
    let a = spawn().await;
    let now = Utc::now();

    // Clicked (without having been reported shown): gone from the decision and the dashboard.
    let clicker = a.account("clicker");
    let (clicked, _) = a.notice(&clicker, ChronoDuration::zero()).await;
    a.decision_with(&clicker, clicked).await;
    a.report(&clicker, clicked, "clicked").await;

    // Expired before it was ever loaded.
    let late = a.account("late");
    a.insert(NewNotice {
        account: &late,
        kind: "power_user",
        created_at: now - ChronoDuration::days(8),
        expires_at: now - ChronoDuration::days(1),
    })
    .await;

    // Two unseen notices: the more recent one is offered.
    let twice = a.account("twice");
    let (older, _) = a.notice(&twice, ChronoDuration::hours(2)).await;
    let (newer, newer_body) = a.notice(&twice, ChronoDuration::hours(1)).await;

    a.settle().await;
    let d = a.decide(&clicker).await;
    assert!(d.get("dashboard_notice").is_none(), "clicked: {d}");
    assert_eq!(a.current_notice(&clicker).await, Value::Null);
    let d = a.decide(&late).await;
    assert!(d.get("dashboard_notice").is_none(), "expired: {d}");
    assert_eq!(a.decide(&twice).await["dashboard_notice"], newer_body);

    // Once the newer one is shown, the older unseen one is next.
    a.report(&twice, newer, "shown").await;
    a.decision_with(&twice, older).await;

    // Expiring while held: the clock alone takes it out, no notification needed.
    let brief = a.account("brief");
    let expires_at = Utc::now() + ChronoDuration::seconds(3);
    let (id, _) = a
        .insert(NewNotice {
            account: &brief,
            kind: "plugin_gate",
            created_at: Utc::now(),
            expires_at,
        })
        .await;
    a.decision_with(&brief, id).await;
    let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
    // Waiting for the clock is the behaviour under test here.
    tokio::time::sleep(left + Duration::from_millis(50)).await;
    let d = a.decide(&brief).await;
    assert!(
        d.get("dashboard_notice").is_none(),
        "expired at {expires_at}: {d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_listening_connection_is_killed_the_cache_catches_up() {
    let a = spawn().await;
    let holder = a.account("holder");
    let (id, _) = a.notice(&holder, ChronoDuration::zero()).await;
    a.decision_with(&holder, id).await;

    // PostgreSQL drops the cache's listening connection (a failover, an idle-connection
    // killer); the notice is marked shown by someone else around that moment.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN \"meterline_notices\"%'",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "{killed:?}"
    );
    sqlx::query("UPDATE dashboard_notices SET shown_at = now() WHERE notice_id = $1")
        .bind(id)
        .execute(&a.pool)
        .await
        .unwrap();

    // Listening again: a new notice arrives, and the shown one is gone.
    let next = a.account("next");
    let (fresh, _) = a.notice(&next, ChronoDuration::zero()).await;
    a.decision_with(&next, fresh).await;
    a.settle().await;
    let d = a.decide(&holder).await;
    assert!(d.get("dashboard_notice").is_none(), "{d}");
}
