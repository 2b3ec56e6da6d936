//! Growth analytics: what the growth team reads off the pipeline's history.
//!
//! * [`experiments`]: `meterline experiments …`, the command line over limit A/B experiments
//!   (their rules and store are the aggregator's `experiments` module, which assigns accounts
//!   as they sign up).
//! * [`cohort_report`]: an experiment's per-variant rates, read from ClickHouse's
//!   `cohort_metrics` view, with [`stats`] (Wilson intervals and a two-proportion z-test) and
//!   [`chart`] (a PNG that reads without the table).
//! * [`report`]: `meterline report growth`, seed 000's results (the tier waterfall, the notice
//!   funnel, the deal score's lead time, cost to serve, grace use, …) from ClickHouse's growth
//!   views, as a table, a CSV file and a chart.
//!
//! This crate is not a component: nothing in the running pipeline depends on it. The binary
//! calls it for its `experiments` and `report` subcommands, and it reports errors with `anyhow` like the
//! command line it serves.

pub mod chart;
pub mod cohort_report;
pub mod experiments;
pub mod report;
pub mod stats;
