//! Every way a request can be wrong gets the documented status and an error naming the problem,
//! and valid events next to invalid ones are kept.

mod common;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use meterline::services::{self, Components};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let mut app = spawn_with(
        isolated_config(&unique_suffix()),
        Components::none().ingest(),
    )
    .await;
    let now = Utc::now();
    let good = || usage_event("acct-a", now, "gpt-4o", 10, 5);

    // Per-event problems: 202, the good ones accepted, each bad one named by index and field.
    let mut wrong_type = good();
    wrong_type["output_tokens"] = json!("five");
    let mut missing = good();
    missing.as_object_mut().unwrap().remove("account_id");
    let mut future = good();
    future["occurred_at"] = json!((now + ChronoDuration::minutes(6)).to_rfc3339());
    let mut old = good();
    old["occurred_at"] = json!((now - ChronoDuration::days(36)).to_rfc3339());
    let mut garbled_time = good();
    garbled_time["occurred_at"] = json!("22/11/2026");
    let mut negative = good();
    negative["input_tokens"] = json!(-3);
    let batch = vec![
        good(),
        wrong_type.clone(),
        missing,
        future,
        old,
        garbled_time,
        negative,
        json!(42),
        good(),
    ];
    let (status, body) = app.post_events(&batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    let rejected = body["rejected"].as_array().unwrap();
    let expect = [
        (
            1,
            "output_tokens: invalid type: string \"five\", expected u64",
        ),
        (2, "account_id: required"),
        (3, "occurred_at: more than 5 minutes in the future"),
        (4, "occurred_at: more than 35 days old"),
        (
            5,
            "occurred_at: \"22/11/2026\" is not an RFC 3339 timestamp",
        ),
        (6, "input_tokens: invalid value: integer `-3`, expected u64"),
        (7, "event must be a JSON object"),
    ];
    assert_eq!(rejected.len(), expect.len(), "{body}");
    for (r, (index, prefix)) in rejected.iter().zip(expect) {
        assert_eq!(r["index"], index);
        let err = r["error"].as_str().unwrap();
        assert!(
            err.starts_with(prefix),
            "index {index}: {err:?} should start with {prefix:?}"
        );
    }
    assert_eq!(
        rejected[0]["event_id"], wrong_type["event_id"],
        "the event id is echoed when readable"
    );

    // NDJSON: a broken line is one rejected event, not a broken body.
    let ndjson = format!("{}\n{{not json\n{}\n", good(), good());
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert!(body["rejected"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let raw = |ct: &'static str, body: String| {
        app.http
            .post(app.url("/v1/events"))
            .bearer_auth(&app.token)
            .header("content-type", ct)
            .body(body)
    };
    let error_of = |v: Value| v["error"].as_str().unwrap_or_default().to_owned();

    // A body that cannot be parsed at all: 400.
    let resp = raw("application/json", "[{\"event_id\": ".into())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(error_of(resp.json().await.unwrap()).starts_with("body: not valid JSON"));
    let resp = raw("application/json", good().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a bare object is not an array");
    assert!(error_of(resp.json().await.unwrap()).contains("expected a JSON array"));

    // Unknown content type: 415.
    let resp = raw("text/csv", "a,b".into()).send().await.unwrap();
    assert_eq!(resp.status(), 415);
    assert!(error_of(resp.json().await.unwrap()).starts_with("content-type: \"text/csv\""));

    // Too many events: 413.
    let many = Value::Array((0..10_001).map(|_| json!({})).collect());
    let resp = raw("application/json", many.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        error_of(resp.json().await.unwrap()),
        "body: more than 10000 events"
    );

    // Too many bytes: 413, whether declared up front or not.
    let huge = format!("[\"{}\"]", "x".repeat(10 * 1024 * 1024 + 1));
    // Declared up front: the answer comes before the body is sent. A raw connection that
    // sends only the headers shows that (an HTTP client still writing the body could see the
    // connection close under it instead of the answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                app.addr,
                app.token,
                huge.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            // Until the error text is in, or the server closes.
            while !String::from_utf8_lossy(&answer).contains("larger than") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("body: larger than"), "{answer}");
    }
    let stream = futures::stream::iter(
        huge.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "chunked bodies are bounded too");

    // Tokens: missing, wrong, revoked.
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(error_of(resp.json().await.unwrap()).starts_with("authorization: missing"));
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth("mlt_nope")
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(error_of(resp.json().await.unwrap()).contains("unknown or revoked"));

    let pool = app.pg().await;
    let store = services::token_store(&app.config, &pool);
    let token = store
        .create("gw-revoked", &[meterline_ingest::Scope::Ingest], None)
        .await
        .unwrap();
    let post_with = |t: String| {
        app.http
            .post(app.url("/v1/events"))
            .bearer_auth(t)
            .header("content-type", "application/json")
            .body(Value::Array(vec![good()]).to_string())
            .send()
    };
    assert_eq!(post_with(token.clone()).await.unwrap().status(), 202);
    store.revoke("gw-revoked").await.unwrap();
    assert_eq!(post_with(token).await.unwrap().status(), 401);

    // Account events have their own rules.
    let (status, body) = app
        .post_json(
            "/v1/account-events",
            &json!([
                {"event_id": uuid::Uuid::new_v4().to_string(), "occurred_at": now.to_rfc3339(), "account_id": "acct-a", "type": "plan_changed"},
                {"event_id": uuid::Uuid::new_v4().to_string(), "occurred_at": now.to_rfc3339(), "account_id": "acct-a", "type": "signup", "plan": "gold"},
                {"event_id": uuid::Uuid::new_v4().to_string(), "occurred_at": now.to_rfc3339(), "account_id": "acct-a", "type": "signup", "email_domain": "example.com"}
            ]),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        body["rejected"][0]["error"],
        "plan: required for type plan_changed"
    );
    assert_eq!(
        body["rejected"][1]["error"],
        "plan: \"gold\" is not one of free, pro, enterprise"
    );

    // Health, readiness and metrics.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("meterline_ingest_requests_total{endpoint=\"/v1/events\",status=\"413\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}
