//! `meterline-bench`: the benchmarks behind BENCHMARKS.md, against the real services.
//!
//! Not part of the production image: it is a binary of its own, built beside `meterline`,
//! which it starts as child processes where a benchmark needs separate processes. Each
//! benchmark uses its own topics, ClickHouse database and Redis prefix, and cleans up.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use meterline::config::{Config, CONFIG_PATH_ENV};

mod common;
mod console;
mod e2e;
mod hostile;
mod http_load;
mod pipeline;
mod quota;
mod scrape;
mod throughput;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks against the real services (see BENCHMARKS.md).
#[derive(Parser)]
#[command(name = "meterline-bench", version)]
struct Cli {
    /// Configuration file (TOML), as for `meterline`.
    #[arg(long, global = true, env = CONFIG_PATH_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    which: BenchKind,
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
        /// Also time each probe's record at a consumer of its own (ingest 202 → the record
        /// read from the broker), to split freshness between the broker and the aggregator.
        /// That consumer reads every record, so it takes some CPU from the rest.
        #[arg(long)]
        watch_broker: bool,
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
        /// The share of the accounts (0 to 1) that hold an unseen dashboard notice, which their
        /// decisions must carry (checked on every account before the measured run).
        #[arg(long, default_value_t = 0.1)]
        notice_share: f64,
        /// Usage events put straight on the topic just before the measured run (over
        /// `--accounts` accounts of their own), so the checks are measured while the aggregator
        /// runs flat out; 0 for none.
        #[arg(long, default_value_t = 0)]
        backlog: usize,
    },
    /// The web console's page render times with a large customer base in the stores.
    Console {
        /// Accounts in the stores.
        #[arg(long, default_value_t = 100_000)]
        accounts: usize,
        /// Timed requests per page.
        #[arg(long, default_value_t = 200)]
        requests: usize,
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

#[tokio::main]
async fn main() -> Result<()> {
    meterline::telemetry::init();
    let cli = Cli::parse();
    let path = cli.config.or_else(|| {
        let default = PathBuf::from("meterline.toml");
        default.exists().then_some(default)
    });
    let config = Config::load(path.as_deref(), std::env::vars())?;
    // Whatever happens in the run, what it set up (`pipeline::bench_config`) is removed after.
    let result: Result<()> = async {
        match cli.which {
            BenchKind::Console { accounts, requests } => {
                console::console(&config, console::ConsoleBench { accounts, requests }).await?;
            }
            BenchKind::Hostile {
                duration,
                large_senders,
                slowloris,
            } => {
                hostile::hostile(
                    &config,
                    hostile::HostileBench {
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
                throughput::ingest(
                    &config,
                    throughput::IngestBench {
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
                throughput::aggregate(
                    &config,
                    throughput::AggregateBench {
                        accounts,
                        events,
                        aggregators,
                        config_path: path.clone(),
                    },
                )
                .await?;
            }
            BenchKind::E2e {
                accounts,
                rate,
                duration,
                connections,
                watch_broker,
            } => {
                e2e::e2e(
                    &config,
                    e2e::E2eBench {
                        accounts,
                        rate,
                        duration: std::time::Duration::from_secs(duration),
                        connections,
                        watch_broker,
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
                notice_share,
                backlog,
            } => {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&notice_share),
                    "--notice-share: {notice_share} is not between 0 and 1"
                );
                let layout = if layout == "split" {
                    quota::Layout::Split {
                        write_path_nice,
                        read_path_realtime,
                    }
                } else {
                    anyhow::ensure!(
                        write_path_nice == 0 && !read_path_realtime,
                        "--write-path-nice and --read-path-realtime need --layout split"
                    );
                    quota::Layout::Shared
                };
                quota::quota(
                    &config,
                    quota::QuotaBench {
                        rate,
                        duration: std::time::Duration::from_secs(duration),
                        accounts,
                        ingest_rate,
                        layout,
                        config_path: path.clone(),
                        notice_share,
                        backlog,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
    .await;
    match pipeline::clean_up_runs().await {
        Ok(0) => {}
        Ok(removed) => {
            println!("removed the run's ClickHouse database and its {removed} Redis keys")
        }
        Err(e) => {
            eprintln!("the run's ClickHouse database or Redis keys were not all removed: {e:#}")
        }
    }
    result
}
