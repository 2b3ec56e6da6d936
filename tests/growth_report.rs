//! `meterline report growth` on the real servers: a generated history with known values is
//! written into a fresh database through the tables the pipeline writes (ClickHouse
//! `account_events`, `usage_events` and its rollups, `account_scores`, `limit_stage_crossings`,
//! `grace_usage`; PostgreSQL `dashboard_notices`, copied to ClickHouse `notice_history` by the
//! notifier's task), and every figure of the report is checked against a value computed by hand
//! below, boundaries included: an upgrade 14 days after a notice was shown counts and one 15 days
//! after does not; a deal score 30 days before the move is caught early and one 29 days before is
//! not; a conversion exactly at --since is in the period and one exactly at --until is not.
//!
//! The history, in UTC (f* start on free, p* on pro, e1 on enterprise):
//!
//! | account | plan history | first request |
//! |---|---|---|
//! | f1 | free 01-01, pro 02-10, enterprise 04-15 | 01-01 12:00 |
//! | f2 | free 01-01, pro 03-05 | 01-05 |
//! | f3 | free 01-05, enterprise 03-20 (direct) | 01-06 |
//! | f4 | free 01-10 | 02-10 |
//! | f5 | free 02-01 | none |
//! | f6 | free 01-01, pro 04-01 00:00:00 | none |
//! | f7 | free 01-01, pro 02-01, enterprise 06-01 | 01-11 06:00 |
//! | p1 | pro 01-15, enterprise 05-01 00:00:00 | none |
//! | p2 | pro 01-20 | (03-01, on pro) |
//! | e1 | enterprise 01-03 | (01-03, on enterprise) |

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::*;
use meterline::migrate;
use meterline::services::Components;
use meterline_growth::report::{self, chart, Filters, GrowthReport};
use meterline_growth::stats::Rate;
use meterline_notifier::notice_history;
use meterline_schemas::Plan;

fn t(month: u32, day: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, h, m, s).unwrap()
}

fn ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

async fn exec(ch: &clickhouse::Client, sql: String) {
    ch.query(&sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// (account, type, plan, notice_id, time)
type AccountEvent = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    DateTime<Utc>,
);

fn account_events() -> Vec<AccountEvent> {
    vec![
        ("f1", "signup", "free", "", t(1, 1, 0, 0, 0)),
        ("f1", "plan_changed", "pro", "", t(2, 10, 0, 0, 0)),
        ("f1", "plan_changed", "enterprise", "", t(4, 15, 0, 0, 0)),
        ("f2", "signup", "free", "", t(1, 1, 0, 0, 0)),
        ("f2", "plan_changed", "pro", "", t(3, 5, 0, 0, 0)),
        ("f3", "signup", "free", "", t(1, 5, 0, 0, 0)),
        ("f3", "plan_changed", "enterprise", "", t(3, 20, 0, 0, 0)),
        ("f4", "signup", "free", "", t(1, 10, 0, 0, 0)),
        // A profile change on the same plan is not a step.
        ("f4", "plan_changed", "free", "", t(1, 12, 0, 0, 0)),
        ("f5", "signup", "free", "", t(2, 1, 0, 0, 0)),
        ("f6", "signup", "free", "", t(1, 1, 0, 0, 0)),
        ("f6", "plan_changed", "pro", "", t(4, 1, 0, 0, 0)),
        ("f7", "signup", "free", "", t(1, 1, 0, 0, 0)),
        ("f7", "plan_changed", "pro", "", t(2, 1, 0, 0, 0)),
        ("f7", "plan_changed", "enterprise", "", t(6, 1, 0, 0, 0)),
        ("p1", "signup", "pro", "", t(1, 15, 0, 0, 0)),
        ("p1", "plan_changed", "enterprise", "", t(5, 1, 0, 0, 0)),
        ("p2", "signup", "pro", "", t(1, 20, 0, 0, 0)),
        ("e1", "signup", "enterprise", "", t(1, 3, 0, 0, 0)),
        // Notices. n1: f2 upgrades 14 days after the first showing (counts); n2: f6 upgrades 15
        // days after (does not); n4: f3 upgrades 10 days after without clicking; n5 is shown
        // twice (the first showing counts); n8 is shown on pro; n7 is never shown.
        ("f2", "notice_shown", "", "n1", t(2, 19, 0, 0, 0)),
        ("f2", "notice_clicked", "", "n1", t(2, 20, 0, 0, 0)),
        ("f6", "notice_shown", "", "n2", t(3, 17, 0, 0, 0)),
        ("f6", "notice_clicked", "", "n2", t(3, 17, 0, 5, 0)),
        ("f4", "notice_shown", "", "n3", t(2, 1, 0, 0, 0)),
        ("f3", "notice_shown", "", "n4", t(3, 10, 0, 0, 0)),
        ("f5", "notice_shown", "", "n5", t(2, 5, 0, 0, 0)),
        ("f5", "notice_shown", "", "n5", t(2, 6, 0, 0, 0)),
        ("f5", "notice_clicked", "", "n5", t(2, 6, 0, 1, 0)),
        ("p2", "notice_shown", "", "n8", t(2, 1, 0, 0, 0)),
        ("p2", "notice_clicked", "", "n8", t(2, 2, 0, 0, 0)),
    ]
}

/// The dashboard notices in PostgreSQL: (id, account, kind).
const NOTICES: [(&str, &str, &str); 7] = [
    ("n1", "f2", "plugin_gate"),
    ("n2", "f6", "plugin_gate"),
    ("n3", "f4", "power_user"),
    ("n4", "f3", "power_user"),
    ("n5", "f5", "rate_limit_sustained"),
    ("n7", "f5", "power_user"),
    ("n8", "p2", "plugin_gate"),
];

/// A notice's UUID from its short name.
fn notice_uuid(name: &str) -> uuid::Uuid {
    let n: u128 = name[1..].parse().unwrap();
    uuid::Uuid::from_u128(0x6e6f_7469_6365_0000_0000_0000_0000_0000 | n)
}

/// (account, time, cost_micros)
fn usage() -> Vec<(&'static str, DateTime<Utc>, u64)> {
    vec![
        ("f1", t(1, 1, 12, 0, 0), 100_000),
        ("f1", t(1, 20, 10, 0, 0), 200_000),
        ("f1", t(2, 15, 0, 0, 0), 1_000_000), // on pro
        ("f2", t(1, 5, 0, 0, 0), 50_000),
        ("f2", t(2, 3, 0, 0, 0), 30_000),
        ("f3", t(1, 6, 0, 0, 0), 70_000),
        ("f4", t(2, 10, 0, 0, 0), 40_000),
        ("f4", t(2, 11, 0, 0, 0), 60_000),
        ("f7", t(1, 11, 6, 0, 0), 10_000),
        ("f7", t(1, 31, 23, 59, 0), 20_000), // the hour before its move: still free
        ("f7", t(2, 1, 0, 0, 0), 500_000),   // the hour of its move: pro
        ("p2", t(3, 1, 0, 0, 0), 400_000),
        ("e1", t(1, 3, 0, 0, 0), 5_000_000),
        ("ghost", t(1, 2, 0, 0, 0), 9_000), // no plan history: no plan's cost
    ]
}

async fn write_history(ch: &clickhouse::Client) {
    let rows: Vec<String> = account_events()
        .iter()
        .enumerate()
        .map(|(i, (a, kind, plan, notice, at))| {
            let notice = if notice.is_empty() {
                String::new()
            } else {
                notice_uuid(notice).to_string()
            };
            format!(
                "('ae-{i}', '{}', '{}', '{a}', '{kind}', '{plan}', '{notice}')",
                ts(*at),
                ts(*at)
            )
        })
        .collect();
    exec(
        ch,
        format!(
            "INSERT INTO account_events (event_id, occurred_at, received_at, account_id, type, plan, notice_id) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    let rows: Vec<String> = usage()
        .iter()
        .enumerate()
        .map(|(i, (a, at, cost))| {
            format!(
                "('ue-{i}', '{}', '{}', '{a}', 'gpt-4o-mini', {cost})",
                ts(*at),
                ts(*at)
            )
        })
        .collect();
    exec(
        ch,
        format!(
            "INSERT INTO usage_events (event_id, occurred_at, received_at, account_id, model, cost_micros) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // Deal readiness history: f1 first above 70 exactly 30 days before its move (70 itself
    // earlier does not count); f3 29 days before; f7 137 days before; p1 only after its move.
    let scores = [
        ("f1", t(2, 1, 0, 0, 0), 70),
        ("f1", t(3, 16, 0, 0, 0), 71),
        ("f1", t(4, 1, 0, 0, 0), 90),
        ("f3", t(2, 19, 0, 0, 0), 80),
        ("f7", t(1, 15, 0, 0, 0), 75),
        ("f7", t(3, 1, 0, 0, 0), 95),
        ("p1", t(5, 2, 0, 0, 0), 90),
        ("f4", t(2, 12, 0, 0, 0), 85),
    ];
    let rows: Vec<String> = scores
        .iter()
        .map(|(a, at, d)| format!("('{a}', '{}', 'free', {d})", ts(*at)))
        .collect();
    exec(
        ch,
        format!(
            "INSERT INTO account_scores (account_id, scored_at, plan, deal_readiness) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // Limit hits (and one approach, which is not a hit): free f4, f2, f7, f5 (f2 and f7 convert
    // afterwards); pro f1 (converts afterwards).
    let crossings = [
        (
            "f4",
            "free",
            "day_requests",
            "20260211",
            100,
            "hit",
            t(2, 11, 0, 0, 0),
        ),
        (
            "f4",
            "free",
            "day_requests",
            "20260210",
            85,
            "approached",
            t(2, 10, 0, 0, 0),
        ),
        (
            "f2",
            "free",
            "month_requests",
            "202602",
            100,
            "hit",
            t(2, 20, 0, 0, 0),
        ),
        (
            "f7",
            "free",
            "day_requests",
            "20260131",
            100,
            "hit",
            t(1, 31, 23, 0, 0),
        ),
        (
            "f5",
            "free",
            "day_requests",
            "20260202",
            100,
            "hit",
            t(2, 2, 0, 0, 0),
        ),
        (
            "f1",
            "pro",
            "day_requests",
            "20260212",
            100,
            "hit",
            t(2, 12, 0, 0, 0),
        ),
    ];
    let rows: Vec<String> = crossings
        .iter()
        .enumerate()
        .map(|(i, (a, plan, limit, window, stage, kind, at))| {
            format!(
                "('lc-{i}', '{}', '{}', '{a}', '{plan}', '{limit}', '{window}', {stage}, '{kind}', 1, 1)",
                ts(*at),
                ts(*at)
            )
        })
        .collect();
    exec(
        ch,
        format!(
            "INSERT INTO limit_stage_crossings (event_id, occurred_at, observed_at, account_id, plan, limit_name, window_id, stage, kind, used, limit_value) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // Grace: f2 twice on its day limit (then converts), f4 once on its month limit (written
    // twice, as a retry would), f1 once on pro (then converts).
    let grace = [
        ("f2", "free", "day_requests", "20260220", t(2, 20, 10, 0, 0)),
        ("f2", "free", "day_requests", "20260221", t(2, 21, 9, 0, 0)),
        ("f4", "free", "month_requests", "202602", t(2, 25, 0, 0, 0)),
        ("f4", "free", "month_requests", "202602", t(2, 25, 0, 0, 0)),
        ("f1", "pro", "day_requests", "20260301", t(3, 1, 0, 0, 0)),
    ];
    for (a, plan, limit, window, at) in grace {
        exec(
            ch,
            format!(
                "INSERT INTO grace_usage VALUES ('{a}', '{plan}', '{limit}', '{window}', '{}', 110, 100)",
                ts(at)
            ),
        )
        .await;
    }
}

async fn write_notices(pool: &sqlx::PgPool) {
    for (name, account, kind) in NOTICES {
        sqlx::query(
            "INSERT INTO dashboard_notices \
               (notice_id, account_id, kind, message, upgrade_url, plan, signal_id, created_at, expires_at) \
             VALUES ($1, $2, $3, 'm', 'https://example.com/upgrade', 'pro', $4, $5, $5 + interval '7 days')",
        )
        .bind(notice_uuid(name))
        .bind(account)
        .bind(kind)
        .bind(format!("{account}:{kind}:{name}"))
        .bind(t(1, 31, 0, 0, 0))
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn pending_notices(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dashboard_notices WHERE history_recorded_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A notice kind's funnel: (kind, shown, clicked, clicked and upgraded, upgraded).
type FunnelRow<'a> = (&'a str, u64, (u64, u64), (u64, u64), (u64, u64));

fn counts(r: &Rate) -> (u64, u64) {
    (r.successes, r.trials)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Pixels of one colour in a decoded PNG.
fn colour_counts(path: &std::path::Path) -> impl Fn((u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (
            meterline_growth::chart::WIDTH,
            meterline_growth::chart::HEIGHT
        )
    );
    let channels = info.color_type.samples();
    buf.truncate(info.buffer_size());
    move |(r, g, b)| {
        buf.chunks(channels)
            .filter(|p| p[0] == r && p[1] == g && p[2] == b)
            .count()
    }
}

async fn setup() -> (meterline::config::Config, sqlx::PgPool, clickhouse::Client) {
    let config = isolated_config(&unique_suffix());
    migrate::postgres(&config)
        .await
        .expect("PostgreSQL migrations");
    migrate::clickhouse(&config)
        .await
        .expect("ClickHouse migrations");
    let pool = migrate::connect_postgres(&config).await.unwrap();
    let ch = config.clickhouse.client();
    (config, pool, ch)
}

#[tokio::test]
async fn notices_reach_clickhouse_once_even_when_a_copy_fails_or_repeats() {
    let (config, pool, ch) = setup().await;
    write_notices(&pool).await;
    // ClickHouse unreachable: the copy fails and every notice stays pending.
    let mut down = config.clickhouse.clone();
    down.url = format!("http://127.0.0.1:{}", free_port());
    let err = notice_history::copy_pending(&pool, &down.client()).await;
    assert!(err.is_err(), "{err:?}");
    assert_eq!(pending_notices(&pool).await, 7);
    // Reachable: all seven copied and marked.
    assert_eq!(notice_history::copy_pending(&pool, &ch).await.unwrap(), 7);
    assert_eq!(pending_notices(&pool).await, 0);
    // A crash between the insert and the mark: two notices are copied again, as the same rows.
    sqlx::query(
        "UPDATE dashboard_notices SET history_recorded_at = NULL WHERE notice_id = ANY($1)",
    )
    .bind(vec![notice_uuid("n1"), notice_uuid("n5")])
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(notice_history::copy_pending(&pool, &ch).await.unwrap(), 2);
    assert_eq!(notice_history::copy_pending(&pool, &ch).await.unwrap(), 0);
    let (rows, distinct): (u64, u64) = ch
        .query(
            "SELECT count(), uniqExact(notice_id, account_id, kind, created_at) FROM notice_history",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, distinct),
        (9, 7),
        "the repeated copies are the same rows"
    );
    let folded: u64 = ch
        .query("SELECT count() FROM notice_history FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(folded, 7);
    let kinds: Vec<(String, String)> = ch
        .query(
            "SELECT notice_id, any(kind) FROM notice_history GROUP BY notice_id ORDER BY notice_id",
        )
        .fetch_all()
        .await
        .unwrap();
    let mut want: Vec<(String, String)> = NOTICES
        .iter()
        .map(|(n, _, k)| (notice_uuid(n).to_string(), (*k).to_owned()))
        .collect();
    want.sort();
    assert_eq!(kinds, want);
}

/// The views of 0012, each column read on its own: ClickHouse 18.16 drops a column that a query
/// does not name even when a lambda in the view uses it, so a view whose lambdas capture columns
/// works for the report's queries and fails for `SELECT count() FROM view`.
#[tokio::test]
async fn every_column_of_the_growth_views_reads_on_its_own() {
    let (config, pool, ch) = setup().await;
    write_history(&ch).await;
    write_notices(&pool).await;
    notice_history::copy_pending(&pool, &ch).await.unwrap();
    let views = [
        "account_paths",
        "plan_spells",
        "notice_funnel",
        "enterprise_lead_times",
        "paid_closes",
        "plan_usage_hourly",
        "limit_hit_outcomes",
        "grace_episodes",
    ];
    for view in views {
        let columns: Vec<String> = ch
            .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
            .bind(&config.clickhouse.database)
            .bind(view)
            .fetch_all()
            .await
            .unwrap();
        assert!(columns.len() >= 3, "{view}: {columns:?}");
        let rows: u64 = ch
            .query(&format!("SELECT count() FROM {view}"))
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        assert!(rows > 0, "{view} is empty");
        for c in columns {
            let n: u64 = ch
                .query(&format!(
                    "SELECT count() FROM (SELECT any({c}) FROM {view})"
                ))
                .fetch_one()
                .await
                .unwrap_or_else(|e| panic!("{view}.{c} on its own: {e}"));
            assert_eq!(n, 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_notifier_copies_new_notices() {
    let config = isolated_config(&unique_suffix());
    let mut app = spawn_with(config, Components::none().ingest().notifier()).await;
    let pool = app.pg().await;
    write_notices(&pool).await;
    let ch = app.clickhouse();
    wait_for("notices in notice_history", Duration::from_secs(30), || {
        let ch = ch.clone();
        async move {
            let n: u64 = ch
                .query("SELECT uniqExact(notice_id) FROM notice_history")
                .fetch_one()
                .await
                .unwrap_or(0);
            check(n, |n| *n == 7)
        }
    })
    .await;
    wait_for("notices marked", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move { check(pending_notices(&pool).await, |n| *n == 0) }
    })
    .await;
    app.stop().await;
}

/// The report over the whole history, every figure by hand.
fn assert_all_time(r: &GrowthReport) {
    // Waterfall. On free at some time: f1–f7 (7). On pro: f1, f2, f6, f7, p1, p2 (6).
    // free → pro: f1, f2, f6, f7; free → enterprise (direct): f3; pro → enterprise: f1, p1, f7
    // (f1 and f7 count in free → pro and in pro → enterprise, not in free → enterprise).
    let paths: Vec<(&str, &str, u64, (u64, u64))> = r
        .waterfall
        .iter()
        .map(|p| {
            (
                p.from_plan.as_str(),
                p.to_plan.as_str(),
                p.conversions,
                counts(&p.rate),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("free", "pro", 4, (4, 7)),
            ("free", "enterprise", 1, (1, 7)),
            ("pro", "enterprise", 3, (3, 6)),
        ]
    );
    assert_eq!(r.waterfall[0].rate.value, Some(4.0 / 7.0));
    // Free → paid: f1, f2, f3, f6, f7 of 7.
    assert_eq!(counts(r.free_to_paid.as_ref().unwrap()), (5, 7));

    // Notice funnel. plugin_gate: n1 (clicked, upgraded on day 14), n2 (clicked, upgraded on
    // day 15: no), n8 (clicked, never). power_user: n3 (never), n4 (not clicked, upgraded on
    // day 10). rate_limit_sustained: n5 (clicked, never). n7 was never shown.
    let funnel: Vec<FunnelRow> = r
        .notice_funnel
        .iter()
        .map(|k| {
            (
                k.kind.as_str(),
                k.shown,
                counts(&k.clicked),
                counts(&k.clicked_upgraded),
                counts(&k.upgraded),
            )
        })
        .collect();
    assert_eq!(
        funnel,
        [
            ("plugin_gate", 3, (3, 3), (1, 3), (1, 3)),
            ("power_user", 2, (0, 2), (0, 0), (1, 2)),
            ("rate_limit_sustained", 1, (1, 1), (0, 1), (0, 1)),
        ]
    );

    // Lead time. Moved to Enterprise: f3 (03-20, from free), f1 (04-15), p1 (05-01), f7 (06-01).
    // First deal_ready at or before the move: f1 03-16 (30 days), f3 02-19 (29 days), f7 01-15
    // (137 days); p1 only after. Caught 30+ days early: f1, f7 = 2 of 4 (50 %).
    let l = &r.lead_time;
    assert_eq!(l.moved, 4);
    assert_eq!(counts(&l.deal_ready), (3, 4));
    assert_eq!(counts(&l.caught_30d), (2, 4));
    assert!(close(l.mean_days, (30.0 + 29.0 + 137.0) / 3.0), "{l:?}");
    assert!(close(l.median_days, 30.0), "{l:?}");

    // Time to close: first moves from free: f7 02-01, f1 02-10, f2 03-05, f3 03-20, f6 04-01.
    // From the first request: f7 01-11 06:00 → 20.75 d; f1 01-01 12:00 → 39.5 d; f2 01-05 →
    // 59 d; f3 01-06 → 73 d; f6 never used anything (not measured).
    let c = r.time_to_close.as_ref().unwrap();
    assert_eq!((c.closes, c.with_usage), (5, 4));
    assert!(
        close(c.mean_days, (20.75 + 39.5 + 59.0 + 73.0) / 4.0),
        "{c:?}"
    );
    assert!(close(c.median_days, (39.5 + 59.0) / 2.0), "{c:?}");

    // Cost to serve, by the plan at the hour's start. Free: January f1 (0.3), f2 (0.05),
    // f3 (0.07), f7 (0.03: 01-11 and the hour before its move) = 4 accounts, $0.45; February
    // f2 (0.03), f4 (0.1) = 2, $0.13; $0.58 over 6 account-months. Pro: February f1 (1.0),
    // f7 (0.5, its move's hour); March p2 (0.4): $1.9 over 3. Enterprise: e1 $5 over 1. The
    // account with no plan history counts nowhere.
    let cost: Vec<(&str, u64)> = r
        .cost_to_serve
        .iter()
        .map(|c| (c.plan.as_str(), c.account_months))
        .collect();
    assert_eq!(cost, [("free", 6), ("pro", 3), ("enterprise", 1)]);
    let free = &r.cost_to_serve[0];
    assert!((free.cost_usd - 0.58).abs() < 1e-12, "{free:?}");
    assert!(close(free.per_account_month_usd, 0.58 / 6.0), "{free:?}");
    let months: Vec<(u32, u64)> = free
        .months
        .iter()
        .map(|m| (m.month, m.active_accounts))
        .collect();
    assert_eq!(months, [(202601, 4), (202602, 2)]);
    assert!((free.months[0].cost_usd - 0.45).abs() < 1e-12);
    assert!(close(r.cost_to_serve[1].per_account_month_usd, 1.9 / 3.0));
    assert!(close(r.cost_to_serve[2].per_account_month_usd, 5.0));

    // Limit hit → conversion: free hitters f4, f2, f7, f5, of which f2 and f7 converted; pro
    // f1 converted.
    let hits: Vec<(&str, (u64, u64))> = r
        .limit_hit_conversion
        .iter()
        .map(|h| (h.plan.as_str(), counts(&h.converted)))
        .collect();
    assert_eq!(hits, [("free", (2, 4)), ("pro", (1, 1))]);

    // Grace: free day_requests 2 episodes of f2 (converted); free month_requests 1 episode of
    // f4 (written twice; not converted); pro day_requests 1 of f1 (converted).
    let grace: Vec<(&str, &str, u64, (u64, u64))> = r
        .grace
        .iter()
        .map(|g| {
            (
                g.plan.as_str(),
                g.limit_name.as_str(),
                g.episodes,
                counts(&g.converted),
            )
        })
        .collect();
    assert_eq!(
        grace,
        [
            ("free", "day_requests", 2, (1, 1)),
            ("free", "month_requests", 1, (0, 1)),
            ("pro", "day_requests", 1, (1, 1)),
        ]
    );

    // By month: free → pro Feb 2 (f7, f1), Mar 1 (f2), Apr 1 (f6); free → enterprise Mar 1;
    // pro → enterprise Apr, May, Jun.
    assert_eq!(r.months, [202602, 202603, 202604, 202605, 202606]);
    let monthly: Vec<Vec<u64>> = r.monthly.iter().map(|p| p.cumulative.clone()).collect();
    assert_eq!(
        monthly,
        [
            vec![2, 3, 4, 4, 4],
            vec![0, 1, 1, 1, 1],
            vec![0, 0, 1, 2, 3]
        ]
    );
}

#[tokio::test]
async fn the_growth_report_gives_every_figure_of_a_known_history() {
    let (config, pool, ch) = setup().await;
    write_history(&ch).await;
    write_notices(&pool).await;
    assert_eq!(notice_history::copy_pending(&pool, &ch).await.unwrap(), 7);
    let now = Utc::now();

    let all = Filters::new(None, None, None).unwrap();
    let r = report::build(&ch, &all, now).await.unwrap();
    assert_all_time(&r);

    // April only: f6's move at 04-01 00:00:00 (== --since) is in, p1's at 05-01 00:00:00
    // (== --until) is out. On free in April: f4, f5, f6 (its free spell ends at --since); on
    // pro: f1, f2, f6, f7, p1 (leaves at --until), p2.
    let april = Filters::new(Some(t(4, 1, 0, 0, 0)), Some(t(5, 1, 0, 0, 0)), None).unwrap();
    let r = report::build(&ch, &april, now).await.unwrap();
    let paths: Vec<(u64, (u64, u64))> = r
        .waterfall
        .iter()
        .map(|p| (p.conversions, counts(&p.rate)))
        .collect();
    assert_eq!(paths, [(1, (1, 3)), (0, (0, 3)), (1, (1, 6))]);
    assert_eq!(counts(r.free_to_paid.as_ref().unwrap()), (1, 3));
    // Only f1 moved to Enterprise in April, 30 days after its first deal_ready.
    assert_eq!(r.lead_time.moved, 1);
    assert_eq!(counts(&r.lead_time.caught_30d), (1, 1));
    // f6 closed in April without usage.
    let c = r.time_to_close.as_ref().unwrap();
    assert_eq!((c.closes, c.with_usage, c.mean_days), (1, 0, None));
    // No notice was shown, no limit hit, no grace used, nothing used in April.
    assert!(r.notice_funnel.is_empty() && r.limit_hit_conversion.is_empty() && r.grace.is_empty());
    assert!(r
        .cost_to_serve
        .iter()
        .all(|c| c.account_months == 0 && c.per_account_month_usd.is_none()));
    assert_eq!(r.months, [202604]);
    assert_eq!(
        r.monthly
            .iter()
            .map(|p| p.cumulative[0])
            .collect::<Vec<_>>(),
        [1, 0, 1]
    );
    // One second less at the start: f6's move (at 04-01 00:00:00) is out.
    let after = Filters::new(Some(t(4, 1, 0, 0, 1)), Some(t(5, 1, 0, 0, 1)), None).unwrap();
    let r = report::build(&ch, &after, now).await.unwrap();
    assert_eq!(
        r.waterfall
            .iter()
            .map(|p| p.conversions)
            .collect::<Vec<_>>(),
        [0, 0, 2],
        "f1 (04-15) and p1 (05-01 00:00:00, now inside)"
    );
    assert_eq!(r.lead_time.moved, 2);
    assert_eq!(
        counts(&r.lead_time.caught_30d),
        (1, 2),
        "p1 was never deal_ready before"
    );

    // February's notices: n1 (shown 02-19; upgraded 03-05, 14 days later, outside February but
    // counted), n3, n5, n8: the period filters the showing.
    let february = Filters::new(Some(t(2, 1, 0, 0, 0)), Some(t(3, 1, 0, 0, 0)), None).unwrap();
    let r = report::build(&ch, &february, now).await.unwrap();
    let funnel: Vec<(&str, u64, (u64, u64))> = r
        .notice_funnel
        .iter()
        .map(|k| (k.kind.as_str(), k.shown, counts(&k.upgraded)))
        .collect();
    assert_eq!(
        funnel,
        [
            ("plugin_gate", 2, (1, 2)),
            ("power_user", 1, (0, 1)),
            ("rate_limit_sustained", 1, (0, 1))
        ]
    );
    // Free usage in February: f2 and f4; the free hits of f4, f2 and f5 (f7's was in January).
    assert_eq!(r.cost_to_serve[0].account_months, 2);
    assert!((r.cost_to_serve[0].cost_usd - 0.13).abs() < 1e-12);
    assert_eq!(counts(&r.limit_hit_conversion[0].converted), (1, 3));

    // Starting plan pro: only pro → enterprise; the notice shown on pro (n8); the pro hit.
    let pro = Filters::new(None, None, Some(Plan::Pro)).unwrap();
    let r = report::build(&ch, &pro, now).await.unwrap();
    assert_eq!(r.waterfall.len(), 1);
    assert_eq!(counts(&r.waterfall[0].rate), (3, 6));
    assert!(r.free_to_paid.is_none() && r.time_to_close.is_none());
    assert_eq!(
        r.notice_funnel
            .iter()
            .map(|k| (k.kind.as_str(), k.shown))
            .collect::<Vec<_>>(),
        [("plugin_gate", 1)]
    );
    // From pro to Enterprise: f1, p1, f7; deal_ready before: f1, f7; both 30+ days early.
    assert_eq!(r.lead_time.moved, 3);
    assert_eq!(counts(&r.lead_time.caught_30d), (2, 3));
    assert_eq!(
        r.cost_to_serve
            .iter()
            .map(|c| c.plan.as_str())
            .collect::<Vec<_>>(),
        ["pro"]
    );
    assert_eq!(r.limit_hit_conversion.len(), 1);
    assert_eq!(r.grace.len(), 1);
    assert_eq!(r.monthly.len(), 1);
    assert_eq!(r.monthly[0].cumulative.last(), Some(&3));

    // The text and the CSV carry the figures.
    let r = report::build(&ch, &all, now).await.unwrap();
    let text = r.text();
    assert!(
        text.contains("free → pro") && text.contains("4/7"),
        "{text}"
    );
    assert!(text.contains("2/4 (50.0 %)"), "{text}");
    let csv = r.csv();
    for line in [
        "section,key,metric,value,successes,trials",
        &format!("waterfall,free->pro,rate,{},4,7", 4.0 / 7.0),
        &format!("waterfall,free->paid,rate,{},5,7", 5.0 / 7.0),
        "notice_funnel,plugin_gate,upgraded_14d,0.3333333333333333,1,3",
        "lead_time,enterprise,caught_30d,0.5,2,4",
        "limit_hit_conversion,free,converted,0.5,2,4",
        "time_to_close,free->paid,median_days,49.25,,",
        "cost_to_serve,free/202602,active_accounts,2,,",
        "conversions_by_month,pro->enterprise/202606,cumulative,3,,",
    ] {
        assert!(csv.lines().any(|l| l == line), "missing {line:?} in\n{csv}");
    }

    // The chart: one line per plan path, each in its colour; with --plan pro only pro's.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("growth.png");
    chart::draw(&r, &png).unwrap();
    let count = colour_counts(&png);
    for (i, (from, to)) in report::PATHS.iter().enumerate() {
        let n = count(meterline_growth::chart::PALETTE[i]);
        assert!(n > 300, "{from} → {to} drew {n} pixels in its colour");
    }
    for colour in &meterline_growth::chart::PALETTE[3..] {
        assert_eq!(count(*colour), 0, "a line nobody asked for");
    }
    let r = report::build(&ch, &pro, now).await.unwrap();
    let png = dir.path().join("pro.png");
    chart::draw(&r, &png).unwrap();
    let count = colour_counts(&png);
    assert!(count(meterline_growth::chart::PALETTE[2]) > 300);
    assert_eq!(count(meterline_growth::chart::PALETTE[0]), 0);
    assert_eq!(count(meterline_growth::chart::PALETTE[1]), 0);

    // The command itself: the table on stdout, the CSV and the chart written.
    let file = ConfigFile::write(&config);
    let csv_path = dir.path().join("growth.csv");
    let chart_path = dir.path().join("cli.png");
    let out = file
        .command()
        .args([
            "report",
            "growth",
            "--since",
            "2026-04-01",
            "--until",
            "2026-05-01",
            "--csv",
        ])
        .arg(&csv_path)
        .arg("--chart")
        .arg(&chart_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("from 2026-04-01 00:00:00 UTC to 2026-05-01 00:00:00 UTC"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert!(
        csv.lines()
            .any(|l| l == "waterfall,free->pro,rate,0.3333333333333333,1,3"),
        "{csv}"
    );
    assert!(colour_counts(&chart_path)(meterline_growth::chart::PALETTE[0]) > 0);

    // Bad flags: refused before anything is read, naming the flag and the reason.
    for (args, flag, reason) in [
        (&["--since", "2026-13-01"][..], "--since", "is not a date"),
        (
            &["--plan", "gold"][..],
            "--plan",
            "is not one of free, pro, enterprise",
        ),
        (
            &["--since", "2026-05-01", "--until", "2026-04-01"][..],
            "--until",
            "is not after --since",
        ),
    ] {
        let out = file
            .command()
            .args(["report", "growth"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains(flag) && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
    }
}
