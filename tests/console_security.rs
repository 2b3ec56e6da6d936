//! The web console's security, over plain HTTP against the real servers (issue 22, acceptance
//! 2): no page or action without a session, a viewer cannot act, an action without the
//! session's CSRF token is refused, markup in an account id or a reason is shown escaped
//! wherever it appears, and the session cookie has its flags.
//!
//! A refused action must leave nothing behind. Review decisions are account events on Kafka,
//! so each check ends with a sentinel: one accepted decision for the same account (same key,
//! same partition, after the refused ones), and once the aggregator has applied it the
//! account's review events are exactly that one.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::console::{token, ConsoleUser};
use common::*;
use meterline::services::Components;
use meterline_ingest::Scope;
use serde_json::json;

const ACCOUNT: &str = "acct-console-sec";
const MARKUP: &str = "<script>alert('x')</script> & <b>bold</b>";
const ESCAPED: &str =
    "&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt; &amp; &lt;b&gt;bold&lt;&#x2f;b&gt;";

/// The pages and actions of the console, each with what a request without a session gets.
fn routes(dead: i64) -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/console".into()),
        ("GET", format!("/console/accounts/{ACCOUNT}")),
        ("GET", "/console/search?q=acct".into()),
        ("GET", "/console/lists/deal-ready".into()),
        ("GET", "/console/lists/flagged/csv".into()),
        ("GET", "/console/review".into()),
        ("GET", format!("/console/review/{ACCOUNT}")),
        ("GET", "/console/notifications".into()),
        ("GET", "/console/health".into()),
        ("GET", "/console/experiments".into()),
        ("GET", "/console/experiments/none".into()),
        ("GET", "/console/growth".into()),
        ("GET", "/console/audit".into()),
        ("POST", format!("/console/review/{ACCOUNT}/confirm")),
        ("POST", format!("/console/review/{ACCOUNT}/clear")),
        ("POST", format!("/console/notifications/{dead}/retry")),
        ("POST", "/console/logout".into()),
    ]
}

async fn signup(app: &TestApp, account: &str) {
    let (status, body) = app
        .post_json(
            "/v1/account-events",
            &json!([{
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": Utc::now().to_rfc3339(),
                "account_id": account,
                "type": "signup",
                "plan": "free",
            }]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// A dead notification for `account`, as the notifier leaves one after its last attempt.
async fn dead_notification(pool: &sqlx::PgPool, account: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO notifications (account_id, destination, kind, signal_id, cooldown_class, cooldown_at, score, payload, status, attempts, last_error) \
         VALUES ($1, 'slack:#sales', 'deal_ready', $2, 'deal', now(), 80, '{}', 'dead', 5, 'HTTP 500') RETURNING id",
    )
    .bind(account)
    .bind(format!("{account}:deal_ready:test"))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn status_of(pool: &sqlx::PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The account's review events applied so far: (type, actor, reason).
async fn review_events(pool: &sqlx::PgPool, account: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT type, payload ->> 'actor', payload ->> 'reason' FROM account_events \
         WHERE account_id = $1 AND type LIKE 'review\\_%' ORDER BY occurred_at",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_roles_csrf_and_escaping() {
    let app = spawn_with(
        isolated_config(&unique_suffix()),
        Components::none().ingest().aggregator(),
    )
    .await;
    let pool = app.pg().await;
    signup(&app, ACCOUNT).await;
    wait_for("the signup applied", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE account_id = $1")
            .bind(ACCOUNT)
            .fetch_one(&pool)
            .await
            .unwrap();
        check(n, |n| *n == 1)
    })
    .await;
    let dead = dead_notification(&pool, ACCOUNT).await;
    let (viewer_name, viewer) = token(&app, "viewer", &[Scope::Console]).await;
    let (reviewer_name, reviewer) = token(&app, "reviewer", &[Scope::Review]).await;
    let (_, gateway) = token(&app, "gateway", &[Scope::Ingest, Scope::Read]).await;

    // 1. Without a session: every page sends to sign-in, every action is refused, and a
    //    cookie that names no session is no session.
    for cookie in [None, Some("meterline_console=0000")] {
        let mut anonymous = ConsoleUser::new(&app);
        anonymous.cookie = cookie.map(String::from);
        for (method, path) in routes(dead) {
            let a = match method {
                "GET" => anonymous.get(&path).await,
                _ => {
                    anonymous
                        .post(&path, &[("csrf", "x"), ("reason", "r")], None, &[])
                        .await
                }
            };
            match method {
                "GET" => {
                    assert_eq!(a.status, 303, "{method} {path} without a session");
                    assert_eq!(a.location.as_deref(), Some("/console/login"), "{path}");
                }
                _ => assert_eq!(a.status, 401, "{method} {path} without a session"),
            }
            assert!(
                !a.body.contains(ACCOUNT),
                "{path} leaked the account: {}",
                a.body
            );
        }
    }

    // 2. Sign-in: an unknown token, a token without a console scope, and a login post without
    //    the form's own CSRF cookie get no session.
    let mut nobody = ConsoleUser::new(&app);
    let a = nobody.sign_in("mlt_not-a-token").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("token: unknown or revoked"), "{}", a.body);
    let a = nobody.sign_in(&gateway).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("neither the console nor the review scope"),
        "{}",
        a.body
    );
    assert!(nobody.cookie.is_none());
    let a = nobody
        .post(
            "/console/login",
            &[("token", &reviewer), ("csrf", "forged")],
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, 403, "login without its CSRF cookie: {}", a.body);
    assert!(!a
        .set_cookies
        .iter()
        .any(|c| c.starts_with("meterline_console=")));

    // 3. The cookie's flags: HttpOnly, SameSite=Strict, Path=/console, an expiry; Secure when
    //    the request came over TLS (a proxy's X-Forwarded-Proto), not over plain HTTP.
    let mut viewer_user = ConsoleUser::new(&app);
    let a = viewer_user.sign_in(&viewer).await;
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/console")),
        "{}",
        a.body
    );
    let session_cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("meterline_console="))
        .unwrap()
        .clone();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(
            session_cookie.contains(flag),
            "{session_cookie} lacks {flag}"
        );
    }
    assert!(!session_cookie.contains("Secure"), "{session_cookie}");
    let mut tls_user = ConsoleUser::new(&app);
    let a = tls_user
        .sign_in_with(&viewer, &[("x-forwarded-proto", "https")])
        .await;
    let tls_cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("meterline_console="))
        .unwrap();
    assert!(tls_cookie.contains("; Secure"), "{tls_cookie}");
    // The expiry is the server's too: a session past it is no session, whatever the browser
    // keeps.
    assert_eq!(tls_user.get("/console").await.status, 200);
    let value = common::console::pair(tls_cookie)["meterline_console=".len()..].to_owned();
    let expired = sqlx::query(
        "UPDATE console_sessions SET expires_at = now() - interval '1 second' \
         WHERE session_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&value)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        expired.rows_affected(),
        1,
        "the session is stored by its SHA-256"
    );
    let a = tls_user.get("/console").await;
    assert_eq!(a.status, 303, "an expired session still works");

    // 4. A viewer sees every page but cannot act, even with its valid CSRF token.
    for (method, path) in routes(dead) {
        if method == "GET" && !path.ends_with("/none") {
            let a = viewer_user.get(&path).await;
            assert_eq!(a.status, 200, "viewer GET {path}: {}", a.body);
        }
    }
    let viewer_csrf = viewer_user.csrf().await;
    for path in [
        format!("/console/review/{ACCOUNT}/confirm"),
        format!("/console/notifications/{dead}/retry"),
    ] {
        let a = viewer_user
            .post(
                &path,
                &[("csrf", &viewer_csrf), ("reason", "viewer tries")],
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, 403, "viewer POST {path}: {}", a.body);
        assert!(a.body.contains("can look but not act"), "{}", a.body);
    }
    let page = viewer_user.get(&format!("/console/review/{ACCOUNT}")).await;
    assert!(
        !page.body.contains("id=\"confirm\""),
        "a viewer gets no decision form"
    );

    // 5. A reviewer without the session's CSRF token (missing, forged, or another session's)
    //    is refused.
    let mut reviewer_user = ConsoleUser::new(&app);
    assert_eq!(reviewer_user.sign_in(&reviewer).await.status, 303);
    let reviewer_csrf = reviewer_user.csrf().await;
    assert_ne!(
        reviewer_csrf, viewer_csrf,
        "each session has its own CSRF token"
    );
    for csrf in [None, Some("forged"), Some(viewer_csrf.as_str())] {
        let mut form = vec![("reason", "no csrf")];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        for path in [
            format!("/console/review/{ACCOUNT}/confirm"),
            format!("/console/notifications/{dead}/retry"),
        ] {
            let a = reviewer_user.post(&path, &form, None, &[]).await;
            assert_eq!(a.status, 403, "POST {path} with csrf {csrf:?}: {}", a.body);
            assert!(a.body.contains("csrf:"), "{}", a.body);
        }
    }
    assert_eq!(
        status_of(&pool, dead).await,
        "dead",
        "no refused retry requeued it"
    );

    // 6. The sentinel: the reviewer's valid decision, with markup in its reason. Once it is
    //    applied, it is the account's only review event: nothing refused above was recorded.
    let a = reviewer_user
        .post(
            &format!("/console/review/{ACCOUNT}/confirm"),
            &[("csrf", &reviewer_csrf), ("reason", MARKUP)],
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let events = wait_for("the decision applied", Duration::from_secs(30), || async {
        check(review_events(&pool, ACCOUNT).await, |e| !e.is_empty())
    })
    .await;
    assert_eq!(
        events,
        vec![(
            "review_confirmed".to_owned(),
            reviewer_name.clone(),
            MARKUP.to_owned()
        )]
    );
    let a = reviewer_user
        .post(
            &format!("/console/notifications/{dead}/retry"),
            &[("csrf", &reviewer_csrf)],
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(status_of(&pool, dead).await, "pending");

    // Every action, refused or done, is in the audit trail with who and why.
    let audit: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT actor, action, reason, outcome FROM console_audit WHERE action <> 'sign_in' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let refused = |actor: &str| {
        audit
            .iter()
            .filter(|(a, _, _, o)| a == actor && o.starts_with("refused"))
            .count()
    };
    assert_eq!(refused(&viewer_name), 2, "{audit:#?}");
    assert_eq!(refused(&reviewer_name), 6, "{audit:#?}");
    assert!(audit.contains(&(
        reviewer_name.clone(),
        "review_confirm".into(),
        Some(MARKUP.into()),
        "done".into()
    )));
    assert!(audit
        .iter()
        .any(|(a, act, _, o)| a == &reviewer_name && act == "notification_retry" && o == "done"));
    // And counted on /metrics, by action and outcome (no account in the labels).
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meterline_console_actions_total{action=\"review_confirm\",outcome=\"refused\"} 4",
        "meterline_console_actions_total{action=\"review_confirm\",outcome=\"done\"} 1",
        "meterline_console_actions_total{action=\"notification_retry\",outcome=\"refused\"} 4",
        "meterline_console_actions_total{action=\"notification_retry\",outcome=\"done\"} 1",
        "meterline_console_page_seconds_count{route=\"/console/accounts/{id}\",status=\"200\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    assert!(
        !metrics.contains(ACCOUNT),
        "an account id in a metric label"
    );

    // 7. Markup is escaped wherever it shows: the reason on the review page (state, history,
    //    audit) and on the account page; an account id in a path and a search in the error
    //    and search pages.
    for path in [
        format!("/console/review/{ACCOUNT}"),
        format!("/console/accounts/{ACCOUNT}"),
        "/console/review".to_owned(),
        "/console/audit".to_owned(),
    ] {
        let a = wait_for(
            &format!("{path} shows the decision"),
            Duration::from_secs(10),
            || async {
                let a = viewer_user.get(&path).await;
                check(a, |a| a.body.contains(ESCAPED))
            },
        )
        .await;
        assert!(
            !a.body.contains("<script>"),
            "{path} carries raw markup: {}",
            a.body
        );
        assert!(!a.body.contains("<b>bold"), "{path} carries raw markup");
    }
    let a = viewer_user
        .get("/console/accounts/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("account_id"), "{}", a.body);
    assert!(a.body.contains("&lt;script&gt;alert(1)"), "{}", a.body);
    assert!(!a.body.contains("<script>"), "{}", a.body);
    let a = viewer_user
        .get("/console/search?q=%3Cimg%20src%3Dx%3E")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("&lt;img src=x&gt;"), "{}", a.body);
    assert!(!a.body.contains("<img"), "{}", a.body);

    // 8. Signing out ends the session on the server: the old cookie gets nothing.
    let csrf = viewer_user.csrf().await;
    let a = viewer_user
        .post("/console/logout", &[("csrf", &csrf)], None, &[])
        .await;
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/console/login"))
    );
    assert!(
        a.set_cookies
            .iter()
            .any(|c| c.starts_with("meterline_console=;") && c.contains("Max-Age=0")),
        "{:?}",
        a.set_cookies
    );
    let a = viewer_user.get("/console").await;
    assert_eq!(a.status, 303, "a signed-out session still works");

    // 9. Revoking the token ends its sessions.
    let store = meterline::services::token_store(&app.config, &pool);
    store.revoke(&reviewer_name).await.unwrap();
    let a = reviewer_user.get("/console").await;
    assert_eq!(a.status, 303, "a revoked token's session still works");
}
