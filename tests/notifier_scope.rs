//! The notifier aims its offers at the right accounts (issue 19, the notifier's side of
//! misfires 3, 4, 5 and 8), on the real servers: accounts sign up through ingest (the
//! aggregator writes their plan and email domain to PostgreSQL), the test puts signals on the
//! account-signals topic as the scorer writes them, and the notifier reads them from Kafka and
//! sends to the local Slack and HubSpot stand-ins (`common::standin`), which record the exact
//! requests. Each negative check waits for a sentinel signal that went through the same
//! partition and the same outbox behind the signals under test, never for a fixed time.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use common::signals::{encode_signals, publish_signal_records};
use common::standin::{Recorded, StandIn, HUBSPOT_TOKEN};
use common::*;
use meterline::services::{self, Components};
use meterline::Config;
use meterline_ingest::Scope;
use meterline_notifier::config::Secret;
use meterline_schemas::{AccountSignal, SignalKind};
use serde_json::{json, Value};

const SLACK_DEALS: &str = "/services/T0001/B0001/enterprise0000000000";
const SLACK_SALES: &str = "/services/T0001/B0002/sales00000000000000";
const SLACK_TNS: &str = "/services/T0001/B0003/trust000000000000000";
const SLACK_GROWTH: &str = "/services/T0001/B0004/accountmgmt000000000";

/// Every signal of a test goes to the topic with this key: one partition, read in order, the
/// sentinel last.
const KEY: &str = "scope";

/// The offers as configured by default (`notifier.offers`).
const PRO_PRICE: &str = "$49 per seat per month";
const ENTERPRISE_PRICE: &str = "from $2,000 per month (annual)";

/// A running ingest + aggregator + notifier with the stand-ins behind every channel and
/// HubSpot, and a read token for the notice endpoint.
struct Setup {
    standin: StandIn,
    _dir: tempfile::TempDir,
    app: TestApp,
    pool: sqlx::PgPool,
    read_token: String,
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> Setup {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_suffix();
    let mut c = isolated_config(&id);
    let n = &mut c.notifier;
    n.group_id = format!("mlt-{id}-notifier");
    n.data_dir = dir.path().display().to_string();
    n.poll_interval_ms = 100;
    n.backoff_base_ms = 50;
    n.backoff_max_ms = 200;
    n.request_timeout_ms = 2_000;
    n.slack.base_url = standin.url();
    for (channel, path) in [
        ("enterprise_inbound", SLACK_DEALS),
        ("sales_assist", SLACK_SALES),
        ("trust_and_safety", SLACK_TNS),
        ("account_management", SLACK_GROWTH),
    ] {
        n.slack.webhooks.insert(channel.into(), Secret::new(path));
    }
    n.hubspot.base_url = standin.url();
    n.hubspot.token = Secret::new(HUBSPOT_TOKEN);
    tweak(&mut c);
    let app = spawn_with(c, Components::none().ingest().aggregator().notifier()).await;
    let pool = app.pg().await;
    let read_token = services::token_store(&app.config, &pool)
        .create(&format!("dash-{}", unique_suffix()), &[Scope::Read], None)
        .await
        .unwrap();
    Setup {
        standin,
        _dir: dir,
        app,
        pool,
        read_token,
    }
}

/// An account as it signs up: id, plan, email domain.
type Signup<'a> = (&'a str, &'a str, &'a str);

impl Setup {
    /// Signs the accounts up through ingest and waits until the aggregator has written them to
    /// PostgreSQL with their plan and domain, where the notifier reads them.
    async fn signup(&self, accounts: &[Signup<'_>]) {
        let events: Vec<Value> = accounts
            .iter()
            .map(|(id, plan, domain)| {
                json!({
                    "event_id": uuid::Uuid::new_v4().to_string(),
                    "occurred_at": (Utc::now() - ChronoDuration::days(1)).to_rfc3339(),
                    "account_id": id,
                    "type": "signup",
                    "plan": plan,
                    "email_domain": domain,
                    "seats": 5,
                    "company_size": 500,
                })
            })
            .collect();
        let (status, body) = self
            .app
            .post_json("/v1/account-events", &json!(events))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], accounts.len(), "{body}");
        let ids: Vec<String> = accounts.iter().map(|a| a.0.to_owned()).collect();
        let want: Vec<(String, String, String)> = accounts
            .iter()
            .map(|(id, plan, domain)| ((*id).into(), (*plan).into(), (*domain).into()))
            .collect();
        wait_for(
            "the signups in PostgreSQL",
            Duration::from_secs(30),
            || async {
                let mut rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT account_id, plan, email_domain FROM accounts WHERE account_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .unwrap();
                rows.sort_by_key(|r| ids.iter().position(|i| *i == r.0));
                check(rows, |rows| *rows == want)
            },
        )
        .await;
    }

    /// Produces the records onto the signal topic, as the scorer does.
    async fn publish_records(&self, records: &[Vec<u8>]) {
        publish_signal_records(&self.app.config, records, KEY).await;
    }

    /// The signals in Avro with the Confluent framing (the schema registered first).
    async fn encode(&self, signals: &[AccountSignal]) -> Vec<Vec<u8>> {
        encode_signals(&self.app.config, signals).await
    }

    async fn publish(&self, signals: &[AccountSignal]) {
        let records = self.encode(signals).await;
        self.publish_records(&records).await;
    }

    /// Puts a sentinel behind everything published so far (a key-sharing alert about an
    /// account of its own, in the same partition) and waits until its alert is sent and the
    /// outbox is settled: the notifier has then decided on every signal before it and sent
    /// everything it is going to. Returns the sentinel's account, to tell its request apart.
    async fn settle(&self) -> String {
        let account = format!("sentinel-{}", unique_suffix());
        self.publish(&[signal(
            &account,
            SignalKind::KeySharing,
            "sentinel",
            Utc::now(),
            "free",
            0,
            &["the sentinel"],
            json!({}),
        )])
        .await;
        wait_for(
            "the sentinel sent and the outbox settled",
            Duration::from_secs(30),
            || async {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT account_id, status FROM notifications ORDER BY id")
                        .fetch_all(&self.pool)
                        .await
                        .unwrap();
                check(rows, |rows| {
                    rows.iter().any(|(a, s)| *a == account && s == "sent")
                        && rows.iter().all(|(_, s)| {
                            ["sent", "dead", "unconfirmed", "skipped"].contains(&s.as_str())
                        })
                })
            },
        )
        .await;
        assert!(
            self.standin
                .slack_posts()
                .iter()
                .any(|p| p.path == SLACK_TNS && mentions(p, &account)),
            "the sentinel's alert"
        );
        account
    }

    /// The account's current dashboard notice, as the dashboard reads it (JSON `null`: none).
    async fn notice(&self, account: &str) -> Value {
        let resp = self
            .app
            .http
            .get(self.app.url(&format!("/v1/accounts/{account}/notice")))
            .bearer_auth(&self.read_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// The account's outbox rows: destination, status, detail.
    async fn outbox(&self, account: &str) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as(
            "SELECT destination, status, detail FROM notifications WHERE account_id = $1 ORDER BY id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The Slack messages posted to the channel behind `webhook` about `account`.
    fn posts(&self, webhook: &str, account: &str) -> Vec<Recorded> {
        self.standin
            .slack_posts()
            .into_iter()
            .filter(|p| p.path == webhook && mentions(p, account))
            .collect()
    }
}

fn mentions(r: &Recorded, account: &str) -> bool {
    r.body.to_string().contains(account)
}

fn header(r: &Recorded) -> &str {
    r.body["blocks"][0]["text"]["text"].as_str().unwrap_or("")
}

#[allow(clippy::too_many_arguments)]
fn signal(
    account: &str,
    kind: SignalKind,
    episode: &str,
    at: DateTime<Utc>,
    plan: &str,
    deal: i32,
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
        abuse: if kind == SignalKind::KeySharing {
            60
        } else {
            0
        },
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        evidence: evidence.to_string(),
    }
}

fn deal_ready(account: &str, plan: &str, score: i32, at: DateTime<Utc>) -> AccountSignal {
    signal(
        account,
        SignalKind::DealReady,
        &format!("{}:{score}", at.format("%Y%m")),
        at,
        plan,
        score,
        &[
            "monthly_tokens (+30): 61234567 tokens this month (over 50000000)",
            "regions (+20): 3 regions (over 2)",
            "team_size (+15): 25 people (over 20)",
            "company_size (+10): 500 employees (over 100)",
        ],
        json!({"inputs": {"monthly_tokens": 61_234_567u64, "regions": ["ap-south-1", "eu-west-1", "us-east-1"], "team_size": 25, "company_size": 500}, "tags": []}),
    )
}

/// An escalation as the brief's thresholds raise it: its tags, whatever the deal score.
fn escalation(account: &str, plan: &str, episode: &str, at: DateTime<Utc>) -> AccountSignal {
    let tags = ["over_50000000_tokens_this_month", "3_plus_regions"];
    let reasons = tags.map(|t| format!("escalation: {t}"));
    signal(
        account,
        SignalKind::Escalation,
        episode,
        at,
        plan,
        40,
        &reasons.each_ref().map(String::as_str),
        json!({"tags": tags, "inputs": {"monthly_tokens": 61_234_567u64, "regions": ["ap-south-1", "eu-west-1", "us-east-1"]}}),
    )
}

/// A plugin gate as the scorer raises it: the plugin and the trigger's message.
fn plugin_gate(account: &str, plan: &str, plugin: &str, at: DateTime<Utc>) -> AccountSignal {
    signal(
        account,
        SignalKind::PluginGate,
        plugin,
        at,
        plan,
        0,
        &[&format!("{plugin}: the trigger")],
        json!({"plugin": plugin, "trigger": "the trigger", "message": format!("Your traffic needs {plugin}.")}),
    )
}

/// A rate-limit or power-user upgrade suggestion.
fn suggestion(account: &str, plan: &str, kind: SignalKind, at: DateTime<Utc>) -> AccountSignal {
    signal(
        account,
        kind,
        &at.format("%Y%m%d%H%M").to_string(),
        at,
        plan,
        0,
        &["over the per-minute limit for 3 minutes"],
        json!({}),
    )
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix())
}

/// Misfire 3: an Enterprise customer with heavy usage got an `#enterprise-inbound` alert, a new
/// HubSpot deal and an upgrade notice. Now its deal-ready and escalation signals reach the
/// expansion channel (account management) and nothing prospects it; the twin, a free
/// deal-ready account, still reaches `#enterprise-inbound` and HubSpot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_3_an_enterprise_customer_reaches_account_management_and_is_never_prospected() {
    let s = setup(|_| {}).await;
    let (customer, lead) = (id("bigbank"), id("lead"));
    s.signup(&[
        (&customer, "enterprise", "bigbank.example"),
        (&lead, "free", "lead.example"),
    ])
    .await;
    let now = Utc::now();
    s.publish(&[
        deal_ready(&customer, "enterprise", 85, now),
        escalation(
            &customer,
            "enterprise",
            &now.format("%Y%m").to_string(),
            now,
        ),
        plugin_gate(&customer, "enterprise", "guardrails", now),
        suggestion(&customer, "enterprise", SignalKind::PowerUser, now),
        suggestion(
            &customer,
            "enterprise",
            SignalKind::RateLimitSustained,
            now - ChronoDuration::hours(1),
        ),
        deal_ready(&lead, "free", 85, now),
    ])
    .await;
    s.settle().await;

    // The customer: neither #enterprise-inbound nor HubSpot nor a notice...
    assert!(s.posts(SLACK_DEALS, &customer).is_empty());
    assert!(
        !s.standin
            .hubspot_requests()
            .iter()
            .any(|r| mentions(r, &customer)),
        "no HubSpot request about the customer"
    );
    assert_eq!(s.notice(&customer).await, Value::Null);
    let (notices,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM dashboard_notices WHERE account_id = $1")
            .bind(&customer)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(notices, 0, "no upgrade notice of any kind");
    // ...but account management hears of its growth, once per signal, with nothing to sell.
    let growth = s.posts(SLACK_GROWTH, &customer);
    let mut headers: Vec<&str> = growth.iter().map(header).collect();
    headers.sort();
    assert_eq!(
        headers,
        [
            format!("Customer growth (deal ready): {customer}"),
            format!("Customer growth (escalation): {customer}"),
        ]
    );
    for post in &growth {
        let text = post.body.to_string();
        assert!(text.contains("*Plan*\\nenterprise"), "{text}");
        assert!(
            text.contains(
                "An existing enterprise customer: for account management, not a new deal"
            ),
            "{text}"
        );
        assert!(!text.contains("Recommended"), "{text}");
        assert!(!text.contains("Enterprise includes"), "{text}");
    }
    let rows = s.outbox(&customer).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (destination, status, detail) in &rows {
        assert_eq!(
            (destination.as_str(), status.as_str()),
            ("slack:account_management", "sent")
        );
        assert!(
            detail
                .as_deref()
                .unwrap_or("")
                .contains("an existing enterprise customer's growth: sent to the expansion route"),
            "{detail:?}"
        );
    }

    // The twin: a free deal-ready account still reaches sales, in Slack and in HubSpot.
    let inbound = s.posts(SLACK_DEALS, &lead);
    assert_eq!(inbound.len(), 1);
    assert_eq!(header(&inbound[0]), format!("Deal ready: {lead}"));
    assert!(inbound[0]
        .body
        .to_string()
        .contains(&format!("*Recommended*\\nEnterprise: {ENTERPRISE_PRICE}")));
    let deals = s.standin.deal_creates();
    assert_eq!(deals.len(), 1);
    assert_eq!(
        deals[0].body["properties"]["meterline_account_id"],
        lead.as_str()
    );
    assert!(s.posts(SLACK_GROWTH, &lead).is_empty());
    assert_eq!(
        s.outbox(&lead).await,
        [
            (
                "slack:enterprise_inbound".to_owned(),
                "sent".to_owned(),
                None::<String>
            ),
            ("hubspot".to_owned(), "sent".to_owned(), None),
        ]
    );
}

/// Which notice an account gets: `None` for no notice, else the plan, its offer's name and
/// price.
type Want = Option<(&'static str, &'static str, &'static str)>;

/// Misfire 4: a free account sending PII was told "Pro includes" Advanced Guardrails. Every
/// offer now names the lowest plan that includes what it sells, and its price, and never a
/// plan the account already has: plan × plugin × tiers configuration, plus the rate and
/// power-user notices, which name the tier's `upgrade_to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_4_every_offer_names_the_lowest_plan_that_includes_it_and_its_price() {
    const PRO: Want = Some(("pro", "Pro", PRO_PRICE));
    const ENTERPRISE: Want = Some(("enterprise", "Enterprise", ENTERPRISE_PRICE));
    let guardrails = Some("guardrails");
    type Case = (&'static str, SignalKind, Option<&'static str>, Want);
    // (tiers.pro.plugins, [(account plan, kind, plugin, notice)])
    let configurations: [(&[&str], Vec<Case>); 2] = [
        (
            &[],
            vec![
                ("free", SignalKind::PluginGate, guardrails, ENTERPRISE),
                (
                    "free",
                    SignalKind::PluginGate,
                    Some("audit_logger"),
                    ENTERPRISE,
                ),
                ("pro", SignalKind::PluginGate, guardrails, ENTERPRISE),
                ("enterprise", SignalKind::PluginGate, guardrails, None),
                ("free", SignalKind::PluginGate, Some("teleporter"), None),
                ("free", SignalKind::RateLimitSustained, None, PRO),
                ("pro", SignalKind::RateLimitSustained, None, ENTERPRISE),
                ("free", SignalKind::PowerUser, None, PRO),
                ("pro", SignalKind::PowerUser, None, ENTERPRISE),
                ("enterprise", SignalKind::PowerUser, None, None),
            ],
        ),
        (
            &["guardrails"],
            vec![
                ("free", SignalKind::PluginGate, guardrails, PRO),
                ("pro", SignalKind::PluginGate, guardrails, None),
                (
                    "free",
                    SignalKind::PluginGate,
                    Some("multi_cloud_router"),
                    ENTERPRISE,
                ),
                (
                    "pro",
                    SignalKind::PluginGate,
                    Some("multi_cloud_router"),
                    ENTERPRISE,
                ),
            ],
        ),
    ];
    for (pro_plugins, cases) in configurations {
        let s = setup(|c| c.tiers.pro.plugins = pro_plugins.iter().map(|p| (*p).into()).collect())
            .await;
        let accounts: Vec<String> = cases.iter().map(|_| id("offer")).collect();
        let signups: Vec<Signup<'_>> = accounts
            .iter()
            .zip(&cases)
            .map(|(a, (plan, ..))| (a.as_str(), *plan, "offers.example"))
            .collect();
        s.signup(&signups).await;
        let now = Utc::now();
        let signals: Vec<AccountSignal> = accounts
            .iter()
            .zip(&cases)
            .map(|(a, (plan, kind, plugin, _))| match plugin {
                Some(p) => plugin_gate(a, plan, p, now),
                None => suggestion(a, plan, *kind, now),
            })
            .collect();
        s.publish(&signals).await;
        s.settle().await;
        for (account, (plan, kind, plugin, want)) in accounts.iter().zip(&cases) {
            let case = format!(
                "tiers.pro.plugins = {pro_plugins:?}: {plan} account, {kind} {}",
                plugin.unwrap_or("")
            );
            let notice = s.notice(account).await;
            match want {
                None => assert_eq!(notice, Value::Null, "{case}: no offer"),
                Some((want_plan, name, price)) => {
                    assert_eq!(notice["plan"], *want_plan, "{case}: {notice}");
                    assert_eq!(
                        notice["upgrade_url"],
                        format!("https://app.example.com/billing/upgrade?plan={want_plan}"),
                        "{case}"
                    );
                    let message = notice["message"].as_str().unwrap();
                    assert!(message.contains(name), "{case}: {message}");
                    assert!(message.contains(price), "{case}: {message}");
                    let other = if *name == "Pro" { "Enterprise" } else { "Pro" };
                    assert!(!message.contains(other), "{case}: {message}");
                    if *kind == SignalKind::PluginGate {
                        assert!(
                            message.starts_with(&format!(
                                "Your traffic needs {}. {name} includes it",
                                plugin.unwrap()
                            )),
                            "{case}: {message}"
                        );
                    }
                }
            }
        }
    }
}

/// Misfire 5: every gmail.com account's deal would have created a company called "gmail.com".
/// Now a public-domain deal is created with no company search, create or association, and the
/// reason is in the deal's description and the outbox row; the twin, acme.io, gets its
/// company as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_5_a_public_domain_deal_has_no_company_and_says_why() {
    let s = setup(|_| {}).await;
    let (person, company) = (id("someone"), id("acme"));
    s.signup(&[
        (&person, "free", "gmail.com"),
        (&company, "free", "acme.io"),
    ])
    .await;
    let now = Utc::now();
    s.publish(&[
        deal_ready(&person, "free", 85, now),
        deal_ready(&company, "free", 85, now),
    ])
    .await;
    s.settle().await;

    let hs = s.standin.hubspot_requests();
    let deal_id = |account: &str| {
        s.standin
            .deals()
            .into_iter()
            .find(|(_, p)| p["meterline_account_id"] == account)
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("a deal for {account}: {hs:#?}"))
    };
    let (person_deal, company_deal) = (deal_id(&person), deal_id(&company));
    // gmail.com: the deal, and no company anywhere.
    let companies: Vec<&Recorded> = hs
        .iter()
        .filter(|r| r.path.starts_with("/crm/v3/objects/companies"))
        .collect();
    assert!(
        !companies
            .iter()
            .any(|r| r.body.to_string().contains("gmail.com")),
        "no company search or create for gmail.com: {companies:#?}"
    );
    assert!(
        !s.standin
            .state
            .lock()
            .unwrap()
            .companies
            .iter()
            .any(|(_, p)| p["domain"] == "gmail.com"),
        "no company called gmail.com"
    );
    let associations = s.standin.state.lock().unwrap().associations.clone();
    assert!(
        !associations.iter().any(|(deal, _)| *deal == person_deal),
        "the gmail.com deal has no association: {associations:?}"
    );
    let created = s
        .standin
        .deal_creates()
        .into_iter()
        .find(|r| r.body["properties"]["meterline_account_id"] == person.as_str())
        .unwrap();
    let props = created.body["properties"].as_object().unwrap();
    assert_eq!(props["dealname"], format!("{person} — Enterprise"));
    assert!(
        created.body.get("associations").is_none(),
        "created with its properties only: {}",
        created.body
    );
    let reason = "no HubSpot company: gmail.com is a public email domain";
    assert!(
        props["description"].as_str().unwrap().contains(reason),
        "{}",
        props["description"]
    );
    let rows = s.outbox(&person).await;
    let hubspot = rows.iter().find(|r| r.0 == "hubspot").unwrap();
    assert_eq!(hubspot.1, "sent");
    assert!(
        hubspot.2.as_deref().unwrap_or("").contains(reason),
        "{rows:?}"
    );
    assert_eq!(
        s.posts(SLACK_DEALS, &person).len(),
        1,
        "sales still hears of it"
    );

    // The twin: acme.io is found or created as a company and the deal is associated with it.
    assert_eq!(
        companies
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect::<Vec<_>>(),
        [
            ("POST", "/crm/v3/objects/companies/search"),
            ("POST", "/crm/v3/objects/companies"),
        ]
    );
    assert_eq!(
        companies[0].body["filterGroups"][0]["filters"][0]["value"],
        "acme.io"
    );
    let acme = s.standin.state.lock().unwrap().companies[0].clone();
    assert_eq!(acme.1["domain"], "acme.io");
    assert_eq!(associations, [(company_deal, acme.0)]);
    let rows = s.outbox(&company).await;
    assert!(rows.iter().all(|r| r.2.is_none()), "{rows:?}");
}

/// Misfire 8: an escalation tag rode along only on a deal-ready signal, so below a deal score
/// of 70 nobody heard of it. Now an escalation signal with a deal score of 40 reaches
/// `#enterprise-inbound` once, with its tags; a replay and a second signal inside the cooldown
/// do not. The twin: two escalations a cooldown apart are both sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_8_an_escalation_reaches_enterprise_inbound_once_per_cooldown() {
    let s = setup(|_| {}).await;
    let (fast, steady) = (id("fast"), id("steady"));
    s.signup(&[
        (&fast, "free", "fast.example"),
        (&steady, "pro", "steady.example"),
    ])
    .await;
    let now = Utc::now();
    let first = escalation(&fast, "free", "202612", now - ChronoDuration::hours(2));
    let records = s.encode(std::slice::from_ref(&first)).await;
    // The signal, its replay (a duplicated record), a second episode a day later (inside the
    // 30-day cooldown), and the twin's two escalations 35 days apart.
    s.publish_records(&[records[0].clone(), records[0].clone()])
        .await;
    s.publish(&[
        escalation(&fast, "free", "202701", now - ChronoDuration::hours(1)),
        escalation(&steady, "pro", "202610", now - ChronoDuration::days(40)),
        escalation(&steady, "pro", "202611", now - ChronoDuration::days(5)),
    ])
    .await;
    s.settle().await;

    let posts = s.posts(SLACK_DEALS, &fast);
    assert_eq!(posts.len(), 1, "once per cooldown: {posts:#?}");
    let post = &posts[0];
    assert_eq!(header(post), format!("Escalation: {fast}"));
    let text = post.body.to_string();
    for needle in [
        "*Deal readiness*\\n40/100",
        "*Escalation tags*\\n• `over_50000000_tokens_this_month`\\n• `3_plus_regions`",
        &format!("*Recommended*\\nEnterprise: {ENTERPRISE_PRICE}"),
        &format!("signal `{}`", first.signal_id),
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert_eq!(
        s.outbox(&fast).await,
        [(
            "slack:enterprise_inbound".to_owned(),
            "sent".to_owned(),
            None::<String>
        )]
    );
    // Escalation is for sales people: no deal, no notice, nothing to the other channels.
    assert!(s.standin.hubspot_requests().is_empty());
    assert_eq!(s.notice(&fast).await, Value::Null);
    for other in [SLACK_SALES, SLACK_GROWTH] {
        assert!(s.posts(other, &fast).is_empty());
    }

    // The twin: a cooldown apart, both are sent (a Pro account is offered Enterprise).
    let steady_posts = s.posts(SLACK_DEALS, &steady);
    assert_eq!(steady_posts.len(), 2, "{steady_posts:#?}");
    for p in &steady_posts {
        assert_eq!(header(p), format!("Escalation: {steady}"));
        assert!(p.body.to_string().contains("*Recommended*\\nEnterprise"));
    }
}

/// Outreach (issue 20, seed 002): a free account crossing the PQL threshold or reaching 85 % of
/// a limit gets a limit-approaching notice with its numbers; at 84 % it gets none; a pro
/// account's PQL and an Enterprise account's limit reach no notice; after a month with a limit
/// hit, the reset brings "your allowance has reset". Exact texts from the default templates
/// and offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outreach_tells_free_accounts_near_a_limit_and_after_the_reset() {
    let s = setup(|_| {}).await;
    let now = Utc::now();
    let limit = |used: f64, stage: u32| {
        json!({"limit": {"name": "day_requests", "window": "day", "metric": "requests",
            "used": used, "limit": 1000.0, "ratio": used / 1000.0, "stage": stage,
            "resets_at": "2026-12-03T00:00:00Z"}})
    };
    let pro_offer = "Pro for 1,000 requests/minute and 15 models ($49 per seat per month)";
    // (plan, kind, episode, evidence, notice text or none)
    type Case = (
        &'static str,
        SignalKind,
        &'static str,
        Value,
        Option<String>,
    );
    let cases: Vec<Case> = vec![
        (
            "free",
            SignalKind::Pql,
            "202612",
            json!({"inputs": {}}),
            Some(format!("Your team is getting real work done on the free tier. Pro gives you 1,000 requests/minute and 15 models ({PRO_PRICE}), so nothing slows you down.")),
        ),
        ("pro", SignalKind::Pql, "202612", json!({"inputs": {}}), None),
        (
            "free",
            SignalKind::LimitStage,
            "day_requests:85:20261202",
            limit(870.0, 85),
            Some(format!("You've used 87 % of your daily requests (870 of 1,000); it resets at 00:00 UTC on 3 December. Upgrade to {pro_offer} before the limit stops your requests.")),
        ),
        (
            "free",
            SignalKind::LimitStage,
            "day_requests:70:20261202",
            limit(849.0, 70),
            None,
        ),
        (
            "enterprise",
            SignalKind::LimitStage,
            "day_requests:100:20261202",
            limit(1000.0, 100),
            None,
        ),
        (
            "free",
            SignalKind::AllowanceReset,
            "202612",
            json!({"month": "202611", "limits": [{"limit": "day_requests", "windows": 2}, {"limit": "month_weighted_tokens", "windows": 1}]}),
            Some(format!("Your allowance has reset. Last month you hit your daily requests and monthly tokens limits. Pro gives you 1,000 requests/minute and 15 models ({PRO_PRICE}), so it doesn't happen again.")),
        ),
    ];
    let accounts: Vec<String> = cases.iter().map(|_| id("outreach")).collect();
    let signups: Vec<Signup<'_>> = accounts
        .iter()
        .zip(&cases)
        .map(|(a, (plan, ..))| (a.as_str(), *plan, "outreach.example"))
        .collect();
    s.signup(&signups).await;
    let signals: Vec<AccountSignal> = accounts
        .iter()
        .zip(&cases)
        .map(|(a, (plan, kind, episode, evidence, _))| {
            signal(
                a,
                *kind,
                episode,
                now,
                plan,
                0,
                &["outreach"],
                evidence.clone(),
            )
        })
        .collect();
    s.publish(&signals).await;
    s.settle().await;
    for (account, (plan, kind, _, _, want)) in accounts.iter().zip(&cases) {
        let notice = s.notice(account).await;
        let case = format!("{kind} for a {plan} account");
        match want {
            None => {
                assert_eq!(notice, Value::Null, "{case}");
                assert!(
                    s.outbox(account).await.is_empty(),
                    "{case}: {:?}",
                    s.outbox(account).await
                );
            }
            Some(text) => {
                assert_eq!(notice["message"], text.as_str(), "{case}");
                assert_eq!(notice["kind"], kind.as_str(), "{case}");
                assert_eq!(notice["plan"], "pro", "{case}");
            }
        }
    }
    // Nothing reached people: sales assist wants pro accounts or teams over 20 seats.
    for account in &accounts {
        assert!(s.posts(SLACK_SALES, account).is_empty(), "{account}");
    }
}
