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

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use meterline_client::{ClientConfig, GatewayClient};
use meterline_ingest::Scope;
use rand::Rng;

use crate::check::*;
use crate::population::*;
use crate::traffic::*;
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

fn run_tag() -> String {
    let t = Utc::now().format("%m%d%H%M%S").to_string();
    let r: u16 = rand::rng().random();
    format!("{t}{r:04x}")
}

/// Runs a simulation against a running pipeline.
pub async fn run(env: &Env, o: &Options) -> Result<Outcome> {
    if o.days == 0 || o.days > 30 {
        bail!("--days: must be 1 to 30 (ingest refuses events older than 35 days)");
    }
    if o.accounts < 24 {
        bail!("--accounts: must be at least 24 (two of each behaviour)");
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
        outcome.check = Some(score_signals(
            &truth,
            &raised,
            o.min_precision,
            o.min_recall,
        ));
    }
    if o.summary {
        outcome.summary = Some(crate::report::demo_summary(env, &outcome, o).await?);
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
    let mut redis = redis::Client::open(env.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let dirty = meterline_schemas::keys::Keys::new(env.redis.key_prefix.clone()).dirty();
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
