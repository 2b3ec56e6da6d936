//! `meterline-bench console`: how long the web console takes to render its pages with a large
//! customer base in the stores (issue 22: p95 ≤ 200 ms with 100,000 accounts).
//!
//! The run gets a PostgreSQL database and a ClickHouse database of its own (dropped and made
//! again at start, so runs do not pile up), filled with SQL in bulk: `--accounts` accounts
//! with scores (a mix of plans, deal, PQL and abuse scores, limits at stages, power users,
//! escalation tags, accounts in review), signals, notifications and notices for a tenth of
//! them, and 30 days of usage events for every account (ClickHouse's rollups fill from them).
//! Then ingest (which serves the console) starts in this process, a `console`-scoped token
//! signs in over HTTP, and each page is fetched `--requests` times one after another (after a
//! warm-up), timing the whole response. A page that answers anything but 200 fails the run.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meterline::config::Config;
use meterline::migrate;
use meterline::services::{self, Components};
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::percentile;

pub struct ConsoleBench {
    pub accounts: usize,
    pub requests: usize,
}

/// A page: its name, and the path of its next request.
type PagePath = (&'static str, Box<dyn FnMut(&mut StdRng) -> String>);

/// The bar each page must meet.
const P95_BUDGET_MS: f64 = 200.0;

/// The run's own stores: `<database>_console_bench` in PostgreSQL and ClickHouse, its own topics.
async fn bench_config(config: &Config) -> Result<Config> {
    let mut c = config.clone();
    let opts: PgConnectOptions = c.postgres.url.parse().context("postgres.url")?;
    let db = format!(
        "{}_console_bench",
        opts.get_database().unwrap_or("meterline")
    );
    let mut admin = opts.clone().database("postgres").connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await.ok();
    c.postgres.url = opts.database(&db).to_url_lossy().to_string();
    c.clickhouse.database = format!("{}_console_bench", config.clickhouse.database);
    crate::pipeline::drop_clickhouse_database(&c).await?;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    c.kafka.usage_topic = format!("bench-{run}-usage");
    c.kafka.account_topic = format!("bench-{run}-account");
    c.kafka.dead_letter_topic = format!("bench-{run}-dlq");
    c.kafka.signal_topic = format!("bench-{run}-signals");
    c.aggregator.group_id = format!("bench-{run}");
    migrate::run(&c).await?;
    Ok(c)
}

/// Fills the stores in bulk.
async fn fill(c: &Config, accounts: usize) -> Result<()> {
    let pool = migrate::connect_postgres(c).await?;
    let n = accounts as i64;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO accounts (account_id, plan, seats, email_domain, company_size, signed_up_at, review_state, review_changed_at, review_actor, review_reason) \
         SELECT 'bench-' || i, (ARRAY['free','free','free','pro','enterprise'])[1 + i % 5], 1 + i % 40, \
                'dom-' || (i % 20000) || '.com', 10 * (i % 300), now() - (i % 400) * interval '1 day', \
                CASE WHEN i % 100 = 0 THEN 'suspected' END, CASE WHEN i % 100 = 0 THEN now() END, \
                CASE WHEN i % 100 = 0 THEN 'meterline:scorer' END, CASE WHEN i % 100 = 0 THEN 'abuse score 60' END \
         FROM generate_series(0, $1 - 1) i",
    )
    .bind(n)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO account_scores (account_id, deal_readiness, pql, abuse, scores, scored_at) \
         SELECT 'bench-' || i, d, p, a, jsonb_build_object( \
                  'deal_readiness', jsonb_build_object('value', d, 'reasons', jsonb_build_array(jsonb_build_object('rule', 'monthly_tokens', 'points', 30, 'detail', 'tokens this month'))), \
                  'pql', jsonb_build_object('value', p, 'reasons', '[]'::jsonb), \
                  'abuse', jsonb_build_object('value', a, 'reasons', '[]'::jsonb), \
                  'abuse_suspected', a >= 50, \
                  'power_user', CASE WHEN i % 50 = 0 THEN jsonb_build_object('rule', 'power', 'points', 0, 'detail', 'heavy') END, \
                  'limits', jsonb_build_array( \
                     jsonb_build_object('name', 'day_requests', 'used', i % 5000, 'limit', 5000, 'ratio', (i % 5000) / 5000.0, \
                                        'stage', CASE WHEN i % 5000 >= 3500 THEN 70 END, 'resets_at', to_char(now() + interval '1 day', 'YYYY-MM-DD\"T\"00:00:00Z')), \
                     jsonb_build_object('name', 'month_weighted_tokens', 'used', i % 3000000, 'limit', 2000000, 'ratio', (i % 3000000) / 2000000.0, \
                                        'stage', CASE WHEN i % 3000000 >= 2000000 THEN 100 END, 'resets_at', to_char(date_trunc('month', now()) + interval '1 month', 'YYYY-MM-DD\"T\"00:00:00Z'))), \
                  'tags', CASE WHEN i % 200 = 0 THEN '[\"3_plus_regions\"]'::jsonb ELSE '[]'::jsonb END, \
                  'shared_keys', '[]'::jsonb, 'multi_accounts', '[]'::jsonb, 'notes', '[]'::jsonb, 'inputs', '{}'::jsonb), \
                now() \
         FROM (SELECT i, (i * 37) % 101 AS d, (i * 53) % 101 AS p, CASE WHEN i % 100 = 0 THEN 60 ELSE (i * 7) % 40 END AS a \
               FROM generate_series(0, $1 - 1) i) s",
    )
    .bind(n)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO account_signals (dedup_key, account_id, kind, episode, raised_at, last_seen_at, payload) \
         SELECT 'bench-' || i || ':' || k || ':e', 'bench-' || i, k, 'e', now() - interval '1 hour', now(), \
                jsonb_build_object('reasons', jsonb_build_array('a reason')) \
         FROM generate_series(0, $1 - 1, 10) i, unnest(ARRAY['deal_ready','pql','limit_stage']) k",
    )
    .bind(n)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO notifications (account_id, destination, kind, signal_id, cooldown_class, cooldown_at, score, payload, status, attempts) \
         SELECT 'bench-' || i, 'slack:enterprise_inbound', 'deal_ready', 'bench-' || i || ':deal_ready:e', 'deal', now(), 80, '{}', \
                (ARRAY['sent','sent','sent','dead','pending'])[1 + i % 5], 1 \
         FROM generate_series(0, $1 - 1, 10) i",
    )
    .bind(n)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO dashboard_notices (notice_id, account_id, kind, message, upgrade_url, plan, signal_id, created_at, expires_at, shown_at) \
         SELECT gen_random_uuid(), 'bench-' || i, 'pql', 'You are growing fast', 'https://example.com/upgrade', 'pro', 'bench-' || i || ':pql:e', \
                now(), now() + interval '7 days', CASE WHEN i % 20 = 0 THEN now() END \
         FROM generate_series(0, $1 - 1, 10) i",
    )
    .bind(n)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    tracing::info!(elapsed = ?started.elapsed(), "PostgreSQL filled");
    let started = Instant::now();
    // 30 days of usage for every account, one event per account and day, models alternating.
    c.clickhouse
        .client()
        .query(&format!(
            "INSERT INTO usage_events (event_id, occurred_at, received_at, account_id, api_key_id, gateway_id, region, cloud, provider, model, \
                                       input_tokens, output_tokens, cost_micros, session_id, user_id, client_ip_hash, device_id, prompt_hash, kafka_partition, kafka_offset) \
             SELECT toString(number), now() - toIntervalDay(intDiv(number, {n}) % 30) - toIntervalSecond(number % 3600), now(), \
                    concat('bench-', toString(number % {n})), 'key', 'gw', 'us-east-1', 'aws', 'openai', \
                    if(intDiv(number, {n}) % 2 = 0, 'gpt-4o', 'gpt-4o-mini'), 100 + number % 900, 50, 10, '', '', '', '', '', 0, number \
             FROM numbers({})",
            n * 30
        ))
        .execute()
        .await?;
    tracing::info!(elapsed = ?started.elapsed(), "ClickHouse filled");
    pool.close().await;
    Ok(())
}

pub async fn console(config: &Config, bench: ConsoleBench) -> Result<()> {
    ensure!(bench.accounts >= 100, "--accounts: at least 100");
    ensure!(bench.requests >= 20, "--requests: at least 20");
    let c = bench_config(config).await?;
    println!(
        "filling the stores: {} accounts (PostgreSQL), {} usage events (ClickHouse)…",
        bench.accounts,
        bench.accounts * 30
    );
    fill(&c, bench.accounts).await?;
    let pool = migrate::connect_postgres(&c).await?;
    let token = services::token_store(&c, &pool)
        .create("bench-console", &[Scope::Console], None)
        .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let running = services::start(
        &c,
        Components::none().ingest(),
        Some(listener),
        CancellationToken::new(),
    )
    .await?;
    let base = format!("http://{}", running.ingest_addr.context("ingest runs")?);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &base, &token).await?;

    let mut rng = StdRng::seed_from_u64(22);
    let n = bench.accounts;
    let mut pages: Vec<PagePath> = vec![
        ("overview", Box::new(|_| "/console".into())),
        (
            "account page",
            Box::new(move |r| format!("/console/accounts/bench-{}", r.random_range(0..n))),
        ),
        (
            "deal-ready, page 1",
            Box::new(|_| "/console/lists/deal-ready".into()),
        ),
        (
            "deal-ready, a deep page",
            Box::new(move |r| {
                format!(
                    "/console/lists/deal-ready?page={}",
                    r.random_range(1..=(n / 500).max(1))
                )
            }),
        ),
        (
            "near-limit, free, by abuse",
            Box::new(|_| "/console/lists/near-limit?plan=free&sort=abuse".into()),
        ),
        ("flagged", Box::new(|_| "/console/lists/flagged".into())),
        ("review queue", Box::new(|_| "/console/review".into())),
        (
            "review account",
            Box::new(move |r| {
                format!("/console/review/bench-{}", 100 * r.random_range(0..n / 100))
            }),
        ),
        (
            "notifications",
            Box::new(|_| "/console/notifications".into()),
        ),
        (
            "search by domain",
            Box::new(|r| format!("/console/search?q=dom-{}.com", r.random_range(0..20000))),
        ),
        ("experiments", Box::new(|_| "/console/experiments".into())),
        ("pipeline health", Box::new(|_| "/console/health".into())),
        ("audit trail", Box::new(|_| "/console/audit".into())),
        ("growth report", Box::new(|_| "/console/growth".into())),
    ];
    println!(
        "\n{:<28} {:>8} {:>8} {:>8} {:>8}",
        "page", "p50 ms", "p95 ms", "max ms", "bytes"
    );
    let mut failed = Vec::new();
    for (name, path) in &mut pages {
        for _ in 0..5 {
            fetch(&http, &base, &cookie, &path(&mut rng)).await?;
        }
        let mut micros = Vec::with_capacity(bench.requests);
        let mut bytes = 0;
        for _ in 0..bench.requests {
            let p = path(&mut rng);
            let t = Instant::now();
            bytes = fetch(&http, &base, &cookie, &p).await?;
            micros.push(t.elapsed().as_micros() as u64);
        }
        micros.sort_unstable();
        let p95 = percentile(&micros, 0.95);
        println!(
            "{:<28} {:>8.1} {:>8.1} {:>8.1} {:>8}",
            name,
            percentile(&micros, 0.5),
            p95,
            percentile(&micros, 1.0),
            bytes
        );
        if p95 > P95_BUDGET_MS {
            failed.push(format!("{name}: p95 {p95:.1} ms"));
        }
    }
    running.stop().await?;
    if !failed.is_empty() {
        bail!(
            "pages over the {P95_BUDGET_MS} ms p95 budget: {}",
            failed.join(", ")
        );
    }
    println!("\nevery page: p95 ≤ {P95_BUDGET_MS} ms with {n} accounts");
    Ok(())
}

async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> Result<String> {
    let form = http.get(format!("{base}/console/login")).send().await?;
    let login_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("meterline_console_login="))
        .context("the login form's cookie")?
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned();
    let html = form.text().await?;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the login form's csrf field")?
        .to_owned();
    let resp = http
        .post(format!("{base}/console/login"))
        .header("cookie", login_cookie)
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .await?;
    ensure!(resp.status() == 303, "sign-in answered {}", resp.status());
    Ok(resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("meterline_console="))
        .context("a session cookie")?
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned())
}

/// One page; its size in bytes. Anything but 200 is an error.
async fn fetch(http: &reqwest::Client, base: &str, cookie: &str, path: &str) -> Result<usize> {
    let resp = http
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    ensure!(
        status == 200,
        "{path} answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    Ok(body.len())
}
