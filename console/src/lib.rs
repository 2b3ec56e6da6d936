//! The web console: what Meterline decided about accounts, for the people who act on it.
//!
//! Sales opens the account behind a deal alert, trust and safety reads the evidence behind a
//! flag and confirms or clears it, the growth team reads its experiments. Everything is
//! rendered on the server ([`templates`]: MiniJinja with auto-escaping, templates and CSS
//! compiled into the binary, no JavaScript, no CDN) and served by `meterline run` under
//! `/console`, on ingest's listener (the binary merges [`router`] into ingest's router).
//!
//! A request goes through these steps:
//!
//! 1. [`session`]: the `meterline_console` cookie names a session in PostgreSQL
//!    (`console_sessions`, only its SHA-256 stored), made at sign-in from an API token with the
//!    `console` scope (a viewer) or the `review` scope (may act; `admin` may too). A request
//!    without a live session is sent to the sign-in page (`GET`) or refused (`POST`). Revoking
//!    the token ends its sessions.
//! 2. A `POST` carries the session's CSRF token in a hidden field (`csrf`); without the right
//!    one it is refused before anything happens ([`session::Session::check_csrf`]).
//! 3. An action (a review decision, a notification retry, signing in and out) needs a session
//!    that may act, and is written to `console_audit` with who (the token's name), what, on
//!    which account or row, and why ([`audit`]).
//! 4. The page's data comes from the stores through the crates that own them (the review queue
//!    from `meterline_ingest::read::review`, the outbox from `meterline_notifier::outbox`, the
//!    experiment report from `meterline_growth::cohort_report`), and the page is rendered.

pub mod audit;
pub mod chart;
pub mod config;
pub mod error;
pub mod kafka;
pub mod metrics;
pub mod pages;
pub mod session;
pub mod templates;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use meterline_ingest::app::TopicSchema;
use meterline_ingest::{EventProducer, TokenStore};
use sqlx::PgPool;

pub use config::ConsoleConfig;
pub use error::ConsoleError;

/// Everything a console request may need; cheap to clone.
#[derive(Clone)]
pub struct ConsoleState {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    /// Ingest's token store: sign-in checks a token the way the API does.
    pub tokens: TokenStore,
    /// Ingest's producer and the account-event topic: review decisions are account events.
    pub producer: EventProducer,
    pub account_topic: TopicSchema,
    pub config: Arc<ConsoleConfig>,
    /// The scorer's thresholds the lists are cut at.
    pub thresholds: pages::lists::Thresholds,
    /// Where the health page reads consumer lag and dead letters; `None`: it says it cannot.
    pub kafka: Option<kafka::KafkaProbe>,
    /// Served on ingest's `/metrics` (the binary adds the registry).
    pub metrics: Arc<metrics::ConsoleMetrics>,
    /// The growth report, built at most once a minute per plan filter (it reads the whole
    /// history: seconds, not milliseconds).
    pub growth_cache: pages::growth::GrowthCache,
}

/// The console's routes, all under `/console`.
pub fn router(state: ConsoleState) -> Router {
    use pages::{account, growth, home, lists, ops, review, signin};
    Router::new()
        .route("/console", get(home::page))
        .route("/console/", get(home::page))
        .route("/console/console.css", get(templates::stylesheet))
        .route("/console/login", get(signin::form).post(signin::sign_in))
        .route("/console/logout", post(signin::sign_out))
        .route("/console/search", get(home::search))
        .route("/console/accounts/{id}", get(account::page))
        .route("/console/lists/{list}", get(lists::page))
        .route("/console/lists/{list}/csv", get(lists::csv))
        .route("/console/review", get(review::queue))
        .route("/console/review/{id}", get(review::account))
        .route("/console/review/{id}/{verdict}", post(review::decide))
        .route("/console/notifications", get(ops::outbox))
        .route("/console/notifications/{id}/retry", post(ops::retry))
        .route("/console/health", get(ops::health))
        .route("/console/audit", get(ops::audit_trail))
        .route("/console/experiments", get(growth::list))
        .route("/console/experiments/{name}", get(growth::report))
        .route("/console/growth", get(growth::growth_report))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
