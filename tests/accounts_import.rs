//! `meterline accounts import` (issue 19, acceptance 3): a customer base of 10,000 lands in
//! PostgreSQL `accounts` with every column, a second import of the same file changes nothing,
//! and bad rows are refused by line with their reasons while the rows around them land.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::*;
use meterline::cmd::accounts::{import, ImportArgs};
use serde_json::json;

/// One customer of the generated file, and what PostgreSQL must hold for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    plan: String,
    seats: Option<i64>,
    email_domain: Option<String>,
    company_size: Option<i64>,
    signed_up_at: DateTime<Utc>,
}

/// `n` customers: every plan, signups spread over ten years (more monthly partitions than
/// ClickHouse 24 takes in one INSERT), a third with a later `plan_since`, some columns empty,
/// some times given as dates. Returns the CSV text and each account's expected row.
fn customer_base(tag: &str, n: usize) -> (String, BTreeMap<String, Expected>) {
    let start = Utc.with_ymd_and_hms(2016, 1, 1, 0, 0, 0).unwrap();
    let mut csv =
        String::from("account_id,plan,seats,email_domain,company_size,signed_up_at,plan_since\n");
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let account = format!("imp-{tag}-{i:05}");
        let plan = ["free", "pro", "enterprise"][i % 3];
        // Every 8.75 hours over ten years, give or take an hour.
        let signed_up_at =
            start + chrono::Duration::minutes((i as i64) * 525 + (i as i64 % 7) * 11);
        let as_date = i % 10 == 0;
        let signed_up_at = if as_date {
            signed_up_at
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
        } else {
            signed_up_at
        };
        let seats = (i % 5 != 4).then_some((i % 60) as i64);
        let domain = (i % 6 != 5).then(|| format!("c{}.example", i % 900));
        let size = (i % 7 != 6).then_some((i * 13 % 5_000) as i64);
        let plan_since = (i % 3 == 1).then(|| signed_up_at + chrono::Duration::days(40));
        let time = |t: DateTime<Utc>| {
            if as_date {
                t.format("%Y-%m-%d").to_string()
            } else {
                t.to_rfc3339()
            }
        };
        csv.push_str(&format!(
            "{account},{plan},{},{},{},{},{}\n",
            seats.map(|s| s.to_string()).unwrap_or_default(),
            domain.clone().unwrap_or_default(),
            size.map(|s| s.to_string()).unwrap_or_default(),
            time(signed_up_at),
            plan_since.map(time).unwrap_or_default(),
        ));
        expected.insert(
            account,
            Expected {
                plan: plan.into(),
                seats,
                email_domain: domain,
                company_size: size,
                signed_up_at,
            },
        );
    }
    (csv, expected)
}

fn write_file(suffix: &str, text: &str) -> tempfile::TempPath {
    let mut f = tempfile::Builder::new()
        .prefix("customers-")
        .suffix(suffix)
        .tempfile()
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.into_temp_path()
}

/// What PostgreSQL and ClickHouse hold, whole: compared before and after the second import.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    accounts: Vec<String>,
    pg_events: Vec<String>,
    ch_events: Vec<(String, u32, String, String, String, u32)>,
}

async fn snapshot(app: &TestApp, pool: &sqlx::PgPool) -> Snapshot {
    let accounts =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM accounts a ORDER BY account_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let pg_events =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM account_events e ORDER BY event_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let ch_events = app
        .clickhouse()
        .query(
            "SELECT event_id, toUInt32(occurred_at), account_id, type, plan, toUInt32(received_at) \
             FROM account_events ORDER BY event_id",
        )
        .fetch_all()
        .await
        .unwrap();
    Snapshot {
        accounts,
        pg_events,
        ch_events,
    }
}

async fn accounts_in_pg(pool: &sqlx::PgPool, prefix: &str) -> BTreeMap<String, Expected> {
    type Row = (
        String,
        String,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT account_id, plan, seats, email_domain, company_size, signed_up_at \
         FROM accounts WHERE account_id LIKE $1 || '%'",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(
            |(a, plan, seats, email_domain, company_size, signed_up_at)| {
                (
                    a,
                    Expected {
                        plan,
                        seats,
                        email_domain,
                        company_size,
                        signed_up_at: signed_up_at.expect("a signup time"),
                    },
                )
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_customers_land_and_a_second_import_changes_nothing() {
    let mut app = spawn_app().await;
    let tag = unique_suffix();
    let (csv, expected) = customer_base(&tag, 10_000);
    let file = write_file(".csv", &csv);
    let with_plan_since = (0..10_000).filter(|i| i % 3 == 1).count();

    let started = Instant::now();
    let summary = import(
        &app.config,
        &ImportArgs {
            file: file.to_path_buf(),
            format: None,
        },
    )
    .await
    .expect("the import runs");
    let took = started.elapsed();
    eprintln!("imported 10,000 customers in {took:?}");
    assert_eq!(
        (
            summary.read,
            summary.imported,
            summary.already_present,
            summary.refused.len()
        ),
        (10_000, 10_000, 0, 0),
        "{:?}",
        summary.refused.first()
    );
    assert_eq!(
        summary.events,
        10_000 + with_plan_since,
        "a signup per row, a plan change per plan_since"
    );
    // One by one with acks=all this takes minutes; batched it is a few seconds, even on a
    // loaded machine.
    assert!(took < Duration::from_secs(30), "10,000 rows took {took:?}");

    // Every record produced has been written (counted or found a duplicate) before we look.
    app.wait_for_aggregated(summary.events as u64, Duration::from_secs(180))
        .await;
    let pool = app.pg().await;
    let landed = accounts_in_pg(&pool, &format!("imp-{tag}-")).await;
    assert_eq!(landed.len(), expected.len());
    for (account, want) in &expected {
        assert_eq!(landed.get(account), Some(want), "{account}");
    }
    let before = snapshot(&app, &pool).await;
    assert_eq!(before.pg_events.len(), summary.events);
    assert_eq!(before.ch_events.len(), summary.events);

    // The same file again, through the command line.
    let config = ConfigFile::write(&app.config);
    let out = config
        .command()
        .args(["accounts", "import"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .expect("meterline accounts import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": 10000 rows read, 0 imported, 10000 already present, 0 refused (0 account events sent"),
        "{stdout}"
    );

    // A sentinel behind whatever the second import could have sent.
    let sentinel_id = uuid::Uuid::new_v4().to_string();
    let sentinel = json!({
        "event_id": sentinel_id,
        "occurred_at": Utc::now().to_rfc3339(),
        "account_id": format!("imp-{tag}-sentinel"),
        "type": "upgrade_page_viewed",
    });
    let (status, body) = app
        .post_json("/v1/account-events", &json!([sentinel]))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_for_aggregated(summary.events as u64 + 1, Duration::from_secs(60))
        .await;
    let mut after = snapshot(&app, &pool).await;
    let sentinel_account = format!("imp-{tag}-sentinel");
    after.accounts.retain(|a| !a.contains(&sentinel_account));
    after.pg_events.retain(|e| !e.contains(&sentinel_id));
    let ch_sentinel = after.ch_events.iter().position(|e| e.0 == sentinel_id);
    assert!(ch_sentinel.is_some(), "the sentinel is in ClickHouse");
    after.ch_events.remove(ch_sentinel.unwrap());
    assert!(
        before == after,
        "the second import changed PostgreSQL or ClickHouse"
    );
    app.stop().await;
}

/// One good row and the bad rows of acceptance 3, in each format; the refusals name the
/// line, the field and the reason; exit status 2; the good rows land, the bad ones do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_refused_by_line_and_the_rows_around_them_land() {
    let mut app = spawn_app().await;
    let tag = unique_suffix();
    let a = |n: &str| format!("bad-{tag}-{n}");
    // (row as CSV, row as JSON, the refusal; None for a good row)
    let rows: Vec<(String, serde_json::Value, Option<&str>)> = vec![
        (
            format!(
                "{},pro,3,acme.example,40,2024-02-01T10:00:00Z,",
                a("good-1")
            ),
            json!({"account_id": a("good-1"), "plan": "pro", "seats": 3, "email_domain": "acme.example", "company_size": 40, "signed_up_at": "2024-02-01T10:00:00Z"}),
            None,
        ),
        (
            format!("{},gold,3,acme.example,40,2024-02-01T10:00:00Z,", a("plan")),
            json!({"account_id": a("plan"), "plan": "gold", "seats": 3, "signed_up_at": "2024-02-01T10:00:00Z"}),
            Some("plan: \"gold\" is not one of free, pro, enterprise"),
        ),
        (
            format!(
                "{},pro,-2,acme.example,40,2024-02-01T10:00:00Z,",
                a("seats")
            ),
            json!({"account_id": a("seats"), "plan": "pro", "seats": -2, "signed_up_at": "2024-02-01T10:00:00Z"}),
            Some("seats: "),
        ),
        (
            ",pro,3,acme.example,40,2024-02-01T10:00:00Z,".to_owned(),
            json!({"plan": "pro", "seats": 3, "signed_up_at": "2024-02-01T10:00:00Z"}),
            Some("account_id: required"),
        ),
        (
            format!(
                "{},enterprise,3,ops@acme.example,40,2024-02-01T10:00:00Z,",
                a("domain")
            ),
            json!({"account_id": a("domain"), "plan": "enterprise", "email_domain": "ops@acme.example", "signed_up_at": "2024-02-01T10:00:00Z"}),
            Some("email_domain: \"ops@acme.example\" is not a domain name (give the part after @)"),
        ),
        (
            format!("{},free,1,acme.example,40,01/02/2024,", a("time")),
            json!({"account_id": a("time"), "plan": "free", "signed_up_at": "01/02/2024"}),
            Some(
                "signed_up_at: \"01/02/2024\" is not an RFC 3339 timestamp or a date (YYYY-MM-DD)",
            ),
        ),
        (
            format!(
                "{},enterprise,12,beta.example,300,2023-05-05,2025-03-01",
                a("good-2")
            ),
            json!({"account_id": a("good-2"), "plan": "enterprise", "seats": 12, "email_domain": "beta.example", "company_size": 300, "signed_up_at": "2023-05-05", "plan_since": "2025-03-01"}),
            None,
        ),
    ];
    let config = ConfigFile::write(&app.config);
    let mut produced = 0u64;
    for format in ["csv", "jsonl"] {
        let (text, first_line) = if format == "csv" {
            let mut t = String::from(
                "account_id,plan,seats,email_domain,company_size,signed_up_at,plan_since\n",
            );
            for (row, _, _) in &rows {
                t.push_str(row);
                t.push('\n');
            }
            (t, 2)
        } else {
            let mut t = String::new();
            for (_, row, _) in &rows {
                // Each format imports its own accounts.
                let mut row = row.clone();
                if let Some(id) = row.get("account_id").and_then(|v| v.as_str()) {
                    row["account_id"] = format!("{id}-j").into();
                }
                t.push_str(&row.to_string());
                t.push('\n');
            }
            (t, 1)
        };
        let file = write_file(&format!(".{format}"), &text);
        let out = config
            .command()
            .args(["accounts", "import"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .output()
            .expect("meterline accounts import");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{format}: some rows refused\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(
                ": 7 rows read, 2 imported, 0 already present, 5 refused (3 account events sent"
            ),
            "{format}: {stdout}"
        );
        let refusals: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
        let want: Vec<(usize, &str)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, refusal))| refusal.map(|r| (first_line + i, r)))
            .collect();
        assert_eq!(refusals.len(), want.len(), "{format}: {stderr}");
        for (got, (line, reason)) in refusals.iter().zip(&want) {
            let prefix = format!("line {line}: {reason}");
            assert!(
                got.starts_with(&prefix),
                "{format}: got {got:?}, want {prefix:?}"
            );
        }
        produced += 3;
    }

    app.wait_for_aggregated(produced, Duration::from_secs(60))
        .await;
    let pool = app.pg().await;
    let landed: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT account_id, plan, seats FROM accounts WHERE account_id LIKE $1 ORDER BY account_id",
    )
    .bind(format!("bad-{tag}-%"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        landed,
        vec![
            (a("good-1"), "pro".into(), Some(3)),
            (format!("{}-j", a("good-1")), "pro".into(), Some(3)),
            (a("good-2"), "enterprise".into(), Some(12)),
            (format!("{}-j", a("good-2")), "enterprise".into(), Some(12)),
        ]
    );
    app.stop().await;
}
