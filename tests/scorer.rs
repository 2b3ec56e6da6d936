//! The scorer on the real servers: generated traffic for eight kinds of account goes through
//! ingest and the aggregator; the scorer then raises exactly the signals each should get, on
//! the account-signals topic, with the scores the rules say; and a restart raises none again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use common::*;
use meterline::services::{self, Components};
use meterline::Config;
use meterline_ingest::Scope;
use meterline_schemas::avro;
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::{QuotaConfig, TierConfig};
use meterline_schemas::{AccountSignal, SignalKind};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn config() -> Config {
    let mut c = isolated_config(&unique_suffix());
    c.quota = QuotaConfig {
        input_weight: 1.0,
        output_weight: 1.0,
        default_model_weight: 1.0,
        model_weights: Default::default(),
        ..QuotaConfig::default()
    };
    let limits = |v: &[(&str, f64)]| v.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    c.tiers.free = TierConfig {
        weight_multiplier: 1.0,
        requests_per_minute: 1_000.0,
        allowed_models: vec!["*".into()],
        fallback_model: String::new(),
        audit_retention_days: 7,
        upgrade_to: "pro".into(),
        limits: limits(&[("day_weighted_tokens", 100_000.0)]),
        plugins: vec![],
        grace_percent: 0.0,
        budget_steer: false,
        budget_steer_stage: 95,
        messages: Default::default(),
    };
    c.scorer.interval_ms = 200;
    c
}

struct Gen {
    events: Vec<Value>,
    accounts: Vec<Value>,
}

impl Gen {
    #[allow(clippy::too_many_arguments)]
    fn usage(
        &mut self,
        account: &str,
        at: DateTime<Utc>,
        tokens: u64,
        session: Option<&str>,
        prompt: &str,
        provider: &str,
        region: &str,
        user: Option<&str>,
        key: &str,
        ip: &str,
    ) {
        let mut e = usage_event(account, at, "m", tokens, 0);
        e["session_id"] = json!(session);
        e["prompt_hash"] = json!(prompt);
        e["provider"] = json!(provider);
        e["region"] = json!(region);
        e["user_id"] = json!(user);
        e["api_key_id"] = json!(key);
        e["client_ip"] = json!(ip);
        if session.is_none() {
            e.as_object_mut().unwrap().remove("session_id");
        }
        if user.is_none() {
            e.as_object_mut().unwrap().remove("user_id");
        }
        self.events.push(e);
    }

    fn signup(&mut self, account: &str, at: DateTime<Utc>, extra: Value) {
        let mut e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": at.to_rfc3339(),
            "account_id": account,
            "type": "signup",
            "email_domain": format!("{account}.example"),
        });
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        self.accounts.push(e);
    }
}

/// Every record on the signal topic up to its end now, from the start of each partition.
async fn read_signals(config: &Config, group: &str) -> Vec<AccountSignal> {
    let consumer: StreamConsumer = meterline_infra::kafka::client_config(&config.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topic = config.kafka.signal_topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset after the last record there now.
    let mut ends = BTreeMap::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        ends.insert(p.id(), high);
    }
    consumer.assign(&assignment).unwrap();
    let schema = avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).unwrap();
    let mut read: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut out = Vec::new();
    while read.iter().any(|(p, next)| *next < ends[p]) {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("signals up to {ends:?} not read; read {read:?}"))
            .expect("consuming signals");
        read.insert(m.partition(), m.offset() + 1);
        if m.offset() < ends[&m.partition()] {
            let (_, body) = avro::split_frame(m.payload().unwrap()).unwrap();
            out.push(AccountSignal::decode(&schema, &schema, body).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_account_gets_exactly_its_signals_once() {
    // "Today" needs ten minutes behind us for today's sessions.
    let now = Utc::now();
    let day_start = Grain::Day.window_start(now);
    if now - day_start < ChronoDuration::minutes(11) {
        tokio::time::sleep(
            (day_start + ChronoDuration::minutes(11) - now)
                .to_std()
                .unwrap(),
        )
        .await;
    }
    let now = Utc::now();
    let today = Grain::Day.window_start(now);
    let id = unique_suffix();
    let a = |name: &str| format!("{id}-{name}");
    let t0 = now - ChronoDuration::minutes(9);
    let mut g = Gen {
        events: vec![],
        accounts: vec![],
    };
    let old = now - ChronoDuration::days(20);
    let prompt = |i: usize| format!("p-{i}");

    // 1. Steady: 20 requests of 1,000 tokens a day for 7 days; two one-minute sessions today.
    let steady = a("steady");
    g.signup(&steady, old, json!({}));
    for d in 0..7 {
        for i in 0..20 {
            let at = if d == 0 {
                // Two sessions, starting two minutes apart (not machine-speed).
                t0 + ChronoDuration::seconds((i / 10) * 120 + (i % 10) * 6)
            } else {
                today - ChronoDuration::days(d)
                    + ChronoDuration::hours(2)
                    + ChronoDuration::minutes(i)
            };
            let s = format!("s{}", i / 10);
            let session = (d == 0).then_some(s.as_str());
            g.usage(
                &steady,
                at,
                1_000,
                session,
                &prompt(i as usize + 100 * d as usize),
                "openai",
                "us-east-1",
                None,
                "k",
                "198.51.100.1",
            );
        }
    }

    // 2. Trajectory: 40k, 45k, … 70k over the 7 complete days, 75k today (75 % of the day).
    let trajectory = a("trajectory");
    g.signup(&trajectory, old, json!({}));
    for d in 1..=7 {
        let total = 40_000 + 5_000 * (7 - d) as u64;
        for i in 0..10 {
            let at = today - ChronoDuration::days(d)
                + ChronoDuration::hours(3)
                + ChronoDuration::minutes(i);
            g.usage(
                &trajectory,
                at,
                total / 10,
                None,
                &prompt(i as usize + 100 * d as usize),
                "openai",
                "us-east-1",
                None,
                "k",
                "198.51.100.2",
            );
        }
    }
    for i in 0..10 {
        let s = format!("s{}", i / 5);
        g.usage(
            &trajectory,
            t0 + ChronoDuration::seconds((i / 5) * 120 + (i % 5) * 15),
            7_500,
            Some(&s),
            &prompt(i as usize),
            "openai",
            "us-east-1",
            None,
            "k",
            "198.51.100.2",
        );
    }

    // 3. Collision: signed up 10 hours ago, 90 % of the day's budget already.
    let collision = a("collision");
    g.signup(&collision, now - ChronoDuration::hours(10), json!({}));
    for i in 0..10 {
        let s = format!("s{}", i / 5);
        g.usage(
            &collision,
            t0 + ChronoDuration::seconds((i / 5) * 120 + (i % 5) * 15),
            9_000,
            Some(&s),
            &prompt(i as usize),
            "openai",
            "us-east-1",
            None,
            "k",
            "198.51.100.3",
        );
    }

    // 4. Enterprise-ready: 60M tokens this month, 3 regions, 4 providers, 25 users, company of 500.
    let enterprise = a("enterprise");
    g.signup(&enterprise, old, json!({"company_size": 500, "seats": 5}));
    let providers = ["openai", "anthropic", "google", "mistral"];
    let regions = ["us-east-1", "eu-west-1", "ap-south-1"];
    for i in 0..500usize {
        let session = format!("s{}", i / 100);
        let user = format!("u{}", i % 25);
        let at = t0 + ChronoDuration::seconds((i / 100) as i64 * 90 + (i % 100) as i64 * 60 / 100);
        g.usage(
            &enterprise,
            at,
            120_000,
            Some(&session),
            &prompt(i),
            providers[i % 4],
            regions[i % 3],
            Some(&user),
            "k",
            "198.51.100.4",
        );
    }

    // 5. Machine-speed abuser: signed up 30 minutes ago, 8 sessions a second apart, one prompt.
    let abuser = a("abuser");
    g.signup(&abuser, now - ChronoDuration::minutes(30), json!({}));
    for i in 0..16 {
        let s = format!("s{}", i / 2);
        g.usage(
            &abuser,
            t0 + ChronoDuration::seconds(i / 2),
            500,
            Some(&s),
            "same-prompt",
            "openai",
            "us-east-1",
            None,
            "k",
            "198.51.100.5",
        );
    }

    // 6. A shared key: one API key from 6 client IPs within one minute, and 14 more addresses
    //    that came and went over the last half hour (a crowd, not a fleet: churn 20/6).
    let shared = a("shared");
    g.signup(&shared, old, json!({}));
    for i in 0..14 {
        g.usage(
            &shared,
            now - ChronoDuration::minutes(20 + i),
            100,
            None,
            &prompt(50 + i as usize),
            "openai",
            "us-east-1",
            None,
            "k-shared",
            &format!("203.0.113.{}", 100 + i),
        );
    }
    let minute = Grain::Minute.window_start(now - ChronoDuration::minutes(3));
    for i in 0..6 {
        g.usage(
            &shared,
            minute + ChronoDuration::seconds(i * 5),
            100,
            None,
            &prompt(i as usize),
            "openai",
            "us-east-1",
            None,
            "k-shared",
            &format!("203.0.113.{}", 10 + i),
        );
    }

    // 7. Multi-accounts: A and B share signup IP and device; C shares only the IP.
    let (multi_a, multi_b, multi_c) = (a("multi-a"), a("multi-b"), a("multi-c"));
    let five_days = now - ChronoDuration::days(5);
    g.signup(&multi_a, five_days, json!({"signup_ip": "203.0.113.50", "device_id": "dev-shared", "browser_signature": "br-a"}));
    g.signup(&multi_b, five_days, json!({"signup_ip": "203.0.113.50", "device_id": "dev-shared", "browser_signature": "br-b"}));
    g.signup(
        &multi_c,
        five_days,
        json!({"signup_ip": "203.0.113.50", "device_id": "dev-c", "browser_signature": "br-c"}),
    );

    // 8. Power user: three 8-minute sessions today with diverse input (the others run a minute),
    //    and the volume a power user needs (77 requests a day for 13 days before: flat, no
    //    weekly growth).
    let power = a("power");
    g.signup(&power, old, json!({}));
    for d in 1..=13 {
        for i in 0..77 {
            g.usage(
                &power,
                today - ChronoDuration::days(d)
                    + ChronoDuration::hours(5)
                    + ChronoDuration::seconds(i * 30),
                1_000,
                None,
                &prompt(1_000 + (d * 100 + i) as usize),
                "openai",
                "us-east-1",
                None,
                "k",
                "198.51.100.8",
            );
        }
    }
    for s in 0..3 {
        for i in 0..9 {
            let session = format!("s{s}");
            g.usage(
                &power,
                t0 + ChronoDuration::seconds(s * 30 + i * 60),
                1_000,
                Some(&session),
                &prompt((s * 10 + i) as usize),
                "openai",
                "us-east-1",
                None,
                "k",
                "198.51.100.8",
            );
        }
    }

    // 9. Soft rate limiting: a per-minute limit of 5 (an override), 10 requests in each of 3
    //    consecutive minutes.
    let rate = a("rate");
    g.signup(&rate, old, json!({}));
    let rate_start = Grain::Minute.window_start(now - ChronoDuration::minutes(6));
    for m in 0..3 {
        for i in 0..10 {
            let at = rate_start + ChronoDuration::minutes(m) + ChronoDuration::seconds(i * 5);
            g.usage(
                &rate,
                at,
                100,
                None,
                &prompt((m * 10 + i) as usize),
                "openai",
                "us-east-1",
                None,
                "k",
                "198.51.100.9",
            );
        }
    }

    // Ingest and aggregate everything first, so the scorer sees each account whole.
    let config = config();
    let mut app = spawn_with(config.clone(), Components::none().ingest().aggregator()).await;
    let (status, body) = app
        .post_json("/v1/account-events", &Value::Array(g.accounts.clone()))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], g.accounts.len(), "{body}");
    for chunk in g.events.chunks(500) {
        let (status, body) = app.post_events(chunk).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
    let n = g.events.len() as u64;
    assert_eq!(app.wait_for_raw_count(n, Duration::from_secs(60)).await, n);
    let pool = app.pg().await;
    wait_for("the accounts applied", Duration::from_secs(30), || async {
        let (accounts,): (i64,) = sqlx::query_as("SELECT count(*) FROM accounts")
            .fetch_one(&pool)
            .await
            .unwrap();
        check(accounts, |a| *a as usize == g.accounts.len())
    })
    .await;
    meterline_ingest::read::directory::set_limit_override(
        &pool,
        &rate,
        "requests_per_minute",
        5.0,
        "manual",
    )
    .await
    .unwrap();
    // The aggregator writes Redis after ClickHouse: wait until every record is written whole.
    app.wait_for_aggregated(n + g.accounts.len() as u64, Duration::from_secs(30))
        .await;

    let mut config_scorer = config.clone();
    config_scorer.http.scorer_listen = format!("127.0.0.1:{}", free_port());
    let scorer = services::start(
        &config_scorer,
        Components::none().scorer(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("scorer starts");

    let month = Grain::Month.stamp(Grain::Month.window_start(now));
    let day = Grain::Day.stamp(today);
    let want: BTreeSet<(String, SignalKind, String)> = [
        (
            &trajectory,
            SignalKind::LimitStage,
            format!("day_weighted_tokens:70:{day}"),
        ),
        (
            &collision,
            SignalKind::LimitStage,
            format!("day_weighted_tokens:85:{day}"),
        ),
        (&enterprise, SignalKind::DealReady, format!("{month}:75")),
        (&enterprise, SignalKind::Escalation, month.clone()),
        (
            &enterprise,
            SignalKind::LimitStage,
            format!("day_weighted_tokens:100:{day}"),
        ),
        (
            &enterprise,
            SignalKind::PluginGate,
            "audit_logger".to_owned(),
        ),
        (&abuser, SignalKind::AbuseSuspected, day.clone()),
        (&shared, SignalKind::KeySharing, format!("k-shared:{day}")),
        (
            &multi_a,
            SignalKind::MultiAccount,
            format!("{multi_a}+{multi_b}"),
        ),
        (
            &multi_b,
            SignalKind::MultiAccount,
            format!("{multi_a}+{multi_b}"),
        ),
        (&power, SignalKind::PowerUser, month.clone()),
        (
            &rate,
            SignalKind::RateLimitSustained,
            Grain::Minute.stamp(rate_start),
        ),
    ]
    .into_iter()
    .map(|(a, k, e)| (a.clone(), k, e))
    .collect();
    wait_until_scorer_idle(&app, &pool, &steady).await;
    let got = read_signals(&config, &format!("t-{id}")).await;
    let got_set: BTreeSet<(String, SignalKind, String)> = got
        .iter()
        .map(|s| (s.account_id.clone(), s.kind, s.episode.clone()))
        .collect();
    assert_eq!(got_set, want, "signals");
    assert_eq!(got.len(), want.len(), "each signal once: {got:?}");
    for s in &got {
        assert_eq!(
            s.signal_id,
            format!("{}:{}:{}", s.account_id, s.kind, s.episode)
        );
    }

    // The scores each account gets: (deal readiness, PQL, abuse).
    let reader = services::token_store(&config, &pool)
        .create(&format!("r-{id}"), &[Scope::Read], None)
        .await
        .unwrap();
    let expected: BTreeMap<&String, (u64, u64, u64)> = [
        (&steady, (0, 0, 0)),
        (&trajectory, (0, 20, 0)),
        (&collision, (0, 40, 0)),
        (&enterprise, (75, 40, 0)),
        (&abuser, (0, 0, 75)),
        (&shared, (0, 0, 0)),
        (&multi_a, (0, 0, 0)),
        (&multi_c, (0, 0, 0)),
        (&power, (0, 0, 0)),
        (&rate, (0, 0, 0)),
    ]
    .into();
    for (account, (deal, pql, abuse)) in &expected {
        let resp = app
            .http
            .get(app.url(&format!("/v1/accounts/{account}/scores")))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{account}");
        let s: Value = resp.json().await.unwrap();
        assert_eq!(
            (
                s["deal_readiness"]["value"].as_u64().unwrap(),
                s["pql"]["value"].as_u64().unwrap(),
                s["abuse"]["value"].as_u64().unwrap()
            ),
            (*deal, *pql, *abuse),
            "{account}: {s}"
        );
        // Every point is explained.
        for score in ["deal_readiness", "pql", "abuse"] {
            let sum: u64 = s[score]["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["points"].as_u64().unwrap())
                .sum();
            assert_eq!(
                sum.min(100),
                s[score]["value"].as_u64().unwrap(),
                "{account} {score}"
            );
        }
    }
    let shape = |s: &Value| s["limits"][0]["shape"].clone();
    let get = |account: &String| {
        let (http, url, reader) = (
            app.http.clone(),
            app.url(&format!("/v1/accounts/{account}/scores")),
            reader.clone(),
        );
        async move {
            http.get(url)
                .bearer_auth(reader)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(shape(&get(&trajectory).await), json!("trajectory"));
    assert_eq!(shape(&get(&collision).await), json!("collision"));
    assert_eq!(get(&abuser).await["abuse_suspected"], json!(true));
    assert!(get(&power).await["power_user"].is_object());
    let (flagged,): (bool,) =
        sqlx::query_as("SELECT abuse_flagged_at IS NOT NULL FROM accounts WHERE account_id = $1")
            .bind(&abuser)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(flagged, "the scorer flags the abuser");
    // ...and puts it in review: a review_suspected account event the aggregator applies.
    let review: (Option<String>, Option<String>, Option<i32>) = wait_for(
        "the abuser in review",
        Duration::from_secs(20),
        || async {
            let row: (Option<String>, Option<String>, Option<i32>) = sqlx::query_as(
                "SELECT review_state, review_actor, review_score FROM accounts WHERE account_id = $1",
            )
            .bind(&abuser)
            .fetch_one(&pool)
            .await
            .unwrap();
            check(row, |r| r.0.is_some())
        },
    )
    .await;
    assert_eq!(
        review,
        (
            Some("suspected".into()),
            Some("meterline:scorer".into()),
            Some(75)
        )
    );

    // A restart re-scores everyone and raises nothing again.
    scorer.stop().await.unwrap();
    let mut redis = app.redis().await;
    let all: Vec<&String> = expected.keys().copied().chain([&multi_b]).collect();
    let _: () = redis::cmd("SADD")
        .arg(format!("{}dirty", config.redis.key_prefix))
        .arg(&all)
        .query_async(&mut redis)
        .await
        .unwrap();
    let scorer = services::start(
        &config_scorer,
        Components::none().scorer(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("scorer restarts");
    wait_until_scorer_idle(&app, &pool, &steady).await;
    let again = read_signals(&config, &format!("t2-{id}")).await;
    assert_eq!(
        again.len(),
        want.len(),
        "no signal raised twice after a restart: {again:?}"
    );
    let history: u64 = app
        .clickhouse()
        .query("SELECT count() FROM account_scores")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        history >= expected.len() as u64,
        "score history in ClickHouse"
    );
    scorer.stop().await.unwrap();

    // For a person: the scores with their reasons.
    let out = ConfigFile::write(&config)
        .command()
        .args(["scores", enterprise.as_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("deal readiness: 75/100"), "{text}");
    assert!(
        text.contains("+30  monthly_tokens: 60000000 tokens this month"),
        "{text}"
    );
    assert!(text.contains("+10  company_size: company of 500"), "{text}");
    app.stop().await;
}

/// The scorer's ClickHouse history queries bind their values: two accounts in one batch (ids
/// using every punctuation character an id may have) each get their own facts, and a gated
/// plugin whose name holds a quote and a backslash is matched. Needs no broker: the rows are
/// written to ClickHouse directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_queries_bind_account_ids_and_plugin_names() {
    let mut config = isolated_config(&unique_suffix());
    let gated = r"o'reilly\pack";
    config.scorer.gates.gated_plugins = vec![gated.into(), "guardrails".into()];
    meterline::migrate::postgres(&config).await.unwrap();
    meterline::migrate::clickhouse(&config).await.unwrap();
    let ch = config.clickhouse.client();

    let id = unique_suffix();
    let a = meterline_schemas::AccountId::parse(&format!("{id}.a:b-c_d")).unwrap();
    let b = meterline_schemas::AccountId::parse(&format!("{id}-b")).unwrap();
    let outsider = format!("{id}-outsider");
    let now = Utc::now();
    // Inside today's first minute would put "today" and "the last 30 minutes" apart; a few
    // seconds ago is inside both unless the day just turned, which the assertions allow for.
    let at = (now - ChronoDuration::seconds(5)).timestamp();
    let insert = |account: &str, session: &str, prompt: &str, plugins: Vec<&str>| {
        ch.query(
            "INSERT INTO usage_events (event_id, occurred_at, received_at, account_id, model, \
             session_id, prompt_hash, plugins) VALUES (?, toDateTime(?), toDateTime(?), ?, 'm', ?, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(at)
        .bind(at)
        .bind(account)
        .bind(session)
        .bind(prompt)
        .bind(plugins)
        .execute()
    };
    insert(a.as_str(), "s1", "p1", vec![gated]).await.unwrap();
    insert(a.as_str(), "s1", "p2", vec!["other", gated])
        .await
        .unwrap();
    insert(a.as_str(), "s1", "p2", vec!["other"]).await.unwrap();
    insert(b.as_str(), "s'2", "p1", vec!["guardrails"])
        .await
        .unwrap();
    insert(&outsider, "s3", "p1", vec![gated]).await.unwrap();

    let stores = meterline_scorer::load::Stores {
        clickhouse: ch.clone(),
        redis: config.redis.connect().await.unwrap(),
        hot: meterline_schemas::keys::hot::HotKeys::new(config.redis.key_prefix.clone()).unwrap(),
        pg: meterline::migrate::connect_postgres(&config).await.unwrap(),
        public_domains: std::sync::Arc::new(config.public_domains().unwrap()),
    };
    let facts = stores
        .facts(
            &[a.clone(), b.clone()],
            now,
            &config.quota,
            &config.tiers,
            &config.scorer,
        )
        .await
        .unwrap();
    let by_id: BTreeMap<&str, _> = facts.iter().map(|f| (f.account_id.as_str(), f)).collect();
    assert_eq!(by_id.len(), 2, "only the batch's accounts");
    let (fa, fb) = (by_id[a.as_str()], by_id[b.as_str()]);

    assert_eq!((fa.gate_hits_30d, fb.gate_hits_30d), (2, 1));
    assert_eq!(fa.daily.iter().map(|d| d.requests).sum::<u64>(), 3);
    assert_eq!(fb.daily.iter().map(|d| d.requests).sum::<u64>(), 1);
    assert_eq!(fa.minutes.iter().map(|(_, n)| n).sum::<u64>(), 3);
    if Grain::Day.window_start(now).timestamp() <= at {
        let all = stores.all_accounts(now).await.unwrap();
        for id in [a.as_str(), b.as_str(), outsider.as_str()] {
            assert!(all.iter().any(|x| x == id), "{id} in the daily full pass");
        }
        assert_eq!((fa.prompts_today, fa.distinct_prompts_today), (3, 2));
        assert_eq!(fa.sessions_today.len(), 1);
        assert_eq!(fb.sessions_today[0].session_id, "s'2");
    }
}

/// The monthly reset (seed 002's re-engagement): on the 1st, accounts that hit a limit in the
/// month before get one `allowance_reset` signal each, on the topic; approaching a limit, a hit
/// two months back or this month, and an Enterprise account get none; and a second sweep (a
/// restarted scorer) raises nothing again. The hits are rows of PostgreSQL
/// `limit_stage_crossings` as the scorer records them; plans come from signups through ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_reset_reaches_last_months_limit_hitters_once() {
    let config = config();
    let app = spawn_with(config, Components::none().ingest().aggregator()).await;
    let pool = app.pg().await;
    let id = unique_suffix();
    let acct = |name: &str| format!("{id}-{name}");
    // (account, plan at signup or none, crossings: (limit, window, stage))
    type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str, i32)>);
    let cases: Vec<Case> = vec![
        (
            "free-hit",
            Some("free"),
            vec![
                ("day_requests", "20261115", 100),
                ("day_requests", "20261130", 100),
                ("month_requests", "202611", 100),
            ],
        ),
        (
            "pro-hit",
            Some("pro"),
            vec![("day_requests", "20261101", 100)],
        ),
        (
            "no-row",
            None,
            vec![("month_weighted_tokens", "202611", 100)],
        ),
        (
            "ent-hit",
            Some("enterprise"),
            vec![("day_requests", "20261120", 100)],
        ),
        (
            "approached",
            Some("free"),
            vec![
                ("day_requests", "20261120", 95),
                ("month_requests", "202611", 85),
            ],
        ),
        (
            "october",
            Some("free"),
            vec![("day_requests", "20261031", 100)],
        ),
        (
            "december",
            Some("free"),
            vec![("day_requests", "20261201", 100)],
        ),
    ];
    let signups: Vec<Value> = cases
        .iter()
        .filter_map(|(name, plan, _)| plan.map(|p| (name, p)))
        .map(|(name, plan)| {
            json!({
                "event_id": uuid::Uuid::new_v4().to_string(),
                "occurred_at": (Utc::now() - ChronoDuration::days(60)).to_rfc3339(),
                "account_id": acct(name),
                "type": "signup",
                "plan": plan,
            })
        })
        .collect();
    let (status, body) = app.post_json("/v1/account-events", &json!(signups)).await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = signups
        .iter()
        .map(|s| s["account_id"].as_str().unwrap().to_owned())
        .collect();
    wait_for(
        "the signups in PostgreSQL",
        Duration::from_secs(30),
        || async {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM accounts WHERE account_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            check(n, |n| *n == ids.len() as i64)
        },
    )
    .await;
    for (name, _, crossings) in &cases {
        for (limit, window, stage) in crossings {
            sqlx::query(
                "INSERT INTO limit_stage_crossings (account_id, limit_name, window_id, stage, occurred_at) \
                 VALUES ($1, $2, $3, $4, now())",
            )
            .bind(acct(name))
            .bind(limit)
            .bind(window)
            .bind(stage)
            .execute(&pool)
            .await
            .unwrap();
        }
    }

    let scorer = services::scorer(&app.config, &pool, Default::default())
        .await
        .unwrap();
    let first_of_december = Utc.with_ymd_and_hms(2026, 12, 1, 0, 30, 0).unwrap();
    assert_eq!(scorer.reset_sweep(first_of_december).await.unwrap(), 3);
    // A restarted scorer sweeps again the same month: nothing new.
    assert_eq!(
        scorer
            .reset_sweep(first_of_december + ChronoDuration::hours(5))
            .await
            .unwrap(),
        0
    );

    let signals = read_signals(&app.config, &format!("mlt-{id}-reset-reader")).await;
    let mut got: Vec<(String, String, String, Vec<String>)> = signals
        .iter()
        .filter(|s| s.account_id.starts_with(&id))
        .map(|s| {
            assert_eq!(s.kind, SignalKind::AllowanceReset, "{s:?}");
            (
                s.account_id.clone(),
                s.plan.clone(),
                s.episode.clone(),
                s.reasons.clone(),
            )
        })
        .collect();
    got.sort();
    let want = vec![
        (
            acct("free-hit"),
            "free".to_owned(),
            "202612".to_owned(),
            vec![
                "hit day_requests in 2 windows of 202611".to_owned(),
                "hit month_requests once in 202611".to_owned(),
            ],
        ),
        (
            acct("no-row"),
            "free".to_owned(),
            "202612".to_owned(),
            vec!["hit month_weighted_tokens once in 202611".to_owned()],
        ),
        (
            acct("pro-hit"),
            "pro".to_owned(),
            "202612".to_owned(),
            vec!["hit day_requests once in 202611".to_owned()],
        ),
    ];
    assert_eq!(got, want);
}
