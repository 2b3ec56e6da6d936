//! Redis loses the hot state: `meterline rebuild-hot-state` rebuilds it from ClickHouse's raw
//! events exactly as readers saw it (every window, distinct count, listed member, session,
//! `dims` member and seen id, with their expiries), and running it again changes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use meterline_schemas::keys::Grain;
use redis::AsyncCommands;

/// The hot state under `prefix` as readers see it, each entry with its content (and, for the
/// keys whose expiry is a function of their content, the expiry):
/// - every window of every account, read from `cur` while it is there, else from its closed
///   hash (a window can sit in `cur` on one side and in its closed hash on the other), with its
///   counters, distinct counts and listed members; windows whose retention ends before
///   `live_after` are left out (they may expire between two snapshots);
/// - each account's `_tp` and `_o` (not `_e`, the writer's epoch) and open-session marks;
/// - session hashes, `dims` hashes and the partitions' seen sets and account indexes.
async fn logical(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    live_after: i64,
) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    let mut out = BTreeMap::new();
    let mut windows: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for k in keys {
        let rest = &k[prefix.len()..];
        let expires: i64 = redis::cmd("EXPIRETIME")
            .arg(&k)
            .query_async(redis)
            .await
            .unwrap();
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(redis).await.unwrap();
        if kind == "set" {
            if rest.contains("seen:") || rest.ends_with("accounts") {
                let mut m: Vec<String> = redis.smembers(&k).await.unwrap();
                m.sort();
                out.insert(rest.to_owned(), format!("{m:?} expires {expires}"));
            }
            continue;
        }
        let h: BTreeMap<String, String> = redis.hgetall(&k).await.unwrap();
        let Some(account_rest) = rest.strip_prefix("u:{") else {
            continue; // checkpoints: their epoch differs, and their offset is ClickHouse's
        };
        let (account, what) = account_rest.split_once("}:").unwrap();
        if what == "cur" {
            let mut meta = BTreeMap::new();
            for (f, v) in h {
                let parts: Vec<&str> = f.splitn(3, ':').collect();
                match parts.as_slice() {
                    ["_e"] => {}
                    [g, stamp, name] if Grain::from_code(g).is_some() => {
                        windows
                            .entry((account.to_owned(), format!("{g}:{stamp}")))
                            .or_default()
                            .insert((*name).to_owned(), v);
                    }
                    _ => {
                        meta.insert(f, v);
                    }
                }
            }
            out.insert(format!("{account} cur"), format!("{meta:?}"));
        } else if what.starts_with("s:") || what.ends_with(":dims") {
            out.insert(
                format!("{account} {what}"),
                format!("{h:?} expires {expires}"),
            );
        } else {
            // A closed window: `cur`'s fields win when it is also there (it is not).
            let w = windows
                .entry((account.to_owned(), what.to_owned()))
                .or_default();
            for (f, v) in h {
                w.entry(f).or_insert(v);
            }
        }
    }
    for ((account, stamp), fields) in windows {
        let (g, s) = stamp.split_once(':').unwrap();
        let grain = Grain::from_code(g).unwrap();
        if grain.expires_at(grain.parse_stamp(s).unwrap()) <= live_after {
            continue;
        }
        let fields: BTreeMap<String, String> =
            fields.into_iter().filter(|(_, v)| v != "0").collect();
        out.insert(format!("{account} {stamp}"), format!("{fields:?}"));
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
    app.stop().await;
    // A window whose retention ends meanwhile (a minute two hours old, when a minute boundary
    // passes) is gone either way, and the rebuild rightly does not write it back: compare only
    // what is still live a minute from now, which covers the rebuild's own run.
    let live_after = Utc::now().timestamp() + 60;
    let before = logical(&mut redis, &prefix, live_after).await;
    assert!(
        before.keys().any(|k| k.contains(" s:")),
        "sessions are in the snapshot"
    );
    assert!(
        before.keys().any(|k| k.contains("seen:")),
        "seen sets are in the snapshot"
    );
    assert!(
        before.keys().any(|k| k.contains(" m:")) && before.keys().any(|k| k.contains(" h:")),
        "minutes and hours are in the snapshot"
    );

    // Redis loses everything under the prefix.
    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    let _: () = redis.del(&keys).await.unwrap();
    assert!(logical(&mut redis, &prefix, live_after).await.is_empty());

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
    let after = logical(&mut redis, &prefix, live_after).await;
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
    assert_eq!(logical(&mut redis, &prefix, live_after).await, before);
}
