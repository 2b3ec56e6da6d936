//! The `meterline` binary's library half: configuration, migrations and the wiring that turns
//! the component crates into running services. `main.rs` is only the command line on top, and
//! the integration tests under `tests/` drive the same functions.

pub mod bench;
pub mod bench_hostile;
pub mod bench_pipeline;
pub mod chart;
pub mod cohort_report;
pub mod config;
pub mod experiments;
pub mod http_load;
pub mod http_server;
pub mod migrate;
pub mod report;
pub mod services;
pub mod simulate;
pub mod stats;
pub mod telemetry;

pub use config::Config;
