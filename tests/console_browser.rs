//! The web console in a real browser (issue 22, acceptances 1 and 3): headless Chromium driven
//! over WebDriver (Debian's `chromium` and `chromium-driver`, `scripts/console-test-deps.sh`),
//! against every component running on the real servers, with a population from the simulator.
//!
//! One browser session walks what the console is for: sign in; find a simulated account and
//! see its scores, usage chart and signals; confirm a flagged account and see its quota check
//! turn to `deny`, then clear it; retry a dead notification (Slack was down, then back) and see
//! it sent, with the console link in the message; open an experiment report with its chart;
//! sign out. Each page is saved as a screenshot under `target/test-output/console/`, and
//! axe-core (from npm) checks the main pages: no serious or critical violation.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::console::token;
use common::standin::StandIn;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use meterline::services::Components;
use meterline::Config;
use meterline_aggregator::experiments::{store as experiments, ExperimentSpec, VariantSpec};
use meterline_ingest::Scope;
use meterline_sim::{self as simulate, Options};
use serde_json::{json, Value};

const SLACK_PATH: &str = "/services/T000/B000/console";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser() -> (Driver, Client) {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run scripts/console-test-deps.sh (apt-get install chromium chromium-driver)"
        );
    }
    let port = free_port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let http = reqwest::Client::new();
    wait_for("chromedriver", Duration::from_secs(20), || async {
        match http.get(format!("{}/status", driver.url)).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1600",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in headless Chromium");
    (driver, client)
}

/// Where screenshots go: `target/test-output/console/`.
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(output_dir().join(format!("{name}.png")), png).unwrap();
}

fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".local/console/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/console-test-deps.sh (npm install axe-core)",
            path.display()
        )
    })
}

/// Runs axe-core on the current page; fails on any serious or critical violation.
async fn axe(c: &Client, axe: &str, page: &str) {
    let script = format!(
        "{axe}\n;const done = arguments[arguments.length - 1];\
         axe.run(document, {{resultTypes: ['violations']}})\
           .then(r => done(r.violations.map(v => ({{id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}}))))\
           .catch(e => done('axe failed: ' + e));"
    );
    let out = c.execute_async(&script, vec![]).await.expect("axe ran");
    let violations = out
        .as_array()
        .unwrap_or_else(|| panic!("{page}: axe answered {out}"));
    let bad: Vec<&Value> = violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(
        bad.is_empty(),
        "{page}: serious or critical accessibility violations: {}",
        serde_json::to_string_pretty(&bad).unwrap()
    );
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks `css` (a submit button or a link) and waits until the browser has left the page.
async fn click_through(c: &Client, css: Locator<'_>) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(css).await.unwrap().click().await.unwrap();
    wait_for("the next page", Duration::from_secs(20), || async {
        match old.tag_name().await {
            Err(_) => Ok(()),
            Ok(_) => Err("still on the old page"),
        }
    })
    .await;
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

/// Quota check for `account` with an admin token.
async fn decision(app: &TestApp, admin: &str, account: &str) -> String {
    let body: Value = app
        .http
        .post(app.url("/v1/quota/check"))
        .bearer_auth(admin)
        .json(&json!({"account_id": account, "model": "gpt-4o-mini",
            "estimated_input_tokens": 10, "estimated_output_tokens": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["decision"].as_str().unwrap_or("?").to_owned()
}

fn config(standin: &StandIn, dir: &std::path::Path) -> Config {
    let mut c = isolated_config(&unique_suffix());
    c.scorer.interval_ms = 200;
    let n = &mut c.notifier;
    n.data_dir = dir.join("notifications").display().to_string();
    n.poll_interval_ms = 100;
    n.lease_ms = 1_500;
    n.backoff_base_ms = 50;
    n.backoff_max_ms = 200;
    n.max_attempts = 2;
    n.request_timeout_ms = 2_000;
    n.slack.base_url = standin.url();
    for channel in [
        "enterprise_inbound",
        "sales_assist",
        "trust_and_safety",
        "account_management",
    ] {
        n.slack.webhooks.insert(
            channel.into(),
            meterline_notifier::config::Secret::new(SLACK_PATH),
        );
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    let axe_js = axe_source();
    let standin = StandIn::start().await;
    // Slack is down: the deal alerts die after their attempts, for the retry below.
    standin.set(|s| s.slack_down = Some(500));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&standin, dir.path());
    let app = spawn_with(config.clone(), Components::all()).await;
    let pool = app.pg().await;

    // A limit experiment on the free plan, running before the simulated signups.
    experiments::create(
        &pool,
        &ExperimentSpec {
            name: "tight-free".into(),
            description: "a tighter monthly token allowance".into(),
            plan: "free".into(),
            starts_at: Utc::now() - chrono::Duration::days(40),
            ends_at: None,
            variants: vec![
                VariantSpec {
                    name: "control".into(),
                    weight: 1,
                    control: true,
                    limits: Default::default(),
                },
                VariantSpec {
                    name: "tight".into(),
                    weight: 1,
                    control: false,
                    limits: [("month_weighted_tokens".to_owned(), 2_000_000.0)].into(),
                },
            ],
        },
    )
    .await
    .expect("experiment created");

    let options = Options {
        seed: 22,
        accounts: simulate::minimum_accounts(),
        days: 3,
        url: app.url(""),
        token: None,
        truth: dir.path().join("truth.jsonl"),
        check: false,
        min_precision: 0.0,
        min_recall: 0.0,
        summary: false,
        old_history: simulate::OLD_ACCOUNT_EVENTS_ACCEPTED,
        settle_timeout: Duration::from_secs(240),
        progress: false,
    };
    let env = meterline::cmd::simulate::env(&config).await.unwrap();
    let outcome = simulate::run(&env, &options)
        .await
        .expect("simulation runs");
    assert_eq!(outcome.rejected, 0);

    // The simulated account with the best deal score that has raised a signal.
    let (account, signals): (String, i64) = wait_for(
        "a scored account with signals",
        Duration::from_secs(180),
        || async {
            let row: Option<(String, i64)> = sqlx::query_as(
                "SELECT s.account_id, (SELECT count(*) FROM account_signals g WHERE g.account_id = s.account_id) AS n \
                 FROM account_scores s JOIN accounts a USING (account_id) \
                 WHERE EXISTS (SELECT 1 FROM account_signals g WHERE g.account_id = s.account_id) \
                   AND a.signed_up_at IS NOT NULL \
                 ORDER BY s.deal_readiness DESC, s.account_id LIMIT 1",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            row.ok_or("none yet")
        },
    )
    .await;
    let dead: i64 = wait_for("a dead Slack notification", Duration::from_secs(180), || async {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM notifications WHERE status = 'dead' AND destination LIKE 'slack:%' ORDER BY id LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        id.ok_or("none yet")
    })
    .await;

    let (reviewer_name, reviewer) = token(&app, "reviewer", &[Scope::Review]).await;
    let (_, admin) = token(&app, "admin", &[Scope::Admin]).await;
    let (_driver, c) = browser().await;

    // Sign in.
    c.goto(&app.url("/console/login")).await.unwrap();
    screenshot(&c, "01-sign-in").await;
    axe(&c, &axe_js, "sign-in").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&reviewer)
        .await
        .unwrap();
    click_through(&c, Locator::Css("#sign-in")).await;
    assert_eq!(path_of(&c).await, "/console");
    assert!(text(&c, ".who").await.contains(&reviewer_name));
    screenshot(&c, "02-overview").await;
    axe(&c, &axe_js, "overview").await;

    // Find the simulated account by search, and see its scores, chart and signals.
    c.find(Locator::Css("#q"))
        .await
        .unwrap()
        .send_keys(&account)
        .await
        .unwrap();
    click_through(&c, Locator::Css("form.search button")).await;
    assert_eq!(path_of(&c).await, format!("/console/accounts/{account}"));
    assert_eq!(text(&c, "#account-id").await, account);
    let scores = text(&c, "#scores").await;
    for name in ["Deal readiness", "PQL", "Abuse"] {
        assert!(scores.contains(name), "{name} missing from {scores}");
    }
    let bars = c
        .find_all(Locator::Css("#usage-chart rect.bar"))
        .await
        .unwrap();
    assert!(!bars.is_empty(), "the usage chart has no bars");
    let items = c.find_all(Locator::Css("#signals > li")).await.unwrap();
    assert_eq!(
        items.len() as i64,
        signals.min(100),
        "one timeline entry per signal"
    );
    screenshot(&c, "03-account").await;
    axe(&c, &axe_js, "account").await;

    // The lists.
    c.goto(&app.url("/console/lists/deal-ready")).await.unwrap();
    assert!(c.find(Locator::Css("#list")).await.is_ok());
    screenshot(&c, "04-list-deal-ready").await;
    axe(&c, &axe_js, "list").await;

    // Confirm a flagged account (a free one in review if the population has one, else the
    // free account with the highest abuse score), see its quota check turn to deny, clear it.
    let flagged: String = sqlx::query_scalar(
        "SELECT a.account_id FROM accounts a LEFT JOIN account_scores s USING (account_id) \
         WHERE a.plan = 'free' AND (a.review_state IS NULL OR a.review_state IN ('suspected', 'cleared')) \
         ORDER BY (a.review_state = 'suspected') DESC NULLS LAST, s.abuse DESC NULLS LAST, a.account_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_ne!(
        decision(&app, &admin, &flagged).await,
        "deny",
        "{flagged} denied already"
    );
    // The queue shows the evidence: every account whose scores hold shared keys has its
    // table of distinct networks, every one with fingerprint matches its linked accounts.
    let (sharing, linked): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE jsonb_path_exists(scores, '$.shared_keys[*]')), \
                count(*) FILTER (WHERE jsonb_path_exists(scores, '$.multi_accounts[*]')) FROM account_scores",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        sharing > 0 && linked > 0,
        "the population shares keys and links accounts"
    );
    c.goto(&app.url("/console/review")).await.unwrap();
    let key_tables = c
        .find_all(Locator::XPath("//table[caption='Shared keys']"))
        .await
        .unwrap();
    assert_eq!(key_tables.len() as i64, sharing);
    let link_tables = c
        .find_all(Locator::XPath("//table[caption='Linked accounts']"))
        .await
        .unwrap();
    assert_eq!(link_tables.len() as i64, linked);
    screenshot(&c, "05-review-queue").await;
    axe(&c, &axe_js, "review queue").await;
    c.goto(&app.url(&format!("/console/review/{flagged}")))
        .await
        .unwrap();
    c.find(Locator::Css("#confirm-reason"))
        .await
        .unwrap()
        .send_keys("shared key across a campus; confirmed in the browser test")
        .await
        .unwrap();
    click_through(&c, Locator::Css("#confirm")).await;
    assert!(text(&c, "#done").await.starts_with("Confirmed"));
    wait_for(
        "the quota check to deny",
        Duration::from_secs(30),
        || async { check(decision(&app, &admin, &flagged).await, |d| d == "deny") },
    )
    .await;
    c.refresh().await.unwrap();
    assert_eq!(text(&c, "#review-state").await, "confirmed");
    screenshot(&c, "06-review-confirmed").await;
    axe(&c, &axe_js, "review account").await;
    c.find(Locator::Css("#clear-reason"))
        .await
        .unwrap()
        .send_keys("false positive after a call")
        .await
        .unwrap();
    click_through(&c, Locator::Css("#clear")).await;
    assert!(text(&c, "#done").await.starts_with("Cleared"));
    wait_for(
        "the quota check to allow again",
        Duration::from_secs(30),
        || async { check(decision(&app, &admin, &flagged).await, |d| d != "deny") },
    )
    .await;

    // Retry a dead notification: Slack is back, the retried alert is sent, with its link.
    standin.set(|s| s.slack_down = None);
    c.goto(&app.url("/console/notifications?status=dead"))
        .await
        .unwrap();
    screenshot(&c, "07-notifications-dead").await;
    axe(&c, &axe_js, "notifications").await;
    click_through(&c, Locator::Css(&format!("#retry-{dead}"))).await;
    assert_eq!(
        text(&c, "#done").await,
        format!("Notification {dead} queued again.")
    );
    wait_for(
        "the retried notification sent",
        Duration::from_secs(30),
        || async {
            let s: String = sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1")
                .bind(dead)
                .fetch_one(&pool)
                .await
                .unwrap();
            check(s, |s| s == "sent")
        },
    )
    .await;
    let posts = standin.slack_posts();
    assert!(
        posts.iter().any(|p| p.status == 200
            && p.body
                .to_string()
                .contains(&format!("{}/accounts/", config.console.base_url))),
        "no delivered Slack message links to the console: {posts:#?}"
    );

    // The experiment report with its chart.
    c.goto(&app.url("/console/experiments")).await.unwrap();
    click_through(&c, Locator::LinkText("tight-free")).await;
    assert_eq!(text(&c, "#experiment-name").await, "tight-free");
    let variants = c
        .find_all(Locator::Css("#variants tbody tr"))
        .await
        .unwrap();
    assert_eq!(variants.len(), 2);
    let lines = c
        .find_all(Locator::Css("#conversion-chart polyline.curve"))
        .await
        .unwrap();
    assert_eq!(lines.len(), 2, "one line per variant");
    screenshot(&c, "08-experiment").await;
    axe(&c, &axe_js, "experiment").await;

    // The growth report of the simulated population, as `meterline report growth` prints it.
    click_through(&c, Locator::LinkText("Growth")).await;
    let report = text(&c, "#growth-report").await;
    assert!(report.starts_with("growth report: "), "{report}");
    assert!(report.contains("limit hit → conversion"), "{report}");
    screenshot(&c, "08b-growth").await;
    axe(&c, &axe_js, "growth").await;

    // Pipeline health: the aggregator's lag on each partition of both topics, and a record it
    // cannot decode counted in the dead-letter topic.
    let producer: rdkafka::producer::FutureProducer =
        meterline_infra::kafka::client_config(&config.kafka)
            .set("acks", "all")
            .create()
            .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&config.kafka.usage_topic)
                .key("poison")
                .payload(&b"not an avro record"[..]),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("poison produced");
    wait_for(
        "the poison record dead-lettered",
        Duration::from_secs(30),
        || async {
            c.goto(&app.url("/console/health")).await.unwrap();
            check(text(&c, "#health").await, |h| {
                h.contains("Dead-lettered records 1")
            })
        },
    )
    .await;
    let rows = c.find_all(Locator::Css("#lag tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2 * config.kafka.partitions as usize);
    screenshot(&c, "09-health").await;
    axe(&c, &axe_js, "health").await;

    // The audit trail: the decisions and the retry, with who and why.
    click_through(&c, Locator::LinkText("Audit")).await;
    let trail = text(&c, "#audit").await;
    for needle in [
        format!("{reviewer_name} review_confirm {flagged}"),
        format!("{reviewer_name} review_clear {flagged}"),
        "false positive after a call done".to_owned(),
        format!("{reviewer_name} notification_retry"),
    ] {
        assert!(trail.contains(&needle), "{needle} missing from {trail}");
    }
    screenshot(&c, "09b-audit").await;
    axe(&c, &axe_js, "audit").await;

    // Sign out: the console sends to sign-in again.
    click_through(&c, Locator::Css("#sign-out")).await;
    assert_eq!(path_of(&c).await, "/console/login");
    c.goto(&app.url("/console")).await.unwrap();
    assert_eq!(path_of(&c).await, "/console/login");
    screenshot(&c, "10-signed-out").await;
    c.close().await.unwrap();
}
