//! `/openapi.json` documents exactly the routes the server answers.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::*;
use meterline::services::Components;
use meterline_schemas::{AccountEvent, AccountEventType, AccountId};
use serde_json::Value;

/// The paths the router holds, read from its `Debug` form (axum lists a router's paths there
/// and has no other way to enumerate them). The fallback router's own paths come after
/// `fallback_router` and are left out. Should axum change that form, the set comes out wrong
/// and the comparison with the document fails: it cannot pass by finding nothing.
fn routed_paths(router: &axum::Router<meterline_ingest::AppState>) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = &debug[..debug.find("fallback_router").unwrap_or(debug.len())];
    routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// A request path for a documented path template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "acct-1")
        .replace("{notice_id}", "00000000-0000-4000-8000-000000000000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let mut app = spawn_with(
        isolated_config(&unique_suffix()),
        Components::none().ingest(),
    )
    .await;
    let resp = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();

    // The router's paths and, for each, the methods the server answers (anything but 405;
    // axum answers HEAD wherever it answers GET, so HEAD is not asked)...
    let (router, _) = meterline_ingest::app::api(true);
    let paths = routed_paths(&router);
    let mut routed = BTreeSet::new();
    for path in &paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            let resp = app
                .http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    app.url(&concrete(path)),
                )
                .body("[]")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert_ne!(status, 404, "{method} {path}: the router holds the path");
            if status != 405 {
                routed.insert((method.to_owned(), path.clone()));
            }
        }
    }
    // ...are exactly the documented ones: a route added without documentation, or documented
    // without a route, shows up here.
    assert_eq!(documented, routed, "/openapi.json and the router differ");

    // What is not documented is not served.
    for (method, path) in [("get", "/v1/quota/check"), ("get", "/v1/accounts")] {
        let resp = match method {
            "get" => app.http.get(app.url(path)),
            _ => unreachable!(),
        }
        .send()
        .await
        .unwrap();
        assert!(
            [404, 405].contains(&resp.status().as_u16()),
            "{method} {path} is served but not documented"
        );
    }

    // Every operation documents its answers; one behind a token names its scope and documents
    // 401 and 403.
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path) in &documented {
        let op = &doc["paths"][path][method];
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path} documents no answer");
        let open = op["security"] == serde_json::json!([]);
        if !open {
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(
                summary.ends_with("(scope: ingest)")
                    || summary.ends_with("(scope: read)")
                    || summary.ends_with("(scope: admin)"),
                "{method} {path}: the summary {summary:?} names no scope"
            );
            for status in ["401", "403"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
    assert!(
        !doc["paths"]["/healthz"]["get"]["security"].is_null(),
        "/healthz needs no token"
    );

    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
    app.stop().await;
}

/// Every pattern in the document names its characters. `\s`, `\d` and `\w` (and their
/// negations) mean other characters in other engines: U+0085 is white space to Rust's regex and
/// to `str::trim`, not to ECMAScript's or Python's, so Schemathesis once sent a quota check's
/// model of U+0085 alone, which the pattern `\S` allowed and the server refused. A test that
/// holds a pattern to the server with Rust's `regex` cannot see that difference.
#[test]
fn no_pattern_uses_a_class_whose_meaning_depends_on_the_engine() {
    fn patterns<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("pattern", Value::String(p)) => out.push(p),
                        _ => patterns(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| patterns(v, out)),
            _ => {}
        }
    }
    // With the read path: every route.
    let (_, doc) = meterline_ingest::app::api(true);
    let doc = serde_json::to_value(&doc).unwrap();
    let mut found = Vec::new();
    patterns(&doc, &mut found);
    // The account id's, the review decision's two and the quota check's model at least.
    assert!(found.len() >= 4, "the document's patterns: {found:?}");
    for pattern in found {
        for class in [r"\s", r"\S", r"\d", r"\D", r"\w", r"\W"] {
            assert!(!pattern.contains(class), "{pattern} uses {class}");
        }
    }
}

/// The review decision's `actor` and `reason` patterns accept exactly what the server accepts
/// (`AccountEvent::review`, which trims both): Schemathesis once sent a reason of one tab, which
/// the pattern allowed and the server refused.
#[test]
fn the_review_decision_patterns_accept_what_the_server_accepts() {
    let (_, doc) = meterline_ingest::app::api(true);
    let doc = serde_json::to_value(&doc).unwrap();
    let properties = &doc["components"]["schemas"]["ReviewDecision"]["properties"];
    let pattern = |field: &str| {
        regex::Regex::new(properties[field]["pattern"].as_str().expect("a pattern")).unwrap()
    };
    let (actor, reason) = (pattern("actor"), pattern("reason"));
    let server = |actor: &str, reason: &str| {
        AccountEvent::review(
            "e-1".into(),
            Utc::now(),
            AccountId::parse("acct-1").unwrap(),
            AccountEventType::ReviewConfirmed,
            actor,
            reason,
            None,
        )
        .is_ok()
    };
    for text in [
        "ops@example.com",
        " padded ",
        "é",
        "\u{a0}x",
        "\u{feff}",
        "line\nbreak",
        "tab\there",
        "",
        " ",
        "\t",
        "\n",
        "\u{3000}",
        "\u{2028}",
        "\u{85}",
        "x\u{1}y",
        "x\ry",
    ] {
        assert_eq!(actor.is_match(text), server(text, "why"), "actor {text:?}");
        assert_eq!(
            reason.is_match(text),
            server("ops", text),
            "reason {text:?}"
        );
    }
}
