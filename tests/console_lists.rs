//! The console's lists over HTTP, on the real PostgreSQL: which accounts each list holds (cut
//! at the scorer's thresholds), the plan filter, sorting, server-side paging, the CSV export,
//! and search by account id or email domain.
//!
//! The accounts and their scores are written straight to `accounts` and `account_scores` (as
//! the aggregator and the scorer would), so each list's expected members are known exactly.

mod common;

use common::console::{token, ConsoleUser};
use common::*;
use meterline::services::Components;
use meterline_ingest::Scope;
use serde_json::json;

/// (account, plan, domain, deal, pql, abuse, review state, limit stage, power user, tags)
type Fixture = (
    &'static str,
    &'static str,
    &'static str,
    i32,
    i32,
    i32,
    Option<&'static str>,
    Option<u32>,
    bool,
    bool,
);

const ACCOUNTS: &[Fixture] = &[
    (
        "l-a1", "free", "acme.com", 90, 70, 0, None, None, false, false,
    ),
    ("l-a2", "pro", "beta.io", 80, 10, 0, None, None, false, true),
    (
        "l-a3",
        "free",
        "acme.com",
        75,
        65,
        5,
        None,
        Some(85),
        false,
        false,
    ),
    (
        "l-a4",
        "free",
        "gamma.dev",
        71,
        20,
        0,
        None,
        None,
        true,
        false,
    ),
    (
        "l-a5",
        "free",
        "delta.dev",
        70,
        59,
        0,
        None,
        None,
        false,
        false,
    ),
    (
        "l-a6",
        "enterprise",
        "omega.com",
        95,
        0,
        0,
        None,
        Some(100),
        false,
        true,
    ),
    (
        "l-a7",
        "free",
        "gmail.com",
        10,
        0,
        60,
        Some("suspected"),
        None,
        false,
        false,
    ),
    (
        "l-a8",
        "free",
        "gmail.com",
        5,
        0,
        80,
        Some("confirmed"),
        None,
        false,
        false,
    ),
];

async fn insert(pool: &sqlx::PgPool) {
    for &(id, plan, domain, deal, pql, abuse, review, stage, power, tags) in ACCOUNTS {
        sqlx::query(
            "INSERT INTO accounts (account_id, plan, email_domain, review_state, review_changed_at) \
             VALUES ($1, $2, $3, $4, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END)",
        )
        .bind(id)
        .bind(plan)
        .bind(domain)
        .bind(review)
        .execute(pool)
        .await
        .unwrap();
        let scores = json!({
            "deal_readiness": {"value": deal, "reasons": []},
            "pql": {"value": pql, "reasons": []},
            "abuse": {"value": abuse, "reasons": []},
            "limits": [{"name": "month_weighted_tokens", "stage": stage, "ratio": 0.5, "used": 1, "limit": 2}],
            "power_user": if power { json!({"rule": "power", "points": 0, "detail": "heavy"}) } else { json!(null) },
            "tags": if tags { json!(["3_plus_regions"]) } else { json!([]) },
        });
        sqlx::query(
            "INSERT INTO account_scores (account_id, deal_readiness, pql, abuse, scores, scored_at) \
             VALUES ($1, $2, $3, $4, $5, now())",
        )
        .bind(id)
        .bind(deal)
        .bind(pql)
        .bind(abuse)
        .bind(scores)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// The account ids linked from the page's list table, in order.
fn listed(html: &str) -> Vec<String> {
    let table = html
        .split("<table id=\"list\">")
        .nth(1)
        .expect("a list table")
        .split("</table>")
        .next()
        .unwrap();
    table
        .split("href=\"/console/accounts/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_page_export_and_search() {
    let mut config = isolated_config(&unique_suffix());
    config.console.page_size = 3;
    let app = spawn_with(config, Components::none().ingest()).await;
    let pool = app.pg().await;
    insert(&pool).await;
    let (_, viewer) = token(&app, "viewer", &[Scope::Console]).await;
    let mut user = ConsoleUser::new(&app);
    assert_eq!(user.sign_in(&viewer).await.status, 303);

    let cases: &[(&str, &[&str])] = &[
        // Deal readiness above 70 (70 itself is not), highest first, 3 a page.
        ("/console/lists/deal-ready", &["l-a6", "l-a1", "l-a2"]),
        ("/console/lists/deal-ready?page=2", &["l-a3", "l-a4"]),
        (
            "/console/lists/deal-ready?plan=free",
            &["l-a1", "l-a3", "l-a4"],
        ),
        (
            "/console/lists/deal-ready?sort=account&dir=asc",
            &["l-a1", "l-a2", "l-a3"],
        ),
        (
            "/console/lists/deal-ready?sort=pql&dir=asc&plan=free",
            &["l-a4", "l-a3", "l-a1"],
        ),
        // PQL at or above 60.
        ("/console/lists/pql", &["l-a1", "l-a3"]),
        ("/console/lists/near-limit", &["l-a3", "l-a6"]),
        ("/console/lists/power-users", &["l-a4"]),
        (
            "/console/lists/escalations?sort=account&dir=asc",
            &["l-a2", "l-a6"],
        ),
        // In review and not decided yet: suspected, not confirmed.
        ("/console/lists/flagged", &["l-a7"]),
    ];
    for (path, want) in cases {
        let a = user.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(listed(&a.body), *want, "{path}");
    }
    let first = user.get("/console/lists/deal-ready").await.body;
    assert!(first.contains("5 accounts · page 1 of 2"), "{first}");
    assert!(first.contains("rel=\"next\""));
    let second = user.get("/console/lists/deal-ready?page=2").await.body;
    assert!(!second.contains("rel=\"next\"") && second.contains("rel=\"prev\""));

    // The export has every row of the list, filtered and sorted as asked, not just a page.
    let csv = user.get("/console/lists/deal-ready/csv?plan=free").await;
    assert_eq!(csv.status, 200);
    let rows: Vec<Vec<String>> = csv
        .body
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "account_id",
            "plan",
            "email_domain",
            "deal_readiness",
            "pql",
            "abuse",
            "review_state",
            "scored_at"
        ]
    );
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["l-a1", "l-a3", "l-a4"]);
    assert_eq!(rows[1][1..6], ["free", "acme.com", "90", "70", "0"]);

    // Bad input names its field.
    for (path, field) in [
        ("/console/lists/deal-ready?plan=gold", "plan:"),
        (
            "/console/lists/deal-ready?sort=deal_readiness;drop",
            "sort:",
        ),
        ("/console/lists/deal-ready?dir=sideways", "dir:"),
        ("/console/lists/deal-ready?page=0", "page:"),
    ] {
        let a = user.get(path).await;
        assert_eq!(a.status, 400, "{path}");
        assert!(a.body.contains(field), "{path}: {}", a.body);
    }
    assert_eq!(user.get("/console/lists/nope").await.status, 404);

    // Search: an exact id goes to its page; a domain lists its accounts.
    let a = user.get("/console/search?q=l-a2").await;
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/console/accounts/l-a2"))
    );
    let a = user.get("/console/search?q=ACME.com").await;
    assert_eq!(a.status, 200);
    let found: Vec<&str> = a
        .body
        .split("href=\"/console/accounts/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(found, ["l-a1", "l-a3"]);
    let a = user.get("/console/search?q=").await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("q: required"), "{}", a.body);
}
