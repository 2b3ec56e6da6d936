//! `meterline simulate`: the simulator (`meterline-sim`) against this configuration's pipeline.

use anyhow::{Context, Result};
use clap::Args;

use crate::{migrate, services, Config};

/// Send a month of simulated gateway traffic through ingest (with the gateway client) and
/// write the ground truth; with --check, compare the pipeline's signals with it.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 2_000)]
    pub accounts: usize,
    /// Days of event time, ending now (at most 30).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Ingest's base URL (default: http://<http.listen>).
    #[arg(long)]
    pub url: Option<String>,
    /// An ingest token (default: a temporary one, revoked at the end).
    #[arg(long, env = "METERLINE_SIMULATOR_TOKEN")]
    pub token: Option<String>,
    /// The ground-truth file (JSONL).
    #[arg(long, default_value = ".local/simulation/truth.jsonl")]
    pub truth: std::path::PathBuf,
    /// Compare signals with the ground truth; exit non-zero below the thresholds, or when a
    /// paying account is denied, an Enterprise account prospected, or a notice names a plan the
    /// account already has.
    #[arg(long)]
    pub check: bool,
    #[arg(long, default_value_t = 0.95)]
    pub min_precision: f64,
    #[arg(long, default_value_t = 0.95)]
    pub min_recall: f64,
    /// Print the demo summary at the end.
    #[arg(long)]
    pub summary: bool,
    /// Date long-standing customers' history from last year (signups a year ago, plan changes
    /// months ago); needs an ingest that accepts account events of any age. Otherwise they are
    /// dated 34 and 33 days ago.
    #[arg(long, default_value_t = meterline_sim::OLD_ACCOUNT_EVENTS_ACCEPTED, action = clap::ArgAction::Set)]
    pub old_history: bool,
    /// Seconds to wait for the pipeline to finish with the traffic.
    #[arg(long, default_value_t = 300)]
    pub settle_timeout: u64,
}

/// What the simulator reaches, built from the configuration.
pub async fn env(config: &Config) -> Result<meterline_sim::Env> {
    let pool = migrate::connect_postgres(config).await?;
    Ok(meterline_sim::Env {
        tokens: services::token_store(config, &pool),
        pool,
        clickhouse: config.clickhouse.clone(),
        redis: config.redis.clone(),
        scorer: config.scorer.clone(),
        notifier: config.notifier.clone(),
    })
}

pub async fn run(config: &Config, args: SimulateArgs) -> Result<()> {
    let SimulateArgs {
        seed,
        accounts,
        days,
        url,
        token,
        truth,
        check,
        min_precision,
        min_recall,
        summary,
        old_history,
        settle_timeout,
    } = args;

    let options = meterline_sim::Options {
        seed,
        accounts,
        days,
        url: url.unwrap_or_else(|| format!("http://{}", config.http.listen)),
        token,
        truth,
        check,
        min_precision,
        min_recall,
        summary,
        old_history,
        settle_timeout: std::time::Duration::from_secs(settle_timeout),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let outcome = meterline_sim::run(
        &env(config).await.context("connecting to the stores")?,
        &options,
    )
    .await?;
    if outcome.interrupted {
        eprintln!(
            "interrupted: {} events sent, ground truth in {}",
            outcome.sent,
            options.truth.display()
        );
        return Ok(());
    }
    if let Some(text) = &outcome.summary {
        println!("{text}");
    } else {
        println!(
            "run {}: {} accounts, {} usage and {} account events ({} accepted, {} rejected, {} dropped) in {:.1} s; ground truth in {}",
            outcome.tag,
            outcome.accounts,
            outcome.usage_events,
            outcome.account_events,
            outcome.sent,
            outcome.rejected,
            outcome.dropped,
            outcome.elapsed.as_secs_f64(),
            options.truth.display()
        );
        if let Some(c) = &outcome.check {
            print!("{}", c.table());
        }
        if let Some(path) = &outcome.check_file {
            println!("check report (JSON): {}", path.display());
        }
    }
    if let Some(c) = &outcome.check {
        if !c.passed {
            anyhow::bail!(
                "the --check failed: signals below the thresholds, or an outcome that must never happen"
            );
        }
    }
    Ok(())
}
