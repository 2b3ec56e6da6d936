//! The `meterline` command line. See `meterline --help`. Each subcommand's handler is in
//! `meterline::cmd`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use meterline::cmd;
use meterline::config::{Config, CONFIG_PATH_ENV};
use meterline::services::Components;
use meterline::{migrate, telemetry};

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3 keeps the pages a program frees for a second before it returns them to the OS
/// (its purge delay; mimalloc 2's is 10 ms). For the aggregator that second is most of the
/// peak's spread: at 100,000 accounts its peak RSS was 292-320 MiB with the default and 271-294
/// MiB with a 10 ms delay, at the same throughput (BENCHMARKS.md, 2026-12-04, third session).
/// The allocator reads its options from the environment when it starts, before `main`, and
/// setting one from Rust would take `unsafe` FFI, so the process runs itself again (the same
/// pid, arguments and environment) with `MIMALLOC_PURGE_DELAY` set, unless it is set already.
#[cfg(all(unix, not(feature = "system-alloc")))]
fn with_allocator_options() {
    use std::os::unix::process::CommandExt;
    const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only if it failed; then run on with the allocator's defaults.
    let e = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY, "10")
        .exec();
    eprintln!("meterline: running on with mimalloc's default purge delay: {e}");
}

#[derive(Parser)]
#[command(
    name = "meterline",
    version,
    about = "Metering and analytics for an AI gateway's free tier"
)]
struct Cli {
    /// Configuration file (TOML). Defaults to ./meterline.toml when it exists. Every key can
    /// also be set with a METERLINE_<SECTION>__<KEY> environment variable.
    #[arg(long, global = true, env = CONFIG_PATH_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component in one process.
    Run,
    /// Run the HTTP ingest service.
    Ingest,
    /// Run the aggregator (Kafka to ClickHouse, Redis and PostgreSQL).
    Aggregate,
    /// Run the scorer (scores and signals).
    Score,
    /// Run the notifier (Slack alerts, HubSpot deals, dashboard notices).
    Notify,
    /// Send a month of simulated gateway traffic through ingest (with the gateway client) and
    /// write the ground truth; with --check, compare the pipeline's signals with it.
    Simulate(cmd::simulate::SimulateArgs),
    /// Rebuild the Redis hot state from ClickHouse's raw events (after Redis lost it). Stop the
    /// aggregators first; running it twice adds nothing.
    RebuildHotState,
    /// Inspect the notifier's outbox and send dead-lettered notifications again.
    Notifications {
        #[command(subcommand)]
        action: cmd::notifications::NotificationAction,
    },
    /// Score one account now and print its scores with their reasons (nothing is stored).
    Scores {
        account: String,
        /// Print the full JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Apply PostgreSQL and ClickHouse migrations and create the Kafka topics. Safe to repeat.
    Migrate,
    /// Manage gateway (ingest) tokens.
    Gateways {
        #[command(subcommand)]
        action: cmd::tokens::GatewayAction,
    },
    /// Manage API tokens of any scope (read tokens for dashboards and gateways' quota checks).
    Tokens {
        #[command(subcommand)]
        action: cmd::tokens::TokenAction,
    },
    /// The abuse review queue: list, show, confirm (deny) or clear accounts in review.
    Review {
        #[command(subcommand)]
        action: cmd::review::ReviewAction,
    },
    /// Existing customers: import a customer base (CSV or JSON lines) as account events.
    Accounts {
        #[command(subcommand)]
        action: cmd::accounts::AccountsAction,
    },
    /// Limit A/B experiments on new signups, and their reports.
    Experiments {
        #[command(subcommand)]
        action: meterline_growth::experiments::ExperimentAction,
    },
    /// Reports over the pipeline's history: `report growth` gives seed 000's results.
    Report {
        #[command(subcommand)]
        action: meterline_growth::report::ReportAction,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    #[cfg(all(unix, not(feature = "system-alloc")))]
    with_allocator_options();
    telemetry::init();
    let cli = Cli::parse();
    let path = cli.config.or_else(|| {
        let default = PathBuf::from("meterline.toml");
        default.exists().then_some(default)
    });
    let config = Config::load(path.as_deref(), std::env::vars())?;

    match cli.command {
        Command::Migrate => {
            migrate::run(&config).await?;
            println!("migrations applied; topics ready");
        }
        Command::Run => cmd::run::run(&config, Components::all()).await?,
        Command::Ingest => cmd::run::run(&config, Components::none().ingest()).await?,
        Command::Aggregate => cmd::run::run(&config, Components::none().aggregator()).await?,
        Command::Score => cmd::run::run(&config, Components::none().scorer()).await?,
        Command::Notify => cmd::run::run(&config, Components::none().notifier()).await?,
        Command::Simulate(args) => cmd::simulate::run(&config, args).await?,
        Command::RebuildHotState => cmd::rebuild::run(&config).await?,
        Command::Notifications { action } => cmd::notifications::run(&config, action).await?,
        Command::Scores { account, json } => cmd::scores::run(&config, account, json).await?,
        Command::Gateways { action } => cmd::tokens::gateways(&config, action).await?,
        Command::Tokens { action } => cmd::tokens::tokens(&config, action).await?,
        Command::Experiments { action } => cmd::experiments::run(&config, action).await?,
        Command::Review { action } => cmd::review::run(&config, action).await?,
        Command::Accounts { action } => {
            // 2: some rows were refused, the others imported (cmd::accounts explains).
            let status = cmd::accounts::run(&config, action).await?;
            if status != 0 {
                std::process::exit(status);
            }
        }
        Command::Report { action } => cmd::report::run(&config, action).await?,
    }
    Ok(())
}
