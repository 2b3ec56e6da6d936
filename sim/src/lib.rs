//! `meterline simulate`: a fleet of gateways sending a month of traffic from a seeded
//! population, through ingest, with the gateway client, and a ground truth to check the
//! pipeline's signals against.
//!
//! * [`population`](mod@population): the accounts, their behaviours in realistic shares (confounders
//!   included) and the edge pairs around every checked threshold, a pure function of the seed,
//!   the size and a run tag (so a second run on the same machine has fresh ids and
//!   fingerprints);
//! * [`traffic`]: what an account sends on a given day;
//! * [`truth`](mod@truth): what the shared rule definitions expect of each account, computed from the
//!   events it sends (never by the scorer's code), with every rule parameter in one place;
//! * [`run`](mod@run): posting it all through ingest and waiting for the pipeline to settle;
//! * [`check`]: the raised signals against the ground truth, and the outcomes that must never
//!   happen (paying accounts denied, Enterprise accounts prospected, notices naming a plan the
//!   account already has);
//! * [`report`]: the demo's closing summary.
//!
//! The simulator is not a component: the production pipeline never depends on it. It reaches
//! the pipeline from outside, as gateways do, and reads the stores to judge the result.

pub mod check;
pub mod population;
pub mod report;
pub mod run;
pub mod traffic;
pub mod truth;

#[cfg(test)]
mod tests;

pub use check::*;
pub use population::*;
pub use run::{minimum_accounts, run, Options, Outcome};
pub use traffic::*;
pub use truth::*;

use meterline_infra::{ClickHouseConfig, RedisConfig};
use meterline_ingest::auth::TokenStore;
use meterline_notifier::config::NotifierConfig;
use meterline_scorer::config::ScorerConfig;

/// What a simulation reaches: the stores it reads to judge the run, the token store for its
/// temporary ingest token, and the scorer's and notifier's settings the summary describes.
pub struct Env {
    pub pool: sqlx::PgPool,
    pub clickhouse: ClickHouseConfig,
    pub redis: RedisConfig,
    pub tokens: TokenStore,
    pub scorer: ScorerConfig,
    pub notifier: NotifierConfig,
}
