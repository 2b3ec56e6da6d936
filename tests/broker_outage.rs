//! With the broker down, ingest answers 503 with Retry-After and acknowledges nothing; once the
//! broker is back the gateway's retry is counted exactly once. The test runs its own tansu
//! (SQLite storage, so data and offsets survive the restart) on a free port.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::*;
use meterline::services::Components;

async fn start_tansu(dir: &Path, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new("tansu")
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
        .spawn()
        .expect("tansu on PATH (scripts/services.sh up installs it)");
    wait_for("tansu to listen", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_the_retry_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = start_tansu(dir.path(), port).await;
    let mut config = isolated_config(&unique_suffix());
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.ingest.produce_timeout_ms = 2_000;
    let mut app = spawn_with(config, Components::none().ingest().aggregator()).await;

    let now = Utc::now();
    let first: Vec<_> = (0..20)
        .map(|i| usage_event("acct-o", now, "gpt-4o", 100 + i, 1))
        .collect();
    let (status, body) = app.post_events(&first).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        app.wait_for_raw_count(20, Duration::from_secs(60)).await,
        20
    );

    broker.kill().unwrap();
    broker.wait().unwrap();
    let retry_batch: Vec<_> = (0..30)
        .map(|i| usage_event("acct-o", now, "gpt-4o", 1000 + i, 1))
        .collect();
    let resp = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(serde_json::Value::Array(retry_batch.clone()).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("kafka:"),
        "{body}"
    );
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without a broker");

    broker = start_tansu(dir.path(), port).await;
    // The gateway retries, honouring Retry-After, until it gets its 202.
    let body = wait_for(
        "a 202 once the broker is back",
        Duration::from_secs(60),
        || async {
            let (status, body) = app.post_events(&retry_batch).await;
            if status == 202 {
                return Ok(body);
            }
            assert_eq!(status, 503, "{body}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(body)
        },
    )
    .await;
    assert_eq!(body["accepted"], 30);
    // A sentinel behind the retry in the account's partition: once it is in ClickHouse, so is
    // anything the outage could have doubled.
    let sentinel = usage_event("acct-o", now, "gpt-4o", 7, 1);
    let (status, body) = app.post_events(std::slice::from_ref(&sentinel)).await;
    assert_eq!(status, 202, "{body}");
    let ch = app.clickhouse();
    let sentinel_id = sentinel["event_id"].as_str().unwrap().to_owned();
    wait_for(
        "the sentinel event in ClickHouse",
        Duration::from_secs(90),
        || async {
            let n: u64 = ch
                .query("SELECT count() FROM usage_events WHERE event_id = ?")
                .bind(&sentinel_id)
                .fetch_one()
                .await
                .unwrap();
            check(n, |n| *n > 0)
        },
    )
    .await;
    let (count, input): (u64, u64) = ch
        .query("SELECT count(), sum(input_tokens) FROM usage_events WHERE event_id != ?")
        .bind(&sentinel_id)
        .fetch_one()
        .await
        .unwrap();
    let expected_input: u64 = first
        .iter()
        .chain(&retry_batch)
        .map(|e| e["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!((count, input), (50, expected_input));
    let redis = app.redis().await;
    let keys =
        meterline_schemas::keys::hot::HotKeys::new(app.config.redis.key_prefix.clone()).unwrap();
    let key = keys.cur("acct-o");
    let month = format!("M:{}", now.format("%Y%m"));
    // Redis is written just after ClickHouse (at the state store's next flush); give the last
    // batch a moment to land there. The sentinel counts there too.
    let want = (Some(51), Some(expected_input + 7));
    wait_for(
        &format!("{key} at {want:?}"),
        Duration::from_secs(30),
        || async {
            let mut redis = redis.clone();
            let cur = common::hot_cur(&mut redis, &keys, "acct-o").await.fields;
            let field = |name: &str| cur.get(&format!("{month}:{name}")).map(|v| *v as u64);
            let got = (field("req"), field("in"));
            check(got, |g| *g == want)
        },
    )
    .await;

    app.stop().await;
    broker.kill().ok();
    broker.wait().ok();
}
