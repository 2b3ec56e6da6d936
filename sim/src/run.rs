//! Running a simulation: a fleet of gateways sending a month of traffic from a seeded
//! population, through ingest, with the gateway client, and a ground truth to check the
//! pipeline's signals against.
//!
//! The population is a pure function of the seed, the size and a run tag (so a second run on
//! the same machine has fresh account ids and fingerprints): [`population`] picks each
//! account's behaviour, [`day_events`] what it does on a given day. Event time runs from
//! `--days` ago up to now, day by day, as fast as the pipeline takes it; the behaviours the
//! scorer judges on "today" and "the last hour" (sessions, key sharing, new accounts) happen in
//! the last hour of event time, so they are current when the scorer sees them.
//!
//! The ground truth ([`crate::truth`](mod@crate::truth)) is computed from the same events before anything is
//! posted. The accounts' history from before the simulated days (long-standing customers'
//! signups and plan changes, earlier free signups) is posted first, and the traffic waits until
//! the aggregator has applied it, as a real customer base exists before this month's requests.
//! After the pipeline settles, `--check` compares the raised signals with the truth and looks
//! for the outcomes that must never happen (see [`crate::check`]); its report also goes to
//! `check.json` beside the ground truth.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use meterline_client::{ClientConfig, GatewayClient};
use meterline_ingest::Scope;
use meterline_schemas::Plan;
use rand::Rng;

use crate::check::*;
use crate::population::*;
use crate::traffic::*;
use crate::truth::TruthLine;
use crate::Env;

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
    /// Date long-standing customers' signups and plan changes from last year (see
    /// [`OLD_ACCOUNT_EVENTS_ACCEPTED`]).
    pub old_history: bool,
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
    /// Where the check's JSON report went (beside the ground truth, `check.json`).
    pub check_file: Option<PathBuf>,
    pub summary: Option<String>,
    pub interrupted: bool,
}

fn run_tag() -> String {
    let t = Utc::now().format("%m%d%H%M%S").to_string();
    let r: u16 = rand::rng().random();
    format!("{t}{r:04x}")
}

/// The smallest population: two of each behaviour, a whole campus group, every edge pair.
pub fn minimum_accounts() -> usize {
    Behaviour::MIX.len() * 2 + 4 + Edge::ALL.iter().map(|e| 2 * e.members()).sum::<usize>()
}

/// Runs a simulation against a running pipeline.
pub async fn run(env: &Env, o: &Options) -> Result<Outcome> {
    if o.days == 0 || o.days > 30 {
        bail!("--days: must be 1 to 30 (ingest refuses usage events older than 35 days)");
    }
    let minimum = minimum_accounts();
    if o.accounts < minimum {
        bail!("--accounts: must be at least {minimum} (two of each behaviour, a campus group and every edge pair)");
    }
    let pool = &env.pool;
    let tag = run_tag();
    let (token, temporary) = match &o.token {
        Some(t) => (t.clone(), None),
        None => {
            let name = format!("simulator-{tag}");
            let t = env
                .tokens
                .create(&name, &[Scope::Ingest], None)
                .await
                .context("creating the simulator's ingest token")?;
            (t, Some(name))
        }
    };
    let people = population(o.seed, o.accounts, &tag);
    let scenario = Scenario {
        tag: tag.clone(),
        clock: Clock::at(Utc::now()),
        days: o.days,
        old_history: o.old_history,
    };
    if let Some(dir) = o.truth.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The ground truth comes from the very events that are about to be posted.
    let truth: Vec<TruthLine> = crate::truth::truth(&people, &scenario);
    let mut file = String::new();
    for t in &truth {
        file.push_str(&serde_json::to_string(t)?);
        file.push('\n');
    }
    std::fs::write(&o.truth, file).with_context(|| format!("writing {}", o.truth.display()))?;

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
    // The accounts' history from before the simulated days (long-standing customers' signups
    // and plan changes, the free accounts that signed up earlier) goes first, and the traffic
    // waits until the pipeline has applied it: in a real gateway these customers exist long
    // before this month's requests, and the scorer must not meet them as unknown free accounts.
    let window_start = scenario.clock.day(o.days);
    let mut history = Vec::new();
    for a in &people {
        let d = day_events(a, &scenario, o.days);
        history.extend(
            d.accounts
                .into_iter()
                .filter(|e| e.occurred_at < window_start),
        );
    }
    let known: BTreeSet<&str> = history.iter().map(|e| e.account_id.as_str()).collect();
    let paying = truth
        .iter()
        .filter(|t| known.contains(t.account_id.as_str()) && t.lowest_plan > Plan::Free)
        .count();
    let known = known.len();
    account_events += history.len() as u64;
    for e in history {
        client.record_account(e);
    }
    client.flush().await;
    history_applied(env, &tag, known, paying, o.settle_timeout).await?;
    'days: for days_ago in (0..=o.days).rev() {
        for a in &people {
            let d = day_events(a, &scenario, days_ago);
            let accounts: Vec<_> = d
                .accounts
                .into_iter()
                .filter(|e| e.occurred_at >= window_start)
                .collect();
            account_events += accounts.len() as u64;
            usage_events += d.usage.len() as u64;
            for e in accounts {
                client.record_account(e);
            }
            for e in d.usage {
                client.record(e);
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
        let _ = env.tokens.revoke(name).await;
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
        check_file: None,
        summary: None,
        interrupted,
    };
    if interrupted || !(o.check || o.summary) {
        return Ok(outcome);
    }
    settle(
        env,
        &tag,
        usage_events - counters.rejected.min(usage_events),
        o.settle_timeout,
        o.progress,
    )
    .await?;
    if o.check {
        let raised = raised_signals(pool, &tag).await?;
        let policy = policy_findings(env, o, &tag, &truth).await?;
        let report = score_signals(&truth, &raised, policy, o.min_precision, o.min_recall);
        let path = o.truth.with_file_name("check.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        outcome.check = Some(report);
        outcome.check_file = Some(path);
    }
    if o.summary {
        outcome.summary = Some(crate::report::demo_summary(env, &outcome, o).await?);
    }
    Ok(outcome)
}

/// Waits until PostgreSQL holds the `known` accounts of the history, `paying` of them on a paid
/// plan.
async fn history_applied(
    env: &Env,
    tag: &str,
    known: usize,
    paying: usize,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let (rows, paid): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE plan <> 'free') FROM accounts WHERE account_id LIKE $1",
        )
        .bind(format!("sim-{tag}-%"))
        .fetch_one(&env.pool)
        .await
        .context("reading the accounts the history made")?;
        if rows as usize >= known && paid as usize >= paying {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("the aggregator applied {rows} of {known} accounts' history ({paid} of {paying} on a paid plan) within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The three outcomes that must never happen: paying accounts denied (asked through the read
/// path), Enterprise accounts prospected, notices naming a plan already held (from the
/// notifier's tables, once it has finished with the run's signals).
async fn policy_findings(
    env: &Env,
    o: &Options,
    tag: &str,
    truth: &[TruthLine],
) -> Result<PolicyFindings> {
    let like = format!("sim-{tag}-%");
    settle_notifier(env, &like, o.settle_timeout).await?;
    let trust_and_safety: Vec<String> = meterline_notifier::config::TRUST_AND_SAFETY_KINDS
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    let mut prospected: BTreeSet<String> = sqlx::query_as::<_, (String,)>(
        "SELECT DISTINCT account_id FROM notifications WHERE account_id LIKE $1 AND NOT (kind = ANY($2)) \
         UNION SELECT account_id FROM hubspot_deals WHERE account_id LIKE $1 \
         UNION SELECT account_id FROM dashboard_notices WHERE account_id LIKE $1",
    )
    .bind(&like)
    .bind(&trust_and_safety)
    .fetch_all(&env.pool)
    .await
    .context("reading the notifier's outbox")?
    .into_iter()
    .map(|(a,)| a)
    .collect();
    prospected.retain(|a| !a.is_empty());
    let notices: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT account_id, plan, message FROM dashboard_notices WHERE account_id LIKE $1",
    )
    .bind(&like)
    .fetch_all(&env.pool)
    .await
    .context("reading dashboard notices")?;
    let denied = paying_denied(env, o, tag, truth).await?;
    Ok(policy_from_rows(truth, &prospected, &notices, denied))
}

/// Asks `/v1/quota/check` for every paying account, with a temporary read token.
async fn paying_denied(
    env: &Env,
    o: &Options,
    tag: &str,
    truth: &[TruthLine],
) -> Result<Vec<String>> {
    let name = format!("simulator-read-{tag}");
    let token = env
        .tokens
        .create(&name, &[Scope::Read], None)
        .await
        .context("creating the simulator's read token")?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/quota/check", o.url.trim_end_matches('/'));
    let mut denied = Vec::new();
    let mut result = Ok(());
    for t in truth.iter().filter(|t| t.plan > Plan::Free) {
        let answer = http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "account_id": t.account_id,
                "model": "gpt-4o-mini",
                "estimated_input_tokens": 100,
                "estimated_output_tokens": 20,
            }))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let body: serde_json::Value = match answer {
            Ok(r) => r.json().await.context("reading a quota check's answer")?,
            Err(e) => {
                result =
                    Err(anyhow::Error::new(e)
                        .context(format!("asking {url} about {}", t.account_id)));
                break;
            }
        };
        if body["decision"] == "deny" {
            denied.push(t.account_id.clone());
        }
    }
    let _ = env.tokens.revoke(&name).await;
    result.map(|()| denied)
}

/// Waits until the notifier has nothing pending for the run and its outbox has not grown for
/// a few seconds.
async fn settle_notifier(env: &Env, like: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = (-1i64, Instant::now());
    loop {
        let (rows, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM notifications WHERE account_id LIKE $1) \
                  + (SELECT count(*) FROM dashboard_notices WHERE account_id LIKE $1), \
                    (SELECT count(*) FROM notifications WHERE account_id LIKE $1 AND status IN ('pending', 'sending'))",
        )
        .bind(like)
        .fetch_one(&env.pool)
        .await?;
        if rows != last.0 || pending > 0 {
            last = (rows, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "the notifier did not settle within {timeout:?} ({pending} notifications pending)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    env: &Env,
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
    let ch = env.clickhouse.client();
    let pool = &env.pool;
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
    let queue = meterline_scorer::queue::Queue::new(
        env.redis.connect().await.context("connecting to Redis")?,
        meterline_schemas::keys::hot::HotKeys::new(env.redis.key_prefix.clone())?,
    );
    let mut last = (usize::MAX, Instant::now());
    loop {
        let queued = queue.queued().await?;
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
