//! A runaway gateway meets its token's event budget: `429` with `Retry-After`, nothing from
//! that request accepted, other gateways unaffected, and the retry after the wait accepted.

mod common;

use std::time::Duration;

use common::*;
use meterline::services::{self, Components};
use meterline_ingest::Scope;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let mut config = isolated_config(&unique_suffix());
    config.ingest.rate_limit_events_per_sec = 100;
    config.ingest.rate_limit_burst_events = 1_000;
    let mut app = spawn_with(config, Components::none().ingest()).await;
    let batch = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                usage_event(
                    &format!("rl-{}", i % 3),
                    chrono::Utc::now(),
                    "gpt-4o",
                    10,
                    5,
                )
            })
            .collect()
    };
    for _ in 0..2 {
        let (status, body) = app.post_events(&batch(500)).await;
        assert_eq!(status, 202, "{body}");
    }
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&app.token)
        .json(&batch(500))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=5).contains(&wait), "Retry-After {wait}");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("rate limit of 100 events/s"),
        "{body}"
    );

    // While the bucket is empty, the next request is refused before its body is read: one that
    // announces a megabyte and sends none of it is answered at once, not after the body
    // timeout.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
            app.token
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(
            answer.contains("nothing from this request was read"),
            "{answer}"
        );
    }

    // Another gateway's token has its own budget.
    let pool = app.pg().await;
    let other = services::token_store(&app.config, &pool)
        .create(&format!("gw2-{}", unique_suffix()), &[Scope::Ingest], None)
        .await
        .unwrap();
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&other)
        .json(&batch(500))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // After the wait, the same batch goes in.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body) = app.post_events(&batch(500)).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
}
