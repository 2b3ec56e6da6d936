//! Redis loses the hot state: `meterline rebuild-hot-state` rebuilds it from ClickHouse's raw
//! events exactly as readers saw it (every window, distinct count, listed member, session,
//! `dims` member and seen id, with their expiries), and running it again changes nothing. On the
//! standalone Redis and, under `scripts/test.sh`, on a local Redis Cluster.

mod common;

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use meterline::services::Components;

on_every_redis!(a_flushed_hot_state_is_rebuilt_exactly_from_clickhouse);
async fn a_flushed_hot_state_is_rebuilt_exactly_from_clickhouse(redis: Deployment) {
    let Some(config) = redis.apply(isolated_config(&unique_suffix())) else {
        return;
    };
    let mut app = spawn_with(config, Components::none().ingest().aggregator()).await;
    let now = Utc::now();
    let run = unique_suffix();
    // 3,000 events over 30 accounts, 4 models, sessions and users, spread over 40 hours, with
    // some gateway retries (repeated ids).
    let mut events = Vec::new();
    for i in 0..3_000usize {
        let at = now - ChronoDuration::minutes((i as i64 * 47) % (40 * 60));
        let model = ["gpt-4o", "gpt-4o-mini", "claude-3-haiku", "llama-3-8b"][i % 4];
        let mut e = usage_event(&format!("{run}-a{}", i % 30), at, model, 100 + i as u64, 20);
        e["session_id"] = format!("s{}", i % 7).into();
        e["user_id"] = format!("u{}", i % 5).into();
        if i % 13 == 0 {
            e["status"] = 500.into();
        }
        events.push(e);
    }
    let mut batches: Vec<Vec<serde_json::Value>> = events.chunks(500).map(|c| c.to_vec()).collect();
    batches.push(events[..200].to_vec());
    for b in &batches {
        let (status, body) = app.post_events(b).await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(
        app.wait_for_raw_count(3_000, Duration::from_secs(60)).await,
        3_000
    );
    // Redis is written after ClickHouse: wait until every record, the retries too, is
    // written whole.
    let records: u64 = batches.iter().map(|b| b.len() as u64).sum();
    app.wait_for_aggregated(records, Duration::from_secs(60))
        .await;
    app.stop().await;
    // A window whose retention ends meanwhile (a minute two hours old, when a minute boundary
    // passes) is gone either way, and the rebuild rightly does not write it back: compare only
    // what is still live a minute from now, which covers the rebuild's own run.
    let live_after = Utc::now().timestamp() + 60;
    let before = hot_state_as_read(&app.config.redis, live_after).await;
    assert!(
        before.keys().any(|k| k.contains(" s:")),
        "sessions are in the snapshot"
    );
    assert!(
        before.keys().any(|k| k.contains("}ids:")),
        "counted ids are in the snapshot"
    );
    assert!(
        before.keys().any(|k| k.contains(" m:")) && before.keys().any(|k| k.contains(" h:")),
        "minutes and hours are in the snapshot"
    );

    // Redis loses everything under the prefix.
    remove_hot_keys(&app.config.redis).await;
    assert!(hot_state_as_read(&app.config.redis, live_after)
        .await
        .is_empty());

    let config_file = ConfigFile::write(&app.config);

    let out = config_file
        .command()
        .arg("rebuild-hot-state")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3000 events over 30 accounts"), "{text}");
    let after = hot_state_as_read(&app.config.redis, live_after).await;
    let differing: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: before {v}, after {:?}", after.get(k)))
        .chain(
            after
                .keys()
                .filter(|k| !before.contains_key(*k))
                .map(|k| format!("{k}: only after")),
        )
        .take(10)
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");

    // Again: every value is absolute, nothing changes.
    let out = config_file
        .command()
        .arg("rebuild-hot-state")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        hot_state_as_read(&app.config.redis, live_after).await,
        before
    );
}
