//! Redis loses the hot state: `meterline rebuild-hot-state` rebuilds it from ClickHouse's raw
//! events exactly as it was (every key, field, member and expiry), and running it again adds
//! nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use redis::AsyncCommands;

/// Every key under the prefix with its type-specific content and its expiry time.
async fn snapshot(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(redis).await.unwrap();
        let content = match kind.as_str() {
            "hash" => {
                let h: BTreeMap<String, String> = redis.hgetall(&k).await.unwrap();
                format!("{h:?}")
            }
            "set" => {
                let mut m: Vec<String> = redis.smembers(&k).await.unwrap();
                m.sort();
                format!("{m:?}")
            }
            other => format!("<{other}>"),
        };
        let expires: i64 = redis::cmd("EXPIRETIME")
            .arg(&k)
            .query_async(redis)
            .await
            .unwrap();
        out.insert(k, format!("{content} expires {expires}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_hot_state_is_rebuilt_exactly_from_clickhouse() {
    let mut app = spawn_app().await;
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
    let prefix = app.config.redis.key_prefix.clone();
    let mut redis = app.redis().await;
    // Redis is written after ClickHouse: wait until every record, the retries too, is
    // written whole.
    let records: u64 = batches.iter().map(|b| b.len() as u64).sum();
    app.wait_for_aggregated(records, Duration::from_secs(60))
        .await;
    let before = snapshot(&mut redis, &prefix).await;
    app.stop().await;
    assert!(
        before.keys().any(|k| k.contains(":s:")),
        "sessions are in the snapshot"
    );
    assert!(
        before.keys().any(|k| k.contains("seen:")),
        "seen-sets are in the snapshot"
    );

    // Redis loses everything under the prefix.
    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    let _: () = redis.del(&keys).await.unwrap();
    assert!(snapshot(&mut redis, &prefix).await.is_empty());

    let config_file = ConfigFile::write(&app.config);

    // A window that expires between the snapshot and the rebuild (a minute window two hours
    // old, when a minute boundary passes meanwhile) is gone from Redis either way, and the
    // rebuild rightly does not write it back: compare only what is still live.
    // (A margin of a minute covers the rebuild's own run.)
    let live_after = Utc::now().timestamp() + 60;
    let live = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.into_iter()
            .filter(|(_, v)| {
                let expires: i64 = v.rsplit(' ').next().unwrap().parse().unwrap();
                expires < 0 || expires > live_after
            })
            .collect()
    };
    let before = live(before);
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
    assert!(text.contains("0 of them already counted"), "{text}");
    let after = live(snapshot(&mut redis, &prefix).await);
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

    // Again: everything is already counted, nothing changes.
    let out = config_file
        .command()
        .arg("rebuild-hot-state")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("3000 of them already counted"));
    assert_eq!(live(snapshot(&mut redis, &prefix).await), before);
}
