//! Turning configuration into running components. `meterline ingest`, `meterline aggregate`
//! and `meterline run` all come through here, and so do the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meterline_aggregator::batch::Sinks;
use meterline_aggregator::consumer::Topics;
use meterline_aggregator::decode::Decoder;
use meterline_aggregator::metrics::AggregatorMetrics;
use meterline_aggregator::state::partition::FlushPolicy;
use meterline_aggregator::state::store::HotStore;
use meterline_aggregator::{
    accounts_sink::AccountsSink, clickhouse_sink::ClickHouseSink, Aggregator,
};
use meterline_infra::http_server::MetricsServer;
use meterline_infra::registry::SchemaRegistry;
use meterline_infra::Component;
use meterline_ingest::app::{AppParts, TopicSchema};
use meterline_ingest::metrics::IngestMetrics;
use meterline_ingest::read::{
    AccountDirectory, DecisionRecorder, HotState, NoticeCache, ReadPath, RecorderMetrics,
};
use meterline_ingest::server::IngestServer;
use meterline_ingest::{AppState, TokenStore};
use meterline_notifier::{Notifier, NotifierMetrics, NotifierService};
use meterline_schemas::keys::hot::HotKeys;
use meterline_schemas::{avro, IpHasher, UnsubscribeKey};
use meterline_scorer::load::Stores;
use meterline_scorer::metrics::ScorerMetrics;
use meterline_scorer::store::{ScoreStore, SignalTopic};
use meterline_scorer::Scorer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DEV_IP_HASH_KEY, DEV_UNSUBSCRIBE_KEY};
use crate::migrate::connect_postgres;
use crate::Config;

pub fn registry(config: &Config, pool: &PgPool) -> SchemaRegistry {
    if config.schema_registry.url.is_empty() {
        SchemaRegistry::postgres(pool.clone())
    } else {
        SchemaRegistry::confluent(&config.schema_registry.url)
    }
}

pub fn token_store(config: &Config, pool: &PgPool) -> TokenStore {
    TokenStore::new(
        pool.clone(),
        Duration::from_millis(config.ingest.auth_cache_ttl_ms),
    )
}

/// Builds the read path: the account directory (listening for profile changes), the notice
/// cache (loaded, and listening for notice changes), the hot-state reader and the decision
/// recorder. Its background tasks stop on `shutdown`.
pub async fn read_path(
    config: &Config,
    pool: &PgPool,
    metrics: &IngestMetrics,
    shutdown: &CancellationToken,
) -> Result<(ReadPath, Vec<JoinHandle<()>>)> {
    let directory = AccountDirectory::new(
        pool.clone(),
        Duration::from_millis(config.ingest.profile_cache_ttl_ms),
    );
    let listener = directory
        .listen(shutdown.clone())
        .await
        .context("listening for account changes in PostgreSQL")?;
    let notices = NoticeCache::new(pool.clone());
    let notice_listener = notices
        .start(shutdown.clone())
        .await
        .context("loading dashboard notices from PostgreSQL")?;
    let redis = config
        .redis
        .connect()
        .await
        .context("connecting to Redis")?;
    let keys = HotKeys::new(config.redis.key_prefix.clone()).context("redis.key_prefix")?;
    let (recorder, writer) = DecisionRecorder::start(
        config.clickhouse.client(),
        redis.clone(),
        keys.clone(),
        RecorderMetrics {
            recorded: metrics.quota_events_recorded.clone(),
            dropped: metrics.quota_events_dropped.clone(),
        },
        shutdown.clone(),
    );
    let read = ReadPath {
        quota: Arc::new(config.quota.clone()),
        review: Arc::new(config.review.clone()),
        tiers: Arc::new(config.tiers.clone()),
        friction: Arc::new(
            meterline_schemas::limits::Friction::new(&config.quota, &config.tiers)
                .context("quota messages")?,
        ),
        directory,
        notices,
        hot: HotState::new(redis, keys),
        recorder,
    };
    Ok((read, vec![listener, notice_listener, writer]))
}

/// Registers our schemas and builds ingest's state, with the read path.
pub async fn ingest_state(
    config: &Config,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<(AppState, Vec<JoinHandle<()>>)> {
    if config.privacy.ip_hash_key == DEV_IP_HASH_KEY {
        tracing::warn!("privacy.ip_hash_key is the development default; set METERLINE_PRIVACY__IP_HASH_KEY in production");
    }
    if config.privacy.unsubscribe_key == DEV_UNSUBSCRIBE_KEY {
        tracing::warn!("privacy.unsubscribe_key is the development default; set METERLINE_PRIVACY__UNSUBSCRIBE_KEY in production (anyone could forge unsubscribe links)");
    }
    let registry = registry(config, pool);
    let topic_schema = |topic: String, text: &'static str| {
        let registry = registry.clone();
        async move {
            let id = registry
                .register(&format!("{topic}-value"), text)
                .await
                .with_context(|| format!("registering the schema for {topic}"))?;
            anyhow::Ok(TopicSchema {
                topic,
                schema_id: id,
                schema: Arc::new(avro::parse_schema(text)?),
            })
        }
    };
    let usage = topic_schema(config.kafka.usage_topic.clone(), avro::USAGE_EVENT_SCHEMA).await?;
    let account = topic_schema(
        config.kafka.account_topic.clone(),
        avro::ACCOUNT_EVENT_SCHEMA,
    )
    .await?;
    let metrics = IngestMetrics::new();
    let (read, tasks) = read_path(config, pool, &metrics, shutdown).await?;
    let state = AppParts {
        config: config.ingest.clone(),
        kafka: config.kafka.clone(),
        tokens: token_store(config, pool),
        ip_hasher: IpHasher::new(&config.privacy.ip_hash_key),
        unsubscribe: UnsubscribeKey::new(&config.privacy.unsubscribe_key),
        usage,
        account,
        read: Some(read),
        metrics,
    }
    .build()
    .context("creating the Kafka producer")?;
    Ok((state, tasks))
}

pub async fn aggregator(
    config: &Config,
    pool: &PgPool,
    metrics: AggregatorMetrics,
) -> Result<Aggregator> {
    let sinks = Sinks {
        clickhouse: ClickHouseSink::new(
            config.clickhouse.client(),
            &config.kafka.usage_topic,
            &config.kafka.account_topic,
        ),
        hot: Arc::new(tokio::sync::Mutex::new(HotStore::new(
            config
                .redis
                .connect()
                .await
                .context("connecting to Redis")?,
            HotKeys::new(config.redis.key_prefix.clone()).context("redis.key_prefix")?,
            &config.kafka.usage_topic,
            FlushPolicy {
                retry_max_backoff: Duration::from_millis(config.aggregator.retry_max_backoff_ms),
                max_resident: config.aggregator.state_max_accounts,
                in_flight: config.aggregator.state_snapshots_in_flight,
                ..FlushPolicy::default()
            },
        ))),
        accounts: AccountsSink::new(pool.clone()),
    };
    let topics = Topics {
        usage: config.kafka.usage_topic.clone(),
        account: config.kafka.account_topic.clone(),
        dead_letter: config.kafka.dead_letter_topic.clone(),
    };
    let base = meterline_infra::kafka::client_config(&config.kafka);
    Aggregator::new(
        &base,
        topics,
        config.aggregator.clone(),
        Decoder::new(registry(config, pool)),
        sinks,
        metrics,
    )
    .context("creating the Kafka consumer")
}

/// Builds the scorer: its stores, its own idempotent producer for `account-signals`, and the
/// signal schema registered.
pub async fn scorer(config: &Config, pool: &PgPool, metrics: ScorerMetrics) -> Result<Scorer> {
    let redis = config
        .redis
        .connect()
        .await
        .context("connecting to Redis")?;
    let text = avro::ACCOUNT_SIGNAL_SCHEMA;
    let schema_id = registry(config, pool)
        .register(&format!("{}-value", config.kafka.signal_topic), text)
        .await
        .context("registering the account-signal schema")?;
    let producer: rdkafka::producer::FutureProducer =
        meterline_infra::kafka::client_config(&config.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("creating the scorer's Kafka producer")?;
    // Review moves are account events, written with the account event schema.
    let account_text = avro::ACCOUNT_EVENT_SCHEMA;
    let account_schema_id = registry(config, pool)
        .register(
            &format!("{}-value", config.kafka.account_topic),
            account_text,
        )
        .await
        .context("registering the account-event schema")?;
    Ok(Scorer {
        stores: Stores {
            clickhouse: config.clickhouse.client(),
            redis,
            hot: HotKeys::new(config.redis.key_prefix.clone()).context("redis.key_prefix")?,
            pg: pool.clone(),
            public_domains: Arc::new(config.public_domains()?),
        },
        store: ScoreStore {
            pg: pool.clone(),
            clickhouse: config.clickhouse.client(),
            producer,
            signals: SignalTopic {
                topic: config.kafka.signal_topic.clone(),
                schema_id,
                schema: Arc::new(avro::parse_schema(text)?),
            },
            episode_quiet: chrono::Duration::minutes(i64::from(
                config.scorer.episode_quiet_minutes,
            )),
            account_events: SignalTopic {
                topic: config.kafka.account_topic.clone(),
                schema_id: account_schema_id,
                schema: Arc::new(avro::parse_schema(account_text)?),
            },
            review: Arc::new(config.review.clone()),
        },
        quota: Arc::new(config.quota.clone()),
        tiers: Arc::new(config.tiers.clone()),
        config: Arc::new(config.scorer.clone()),
        metrics,
    })
}

/// Builds the notifier: its outbox, the HTTP clients for Slack and HubSpot, the local sink;
/// the tiers (the plan each offer names) and the public email domains (no HubSpot company).
pub fn notifier(config: &Config, pool: &PgPool, metrics: NotifierMetrics) -> Result<Notifier> {
    let mut notifier = Notifier::new(
        pool.clone(),
        config.clickhouse.client(),
        registry(config, pool),
        config.notifier.clone(),
        config.tiers.clone(),
        config.public_domains()?,
        UnsubscribeKey::new(&config.privacy.unsubscribe_key),
        metrics,
    )
    .context("building the notifier")?;
    // Deal alerts and deals link to the account's page in the console.
    notifier.console_base_url = Some(config.console.base_url.clone());
    Ok(notifier)
}

/// The web console's state: ingest's token store and producer (review decisions are account
/// events), the scorer's thresholds (the lists), the aggregator's group in Kafka (health).
pub fn console_state(
    config: &Config,
    pool: &PgPool,
    ingest: &AppState,
) -> meterline_console::ConsoleState {
    meterline_console::ConsoleState {
        pool: pool.clone(),
        clickhouse: config.clickhouse.client(),
        tokens: ingest.tokens.clone(),
        producer: ingest.producer.clone(),
        account_topic: ingest.account.clone(),
        config: Arc::new(config.console.clone()),
        thresholds: meterline_console::pages::lists::Thresholds {
            deal_ready_above: config.scorer.deal.ready_above,
            pql_qualified_at: config.scorer.pql.qualified_at,
        },
        kafka: Some(meterline_console::kafka::KafkaProbe::new(
            meterline_infra::kafka::client_config(&config.kafka),
            config.aggregator.group_id.clone(),
            vec![
                config.kafka.usage_topic.clone(),
                config.kafka.account_topic.clone(),
            ],
            config.kafka.dead_letter_topic.clone(),
        )),
        metrics: Arc::new(meterline_console::metrics::ConsoleMetrics::new()),
        growth_cache: Default::default(),
    }
}

/// A running component set.
pub struct Running {
    pub ingest_addr: Option<SocketAddr>,
    /// The aggregator's counters (events, Redis commands), for benchmarks.
    pub aggregator_metrics: AggregatorMetrics,
    pub shutdown: CancellationToken,
    pub tasks: Vec<JoinHandle<Result<()>>>,
}

impl Running {
    /// Asks every component to stop and waits for them.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.context("component task panicked")??;
        }
        Ok(())
    }

    /// Waits until any component ends (which, before shutdown, is a failure), then stops the
    /// rest.
    pub async fn wait(mut self) -> Result<()> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let (first, _, rest) = futures::future::select_all(std::mem::take(&mut self.tasks)).await;
        self.shutdown.cancel();
        for t in rest {
            let _ = t.await;
        }
        first.context("component task panicked")?
    }
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Components {
    pub ingest: bool,
    pub aggregator: bool,
    pub scorer: bool,
    pub notifier: bool,
}

impl Components {
    pub const ALL: Components = Components {
        ingest: true,
        aggregator: true,
        scorer: true,
        notifier: true,
    };
    pub const NONE: Components = Components {
        ingest: false,
        aggregator: false,
        scorer: false,
        notifier: false,
    };

    /// Nothing; add components with [`Components::ingest`] and its siblings.
    pub const fn none() -> Components {
        Components::NONE
    }
    /// Every component, as `meterline run` starts them.
    pub const fn all() -> Components {
        Components::ALL
    }
    /// These, and ingest.
    pub const fn ingest(self) -> Components {
        Components {
            ingest: true,
            ..self
        }
    }
    /// These, and the aggregator.
    pub const fn aggregator(self) -> Components {
        Components {
            aggregator: true,
            ..self
        }
    }
    /// These, and the scorer.
    pub const fn scorer(self) -> Components {
        Components {
            scorer: true,
            ..self
        }
    }
    /// These, and the notifier.
    pub const fn notifier(self) -> Components {
        Components {
            notifier: true,
            ..self
        }
    }
}

/// Starts the chosen components. Ingest listens on `listener` when given (tests pass one bound
/// to port 0), otherwise on `http.listen`.
///
/// Each component is built from configuration and then run through the one
/// [`Component`] trait. The process serves one `/metrics` page for all of them: ingest's when
/// ingest runs here, otherwise a [`MetricsServer`] on the first component's own address.
pub async fn start(
    config: &Config,
    which: Components,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<Running> {
    let pool = connect_postgres(config).await?;
    let mut tasks: Vec<JoinHandle<Result<()>>> = Vec::new();
    let aggregator_metrics = AggregatorMetrics::new();
    let mut ingest_addr = None;
    let header_read_timeout = Duration::from_millis(config.ingest.header_read_timeout_ms);

    let mut parts: Vec<Box<dyn Component>> = Vec::new();
    if which.scorer {
        parts.push(Box::new(scorer(config, &pool, ScorerMetrics::new()).await?));
    }
    if which.notifier {
        parts.push(Box::new(NotifierService {
            notifier: notifier(config, &pool, NotifierMetrics::new())?,
            base: meterline_infra::kafka::client_config(&config.kafka),
            topic: config.kafka.signal_topic.clone(),
        }));
    }
    if which.aggregator {
        parts.push(Box::new(
            aggregator(config, &pool, aggregator_metrics.clone()).await?,
        ));
    }
    let registries: Vec<prometheus::Registry> = parts.iter().map(|c| c.metrics()).collect();
    if which.ingest {
        let (mut state, background) = ingest_state(config, &pool, &shutdown).await?;
        for task in background {
            tasks.push(tokio::spawn(async move {
                task.await.context("read path task panicked")
            }));
        }
        state.extra_registries = registries;
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(&config.http.listen)
                .await
                .with_context(|| format!("binding http.listen {}", config.http.listen))?,
        };
        ingest_addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "ingest listening");
        let console_state = console_state(config, &pool, &state);
        state
            .extra_registries
            .push(console_state.metrics.registry.clone());
        let console = meterline_console::router(console_state);
        parts.push(Box::new(IngestServer {
            state,
            listener,
            header_read_timeout,
            extra_routes: Some(console),
        }));
    } else if !parts.is_empty() {
        // Without ingest, the aggregator, scorer and notifier serve their own health and metrics.
        let (key, addr) = if which.aggregator {
            ("http.aggregator_listen", &config.http.aggregator_listen)
        } else if which.scorer {
            ("http.scorer_listen", &config.http.scorer_listen)
        } else {
            ("http.notifier_listen", &config.http.notifier_listen)
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {key} {addr}"))?;
        parts.push(Box::new(MetricsServer {
            listener,
            registries,
            header_read_timeout,
        }));
    }
    for part in parts {
        let name = part.name();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            part.run(token)
                .await
                .map_err(|e| anyhow::anyhow!(e).context(name))
        }));
    }
    Ok(Running {
        ingest_addr,
        aggregator_metrics,
        shutdown,
        tasks,
    })
}
