//! Slow and hostile clients meet timeouts and limits and are answered quickly: a slowloris
//! connection is closed, a trickled body gets 408, huge headers are refused, deeply nested JSON
//! and a batch of garbage get clear 4xx answers; and the server keeps serving others meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use meterline::services::Components;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app() -> TestApp {
    let mut config = isolated_config(&unique_suffix());
    config.ingest.header_read_timeout_ms = 1_000;
    config.ingest.body_read_timeout_ms = 1_000;
    spawn_with(config, Components::none().ingest()).await
}

/// Reads until the server closes the connection; returns what it said, or panics past `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < limit,
            "still open after {limit:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_hostile_clients_are_answered_quickly() {
    let mut app = app().await;

    // Slowloris: a header line every 300 ms, never finishing. Closed within the timeout.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(8), trickle)
        .await
        .ok();
    let answer = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A body that never finishes arriving: 408 naming the body.
    let mut trickled = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{",
        app.token
    );
    trickled.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut trickled, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body: not received within 1 s"), "{answer}");

    // Huge headers: refused, not buffered without end.
    let mut huge = TcpStream::connect(app.addr).await.unwrap();
    let big = "a".repeat(1 << 20);
    let _ = huge
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let answer = until_closed(&mut huge, Duration::from_secs(5)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    // Deeply nested JSON and a batch of garbage: quick, clear 4xx/202 answers.
    let nested = "[".repeat(100_000);
    let started = Instant::now();
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(started.elapsed() < Duration::from_secs(2));
    let garbage: Vec<serde_json::Value> = (0..10_000)
        .map(|i| serde_json::json!({"junk": i, "nested": [[[[i]]]]}))
        .collect();
    let started = Instant::now();
    let (status, body) = app.post_events(&garbage).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // And everyone else is still served.
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

/// Many large bodies at once cannot take ingest's memory: each body's bytes are reserved
/// before it is read, within `ingest.max_inflight_body_bytes`; past it a request gets `503` with
/// `Retry-After` (which the gateway client honours) without its body being read, and the budget
/// comes back as soon as the requests holding it end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_are_bounded_and_the_rest_are_told_to_retry() {
    let mut config = isolated_config(&unique_suffix());
    config.ingest.max_body_bytes = 1 << 20;
    config.ingest.max_inflight_body_bytes = 2 << 20;
    // Long enough that the holders still hold the budget after the first probe, whose produce
    // can take a second or more while the producer learns the topic.
    config.ingest.body_read_timeout_ms = 6_000;
    let mut app = spawn_with(config, Components::none().ingest()).await;

    // Two clients announce full-size bodies and send one byte of each: together they hold the
    // whole budget.
    let hold = || async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n[",
            app.token,
            1 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s
    };
    let holders = vec![hold().await, hold().await];
    let event = || usage_event("acct-budget", chrono::Utc::now(), "gpt-4o", 10, 1);

    // A third, small request is told to come back, naming the limit.
    let holders = tokio::sync::Mutex::new(holders);
    let body = wait_for(
        "a request past the in-flight budget refused with 503",
        Duration::from_secs(5),
        || async {
            let (status, body) = app.post_events(&[event()]).await;
            if status == 503 {
                return Ok(body);
            }
            // A holder whose reservation met a probe's is refused at once (the probe held a
            // share): it is answered while a holding one stays silent. Open such a one again.
            for h in holders.lock().await.iter_mut() {
                let mut buf = [0u8; 512];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(50), h.read(&mut buf)).await
                {
                    assert!(
                        n == 0 || buf.starts_with(b"HTTP/1.1 503"),
                        "{}",
                        String::from_utf8_lossy(&buf[..n])
                    );
                    *h = hold().await;
                }
            }
            Err((status, body))
        },
    )
    .await;
    let holders = holders.into_inner();
    assert!(
        body.to_string().contains("ingest.max_inflight_body_bytes"),
        "{body}"
    );

    // The holders time out with 408 and give their share back; then the same request is taken.
    for mut s in holders {
        let answer = until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let (status, body) = app.post_events(&[event()]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    app.stop().await;
}
