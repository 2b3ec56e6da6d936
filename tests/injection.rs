//! Injection strings in every text field and path parameter are data, never SQL: they are
//! stored and read back verbatim (ClickHouse rows are written as RowBinary, PostgreSQL and
//! ClickHouse queries bind their parameters), or refused by validation with the field named.

mod common;

use std::time::Duration;

use common::*;
use meterline::services;
use meterline_ingest::Scope;
use serde_json::json;

const NASTY: [&str; 5] = [
    "'; DROP TABLE usage_events; --",
    "\" OR 1=1 --",
    "Robert'); DROP TABLE accounts;--",
    "\\' OR '1'='1",
    "x' UNION SELECT * FROM api_tokens --",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_strings_are_stored_verbatim_or_refused() {
    let mut app = spawn_app().await;
    let account = format!("inj-{}", unique_suffix());
    let text_fields = [
        "api_key_id",
        "gateway_id",
        "region",
        "cloud",
        "provider",
        "model",
        "session_id",
        "user_id",
        "device_id",
        "prompt_hash",
    ];
    let mut events = Vec::new();
    for s in NASTY {
        let mut e = usage_event(&account, chrono::Utc::now(), "gpt-4o", 10, 5);
        for f in text_fields {
            e[f] = json!(s);
        }
        e["plugins"] = json!([s]);
        events.push(e);
    }
    let mut bad_account = usage_event("x", chrono::Utc::now(), "gpt-4o", 1, 1);
    bad_account["account_id"] = json!(NASTY[0]);
    events.push(bad_account);
    let (status, body) = app.post_events(&events).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], NASTY.len());
    assert!(
        body["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("account_id: "),
        "{body}"
    );

    let signup = json!([{
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "account_id": account,
        "type": "signup",
        "device_id": NASTY[2],
        "browser_signature": NASTY[4],
    }, {
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "account_id": account,
        "type": "seats_changed",
        "seats": 3,
        "email_domain": NASTY[1],
    }]);
    let (status, body) = app.post_json("/v1/account-events", &signup).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert!(
        body["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("email_domain: "),
        "{body}"
    );

    // Path and body parameters of the read endpoints.
    let pool = app.pg().await;
    let read = services::token_store(&app.config, &pool)
        .create(&format!("r-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    for s in NASTY {
        let url = app.url(&format!("/v1/accounts/{}/usage", urlencoding(s)));
        let resp = app.http.get(url).bearer_auth(&read).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{s}");
        assert!(resp.text().await.unwrap().contains("account_id"));
        let resp = app
            .http
            .post(app.url("/v1/quota/check"))
            .bearer_auth(&read)
            .json(&json!({"account_id": account, "model": s, "session_id": s}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{s}");
    }

    // Read back verbatim.
    assert_eq!(
        app.wait_for_raw_count(NASTY.len() as u64, Duration::from_secs(30))
            .await,
        NASTY.len() as u64
    );
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Back {
        region: String,
        model: String,
        user_id: String,
        plugins: Vec<String>,
    }
    let rows: Vec<Back> = app
        .clickhouse()
        .query("SELECT region, model, user_id, plugins FROM usage_events WHERE account_id = ? ORDER BY region")
        .bind(&account)
        .fetch_all()
        .await
        .unwrap();
    let mut want: Vec<&str> = NASTY.to_vec();
    want.sort();
    assert_eq!(
        rows.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(),
        want
    );
    for r in &rows {
        assert_eq!((&r.model, &r.user_id), (&r.region, &r.region));
        assert_eq!(r.plugins, vec![r.region.clone()]);
    }
    let (device, browser) = wait_for("the signup applied", Duration::from_secs(30), || async {
        let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT device_id, browser_signature FROM accounts WHERE account_id = $1",
        )
        .bind(&account)
        .fetch_optional(&pool)
        .await
        .unwrap();
        row.ok_or("no accounts row")
    })
    .await;
    assert_eq!(device.as_deref(), Some(NASTY[2]));
    assert_eq!(browser.as_deref(), Some(NASTY[4]));
    // Every table is still there.
    let (tokens,): (i64,) = sqlx::query_as("SELECT count(*) FROM api_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(tokens >= 2);
    app.get_json("/healthz", None).await;
    app.stop().await;
}

/// Percent-encodes everything but unreserved characters.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
