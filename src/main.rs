//! The `meterline` command line. See `meterline --help`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meterline::config::{Config, CONFIG_PATH_ENV};
use meterline::services::{self, Components};
use meterline::{migrate, telemetry};
use meterline_ingest::Scope;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Simulate {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 2_000)]
        accounts: usize,
        /// Days of event time, ending now (at most 30).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Ingest's base URL (default: http://<http.listen>).
        #[arg(long)]
        url: Option<String>,
        /// An ingest token (default: a temporary one, revoked at the end).
        #[arg(long, env = "METERLINE_SIMULATOR_TOKEN")]
        token: Option<String>,
        /// The ground-truth file (JSONL).
        #[arg(long, default_value = ".local/simulation/truth.jsonl")]
        truth: std::path::PathBuf,
        /// Compare signals with the ground truth; exit non-zero below the thresholds.
        #[arg(long)]
        check: bool,
        #[arg(long, default_value_t = 0.95)]
        min_precision: f64,
        #[arg(long, default_value_t = 0.95)]
        min_recall: f64,
        /// Print the demo summary at the end.
        #[arg(long)]
        summary: bool,
        /// Seconds to wait for the pipeline to finish with the traffic.
        #[arg(long, default_value_t = 300)]
        settle_timeout: u64,
    },
    /// Rebuild the Redis hot state from ClickHouse's raw events (after Redis lost it). Stop the
    /// aggregators first; running it twice adds nothing.
    RebuildHotState,
    /// Inspect the notifier's outbox and send dead-lettered notifications again.
    Notifications {
        #[command(subcommand)]
        action: NotificationAction,
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
        action: GatewayAction,
    },
    /// Benchmarks against the real services (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
    /// Manage API tokens of any scope (read tokens for dashboards and gateways' quota checks).
    Tokens {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Limit A/B experiments on new signups, and their reports.
    Experiments {
        #[command(subcommand)]
        action: meterline::experiments::ExperimentAction,
    },
}

#[derive(Subcommand)]
enum NotificationAction {
    /// List notifications, newest first.
    List {
        /// Only this status: pending, sending, sent, dead or unconfirmed.
        #[arg(long)]
        status: Option<String>,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead (or unconfirmed) notifications again with fresh attempts: the ids given, or
    /// every dead one with --all-dead.
    Retry {
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// HTTP batches of 500 through ingest to Kafka, next to rdkafka's raw produce rate.
    Ingest {
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        /// Seconds.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// A pre-filled topic through the aggregator, next to rdkafka's raw consume rate.
    Aggregate {
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        #[arg(long, default_value_t = 500_000)]
        events: usize,
        /// Aggregators in the consumer group, splitting the partitions (scale-out).
        #[arg(long, default_value_t = 1)]
        aggregators: usize,
    },
    /// Ingest and aggregation together at a fixed rate, with freshness probes: the 202, then
    /// the counter in Redis, then the rollup in ClickHouse.
    E2e {
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        /// Events per second asked of the load generator (open loop, batches of 500).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// /v1/quota/check latency at a fixed rate while ingest takes events.
    Quota {
        /// Quota checks per second (open loop).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        #[arg(long, default_value_t = 5000)]
        accounts: usize,
        /// Usage events per second posted meanwhile (batches of 500); 0 for none.
        #[arg(long, default_value_t = 10000)]
        ingest_rate: u64,
        /// `shared`: ingest and the aggregator in this process; `split`: a read-only ingest
        /// process answers the checks while the write path runs in processes of its own.
        #[arg(long, default_value = "shared", value_parser = ["shared", "split"])]
        layout: String,
        /// With `--layout split`: the write path's CPU niceness (`nice -n`), e.g. 10 to give
        /// the read path the cores first, as a gateway host would.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        write_path_nice: i32,
        /// With `--layout split`: run the read path (its process, a local Redis and the load
        /// generator) under SCHED_FIFO for the run (needs root or CAP_SYS_NICE).
        #[arg(long)]
        read_path_realtime: bool,
    },
    /// Ingest's memory and a gateway's service while slow and hostile clients attack.
    Hostile {
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Connections sending full-size bodies back to back.
        #[arg(long, default_value_t = 64)]
        large_senders: usize,
        /// Slowloris connections held open at once.
        #[arg(long, default_value_t = 200)]
        slowloris: usize,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it. It is shown only this once.
    Add {
        name: String,
        /// ingest, read or admin; repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Limit the token to this account: it can never read another.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a token.
    Revoke { name: String },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("{s:?} is not a scope; use ingest, read or admin"))
}

#[derive(Subcommand)]
enum GatewayAction {
    /// Create a token for a gateway and print it. It is shown only this once.
    Add { name: String },
    /// Revoke a gateway's token.
    Revoke { name: String },
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> Result<()> {
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
        Command::Scores { account, json } => {
            let account = meterline_schemas::AccountId::parse(&account)
                .map_err(|e| anyhow::anyhow!("ACCOUNT: {e}"))?;
            let pool = migrate::connect_postgres(&config).await?;
            let scorer = services::scorer(&config, &pool, Default::default()).await?;
            let scores = scorer.compute(std::slice::from_ref(&account)).await?;
            let s = scores.first().context("no scores computed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(s)?);
            } else {
                print!("{}", meterline::report::scores_text(s));
            }
        }
        Command::Run | Command::Ingest | Command::Aggregate | Command::Score | Command::Notify => {
            let which = match cli.command {
                Command::Run => Components::ALL,
                Command::Ingest => Components {
                    ingest: true,
                    ..Components::NONE
                },
                Command::Score => Components {
                    scorer: true,
                    ..Components::NONE
                },
                Command::Notify => Components {
                    notifier: true,
                    ..Components::NONE
                },
                _ => Components {
                    aggregator: true,
                    ..Components::NONE
                },
            };
            let running = services::start(&config, which, None, shutdown_on_signal()).await?;
            running.wait().await?;
        }
        Command::Simulate {
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
            settle_timeout,
        } => {
            let options = meterline::simulate::Options {
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
                settle_timeout: std::time::Duration::from_secs(settle_timeout),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let outcome = meterline::simulate::run(&config, &options).await?;
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
                    print!("{}", c.table(min_precision, min_recall));
                }
            }
            if let Some(c) = &outcome.check {
                if !c.passed {
                    anyhow::bail!("the pipeline's signals are below the --check thresholds");
                }
            }
        }
        Command::RebuildHotState => {
            let redis = meterline_aggregator::redis_sink::RedisSink::connect(
                &config.redis.url,
                meterline_aggregator::keys::Keys::new(config.redis.key_prefix.clone()),
            )
            .await
            .context("connecting to Redis")?;
            let started = std::time::Instant::now();
            let done = meterline_aggregator::rebuild::rebuild_hot_state(
                &config.clickhouse.client(),
                &redis,
                chrono::Utc::now(),
                |n| eprintln!("{n} events read"),
            )
            .await
            .context("rebuilding the hot state")?;
            println!(
                "hot state rebuilt in {:.1} s: {} events over {} accounts read from ClickHouse, {} of them already counted in Redis",
                started.elapsed().as_secs_f64(),
                done.events,
                done.accounts,
                done.already_counted
            );
        }
        Command::Notifications { action } => {
            let pool = migrate::connect_postgres(&config).await?;
            match action {
                NotificationAction::List {
                    status,
                    account,
                    limit,
                    json,
                } => {
                    let status = status
                        .map(|s| s.parse::<meterline_notifier::outbox::OutboxStatus>())
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--status: {e}"))?;
                    let rows =
                        meterline_notifier::outbox::list(&pool, status, account.as_deref(), limit)
                            .await
                            .context("reading the outbox")?;
                    if json {
                        for r in &rows {
                            println!("{}", serde_json::to_string(r)?);
                        }
                    } else {
                        print!("{}", meterline::report::notifications_table(&rows));
                    }
                }
                NotificationAction::Retry { ids, all_dead } => {
                    if ids.is_empty() && !all_dead {
                        anyhow::bail!("name the notifications to retry (ids from `meterline notifications list --status dead`), or pass --all-dead");
                    }
                    let requeued = meterline_notifier::outbox::retry(&pool, &ids).await?;
                    println!(
                        "{} notification(s) queued again: {:?}",
                        requeued.len(),
                        requeued
                    );
                }
            }
        }
        Command::Gateways { action } => {
            let pool = migrate::connect_postgres(&config).await?;
            let store = services::token_store(&config, &pool);
            match action {
                GatewayAction::Add { name } => {
                    let token = store
                        .create(&name, &[Scope::Ingest], None)
                        .await
                        .context("creating the token")?;
                    eprintln!(
                        "gateway {name:?} added; store this token now, it is not shown again:"
                    );
                    println!("{token}");
                }
                GatewayAction::Revoke { name } => {
                    store.revoke(&name).await.context("revoking the token")?;
                    println!("gateway {name:?} revoked");
                }
            }
        }
        Command::Bench { which } => match which {
            BenchKind::Hostile {
                duration,
                large_senders,
                slowloris,
            } => {
                meterline::bench_hostile::hostile(
                    &config,
                    meterline::bench_hostile::HostileBench {
                        duration: std::time::Duration::from_secs(duration),
                        large_senders,
                        slowloris,
                        config_path: path.clone(),
                    },
                )
                .await?;
            }
            BenchKind::Ingest {
                accounts,
                duration,
                connections,
            } => {
                meterline::bench_pipeline::ingest(
                    &config,
                    meterline::bench_pipeline::IngestBench {
                        accounts,
                        duration: std::time::Duration::from_secs(duration),
                        connections,
                    },
                )
                .await?;
            }
            BenchKind::Aggregate {
                accounts,
                events,
                aggregators,
            } => {
                meterline::bench_pipeline::aggregate(
                    &config,
                    meterline::bench_pipeline::AggregateBench {
                        accounts,
                        events,
                        aggregators,
                    },
                )
                .await?;
            }
            BenchKind::E2e {
                accounts,
                rate,
                duration,
                connections,
            } => {
                meterline::bench_pipeline::e2e(
                    &config,
                    meterline::bench_pipeline::E2eBench {
                        accounts,
                        rate,
                        duration: std::time::Duration::from_secs(duration),
                        connections,
                    },
                )
                .await?;
            }
            BenchKind::Quota {
                rate,
                duration,
                accounts,
                ingest_rate,
                layout,
                write_path_nice,
                read_path_realtime,
            } => {
                let layout = if layout == "split" {
                    meterline::bench::Layout::Split {
                        write_path_nice,
                        read_path_realtime,
                    }
                } else {
                    anyhow::ensure!(
                        write_path_nice == 0 && !read_path_realtime,
                        "--write-path-nice and --read-path-realtime need --layout split"
                    );
                    meterline::bench::Layout::Shared
                };
                meterline::bench::quota(
                    &config,
                    meterline::bench::QuotaBench {
                        rate,
                        duration: std::time::Duration::from_secs(duration),
                        accounts,
                        ingest_rate,
                        layout,
                        config_path: path.clone(),
                    },
                )
                .await?;
            }
        },
        Command::Experiments { action } => {
            meterline::experiments::run(&config, action).await?;
        }
        Command::Tokens { action } => {
            let pool = migrate::connect_postgres(&config).await?;
            let store = services::token_store(&config, &pool);
            match action {
                TokenAction::Add {
                    name,
                    scopes,
                    account,
                } => {
                    if let Some(a) = &account {
                        meterline_schemas::AccountId::parse(a)
                            .map_err(|e| anyhow::anyhow!("--account: {e}"))?;
                    }
                    let token = store
                        .create(&name, &scopes, account.as_deref())
                        .await
                        .context("creating the token")?;
                    eprintln!("token {name:?} added; store it now, it is not shown again:");
                    println!("{token}");
                }
                TokenAction::Revoke { name } => {
                    store.revoke(&name).await.context("revoking the token")?;
                    println!("token {name:?} revoked");
                }
            }
        }
    }
    Ok(())
}
