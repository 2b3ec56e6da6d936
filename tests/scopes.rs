//! Every endpoint against every kind of token: no token, a garbage token, a revoked one,
//! `ingest`, `read`, `read` limited to one account, and `admin` (which holds every scope and
//! alone opens the review queue).
//! One table of expectations, so a route added without its check shows up here.

mod common;

use chrono::Utc;
use common::*;
use meterline::services;
use meterline_ingest::Scope;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Ingest,
    /// `read`, for the account in the path or body.
    Read,
    /// `admin` (the review queue).
    Admin,
}

struct Endpoint {
    method: &'static str,
    path: String,
    body: Option<Value>,
    needs: Needs,
    /// The account it reads, for account-limited tokens.
    account: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_answers_each_scope_as_documented() {
    let mut app = spawn_app().await;
    let pool = app.pg().await;
    let store = services::token_store(&app.config, &pool);
    let suffix = unique_suffix();
    let ingest = app.token.clone();
    let read = store
        .create(&format!("read-{suffix}"), &[Scope::Read], None)
        .await
        .unwrap();
    let read_a = store
        .create(&format!("read-a-{suffix}"), &[Scope::Read], Some("acct-a"))
        .await
        .unwrap();
    let admin = store
        .create(&format!("admin-{suffix}"), &[Scope::Admin], None)
        .await
        .unwrap();
    let revoked = store
        .create(&format!("revoked-{suffix}"), &[Scope::Admin], None)
        .await
        .unwrap();
    store.revoke(&format!("revoked-{suffix}")).await.unwrap();

    let now = Utc::now();
    let notice = uuid::Uuid::new_v4();
    let mut endpoints = Vec::new();
    for account in ["acct-a", "acct-b"] {
        endpoints.extend([
            Endpoint {
                method: "GET",
                path: format!("/v1/accounts/{account}/usage"),
                body: None,
                needs: Needs::Read,
                account: Some(account),
            },
            Endpoint {
                method: "GET",
                path: format!("/v1/accounts/{account}/scores"),
                body: None,
                needs: Needs::Read,
                account: Some(account),
            },
            Endpoint {
                method: "GET",
                path: format!("/v1/accounts/{account}/notice"),
                body: None,
                needs: Needs::Read,
                account: Some(account),
            },
            Endpoint {
                method: "POST",
                path: format!("/v1/accounts/{account}/notices/{notice}/shown"),
                body: None,
                needs: Needs::Read,
                account: Some(account),
            },
            Endpoint {
                method: "POST",
                path: format!("/v1/accounts/{account}/notices/{notice}/clicked"),
                body: None,
                needs: Needs::Read,
                account: Some(account),
            },
            Endpoint {
                method: "POST",
                path: "/v1/quota/check".into(),
                body: Some(json!({
                    "account_id": account,
                    "model": "gpt-4o-mini",
                    "estimated_input_tokens": 10,
                    "estimated_output_tokens": 10,
                })),
                needs: Needs::Read,
                account: Some(account),
            },
        ]);
    }
    // The review queue. Nothing is in review, so clearing finds nothing (404) and showing an
    // account nobody signed up or scored finds nothing; confirming is allowed at any time.
    endpoints.push(Endpoint {
        method: "GET",
        path: "/v1/review".into(),
        body: None,
        needs: Needs::Admin,
        account: None,
    });
    let decision = json!({"actor": "scopes-test", "reason": "checking scopes"});
    for account in ["acct-a", "acct-b"] {
        endpoints.extend([
            Endpoint {
                method: "GET",
                path: format!("/v1/review/{account}"),
                body: None,
                needs: Needs::Admin,
                account: Some(account),
            },
            Endpoint {
                method: "POST",
                path: format!("/v1/review/{account}/clear"),
                body: Some(decision.clone()),
                needs: Needs::Admin,
                account: Some(account),
            },
            Endpoint {
                method: "POST",
                path: format!("/v1/review/{account}/confirm"),
                body: Some(decision.clone()),
                needs: Needs::Admin,
                account: Some(account),
            },
        ]);
    }
    endpoints.extend([
        Endpoint {
            method: "POST",
            path: "/v1/events".into(),
            body: Some(json!([usage_event("acct-a", now, "gpt-4o-mini", 1, 1)])),
            needs: Needs::Ingest,
            account: None,
        },
        Endpoint {
            method: "POST",
            path: "/v1/account-events".into(),
            body: Some(json!([{
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": now.to_rfc3339(),
                "account_id": "acct-a",
                "type": "signup",
            }])),
            needs: Needs::Ingest,
            account: None,
        },
    ]);
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        endpoints.push(Endpoint {
            method: "GET",
            path: path.into(),
            body: None,
            needs: Needs::Nothing,
            account: None,
        });
    }

    // (label, token, scopes it holds, the one account it is limited to)
    type Caller<'a> = (&'a str, Option<String>, Vec<Needs>, Option<&'a str>);
    let callers: Vec<Caller> = vec![
        ("no token", None, vec![], None),
        ("garbage", Some("ml_not-a-real-token".into()), vec![], None),
        ("revoked admin", Some(revoked), vec![], None),
        ("ingest", Some(ingest), vec![Needs::Ingest], None),
        ("read", Some(read), vec![Needs::Read], None),
        (
            "read, acct-a only",
            Some(read_a),
            vec![Needs::Read],
            Some("acct-a"),
        ),
        (
            "admin",
            Some(admin),
            vec![Needs::Ingest, Needs::Read, Needs::Admin],
            None,
        ),
    ];
    let mut failures = Vec::new();
    for e in &endpoints {
        for (label, token, holds, limited_to) in &callers {
            let mut req = match e.method {
                "GET" => app.http.get(app.url(&e.path)),
                _ => app.http.post(app.url(&e.path)),
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &e.body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let status = req.send().await.unwrap().status().as_u16();
            let expected: &[u16] = if e.needs == Needs::Nothing {
                &[200]
            } else if token.is_none() || holds.is_empty() {
                &[401]
            } else if !holds.contains(&e.needs)
                || (limited_to.is_some() && e.account.is_some() && *limited_to != e.account)
            {
                &[403]
            } else {
                match (e.needs, e.path.as_str()) {
                    (Needs::Ingest, _) => &[202],
                    (Needs::Admin, p) if p.ends_with("/confirm") => &[202],
                    (Needs::Admin, p) if p.ends_with("/clear") => &[404],
                    (Needs::Admin, p) if p.starts_with("/v1/review/") => &[404],
                    // No scores yet, and no such notice: the caller was let in and told so.
                    (_, p) if p.ends_with("/scores") => &[404],
                    (_, p) if p.contains("/notices/") => &[404],
                    _ => &[200],
                }
            };
            if !expected.contains(&status) {
                failures.push(format!(
                    "{} {} with {label}: {status}, expected {expected:?}",
                    e.method, e.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.stop().await;
}
