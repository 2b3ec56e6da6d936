//! The aggregator's Redis writer against a real Redis: small deltas go as single pipelined
//! script calls, a delta too big for one call goes in a MULTI/EXEC of several, and both land
//! whole in one `apply_all`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::unique_suffix;
use meterline_aggregator::fold::RedisDelta;
use meterline_aggregator::redis_sink::RedisSink;
use meterline_schemas::keys::Keys;
use redis::AsyncCommands;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A writer whose keys no other test touches, and their prefix.
async fn sink_under_a_new_prefix() -> (String, RedisSink) {
    let prefix = format!("mlt:{}:", unique_suffix());
    let sink = RedisSink::connect(REDIS_URL, Keys::new(prefix.clone()))
        .await
        .unwrap();
    (prefix, sink)
}

#[tokio::test]
async fn small_and_oversized_deltas_land_whole_in_one_apply() {
    let (prefix, sink) = sink_under_a_new_prefix().await;
    let expires_at = chrono::Utc::now().timestamp() + 3_600;

    let small_key = format!("{prefix}small");
    let small = RedisDelta {
        counters: BTreeMap::from([(
            small_key.clone(),
            BTreeMap::from([("req".to_owned(), 3), ("in".to_owned(), 40)]),
        )]),
        sets: BTreeMap::new(),
        expiries: BTreeMap::from([(small_key.clone(), expires_at)]),
        fixed_expiries: BTreeMap::new(),
    };
    // 25,000 set members and 12,000 hash fields: far more arguments than one script call
    // takes (20,000), so this delta is split over several calls inside one transaction.
    let set_key = format!("{prefix}members");
    let hash_key = format!("{prefix}wide");
    let big = RedisDelta {
        counters: BTreeMap::from([(
            hash_key.clone(),
            (0..12_000)
                .map(|i| (format!("f{i}"), i as i64 + 1))
                .collect(),
        )]),
        sets: BTreeMap::from([(
            set_key.clone(),
            (0..25_000)
                .map(|i| format!("m{i}"))
                .collect::<BTreeSet<_>>(),
        )]),
        expiries: BTreeMap::new(),
        // Goes with the SADD in whichever call holds it, inside the transaction.
        fixed_expiries: BTreeMap::from([(set_key.clone(), expires_at)]),
    };

    let commands = sink.apply_all(&[small.clone(), big]).await.unwrap();
    // One pipelined call for the small delta; MULTI, several calls and EXEC for the big one.
    assert!(commands >= 1 + 2 + 2, "{commands}");

    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let req: i64 = conn.hget(&small_key, "req").await.unwrap();
    assert_eq!(req, 3);
    let members: i64 = conn.scard(&set_key).await.unwrap();
    assert_eq!(members, 25_000);
    let fields: i64 = conn.hlen(&hash_key).await.unwrap();
    assert_eq!(fields, 12_000);
    let last: i64 = conn.hget(&hash_key, "f11999").await.unwrap();
    assert_eq!(last, 12_000);
    for key in [&small_key, &set_key] {
        let at: i64 = redis::cmd("EXPIRETIME")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(at, expires_at, "{key}");
    }

    // Applying the small delta again adds to it: counters are increments, not values.
    sink.apply(&small).await.unwrap();
    let req: i64 = conn.hget(&small_key, "req").await.unwrap();
    assert_eq!(req, 6);

    let _: () = redis::cmd("DEL")
        .arg(&[&small_key, &set_key, &hash_key])
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Windows and day or month sets get their expiry from the write that creates them, and later
/// writes leave it alone; a session's expiry moves later with each write, never earlier.
#[tokio::test]
async fn fixed_expiries_come_with_the_creating_write_and_moving_ones_only_move_later() {
    let (prefix, sink) = sink_under_a_new_prefix().await;
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let (window, set, session, bare) = (
        format!("{prefix}window"),
        format!("{prefix}set"),
        format!("{prefix}session"),
        format!("{prefix}bare"),
    );
    let delta = |fixed: i64, moving: i64, members: &[&str]| RedisDelta {
        counters: BTreeMap::from([
            (
                window.clone(),
                BTreeMap::from([("req".to_owned(), 1), ("in".to_owned(), 5)]),
            ),
            (session.clone(), BTreeMap::from([("req".to_owned(), 1)])),
            // A hash without `req` cannot tell that a write created it.
            (bare.clone(), BTreeMap::from([("in".to_owned(), 2)])),
        ]),
        sets: BTreeMap::from([(
            set.clone(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        )]),
        expiries: BTreeMap::from([(session.clone(), moving)]),
        fixed_expiries: BTreeMap::from([
            (window.clone(), fixed),
            (set.clone(), fixed),
            (bare.clone(), fixed),
        ]),
    };
    let expiry = |conn: &mut redis::aio::MultiplexedConnection, key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("EXPIRETIME")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };

    sink.apply(&delta(now + 1_000, now + 500, &["a"]))
        .await
        .unwrap();
    for key in [&window, &set, &bare] {
        assert_eq!(expiry(&mut conn, key.clone()).await, now + 1_000, "{key}");
    }
    assert_eq!(expiry(&mut conn, session.clone()).await, now + 500);

    // A second write with other expiries: the window keeps the one it was created with; the set
    // gains a member but keeps its expiry (NX); the hash without `req` moves later, since its
    // expiry goes as a moving one; the session moves later too.
    sink.apply(&delta(now + 2_000, now + 800, &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(expiry(&mut conn, window.clone()).await, now + 1_000);
    assert_eq!(expiry(&mut conn, set.clone()).await, now + 1_000);
    assert_eq!(expiry(&mut conn, bare.clone()).await, now + 2_000);
    assert_eq!(expiry(&mut conn, session.clone()).await, now + 800);
    let req: i64 = conn.hget(&window, "req").await.unwrap();
    assert_eq!(req, 2);
    let members: i64 = conn.scard(&set).await.unwrap();
    assert_eq!(members, 2);

    // An earlier moving expiry never shortens a session.
    sink.apply(&delta(now + 3_000, now + 100, &["a"]))
        .await
        .unwrap();
    assert_eq!(expiry(&mut conn, session.clone()).await, now + 800);

    // A window that lost its key (expired, or Redis restarted) is created again, with its
    // expiry.
    let _: () = conn.del(&window).await.unwrap();
    sink.apply(&delta(now + 4_000, now + 900, &["a"]))
        .await
        .unwrap();
    assert_eq!(expiry(&mut conn, window.clone()).await, now + 4_000);

    let _: () = redis::cmd("DEL")
        .arg(&[&window, &set, &session, &bare])
        .query_async(&mut conn)
        .await
        .unwrap();
}
