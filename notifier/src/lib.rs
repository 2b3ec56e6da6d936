//! The notifier: turns the scorer's signals into Slack alerts, HubSpot deals, dashboard
//! notices and emails to the account holder, each delivered once and within its cooldown.
//!
//! Two loops share a PostgreSQL outbox:
//!
//! * the **intake** ([`intake`]) reads `account-signals`, routes each signal
//!   ([`route`]), renders its messages ([`message`]) and queues them in the outbox
//!   ([`outbox`]) inside one transaction that also applies the cooldowns. Only then is the
//!   Kafka offset committed, so a crash replays signals and the outbox's unique keys turn the
//!   replay into nothing.
//! * the **worker** ([`worker`]) claims due notifications with `FOR UPDATE SKIP LOCKED` and
//!   sends them ([`deliver`]): Slack incoming webhooks, the HubSpot CRM API, SMTP for email
//!   ([`email`]), or the local sink when the service is not configured. Failures retry with exponential backoff and jitter, honour
//!   `Retry-After`, and end in a dead-letter state that `meterline notifications retry` revives.
//!
//! Routing aims every offer at the right account ([`route`], [`offer`]): the plan an offer
//! names comes from the tiers configuration (`[tiers.*] upgrade_to` and `plugins`), an account
//! with nothing higher to buy is never prospected, an existing customer's growth goes to the
//! expansion channel, and an account on a public email domain gets a HubSpot deal with no
//! company.
//!
//! Emails ([`email`]) go to the account's contact email, read from `accounts` only when
//! sending; an account with none, or one that followed an email's one-click unsubscribe link,
//! gets its emails recorded as `skipped`, never sent.
//!
//! Dashboard notices need no sending: the intake writes them to `dashboard_notices` in the
//! same transaction, and ingest serves them. A third task ([`notice_history`]) copies them to
//! ClickHouse for the growth team.

pub mod config;
pub mod deliver;
pub mod email;
pub mod intake;
pub mod message;
pub mod metrics;
pub mod notice_history;
pub mod offer;
pub mod outbox;
pub mod route;
pub mod usage;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use meterline_infra::registry::SchemaRegistry;
use meterline_schemas::limits::TiersConfig;
use meterline_schemas::public_domains::PublicDomains;
use meterline_schemas::UnsubscribeKey;
use rdkafka::config::ClientConfig;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::NotifierConfig;
pub use metrics::NotifierMetrics;

/// The notifier's backoff, for its three retries: queueing a signal's notifications (intake),
/// recording a send's outcome, and the delay before a failed send's next attempt (worker). It
/// is the components' one backoff (`meterline_infra::backoff::equal_jitter`): it never runs
/// out, and the outbox counts a send's attempts itself (`notifier.max_attempts`).
pub fn backoff(base: Duration, max: Duration) -> ExponentialBuilder {
    meterline_infra::backoff::equal_jitter(base, max)
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("http client: {0}")]
    Http(String),
    #[error("{0}")]
    Invalid(String),
}

/// Everything the notifier talks to.
#[derive(Clone)]
pub struct Notifier {
    pub pg: PgPool,
    pub clickhouse: clickhouse::Client,
    pub registry: SchemaRegistry,
    pub config: Arc<NotifierConfig>,
    /// The tiers: which plan each tier upgrades to and which plugins it includes.
    pub tiers: Arc<TiersConfig>,
    /// Public email domains: never a HubSpot company.
    pub public_domains: Arc<PublicDomains>,
    pub metrics: NotifierMetrics,
    pub slack: deliver::Slack,
    pub hubspot: deliver::HubSpot,
    pub sink: deliver::LocalSink,
    /// The email channel's SMTP sender (unconfigured: emails go to the local sink).
    pub mailer: email::smtp::Mailer,
    /// Signs the unsubscribe link of every email (`privacy.unsubscribe_key`).
    pub unsubscribe: UnsubscribeKey,
    /// The intake wakes the worker when it queued something.
    pub wake: Arc<Notify>,
    /// The web console's address (`console.base_url`): Slack alerts and HubSpot deals link to
    /// the account's page there. `None`: no link.
    pub console_base_url: Option<String>,
}

impl Notifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pg: PgPool,
        clickhouse: clickhouse::Client,
        registry: SchemaRegistry,
        config: NotifierConfig,
        tiers: TiersConfig,
        public_domains: PublicDomains,
        unsubscribe: UnsubscribeKey,
        metrics: NotifierMetrics,
    ) -> Result<Self, NotifyError> {
        config.validate().map_err(NotifyError::Invalid)?;
        let mailer = email::smtp::Mailer::new(&config.email).map_err(NotifyError::Invalid)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .user_agent(concat!("meterline-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Http(e.to_string()))?;
        Ok(Self {
            pg,
            clickhouse,
            registry,
            slack: deliver::Slack::new(http.clone(), config.slack.clone()),
            hubspot: deliver::HubSpot::new(http, config.hubspot.clone()),
            sink: deliver::LocalSink::new(&config),
            mailer,
            unsubscribe,
            config: Arc::new(config),
            tiers: Arc::new(tiers),
            public_domains: Arc::new(public_domains),
            metrics,
            wake: Arc::new(Notify::new()),
            console_base_url: None,
        })
    }

    /// Runs the intake (reading `topic` with `base`'s brokers) and the worker until `shutdown`.
    pub async fn run(
        self,
        base: &ClientConfig,
        topic: &str,
        shutdown: CancellationToken,
    ) -> Result<(), NotifyError> {
        let intake = intake::Intake::new(self.clone(), base, topic)?;
        let worker = tokio::spawn(worker::run(self.clone(), shutdown.clone()));
        let history = tokio::spawn(notice_history::run(self.clone(), shutdown.clone()));
        let result = intake.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = worker.await;
        let _ = history.await;
        result
    }
}

/// The notifier as a running component: its intake reads `topic` from the brokers `base`
/// names, and its worker sends what the intake queued.
pub struct NotifierService {
    pub notifier: Notifier,
    pub base: ClientConfig,
    pub topic: String,
}

impl meterline_infra::Component for NotifierService {
    fn name(&self) -> &'static str {
        "notifier"
    }

    fn metrics(&self) -> prometheus::Registry {
        self.notifier.metrics.registry.clone()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> meterline_infra::RunFuture {
        Box::pin(async move {
            let NotifierService {
                notifier,
                base,
                topic,
            } = *self;
            Ok(notifier.run(&base, &topic, shutdown).await?)
        })
    }
}

/// Test hook: when `METERLINE_FAILPOINT` names this point, the process aborts here, as a crash
/// or `kill -9` would. The reliability tests use it to stop the notifier between a send and
/// its bookkeeping.
pub fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("METERLINE_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
