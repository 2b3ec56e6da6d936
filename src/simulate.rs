//! `meterline simulate`: a fleet of gateways sending a month of traffic from a seeded
//! population, through ingest, with the gateway client, and a ground truth to check the
//! pipeline's signals against.
//!
//! The population is a pure function of the seed, the size and a run tag (so a second run on
//! the same machine has fresh account ids and fingerprints): [`population`] picks each
//! account's behaviour, [`day_events`] what it does on a given day. Event time runs from
//! `--days` ago up to now, day by day, as fast as the pipeline takes it; the behaviours the
//! scorer judges on "today" and "the last hour" (sessions, key sharing, new accounts) happen in
//! the last hour of event time, so they are current when the scorer sees them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, DurationRound, TimeZone, Utc};
use meterline_client::{AccountEvent, ClientConfig, GatewayClient, UsageEvent};
use meterline_ingest::Scope;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::migrate::connect_postgres;
use crate::{services, Config};

/// The signal kinds `--check` holds to its thresholds.
pub const CHECKED: [&str; 4] = [
    "deal_ready",
    "abuse_suspected",
    "key_sharing",
    "multi_account",
];

/// The kinds the ground truth predicts for every account (the checked ones and power users);
/// other kinds (limit stages, plugin gates, PQLs, rate limiting) are reported but not judged.
pub const PREDICTED: [&str; 5] = [
    "deal_ready",
    "abuse_suspected",
    "key_sharing",
    "multi_account",
    "power_user",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Steady,
    Trajectory,
    Collision,
    Pro,
    Converter,
    Churner,
    Pii,
    EnterpriseReady,
    PowerUser,
    Abuser,
    SharedKey,
    MultiAccount,
}

impl Behaviour {
    /// Share of the population, in per mille.
    const MIX: [(Behaviour, u32); 12] = [
        (Behaviour::Steady, 440),
        (Behaviour::Trajectory, 80),
        (Behaviour::Collision, 40),
        (Behaviour::Pro, 100),
        (Behaviour::Converter, 40),
        (Behaviour::Churner, 30),
        (Behaviour::Pii, 30),
        (Behaviour::EnterpriseReady, 10),
        (Behaviour::PowerUser, 40),
        (Behaviour::Abuser, 70),
        (Behaviour::SharedKey, 50),
        (Behaviour::MultiAccount, 70),
    ];

    /// The signals this behaviour must raise (the kinds the ground truth asserts).
    pub fn expected(self) -> &'static [&'static str] {
        match self {
            Behaviour::EnterpriseReady => &["deal_ready"],
            Behaviour::Abuser => &["abuse_suspected"],
            Behaviour::SharedKey => &["key_sharing"],
            Behaviour::MultiAccount => &["multi_account"],
            Behaviour::PowerUser => &["power_user"],
            _ => &[],
        }
    }
}

/// One simulated account; a line of the ground-truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    pub account_id: String,
    pub behaviour: Behaviour,
    pub expected: Vec<String>,
    /// The multi-account cluster, for the accounts in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SimAccount {
    pub index: usize,
    pub id: String,
    pub behaviour: Behaviour,
    pub cluster: Option<usize>,
    seed: u64,
}

impl SimAccount {
    pub fn truth(&self) -> TruthLine {
        TruthLine {
            account_id: self.id.clone(),
            behaviour: self.behaviour,
            expected: self
                .behaviour
                .expected()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            cluster: self.cluster,
        }
    }
}

/// The population: every behaviour at least twice (multi-accounts in pairs), the rest by the
/// mix, deterministically from `seed`.
pub fn population(seed: u64, n: usize, tag: &str) -> Vec<SimAccount> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<Behaviour> = Behaviour::MIX.iter().flat_map(|(b, _)| [*b, *b]).collect();
    let total: u32 = Behaviour::MIX.iter().map(|(_, w)| w).sum();
    while kinds.len() < n {
        let mut pick = rng.random_range(0..total);
        for (b, w) in Behaviour::MIX {
            if pick < w {
                kinds.push(b);
                break;
            }
            pick -= w;
        }
    }
    // Multi-accounts come in pairs.
    if kinds
        .iter()
        .filter(|b| **b == Behaviour::MultiAccount)
        .count()
        % 2
        == 1
    {
        kinds.push(Behaviour::MultiAccount);
    }
    kinds.sort();
    let mut in_cluster = 0usize;
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, behaviour)| {
            let cluster = (behaviour == Behaviour::MultiAccount).then(|| {
                in_cluster += 1;
                (in_cluster - 1) / 2
            });
            SimAccount {
                index,
                id: format!("sim-{tag}-{index:05}"),
                behaviour,
                cluster,
                seed: seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }
        })
        .collect()
}

/// The clock a simulation runs against.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: DateTime<Utc>,
    pub today: DateTime<Utc>,
    pub month: DateTime<Utc>,
}

impl Clock {
    pub fn at(now: DateTime<Utc>) -> Self {
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc();
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("first of the month");
        Self { now, today, month }
    }

    fn day(&self, days_ago: u32) -> DateTime<Utc> {
        self.today - ChronoDuration::days(i64::from(days_ago))
    }

    /// `minutes` before now, but not before today began: "today" activity stays today.
    fn recent(&self, minutes: i64) -> DateTime<Utc> {
        (self.now - ChronoDuration::minutes(minutes)).max(self.today)
    }
}

/// Events of one account on one day (`days_ago` = 0 is today, up to now).
pub struct DayEvents {
    pub accounts: Vec<AccountEvent>,
    pub usage: Vec<UsageEvent>,
}

fn ip(tag_hash: u8, index: usize) -> String {
    format!("10.{tag_hash}.{}.{}", (index / 250) % 250, index % 250 + 1)
}

fn tag_hash(tag: &str) -> u8 {
    tag.bytes()
        .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b))
}

struct Gen<'a> {
    a: &'a SimAccount,
    tag: &'a str,
    rng: StdRng,
    out: DayEvents,
    prompt: u64,
}

impl Gen<'_> {
    fn usage(&mut self, at: DateTime<Utc>, input: u64, output: u64) -> &mut UsageEvent {
        let a = self.a;
        let mut e = UsageEvent::new(
            &a.id,
            &format!("key-{}", a.id),
            "gw-sim-1",
            "us-east-1",
            "aws",
            "openai",
            "gpt-4o-mini",
            input,
            output,
        );
        e.occurred_at = at;
        e.cost_micros = Some((input + 3 * output) / 10);
        e.status = Some(200);
        e.latency_ms = Some(self.rng.random_range(80..1_500));
        e.client_ip = Some(ip(tag_hash(self.tag), a.index));
        self.prompt += 1;
        e.prompt_hash = Some(format!("p-{}-{}", a.index, self.prompt));
        self.out.usage.push(e);
        self.out.usage.last_mut().expect("just pushed")
    }

    fn account(&mut self, at: DateTime<Utc>, kind: &str) -> &mut AccountEvent {
        let mut e = AccountEvent::new(&self.a.id, kind);
        e.occurred_at = at;
        self.out.accounts.push(e);
        self.out.accounts.last_mut().expect("just pushed")
    }

    fn signup(&mut self, at: DateTime<Utc>, plan: &str) -> &mut AccountEvent {
        let (a, tag) = (self.a, self.tag);
        let e = self.account(at, "signup");
        e.plan = Some(plan.into());
        e.email_domain = Some(format!("{}.example", a.id));
        e.signup_ip = Some(ip(tag_hash(tag), a.index));
        e.device_id = Some(format!("dev-{tag}-{}", a.index));
        e.browser_signature = Some(format!("br-{tag}-{}", a.index));
        e
    }

    /// A quiet working day: `n` requests between 09:00 and 18:00.
    fn workday(&mut self, day: DateTime<Utc>, n: u32, tokens: std::ops::Range<u64>) {
        for _ in 0..n {
            let at = day + ChronoDuration::seconds(self.rng.random_range(9 * 3600..18 * 3600));
            let input = self.rng.random_range(tokens.clone());
            let output = input / 4;
            self.usage(at, input, output);
        }
    }

    /// Today: two ordinary sessions ten minutes apart, five requests ten seconds apart each.
    fn sessions_today(&mut self, c: &Clock) {
        for s in 0..2 {
            let start = c.recent(40 - 10 * s);
            for i in 0..5 {
                let e = self.usage(start + ChronoDuration::seconds(i * 10), 800, 200);
                e.session_id = Some(format!("s{s}"));
            }
        }
    }
}

/// What `a` does `days_ago` days ago (0: today, up to `c.now`), in a `days`-day simulation.
pub fn day_events(a: &SimAccount, tag: &str, c: &Clock, days: u32, days_ago: u32) -> DayEvents {
    let mut g = Gen {
        a,
        tag,
        rng: StdRng::seed_from_u64(
            a.seed ^ u64::from(days_ago).wrapping_mul(0xA24B_AED4_963E_E407),
        ),
        out: DayEvents {
            accounts: vec![],
            usage: vec![],
        },
        prompt: u64::from(days_ago) * 10_000,
    };
    let first = days_ago == days;
    let day = c.day(days_ago);
    let long_ago = c.now - ChronoDuration::days(i64::from(days) + 1);
    match a.behaviour {
        Behaviour::Steady | Behaviour::Pii => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=12);
                g.workday(day, n, 200..2_000);
            } else {
                g.sessions_today(c);
                if a.behaviour == Behaviour::Pii {
                    for i in 0..6 {
                        let e = g.usage(c.recent(20) + ChronoDuration::seconds(i), 500, 100);
                        e.pii_detected = true;
                    }
                }
            }
        }
        Behaviour::Trajectory => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                // Daily volume grows steadily towards the month's allowance.
                let daily = 20_000 + 3_000 * u64::from(days - days_ago);
                for i in 0..10 {
                    g.usage(
                        day + ChronoDuration::hours(10) + ChronoDuration::minutes(i),
                        daily / 10,
                        0,
                    );
                }
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Collision => {
            // Signed up this morning and already near the day's budget.
            if days_ago == 0 {
                g.signup((c.now - ChronoDuration::hours(10)).max(c.today), "free");
                for i in 0..10 {
                    g.usage(c.recent(30) + ChronoDuration::seconds(i * 20), 9_000, 0);
                }
            }
        }
        Behaviour::Pro => {
            if first {
                let seats = g.rng.random_range(3..=10);
                g.signup(long_ago, "pro").seats = Some(seats);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000);
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Converter => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago == days / 2 {
                g.account(day + ChronoDuration::hours(12), "upgrade_page_viewed");
                g.account(
                    day + ChronoDuration::hours(12) + ChronoDuration::minutes(5),
                    "plan_changed",
                )
                .plan = Some("pro".into());
            }
            if days_ago > 0 {
                let n = if days_ago < days / 2 { 20 } else { 8 };
                g.workday(day, n, 500..3_000);
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Churner => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago == 10.min(days) {
                g.account(day + ChronoDuration::hours(8), "churned");
            }
            if days_ago > 10 {
                let n = g.rng.random_range(3..=8);
                g.workday(day, n, 200..1_500);
            }
        }
        Behaviour::EnterpriseReady => {
            if first {
                let e = g.signup(long_ago, "free");
                e.company_size = Some(500);
                e.seats = Some(5);
            }
            if days_ago == 0 {
                // This month: 60M tokens from 25 people, three regions on three clouds, three
                // providers.
                let start = c.month.max(c.now - ChronoDuration::days(20));
                let span = (c.now - ChronoDuration::minutes(2) - start)
                    .num_seconds()
                    .max(1);
                let regions = ["us-east-1", "europe-west1", "eastasia"];
                let clouds = ["aws", "gcp", "azure"];
                let providers = ["openai", "anthropic", "google"];
                for i in 0..500i64 {
                    let at = start + ChronoDuration::seconds(span * i / 500);
                    let e = g.usage(at, 120_000, 0);
                    e.region = regions[i as usize % 3].into();
                    e.cloud = clouds[i as usize % 3].into();
                    e.provider = providers[i as usize % 3].into();
                    e.user_id = Some(format!("u{}", i % 25));
                }
            }
        }
        Behaviour::PowerUser => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(10..=20);
                g.workday(day, n, 500..3_000);
            } else {
                // Three long sessions today with varied prompts.
                let start = c.recent(45);
                for s in 0..3i64 {
                    for i in 0..9i64 {
                        let e =
                            g.usage(start + ChronoDuration::seconds(s * 30 + i * 60), 1_000, 300);
                        e.session_id = Some(format!("s{s}"));
                    }
                }
            }
        }
        Behaviour::Abuser => {
            if days_ago == 0 {
                // Signed up half an hour ago; eight sessions a second apart, one prompt.
                g.signup(c.recent(30), "free");
                let start = c.recent(20);
                for i in 0..16i64 {
                    let e = g.usage(start + ChronoDuration::seconds(i / 2), 400, 100);
                    e.session_id = Some(format!("s{}", i / 2));
                    e.prompt_hash = Some("same-prompt".into());
                }
            }
        }
        Behaviour::SharedKey => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000);
            } else {
                // One key from six client IPs within one clock minute (the scorer groups by
                // minute, so the burst must not straddle a minute boundary).
                let minute = c
                    .recent(5)
                    .duration_trunc(ChronoDuration::minutes(1))
                    .unwrap_or(c.today);
                for i in 0..6i64 {
                    let e = g.usage(minute + ChronoDuration::seconds(i * 5), 300, 50);
                    e.client_ip = Some(format!("203.0.113.{}", 10 + i));
                }
            }
        }
        Behaviour::MultiAccount => {
            let cluster = a.cluster.unwrap_or(0);
            if days_ago == 5.min(days) {
                let e = g.signup(day + ChronoDuration::hours(14), "free");
                // The cluster shares its signup IP and device; each browser differs.
                e.signup_ip = Some(format!("100.64.{}.{}", cluster / 250, cluster % 250 + 1));
                e.device_id = Some(format!("dev-{tag}-cluster-{cluster}"));
            }
            if days_ago < 5 && days_ago > 0 {
                g.workday(day, 3, 200..1_000);
            }
        }
    }
    g.out
}

/// Options of one simulation.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub accounts: usize,
    pub days: u32,
    /// Ingest's base URL.
    pub url: String,
    /// An ingest token; a temporary one is made (and revoked) when absent.
    pub token: Option<String>,
    /// Where the ground truth goes (JSONL).
    pub truth: PathBuf,
    pub check: bool,
    pub min_precision: f64,
    pub min_recall: f64,
    pub summary: bool,
    /// How long `--check` and the summary wait for the pipeline to finish with the traffic.
    pub settle_timeout: Duration,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tag: String,
    pub accounts: usize,
    pub usage_events: u64,
    pub account_events: u64,
    pub sent: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub elapsed: Duration,
    pub check: Option<CheckReport>,
    pub summary: Option<String>,
    pub interrupted: bool,
}

/// Precision and recall of one signal kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindScore {
    pub kind: String,
    pub expected: usize,
    pub raised: usize,
    pub true_positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub checked: bool,
    /// Whether the ground truth predicts this kind at all.
    pub predicted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub kinds: Vec<KindScore>,
    /// Power users the scorer suspected of abuse (must be none).
    pub power_users_flagged: Vec<String>,
    pub passed: bool,
}

impl CheckReport {
    pub fn table(&self, min_precision: f64, min_recall: f64) -> String {
        let mut out = format!(
            "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}\n",
            "signal", "expected", "raised", "hits", "precision", "recall"
        );
        for k in &self.kinds {
            if !k.predicted {
                out.push_str(&format!(
                    "{:<22} {:>8} {:>7} {:>5} {:>10} {:>7}  (not predicted by the ground truth)\n",
                    k.kind, "-", k.raised, "-", "-", "-"
                ));
                continue;
            }
            let flag = if !k.checked {
                ""
            } else if k.precision >= min_precision && k.recall >= min_recall {
                "  ok"
            } else {
                "  BELOW THRESHOLD"
            };
            out.push_str(&format!(
                "{:<22} {:>8} {:>7} {:>5} {:>10.3} {:>7.3}{flag}\n",
                k.kind, k.expected, k.raised, k.true_positives, k.precision, k.recall
            ));
        }
        out.push_str(&format!(
            "power users flagged as abusers: {}\n",
            if self.power_users_flagged.is_empty() {
                "none".to_owned()
            } else {
                self.power_users_flagged.join(", ")
            }
        ));
        out.push_str(&format!(
            "check (precision >= {min_precision}, recall >= {min_recall} for {}): {}\n",
            CHECKED.join(", "),
            if self.passed { "PASSED" } else { "FAILED" }
        ));
        out
    }
}

/// Compares raised signals (account, kind) with the ground truth.
pub fn score_signals(
    truth: &[TruthLine],
    raised: &BTreeSet<(String, String)>,
    min_precision: f64,
    min_recall: f64,
) -> CheckReport {
    let expected: BTreeSet<(String, String)> = truth
        .iter()
        .flat_map(|t| t.expected.iter().map(|k| (t.account_id.clone(), k.clone())))
        .collect();
    let kinds: BTreeSet<&str> = expected
        .iter()
        .chain(raised.iter())
        .map(|(_, k)| k.as_str())
        .chain(PREDICTED)
        .collect();
    let mut scores = Vec::new();
    let mut passed = true;
    for kind in kinds {
        let e: BTreeSet<&String> = expected
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(a, _)| a)
            .collect();
        let r: BTreeSet<&String> = raised
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(a, _)| a)
            .collect();
        let hits = e.intersection(&r).count();
        let precision = if r.is_empty() {
            if e.is_empty() {
                1.0
            } else {
                0.0
            }
        } else {
            hits as f64 / r.len() as f64
        };
        let recall = if e.is_empty() {
            1.0
        } else {
            hits as f64 / e.len() as f64
        };
        let checked = CHECKED.contains(&kind);
        if checked && (precision < min_precision || recall < min_recall) {
            passed = false;
        }
        scores.push(KindScore {
            kind: kind.to_owned(),
            expected: e.len(),
            raised: r.len(),
            true_positives: hits,
            precision,
            recall,
            checked,
            predicted: PREDICTED.contains(&kind),
        });
    }
    let power_users_flagged: Vec<String> = truth
        .iter()
        .filter(|t| t.behaviour == Behaviour::PowerUser)
        .filter(|t| raised.contains(&(t.account_id.clone(), "abuse_suspected".to_owned())))
        .map(|t| t.account_id.clone())
        .collect();
    passed &= power_users_flagged.is_empty();
    CheckReport {
        kinds: scores,
        power_users_flagged,
        passed,
    }
}

fn run_tag() -> String {
    let t = Utc::now().format("%m%d%H%M%S").to_string();
    let r: u16 = rand::rng().random();
    format!("{t}{r:04x}")
}

/// Runs a simulation against a running pipeline.
pub async fn run(config: &Config, o: &Options) -> Result<Outcome> {
    if o.days == 0 || o.days > 30 {
        bail!("--days: must be 1 to 30 (ingest refuses events older than 35 days)");
    }
    if o.accounts < 24 {
        bail!("--accounts: must be at least 24 (two of each behaviour)");
    }
    let pool = connect_postgres(config).await?;
    let tag = run_tag();
    let (token, temporary) = match &o.token {
        Some(t) => (t.clone(), None),
        None => {
            let name = format!("simulator-{tag}");
            let t = services::token_store(config, &pool)
                .create(&name, &[Scope::Ingest], None)
                .await
                .context("creating the simulator's ingest token")?;
            (t, Some(name))
        }
    };
    let people = population(o.seed, o.accounts, &tag);
    if let Some(dir) = o.truth.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let truth: Vec<TruthLine> = people.iter().map(SimAccount::truth).collect();
    let mut file = String::new();
    for t in &truth {
        file.push_str(&serde_json::to_string(t)?);
        file.push('\n');
    }
    std::fs::write(&o.truth, file).with_context(|| format!("writing {}", o.truth.display()))?;

    let clock = Clock::at(Utc::now());
    let mut cc = ClientConfig::new(&o.url, &token);
    cc.buffer_capacity = 200_000;
    let client = GatewayClient::start(cc);
    let bar = if o.progress {
        let b = indicatif::ProgressBar::new(u64::from(o.days) + 1);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] day {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix("simulating");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let (mut usage_events, mut account_events) = (0u64, 0u64);
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    'days: for days_ago in (0..=o.days).rev() {
        for a in &people {
            let d = day_events(a, &tag, &clock, o.days, days_ago);
            account_events += d.accounts.len() as u64;
            usage_events += d.usage.len() as u64;
            for e in d.accounts {
                client.record_account(e);
            }
            for e in d.usage {
                client.record(e);
            }
        }
        // Keep the buffer well below its bound: events are never dropped for speed.
        while client.pending() > 100_000 {
            tokio::select! {
                _ = &mut ctrl_c => { interrupted = true; break 'days; }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let c = client.counters();
            bar.set_message(format!("{} sent, {} pending", c.sent, client.pending()));
        }
        bar.inc(1);
        let c = client.counters();
        bar.set_message(format!("{} sent, {} pending", c.sent, client.pending()));
    }
    bar.set_prefix("flushing");
    tokio::select! {
        _ = client.shutdown() => {}
        _ = &mut ctrl_c => { interrupted = true; }
    }
    let counters = client.counters();
    bar.finish_with_message(format!("{} events sent", counters.sent));
    if let Some(name) = &temporary {
        let _ = services::token_store(config, &pool).revoke(name).await;
    }
    let mut outcome = Outcome {
        tag: tag.clone(),
        accounts: people.len(),
        usage_events,
        account_events,
        sent: counters.sent,
        rejected: counters.rejected,
        dropped: counters.dropped,
        elapsed: started.elapsed(),
        check: None,
        summary: None,
        interrupted,
    };
    if interrupted || !(o.check || o.summary) {
        return Ok(outcome);
    }
    settle(
        config,
        &pool,
        &tag,
        usage_events - counters.rejected.min(usage_events),
        o.settle_timeout,
        o.progress,
    )
    .await?;
    if o.check {
        let raised = raised_signals(&pool, &tag).await?;
        outcome.check = Some(score_signals(
            &truth,
            &raised,
            o.min_precision,
            o.min_recall,
        ));
    }
    if o.summary {
        outcome.summary = Some(crate::report::demo_summary(config, &pool, &outcome, o).await?);
    }
    Ok(outcome)
}

async fn raised_signals(pool: &sqlx::PgPool, tag: &str) -> Result<BTreeSet<(String, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT account_id, kind FROM account_signals WHERE account_id LIKE $1",
    )
    .bind(format!("sim-{tag}-%"))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until ClickHouse holds the run's usage events, the scorer's work queue is empty and
/// no new signal has appeared for a few seconds.
async fn settle(
    config: &Config,
    pool: &sqlx::PgPool,
    tag: &str,
    usage_events: u64,
    timeout: Duration,
    progress: bool,
) -> Result<()> {
    let started = Instant::now();
    let bar = if progress {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    let ch = config.clickhouse.client();
    loop {
        let stored: u64 = ch
            .query("SELECT count() FROM usage_events WHERE account_id LIKE ?")
            .bind(format!("sim-{tag}-%"))
            .fetch_one()
            .await
            .unwrap_or(0);
        bar.set_message(format!(
            "waiting for the aggregator: {stored}/{usage_events} events in ClickHouse"
        ));
        if stored >= usage_events {
            break;
        }
        if started.elapsed() > timeout {
            bail!("the aggregator stored {stored} of {usage_events} events within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut redis = redis::Client::open(config.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let dirty = meterline_schemas::keys::Keys::new(config.redis.key_prefix.clone()).dirty();
    let mut last = (usize::MAX, Instant::now());
    loop {
        let queued: u64 = redis::cmd("SCARD")
            .arg(&dirty)
            .query_async(&mut redis)
            .await?;
        let signals = raised_signals(pool, tag).await?.len();
        bar.set_message(format!(
            "waiting for the scorer: {queued} accounts queued, {signals} signals"
        ));
        if signals != last.0 || queued > 0 {
            last = (signals, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        if started.elapsed() > timeout {
            bail!("the scorer did not settle within {timeout:?} ({queued} accounts still queued)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Reads a ground-truth file.
pub fn read_truth(path: &std::path::Path) -> Result<Vec<TruthLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Counts of the behaviours, for the summary.
pub fn behaviour_counts(truth: &[TruthLine]) -> BTreeMap<Behaviour, usize> {
    let mut m = BTreeMap::new();
    for t in truth {
        *m.entry(t.behaviour).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_is_deterministic_and_has_every_behaviour() {
        let a = population(42, 2_000, "t");
        let b = population(42, 2_000, "t");
        assert_eq!(
            a.iter().map(|x| (&x.id, x.behaviour)).collect::<Vec<_>>(),
            b.iter().map(|x| (&x.id, x.behaviour)).collect::<Vec<_>>()
        );
        let counts = behaviour_counts(&a.iter().map(SimAccount::truth).collect::<Vec<_>>());
        assert_eq!(counts.len(), Behaviour::MIX.len());
        assert!(counts.values().all(|n| *n >= 2));
        assert_eq!(counts[&Behaviour::MultiAccount] % 2, 0);
        // The mix, within a couple of percent.
        let steady = counts[&Behaviour::Steady] as f64 / a.len() as f64;
        assert!((steady - 0.44).abs() < 0.03, "{steady}");
        let c = population(43, 2_000, "t");
        assert_ne!(
            a.iter().map(|x| x.behaviour).collect::<Vec<_>>(),
            c.iter().map(|x| x.behaviour).collect::<Vec<_>>()
        );
    }

    #[test]
    fn days_are_deterministic_and_stay_in_their_window() {
        let people = population(7, 100, "t");
        let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap());
        for a in &people {
            for d in 0..=30 {
                let x = day_events(a, "t", &clock, 30, d);
                let y = day_events(a, "t", &clock, 30, d);
                assert_eq!(x.usage.len(), y.usage.len());
                for (e, f) in x.usage.iter().zip(&y.usage) {
                    assert_eq!(
                        (e.occurred_at, e.input_tokens, &e.prompt_hash),
                        (f.occurred_at, f.input_tokens, &f.prompt_hash)
                    );
                    assert!(e.occurred_at <= clock.now, "{:?} {e:?}", a.behaviour);
                    assert!(clock.now - e.occurred_at < ChronoDuration::days(35));
                }
                for e in &x.accounts {
                    assert!(
                        e.occurred_at <= clock.now
                            && clock.now - e.occurred_at < ChronoDuration::days(35)
                    );
                }
            }
        }
    }

    #[test]
    fn a_shared_key_burst_fits_in_one_clock_minute() {
        let people = population(3, 100, "t");
        let a = people
            .iter()
            .find(|a| a.behaviour == Behaviour::SharedKey)
            .unwrap();
        for second in [0, 37, 55, 59] {
            let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 3, second).unwrap());
            let today = day_events(a, "t", &clock, 30, 0);
            let minutes: BTreeSet<_> = today
                .usage
                .iter()
                .map(|e| {
                    e.occurred_at
                        .duration_trunc(ChronoDuration::minutes(1))
                        .unwrap()
                })
                .collect();
            let ips: BTreeSet<_> = today.usage.iter().map(|e| e.client_ip.clone()).collect();
            assert_eq!((minutes.len(), ips.len()), (1, 6), "at second {second}");
        }
    }

    #[test]
    fn the_enterprise_account_is_deal_ready_by_the_brief() {
        let people = population(1, 100, "t");
        let a = people
            .iter()
            .find(|a| a.behaviour == Behaviour::EnterpriseReady)
            .unwrap();
        let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap());
        let today = day_events(a, "t", &clock, 30, 0);
        let month_tokens: u64 = today
            .usage
            .iter()
            .filter(|e| e.occurred_at >= clock.month)
            .map(|e| e.input_tokens + e.output_tokens)
            .sum();
        assert!(month_tokens > 50_000_000);
        let regions: BTreeSet<&str> = today.usage.iter().map(|e| e.region.as_str()).collect();
        assert_eq!(regions.len(), 3);
        let clouds: BTreeSet<&str> = today.usage.iter().map(|e| e.cloud.as_str()).collect();
        assert_eq!(clouds.len(), 3);
        let users: BTreeSet<_> = today.usage.iter().map(|e| e.user_id.clone()).collect();
        assert!(users.len() > 20);
        let signup = day_events(a, "t", &clock, 30, 30);
        assert_eq!(signup.accounts[0].company_size, Some(500));
    }

    #[test]
    fn precision_and_recall_per_kind() {
        let t = |a: &str, b: Behaviour| TruthLine {
            account_id: a.into(),
            behaviour: b,
            expected: b.expected().iter().map(|s| (*s).to_owned()).collect(),
            cluster: None,
        };
        let truth = vec![
            t("a", Behaviour::Abuser),
            t("b", Behaviour::Abuser),
            t("p", Behaviour::PowerUser),
            t("s", Behaviour::Steady),
        ];
        let raised: BTreeSet<(String, String)> = [
            ("a", "abuse_suspected"),
            ("s", "abuse_suspected"),
            ("p", "power_user"),
        ]
        .map(|(a, k)| (a.to_owned(), k.to_owned()))
        .into();
        let r = score_signals(&truth, &raised, 0.95, 0.95);
        let abuse = r
            .kinds
            .iter()
            .find(|k| k.kind == "abuse_suspected")
            .unwrap();
        assert_eq!(
            (abuse.expected, abuse.raised, abuse.true_positives),
            (2, 2, 1)
        );
        assert_eq!((abuse.precision, abuse.recall), (0.5, 0.5));
        assert!(!r.passed);
        let deal = r.kinds.iter().find(|k| k.kind == "deal_ready").unwrap();
        assert_eq!(
            (deal.precision, deal.recall),
            (1.0, 1.0),
            "nothing expected, nothing raised"
        );
        let mut raised2 = raised.clone();
        raised2.insert(("b".into(), "abuse_suspected".into()));
        raised2.remove(&("s".to_owned(), "abuse_suspected".to_owned()));
        raised2.insert(("p".into(), "abuse_suspected".into()));
        let r = score_signals(&truth, &raised2, 0.6, 0.95);
        assert_eq!(r.power_users_flagged, vec!["p".to_owned()]);
        assert!(
            !r.passed,
            "a power user flagged as an abuser fails the check"
        );
    }
}
