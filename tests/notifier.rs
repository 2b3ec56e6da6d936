//! The notifier on the real servers (Kafka, PostgreSQL, ClickHouse), with local HTTP servers
//! standing in for Slack and HubSpot that check the exact requests their public APIs document.
//! Signals are put on the account-signals topic as the scorer writes them (Avro, Confluent
//! framing), except in the end-to-end test, where real traffic makes the scorer raise them.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use common::signals::{encode_signals as encode, publish_signal_records as publish};
use common::standin::{Recorded, StandIn, HUBSPOT_TOKEN};
use common::*;
use meterline::services::{self, Components, Running};
use meterline::Config;
use meterline_ingest::Scope;
use meterline_schemas::{avro, AccountSignal, SignalKind};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SLACK_DEALS: &str = "/services/T0001/B0001/enterprise0000000000";
const SLACK_SALES: &str = "/services/T0001/B0002/sales00000000000000";
const SLACK_TNS: &str = "/services/T0001/B0003/trust000000000000000";

fn config(standin: &StandIn, data_dir: &std::path::Path) -> Config {
    let id = unique_suffix();
    let mut c = isolated_config(&id);
    let n = &mut c.notifier;
    n.group_id = format!("mlt-{id}-notifier");
    n.data_dir = data_dir.display().to_string();
    n.poll_interval_ms = 100;
    n.lease_ms = 1_500;
    n.backoff_base_ms = 50;
    n.backoff_max_ms = 200;
    n.max_attempts = 3;
    n.request_timeout_ms = 2_000;
    n.slack.base_url = standin.url();
    for (channel, path) in [
        ("enterprise_inbound", SLACK_DEALS),
        ("sales_assist", SLACK_SALES),
        ("trust_and_safety", SLACK_TNS),
    ] {
        n.slack.webhooks.insert(
            channel.into(),
            meterline_notifier::config::Secret::new(path),
        );
    }
    n.hubspot.base_url = standin.url();
    n.hubspot.token = meterline_notifier::config::Secret::new(HUBSPOT_TOKEN);
    c.http.notifier_listen = format!("127.0.0.1:{}", free_port());
    c
}

async fn start(c: &Config, which: Components) -> Running {
    services::start(c, which, None, CancellationToken::new())
        .await
        .expect("components start")
}

/// A child process gets the test's configuration, every key of it (the credentials too, and
/// keys no hand-kept list of variables named), and no `METERLINE_` variable of the test's own
/// environment can change it: written, read back as the child reads it, it is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_process_gets_exactly_the_tests_configuration() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&standin, dir.path());
    // Every section away from its default, with floats, maps and lists among the changes.
    c.notifier.request_timeout_ms = 1_234;
    c.kafka
        .properties
        .insert("client.id".into(), "round-trip".into());
    c.schema_registry.url = "http://127.0.0.1:1".into();
    c.quota.input_weight = 0.875;
    c.quota.model_weights.insert("tiny-model".into(), 0.125);
    c.tiers.free.weight_multiplier = 0.75;
    c.tiers.free.allowed_models.push("tiny-model".into());
    c.scorer.interval_ms = 321;
    c.ingest.max_events = 77;
    c.aggregator.instance_id = "aggregator-7".into();
    c.accounts.public_domains.push("campus.example".into());
    c.review.rescore_margin = 25;
    c.console.base_url = "https://console.example.com/console".into();
    let defaults = config_table(&Config::default());
    let ours = config_table(&c);
    let unchanged: Vec<&String> = defaults
        .keys()
        .filter(|k| defaults[*k] == ours[*k])
        .collect();
    assert!(
        unchanged.is_empty(),
        "sections left at their defaults: {unchanged:?}"
    );

    let file = ConfigFile::write(&c);
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(
        text.contains(HUBSPOT_TOKEN) && text.contains(SLACK_DEALS),
        "the credentials themselves, not their redacted form: {text}"
    );
    let cmd = file.command();
    let passed: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, _)| k.to_str())
        .filter(|k| k.starts_with("METERLINE_") && *k != "METERLINE_LOG_FORMAT")
        .map(str::to_owned)
        .collect();
    assert!(
        passed.is_empty(),
        "variables that would override the file: {passed:?}"
    );
    let child = file.load_as_child(&cmd);
    let (child, ours) = (config_table(&child), config_table(&c));
    let differing: Vec<String> = ours
        .keys()
        .chain(child.keys())
        .filter(|k| ours.get(*k) != child.get(*k))
        .map(|k| format!("{k}: test {:?}, child {:?}", ours.get(k), child.get(k)))
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
}

#[allow(clippy::too_many_arguments)]
fn signal(
    account: &str,
    kind: SignalKind,
    episode: &str,
    at: DateTime<Utc>,
    plan: &str,
    deal: i32,
    abuse: i32,
    reasons: &[&str],
    evidence: Value,
) -> AccountSignal {
    AccountSignal {
        signal_id: format!("{account}:{kind}:{episode}"),
        kind,
        account_id: account.into(),
        episode: episode.into(),
        raised_at: at.timestamp_micros(),
        plan: plan.into(),
        deal_readiness: deal,
        pql: 0,
        abuse,
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        evidence: evidence.to_string(),
    }
}

fn deal_signal(account: &str, score: i32, at: DateTime<Utc>) -> AccountSignal {
    signal(
        account,
        SignalKind::DealReady,
        &format!("{}:{score}", at.format("%Y%m")),
        at,
        "free",
        score,
        0,
        &[
            "monthly_tokens (+30): 61234567 tokens this month (over 50000000)",
            "regions (+20): 3 regions (over 2)",
            "team_size (+15): 25 people (over 20)",
            "company_size (+10): 500 employees (over 100)",
        ],
        json!({"inputs": {"monthly_tokens": 61_234_567u64, "regions": ["ap-south-1", "eu-west-1", "us-east-1"], "team_size": 25, "company_size": 500}}),
    )
}

/// `record` (from [`encode`]) with its kind replaced by `kind`, one no signal type can hold:
/// what a newer scorer with a kind of signal this notifier does not know would write.
fn with_kind(record: &[u8], kind: &str) -> Vec<u8> {
    use apache_avro::types::Value as Avro;
    let schema = avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).unwrap();
    let (id, mut body) = avro::split_frame(record).unwrap();
    let mut value = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
    let Avro::Record(fields) = &mut value else {
        panic!("not a record")
    };
    for (name, v) in fields.iter_mut() {
        if name == "kind" {
            *v = Avro::String(kind.into());
        }
    }
    let mut out = vec![avro::MAGIC];
    out.extend(id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
    out
}

async fn add_account(pool: &sqlx::PgPool, account: &str, plan: &str, seats: i64, domain: &str) {
    sqlx::query(
        "INSERT INTO accounts (account_id, plan, seats, email_domain, company_size) VALUES ($1, $2, $3, $4, 500)",
    )
    .bind(account)
    .bind(plan)
    .bind(seats)
    .bind(domain)
    .execute(pool)
    .await
    .unwrap();
}

async fn statuses(pool: &sqlx::PgPool, account: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT destination, status FROM notifications WHERE account_id = $1 ORDER BY id",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A sentinel signal: a key-sharing alert about an account of its own, put on the topic
/// behind the records under test, with their key (so in their partition, read after them).
/// Once its alert is sent and nothing else is waiting in the outbox, the notifier has decided on
/// every record before it and sent all it is going to: what has not happened by then will not.
struct Sentinel {
    account: String,
}

impl Sentinel {
    async fn publish(c: &Config, pool: &sqlx::PgPool, key: &str) -> Sentinel {
        let account = format!("sentinel-{}", unique_suffix());
        add_account(pool, &account, "free", 1, "sentinel.example").await;
        let s = signal(
            &account,
            SignalKind::KeySharing,
            "sentinel",
            Utc::now(),
            "free",
            0,
            60,
            &["the sentinel"],
            json!({}),
        );
        publish(c, &encode(c, &[s]).await, key).await;
        Sentinel { account }
    }

    /// Waits until the sentinel's notification is sent and every notification is settled
    /// (sent, dead, unconfirmed or skipped: none pending or being sent).
    async fn wait_sent(&self, pool: &sqlx::PgPool) {
        wait_for(
            "the sentinel sent and the outbox settled",
            Duration::from_secs(30),
            || async {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT account_id, destination, status FROM notifications ORDER BY id",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                check(rows, |rows| {
                    rows.iter()
                        .any(|(a, _, s)| *a == self.account && s == "sent")
                        && rows.iter().all(|(_, _, s)| {
                            ["sent", "dead", "unconfirmed", "skipped"].contains(&s.as_str())
                        })
                })
            },
        )
        .await;
    }

    /// The requests that are not the sentinel's alert.
    fn others(&self, requests: &[Recorded]) -> Vec<Recorded> {
        requests
            .iter()
            .filter(|r| !r.body.to_string().contains(&self.account))
            .cloned()
            .collect()
    }
}

/// A stand-in, an isolated configuration (adjusted by `tweak`), migrated, and one free account
/// with 5 seats and the email domain `<prefix>.example`.
struct Fixture {
    standin: StandIn,
    _dir: tempfile::TempDir,
    c: Config,
    pool: sqlx::PgPool,
    acct: String,
}

async fn fixture(prefix: &str, tweak: impl FnOnce(&mut Config)) -> Fixture {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&standin, dir.path());
    tweak(&mut c);
    prepare(&c).await;
    let pool = meterline::migrate::connect_postgres(&c).await.unwrap();
    let acct = format!("{prefix}-{}", unique_suffix());
    add_account(&pool, &acct, "free", 5, &format!("{prefix}.example")).await;
    Fixture {
        standin,
        _dir: dir,
        c,
        pool,
        acct,
    }
}

impl Fixture {
    /// Puts a deal-ready signal for the fixture's account on the topic.
    async fn publish_deal(&self, score: i32) {
        let records = encode(&self.c, &[deal_signal(&self.acct, score, Utc::now())]).await;
        publish(&self.c, &records, &self.acct).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_hubspot_get_exactly_the_documented_requests_once() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(&standin, dir.path());
    prepare(&c).await;
    let pool = meterline::migrate::connect_postgres(&c).await.unwrap();
    let acct = format!("acme-{}", unique_suffix());
    add_account(&pool, &acct, "free", 5, "acme.example").await;
    let tns = format!("sharer-{}", unique_suffix());
    add_account(&pool, &tns, "free", 1, "sharer.example").await;

    let t0 = Utc::now() - ChronoDuration::minutes(30);
    let first = deal_signal(&acct, 75, t0);
    let key_sharing = signal(
        &tns,
        SignalKind::KeySharing,
        "k1:20261122",
        t0,
        "free",
        0,
        60,
        &["API key k1 used from 7 client IPs within the minute of 2026-11-22T10:00:00Z"],
        json!({"key": {"api_key_id": "k1", "distinct_ips": 7}}),
    );
    let mut records = encode(&c, &[first.clone(), key_sharing]).await;
    // The same signal three times (a replay), a signal of a kind this notifier does not know
    // (it has no route: not rejected, nothing queued), and a record that is not Avro at all.
    records.push(records[0].clone());
    records.push(records[0].clone());
    // (Read as the deal_ready signal it was written as, it would be sent: a rise of 20.)
    let unknown = signal(
        &acct,
        SignalKind::DealReady,
        "churn",
        t0 + ChronoDuration::minutes(1),
        "free",
        95,
        0,
        &[],
        json!({}),
    );
    let unknown_kind = with_kind(
        &encode(&c, std::slice::from_ref(&unknown)).await[0],
        "churn_risk",
    );
    records.push(unknown_kind);
    records.push(b"not an avro record".to_vec());
    publish(&c, &records, &acct).await;

    let running = start(&c, Components::none().notifier()).await;
    standin
        .wait_until(
            Duration::from_secs(20),
            "the deal alert, the deal and the T&S alert",
            |s| {
                s.slack_posts().len() == 2
                    && s.hubspot_requests()
                        .iter()
                        .any(|r| r.path.contains("/associations/"))
            },
        )
        .await;

    // Slack: one Block Kit message per channel, to the channel's webhook, as JSON.
    let posts = standin.slack_posts();
    let deal_post = posts
        .iter()
        .find(|p| p.path == SLACK_DEALS)
        .expect("deal alert");
    assert_eq!(deal_post.method, "POST");
    assert_eq!(deal_post.content_type.as_deref(), Some("application/json"));
    let body = &deal_post.body;
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["blocks", "text"]);
    let types: Vec<&str> = body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["header", "section", "section", "section", "section", "actions", "context"]
    );
    // The account's page in the web console (`console.base_url`).
    assert_eq!(
        body["blocks"][5]["elements"][0]["url"],
        format!("http://127.0.0.1:8080/console/accounts/{acct}")
    );
    assert_eq!(body["blocks"][0]["text"]["type"], "plain_text");
    assert_eq!(
        body["blocks"][0]["text"]["text"],
        format!("Deal ready: {acct}")
    );
    let text = body.to_string();
    for needle in [
        "*Plan*\\nfree",
        "*Deal readiness*\\n75/100",
        "*Recommended*\\nEnterprise: from $2,000",
        "monthly_tokens (+30)",
        "*Last 30 days*",
        "Running across 3 regions with 61.2M+ monthly tokens: Enterprise includes multi-cloud routing.",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    let tns_post = posts
        .iter()
        .find(|p| p.path == SLACK_TNS)
        .expect("T&S alert");
    assert!(tns_post.body.to_string().contains("*Abuse score*\\n60/100"));
    assert!(!tns_post.body.to_string().contains("Recommended"));

    // HubSpot: company search, company create, deal search, deal create, association; each
    // with the private-app bearer token and a JSON body.
    let hs = standin.hubspot_requests();
    let calls: Vec<(String, String)> = hs
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let deal_id = standin.deals()[0].0.clone();
    let company_id = standin.state.lock().unwrap().companies[0].0.clone();
    assert_eq!(
        calls,
        [
            ("POST", "/crm/v3/objects/companies/search".to_owned()),
            ("POST", "/crm/v3/objects/companies".to_owned()),
            ("POST", "/crm/v3/objects/deals/search".to_owned()),
            ("POST", "/crm/v3/objects/deals".to_owned()),
            (
                "PUT",
                format!(
                    "/crm/v4/objects/deals/{deal_id}/associations/default/companies/{company_id}"
                )
            ),
        ]
        .map(|(m, p)| (m.to_owned(), p))
    );
    for r in &hs {
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Bearer {HUBSPOT_TOKEN}"))
        );
    }
    for r in hs.iter().filter(|r| r.method != "PUT") {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json"),
            "{} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(
        hs[0].body,
        json!({"filterGroups": [{"filters": [{"propertyName": "domain", "operator": "EQ", "value": "acme.example"}]}], "properties": ["domain", "name"], "limit": 1})
    );
    assert_eq!(
        hs[1].body,
        json!({"properties": {"domain": "acme.example", "name": "acme.example"}})
    );
    assert_eq!(
        hs[2].body,
        json!({"filterGroups": [{"filters": [
            {"propertyName": "meterline_account_id", "operator": "EQ", "value": acct},
            {"propertyName": "hs_is_closed", "operator": "EQ", "value": "false"}
        ]}], "properties": ["dealname", "dealstage", "meterline_account_id"], "limit": 1})
    );
    let created = hs[3].body["properties"].as_object().unwrap();
    assert_eq!(
        created["dealname"],
        format!("acme.example — Enterprise ({acct})")
    );
    assert_eq!(created["pipeline"], "default");
    assert_eq!(created["dealstage"], "appointmentscheduled");
    assert_eq!(created["amount"], "24000");
    assert_eq!(created["meterline_account_id"], acct.as_str());
    assert_eq!(created["meterline_deal_readiness"], "75");
    assert!(created["description"]
        .as_str()
        .unwrap()
        .starts_with("Deal readiness 75/100"));
    assert!(
        created["description"].as_str().unwrap().contains(&format!(
            "Console: http://127.0.0.1:8080/console/accounts/{acct}"
        )),
        "{created:?}"
    );
    assert_eq!(
        hs[4].body,
        Value::Null,
        "the default association takes no body"
    );

    // The undecodable record (the last one on the topic) is kept with its reason, not dropped.
    let rejected = wait_for("the rejected record", Duration::from_secs(20), || async {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT reason FROM notifier_rejected_signals")
            .fetch_all(&pool)
            .await
            .unwrap();
        check(rows, |r| !r.is_empty())
    })
    .await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].0.contains("magic"), "{rejected:?}");
    let (queued,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM notifications WHERE signal_id = $1")
            .bind(&unknown.signal_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, 0, "a signal of an unknown kind has no route");

    // A rise of 10 inside the cooldown is held; a rise of 20 sends again and updates the deal.
    let held = deal_signal(&acct, 85, t0 + ChronoDuration::minutes(5));
    let risen = deal_signal(&acct, 95, t0 + ChronoDuration::minutes(10));
    publish(&c, &encode(&c, &[held, risen]).await, &acct).await;
    standin
        .wait_until(Duration::from_secs(20), "the deal update", |s| {
            s.hubspot_requests().iter().any(|r| r.method == "PATCH")
        })
        .await;
    standin
        .wait_until(Duration::from_secs(10), "the second deal alert", |s| {
            s.slack_posts()
                .iter()
                .filter(|p| p.path == SLACK_DEALS)
                .count()
                == 2
        })
        .await;
    let patch = standin
        .hubspot_requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(patch.path, format!("/crm/v3/objects/deals/{deal_id}"));
    assert_eq!(patch.body["properties"]["meterline_deal_readiness"], "95");
    assert!(patch.body["properties"]["description"]
        .as_str()
        .unwrap()
        .starts_with("Deal readiness 95/100"));
    assert_eq!(patch.content_type.as_deref(), Some("application/json"));
    assert_eq!(patch.body["properties"].as_object().unwrap().len(), 2);
    let second = standin
        .slack_posts()
        .into_iter()
        .filter(|p| p.path == SLACK_DEALS)
        .nth(1)
        .unwrap();
    assert!(second
        .body
        .to_string()
        .contains("*Deal readiness*\\n95/100"));

    // Then: one deal, two deal alerts (75 and 95), one T&S alert, nothing else.
    let sentinel = Sentinel::publish(&c, &pool, &acct).await;
    sentinel.wait_sent(&pool).await;
    assert_eq!(standin.deal_creates().len(), 1);
    assert_eq!(standin.deals().len(), 1);
    assert_eq!(sentinel.others(&standin.slack_posts()).len(), 3);
    assert_eq!(
        statuses(&pool, &acct).await,
        [
            ("slack:enterprise_inbound", "sent"),
            ("hubspot", "sent"),
            ("slack:enterprise_inbound", "sent"),
            ("hubspot", "sent"),
        ]
        .map(|(d, s)| (d.to_owned(), s.to_owned()))
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_rate_limit_is_waited_out_then_one_deal_is_made() {
    let f = fixture("busy", |_| {}).await;
    let (standin, c, pool, acct) = (&f.standin, &f.c, f.pool.clone(), &f.acct);
    standin.set(|s| s.hubspot_faults.push_back((429, Some(2))));
    f.publish_deal(75).await;
    let running = start(c, Components::none().notifier()).await;
    standin
        .wait_until(Duration::from_secs(20), "the deal", |s| {
            s.deal_creates().len() == 1
        })
        .await;
    let hs = standin.hubspot_requests();
    assert_eq!(hs[0].status, 429);
    assert!(
        hs[1].at.duration_since(hs[0].at) >= Duration::from_secs(2),
        "retried {:?} after the 429 that asked for 2 s",
        hs[1].at.duration_since(hs[0].at)
    );
    // The outcome is recorded just after the send: wait for it.
    let (attempts,) = wait_for("the deal recorded as sent", Duration::from_secs(20), || async {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT attempts FROM notifications WHERE account_id = $1 AND destination = 'hubspot' AND status = 'sent'",
        )
        .bind(acct)
        .fetch_optional(&pool)
        .await
        .unwrap();
        row.ok_or(statuses(&pool, acct).await)
    })
    .await;
    assert_eq!(standin.deals().len(), 1);
    assert_eq!(attempts, 1, "a 429 is pacing, not a failed attempt");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_failing_until_attempts_run_out_is_dead_lettered_then_retried() {
    let f = fixture("down", |_| {}).await;
    let (standin, c, pool, acct) = (&f.standin, &f.c, f.pool.clone(), &f.acct);
    standin.set(|s| s.hubspot_down = Some(500));
    f.publish_deal(75).await;
    let running = start(c, Components::none().notifier()).await;

    let (_, attempts, error) = wait_for("the deal dead-lettered", Duration::from_secs(20), || async {
        let dead: Option<(i64, i32, Option<String>)> = sqlx::query_as(
            "SELECT id, attempts, last_error FROM notifications WHERE account_id = $1 AND status = 'dead'",
        )
        .bind(acct)
        .fetch_optional(&pool)
        .await
        .unwrap();
        dead.ok_or(statuses(&pool, acct).await)
    })
    .await;
    assert_eq!(attempts, 3);
    assert!(error.as_deref().unwrap().contains("HTTP 500"), "{error:?}");
    let tries = standin.hubspot_requests().len();
    assert_eq!(tries, 3, "one request per attempt (the first call fails)");

    // A person lists it and retries it with the CLI once HubSpot is back.
    let config_file = ConfigFile::write(c);
    let list = config_file
        .command()
        .args(["notifications", "list", "--status", "dead"])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        table.contains(acct.as_str()) && table.contains("hubspot") && table.contains("HTTP 500"),
        "{table}"
    );
    assert!(!table.contains(HUBSPOT_TOKEN), "credentials never printed");
    standin.set(|s| s.hubspot_down = None);
    let retry = config_file
        .command()
        .args(["notifications", "retry", "--all-dead"])
        .output()
        .unwrap();
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(String::from_utf8_lossy(&retry.stdout).starts_with("1 notification(s) queued again"));
    standin
        .wait_until(Duration::from_secs(20), "the deal after the retry", |s| {
            s.deal_creates().len() == 1
        })
        .await;
    let sentinel = Sentinel::publish(c, &pool, acct).await;
    sentinel.wait_sent(&pool).await;
    assert_eq!(standin.deals().len(), 1);
    assert_eq!(standin.deal_creates().len(), 1);
    running.stop().await.unwrap();
}

struct Notifier {
    child: Child,
    _config: ConfigFile,
}

impl Notifier {
    fn spawn(c: &Config, failpoint: bool) -> Notifier {
        let file = ConfigFile::write(c);
        let mut cmd = file.command();
        cmd.arg("notify")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if failpoint {
            cmd.env("METERLINE_FAILPOINT", "notifier-after-send");
        }
        Notifier {
            child: cmd.spawn().unwrap(),
            _config: file,
        }
    }

    /// Waits for the process to abort at the failpoint; anything else is a failure, with the
    /// process's own words.
    async fn wait_abort(&mut self, timeout: Duration) {
        let child = &mut self.child;
        wait_for("the notifier to reach the failpoint", timeout, || {
            let ended = child.try_wait().unwrap().ok_or("still running");
            async move { ended }
        })
        .await;
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            err.contains("failpoint notifier-after-send: aborting"),
            "the notifier ended otherwise: {err}"
        );
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_send_and_bookkeeping_still_one_deal_and_one_message() {
    let f = fixture("crash", |_| {}).await;
    let (standin, c, pool, acct) = (&f.standin, &f.c, f.pool.clone(), &f.acct);
    f.publish_deal(75).await;

    // Each run dies right after its first successful send, before recording it; then a clean
    // run finishes the work.
    for run in 1..=2 {
        let mut n = Notifier::spawn(c, true);
        n.wait_abort(Duration::from_secs(30)).await;
        let sent = standin.slack_posts().len() + standin.deal_creates().len();
        assert!(sent >= 1, "run {run} died without sending");
    }
    let _clean = Notifier::spawn(c, false);
    wait_for(
        "both notifications settled",
        Duration::from_secs(30),
        || async {
            let s = statuses(&pool, acct).await;
            check(s, |s| {
                s.len() == 2 && s.iter().all(|(_, st)| st == "sent" || st == "unconfirmed")
            })
        },
    )
    .await;
    let sentinel = Sentinel::publish(c, &pool, acct).await;
    sentinel.wait_sent(&pool).await;
    assert_eq!(
        sentinel.others(&standin.slack_posts()).len(),
        1,
        "exactly one Slack message"
    );
    assert_eq!(standin.deal_creates().len(), 1, "exactly one deal created");
    assert_eq!(standin.deals().len(), 1);
    // The HubSpot side is idempotent and finished; the Slack side, if its sender died, waits for
    // a person rather than risk a second message.
    let s = statuses(&pool, acct).await;
    assert!(
        s.contains(&("hubspot".to_owned(), "sent".to_owned())),
        "{s:?}"
    );

    // The restarted notifier still reads the topic: a risen score is delivered.
    f.publish_deal(95).await;
    standin
        .wait_until(
            Duration::from_secs(30),
            "the alert after the restart",
            |s| sentinel.others(&s.slack_posts()).len() == 2,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notice_per_seven_days_and_its_clicks_are_recorded() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(&standin, dir.path());
    let app = spawn_with(
        c.clone(),
        Components::none().ingest().aggregator().notifier(),
    )
    .await;
    let pool = app.pg().await;
    let read_token = services::token_store(&c, &pool)
        .create(&format!("dash-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    let now = Utc::now();
    let suggestion = |account: &str, kind: SignalKind, at: DateTime<Utc>| {
        signal(
            account,
            kind,
            &at.format("%Y%m%d%H%M").to_string(),
            at,
            "free",
            10,
            0,
            &["over the per-minute limit for 3 minutes"],
            json!({}),
        )
    };
    let close = format!("close-{}", unique_suffix());
    let apart = format!("apart-{}", unique_suffix());
    let base = now - ChronoDuration::days(8) - ChronoDuration::hours(1);
    let signals = [
        suggestion(
            &close,
            SignalKind::RateLimitSustained,
            now - ChronoDuration::days(1) - ChronoDuration::hours(1),
        ),
        suggestion(
            &close,
            SignalKind::PowerUser,
            now - ChronoDuration::hours(1),
        ),
        suggestion(&apart, SignalKind::RateLimitSustained, base),
        suggestion(
            &apart,
            SignalKind::PowerUser,
            base + ChronoDuration::days(8),
        ),
    ];
    publish(&c, &encode(&c, &signals).await, "k").await;
    // A sentinel suggestion behind them in their partition: once its notice is written, the
    // notifier has decided on all four.
    let sentinel = format!("sentinel-{}", unique_suffix());
    let after = [suggestion(&sentinel, SignalKind::PowerUser, now)];
    publish(&c, &encode(&c, &after).await, "k").await;

    let count = |account: String| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM dashboard_notices WHERE account_id = $1")
                    .bind(account)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n
        }
    };
    wait_for("the sentinel's notice", Duration::from_secs(20), || async {
        check(count(sentinel.clone()).await, |n| *n == 1)
    })
    .await;
    assert_eq!(
        count(close.clone()).await,
        1,
        "two suggestions a day apart: one notice"
    );
    assert_eq!(
        count(apart.clone()).await,
        2,
        "eight days apart: two notices"
    );

    // The dashboard reads the current notice, records it shown, then clicked.
    let http = reqwest::Client::new();
    let get = |account: &str| {
        http.get(app.url(&format!("/v1/accounts/{account}/notice")))
            .bearer_auth(&read_token)
            .send()
    };
    let notice: Value = get(&apart).await.unwrap().json().await.unwrap();
    assert_eq!(notice["kind"], "power_user");
    assert_eq!(notice["plan"], "pro");
    assert_eq!(notice["upgrade_url"], c.notifier.offers.pro.upgrade_url);
    assert!(
        notice["message"]
            .as_str()
            .unwrap()
            .contains("Pro gives you"),
        "{notice}"
    );
    let notice_id = notice["notice_id"].as_str().unwrap().to_owned();
    let close_notice: Value = get(&close).await.unwrap().json().await.unwrap();
    assert_eq!(
        close_notice["kind"], "rate_limit_sustained",
        "the first one stands"
    );
    let nobody: Value = get("nobody").await.unwrap().json().await.unwrap();
    assert_eq!(nobody, Value::Null);

    for what in ["shown", "clicked"] {
        let resp = http
            .post(app.url(&format!("/v1/accounts/{apart}/notices/{notice_id}/{what}")))
            .bearer_auth(&read_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], format!("notice_{what}"));
    }
    let resp = http
        .post(app.url(&format!("/v1/accounts/{close}/notices/{notice_id}/clicked")))
        .bearer_auth(&read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a notice of another account");
    let resp = http
        .post(app.url(&format!("/v1/accounts/{apart}/notices/not-a-uuid/clicked")))
        .bearer_auth(&read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("notice_id"));
    // Clicked: no longer current.
    assert_eq!(
        get(&apart).await.unwrap().json::<Value>().await.unwrap(),
        Value::Null
    );

    // Both events went through Kafka and the aggregator, naming the notice.
    let rows = wait_for(
        "the notice events applied",
        Duration::from_secs(20),
        || async {
            let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT type, payload FROM account_events WHERE account_id = $1 ORDER BY occurred_at",
        )
        .bind(&apart)
        .fetch_all(&pool)
        .await
        .unwrap();
            check(rows, |r| r.len() == 2)
        },
    )
    .await;
    assert_eq!(rows[0].0, "notice_shown");
    assert_eq!(rows[1].0, "notice_clicked");
    assert_eq!(rows[1].1["notice_id"], notice_id.as_str());
    let ch_ids: Vec<String> = app
        .clickhouse()
        .query("SELECT notice_id FROM account_events WHERE account_id = ? ORDER BY occurred_at")
        .bind(&apart)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ch_ids, [notice_id.clone(), notice_id]);
    // Notices are not sent anywhere: nothing reached Slack or HubSpot.
    assert!(standin.requests().is_empty());
}

/// The local default: no Slack webhook and no HubSpot token. Every message becomes a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_configured_messages_go_to_the_local_sink() {
    let f = fixture("local", |c| {
        c.notifier
            .slack
            .webhooks
            .values_mut()
            .for_each(|w| *w = Default::default());
        c.notifier.hubspot.token = Default::default();
    })
    .await;
    let (standin, c, acct) = (&f.standin, &f.c, &f.acct);
    let dir = std::path::PathBuf::from(&c.notifier.data_dir);
    f.publish_deal(75).await;
    let running = start(c, Components::none().notifier()).await;
    let files = wait_for(
        "two files in the local sink",
        Duration::from_secs(20),
        || async {
            let files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            check(files, |f| f.len() == 2)
        },
    )
    .await;
    let docs: Vec<Value> = files
        .iter()
        .map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    let slack = docs
        .iter()
        .find(|d| d["destination"] == "slack:enterprise_inbound")
        .unwrap();
    assert_eq!(
        slack["request"]["blocks"][0]["text"]["text"],
        format!("Deal ready: {acct}")
    );
    let deal = docs.iter().find(|d| d["destination"] == "hubspot").unwrap();
    assert_eq!(deal["request"]["account_id"], acct.as_str());
    assert_eq!(deal["request"]["score"], 75);
    assert!(standin.requests().is_empty(), "nothing left the machine");
    running.stop().await.unwrap();
}

async fn deal_score(pool: &sqlx::PgPool, account: &str) -> Option<i32> {
    sqlx::query_as::<_, (i32,)>("SELECT deal_readiness FROM account_scores WHERE account_id = $1")
        .bind(account)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|(s,)| s)
}

async fn wait_for_score(pool: &sqlx::PgPool, account: &str, want: i32) {
    wait_for(
        &format!("deal readiness {want} for {account}"),
        Duration::from_secs(60),
        || async { check(deal_score(pool, account).await, |got| *got == Some(want)) },
    )
    .await;
}

/// Real traffic through ingest, the aggregator and the scorer: the event that takes an account
/// over the deal-ready threshold reaches Slack and HubSpot within 10 seconds, once; crossing
/// again inside the cooldown sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_ready_crossing_reaches_slack_and_hubspot_within_ten_seconds_once() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&standin, dir.path());
    c.scorer.interval_ms = 200;
    // 60M tokens is also over the brief's escalation threshold, whose alert goes to the same
    // channel at any deal score (tests/notifier_scope.rs); this test is about the deal alert.
    c.notifier.routes.remove(&SignalKind::Escalation);
    let mut app = spawn_with(c.clone(), Components::all()).await;
    let pool = app.pg().await;
    let acct = format!("bigco-{}", unique_suffix());
    let now = Utc::now();
    let account_event = |kind: &str, extra: Value| {
        let mut e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": Utc::now().to_rfc3339(),
            "account_id": acct,
            "type": kind,
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let (status, body) = app
        .post_json(
            "/v1/account-events",
            &json!([account_event(
                "signup",
                json!({"email_domain": "bigco.example", "company_size": 500, "seats": 5})
            )]),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // 60M tokens this month from 25 people in two regions: 30 + 15 + 10 = 55, not deal-ready.
    let event = |i: usize, region: &str| {
        let mut e = usage_event(
            &acct,
            now - ChronoDuration::seconds(400 - (i as i64 % 400)),
            "gpt-4o",
            120_240,
            0,
        );
        e["region"] = json!(region);
        e["user_id"] = json!(format!("u{}", i % 25));
        e
    };
    let regions = ["us-east-1", "eu-west-1"];
    let events: Vec<Value> = (0..499).map(|i| event(i, regions[i % 2])).collect();
    for chunk in events.chunks(250) {
        let (status, body) = app.post_events(chunk).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_for_score(&pool, &acct, 55).await;
    assert!(standin.requests().is_empty());

    // The crossing event: a third region (+20 = 75).
    let crossed = Instant::now();
    let (status, body) = app.post_events(&[event(499, "ap-south-1")]).await;
    assert_eq!(status, 202, "{body}");
    standin
        .wait_until(
            Duration::from_secs(10),
            "the Slack deal alert and the HubSpot deal",
            |s| {
                s.slack_posts().iter().any(|p| p.path == SLACK_DEALS) && s.deal_creates().len() == 1
            },
        )
        .await;
    let latency = crossed.elapsed();
    assert!(latency <= Duration::from_secs(10), "took {latency:?}");
    let alert = standin
        .slack_posts()
        .into_iter()
        .find(|p| p.path == SLACK_DEALS)
        .unwrap();
    let text = alert.body.to_string();
    assert!(text.contains("*Deal readiness*\\n75/100"), "{text}");
    assert!(text.contains("3 regions"), "{text}");
    assert!(
        text.contains("60.1M tokens"),
        "the 30-day summary from ClickHouse: {text}"
    );

    // Down (company of 50: 65) and back over (75) within the cooldown: nothing more is sent.
    let (status, _) = app
        .post_json(
            "/v1/account-events",
            &json!([account_event(
                "seats_changed",
                json!({"seats": 5, "company_size": 50})
            )]),
        )
        .await;
    assert_eq!(status, 202);
    wait_for_score(&pool, &acct, 65).await;
    let (status, _) = app
        .post_json(
            "/v1/account-events",
            &json!([account_event(
                "seats_changed",
                json!({"seats": 5, "company_size": 500})
            )]),
        )
        .await;
    assert_eq!(status, 202);
    wait_for_score(&pool, &acct, 75).await;
    // Whatever that scoring raised is on the topic once a later scoring of the account is saved
    // (a pass raises its signals before the next pass starts): one more event that leaves
    // every score as it is brings one. Then a sentinel signal behind it in its partition.
    let (scored_at,): (DateTime<Utc>,) =
        sqlx::query_as("SELECT scored_at FROM account_scores WHERE account_id = $1")
            .bind(&acct)
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut unchanged = usage_event(&acct, Utc::now(), "gpt-4o", 1, 0);
    unchanged["region"] = json!("us-east-1");
    unchanged["user_id"] = json!("u0");
    let (status, body) = app.post_events(&[unchanged]).await;
    assert_eq!(status, 202, "{body}");
    wait_for("a later scoring", Duration::from_secs(30), || async {
        let (later, score): (bool, i32) = sqlx::query_as(
            "SELECT scored_at > $2, deal_readiness FROM account_scores WHERE account_id = $1",
        )
        .bind(&acct)
        .bind(scored_at)
        .fetch_one(&pool)
        .await
        .unwrap();
        check((later, score), |(later, _)| *later)
    })
    .await;
    assert_eq!(deal_score(&pool, &acct).await, Some(75));
    let sentinel = Sentinel::publish(&c, &pool, &acct).await;
    sentinel.wait_sent(&pool).await;
    assert_eq!(
        standin
            .slack_posts()
            .iter()
            .filter(|p| p.path == SLACK_DEALS)
            .count(),
        1,
        "one Slack deal alert"
    );
    assert_eq!(standin.deal_creates().len(), 1, "one HubSpot deal");
    assert!(
        !standin
            .hubspot_requests()
            .iter()
            .any(|r| r.method == "PATCH"),
        "and no update either"
    );
    app.stop().await;
}

/// PostgreSQL goes away while notifications wait in the outbox (Slack is failing, so they are
/// pending with retries): once both are back, each is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_with_pending_notifications_delivers_each_once() {
    let proxy = common::proxy::FaultProxy::start("127.0.0.1:5432").await;
    let through = proxy.addr.to_string();
    let f = fixture("pgdown", |c| {
        c.postgres.url = c.postgres.url.replace("127.0.0.1:5432", &through);
        c.notifier.max_attempts = 1_000;
    })
    .await;
    let (standin, c) = (&f.standin, &f.c);
    let others: Vec<String> = (0..2).map(|i| format!("{}-{i}", f.acct)).collect();
    for a in &others {
        add_account(&f.pool, a, "free", 5, &format!("{a}.example")).await;
    }
    standin.set(|s| s.slack_down = Some(503));
    let mut signals = vec![deal_signal(&f.acct, 75, Utc::now())];
    signals.extend(others.iter().map(|a| deal_signal(a, 75, Utc::now())));
    publish(c, &encode(c, &signals).await, &f.acct).await;
    let running = start(c, Components::none().notifier()).await;
    standin
        .wait_until(
            Duration::from_secs(30),
            "three deals and failing Slack posts",
            |s| {
                s.deal_creates().len() == 3
                    && s.requests()
                        .iter()
                        .filter(|r| r.path.starts_with("/services/"))
                        .count()
                        >= 3
            },
        )
        .await;

    proxy.take_down();
    standin.set(|s| s.slack_down = None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.bring_up();
    standin
        .wait_until(Duration::from_secs(30), "the three Slack alerts", |s| {
            s.slack_posts().len() == 3
        })
        .await;
    // Nothing more arrives afterwards: a sentinel behind the signals is sent, and nothing else
    // is waiting.
    let sentinel = Sentinel::publish(c, &f.pool, &f.acct).await;
    sentinel.wait_sent(&f.pool).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT destination, status FROM notifications WHERE account_id <> $1 ORDER BY id",
    )
    .bind(&sentinel.account)
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|(_, s)| s == "sent"), "{rows:?}");
    assert_eq!(
        sentinel.others(&standin.slack_posts()).len(),
        3,
        "one alert per account"
    );
    assert_eq!(standin.deal_creates().len(), 3, "one deal per account");
    running.stop().await.unwrap();
}

/// The logs of a whole run, at debug level, never contain a credential or a client IP: the
/// ingest token, the Slack webhook path, the HubSpot token, the IP an event came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret_and_no_client_ip() {
    let f = fixture("logscan", |_| {}).await;
    let (standin, c) = (&f.standin, &f.c);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("run.log");
    let port = free_port();
    let mut run = c.clone();
    run.http.listen = format!("127.0.0.1:{port}");
    run.http.aggregator_listen = format!("127.0.0.1:{}", free_port());
    let run_config = ConfigFile::write(&run);
    let mut child = run_config
        .command()
        .arg("run")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let token = services::token_store(c, &f.pool)
        .create(
            &format!("gw-{}", unique_suffix()),
            &[Scope::Ingest, Scope::Read],
            None,
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    wait_for(
        "meterline run to answer",
        Duration::from_secs(30),
        || async {
            http.get(format!("{url}/readyz"))
                .send()
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let client_ip = "203.0.113.77";
    let mut e = usage_event(&f.acct, Utc::now(), "gpt-4o", 100, 10);
    e["client_ip"] = client_ip.into();
    let resp = http
        .post(format!("{url}/v1/events"))
        .bearer_auth(&token)
        .json(&vec![e])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A bad token too: its refusal is logged without the token.
    let bad = "mlt_0000000000000000000000000000000000000000000000000000000000000000";
    let resp = http
        .post(format!("{url}/v1/events"))
        .bearer_auth(bad)
        .json(&Vec::<Value>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    f.publish_deal(75).await;
    standin
        .wait_until(
            Duration::from_secs(30),
            "the Slack alert and the deal",
            |s| s.slack_posts().len() == 1 && s.deal_creates().len() == 1,
        )
        .await;
    // The sends' outcomes are logged after the stand-in answered: the last lines of the run.
    wait_for("both sends logged", Duration::from_secs(30), || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        check(log.matches("notification sent").count(), |n| *n >= 2)
    })
    .await;
    child.kill().ok();
    child.wait().ok();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.len() > 1_000, "the run logged: {log}");
    let webhook_secret = SLACK_DEALS.rsplit('/').next().unwrap();
    for (what, secret) in [
        ("the ingest token", token.as_str()),
        ("a refused token", bad),
        ("the Slack webhook", webhook_secret),
        ("the HubSpot token", HUBSPOT_TOKEN),
        ("a client IP", client_ip),
    ] {
        let at = log.find(secret);
        assert!(
            at.is_none(),
            "{what} is in the log: …{}…",
            &log[at.unwrap().saturating_sub(200)..(at.unwrap() + 100).min(log.len())]
        );
    }
}
