//! Configuration: a TOML file, then `METERLINE_…` environment variables on top.
//!
//! Every key can be overridden from the environment: the variable is `METERLINE_` followed by
//! the key path in upper case with `__` between levels, so `kafka.brokers` is
//! `METERLINE_KAFKA__BROKERS` and `ingest.max_events` is `METERLINE_INGEST__MAX_EVENTS`. The
//! value is parsed as the type the key has. Anything wrong, in the file or the environment,
//! stops start-up with a message that names the key.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use meterline_aggregator::AggregatorConfig;
use meterline_console::ConsoleConfig;
use meterline_infra::{ClickHouseConfig, KafkaConfig, RedisConfig};
use meterline_ingest::IngestConfig;
use meterline_notifier::NotifierConfig;
use meterline_schemas::limits::{QuotaConfig, TiersConfig};
use meterline_schemas::public_domains::{PublicDomains, PublicDomainsConfig};
use meterline_schemas::review::ReviewConfig;
use meterline_scorer::ScorerConfig;
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "METERLINE_";
/// The variable that names the configuration file (the `--config` flag wins over it).
pub const CONFIG_PATH_ENV: &str = "METERLINE_CONFIG";
/// `METERLINE_` variables that are not configuration keys.
pub const NON_KEY_VARS: [&str; 3] = [
    CONFIG_PATH_ENV,
    "METERLINE_LOG_FORMAT",
    "METERLINE_FAILPOINT",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where ingest listens.
    pub listen: String,
    /// Where `meterline aggregate` serves its own /metrics and /healthz when run alone.
    pub aggregator_listen: String,
    /// Where `meterline score` serves its own /metrics and /healthz when run alone.
    pub scorer_listen: String,
    /// Where `meterline notify` serves its own /metrics and /healthz when run alone.
    pub notifier_listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            aggregator_listen: "127.0.0.1:8081".into(),
            scorer_listen: "127.0.0.1:8082".into(),
            notifier_listen: "127.0.0.1:8083".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Add `?sslmode=require` (or `verify-full`) for encrypted connections.
    pub url: String,
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/meterline".into(),
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The HMAC key for client and signup IP hashes. Set it in production and keep it: a new
    /// key makes every IP hash new.
    pub ip_hash_key: String,
    /// The HMAC key that signs the email channel's one-click unsubscribe links (the notifier
    /// signs, ingest checks). Set it in production and keep it: a new key breaks the links in
    /// every email already sent.
    pub unsubscribe_key: String,
}

/// The development keys; start-up warns when one is still in use.
pub const DEV_IP_HASH_KEY: &str = "meterline-development-key-change-me";
pub const DEV_UNSUBSCRIBE_KEY: &str = "meterline-development-unsubscribe-key-change-me";

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            ip_hash_key: DEV_IP_HASH_KEY.into(),
            unsubscribe_key: DEV_UNSUBSCRIBE_KEY.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// A Confluent-compatible Schema Registry. Empty: schemas are kept in PostgreSQL.
    pub url: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub privacy: PrivacyConfig,
    pub ingest: IngestConfig,
    pub aggregator: AggregatorConfig,
    pub quota: QuotaConfig,
    pub tiers: TiersConfig,
    pub scorer: ScorerConfig,
    pub notifier: NotifierConfig,
    /// Account-wide settings: the public email domains.
    pub accounts: PublicDomainsConfig,
    /// A person in the loop before enforcement: suspected accounts, the high-confidence rule.
    pub review: ReviewConfig,
    /// The web console at `/console`: its address (deal alerts link to it) and sessions.
    pub console: ConsoleConfig,
}

impl Config {
    /// Loads `path` (if any) and applies the `METERLINE_…` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let defaults = toml::Table::try_from(Config::default()).context("serialising defaults")?;
        // The file is laid over the defaults key by key, so a file (or a variable) can change
        // one key of a tier without restating the whole tier.
        let mut table = defaults.clone();
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading configuration file {}", p.display()))?;
            let file = toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("parsing configuration file {}", p.display()))?;
            merge(&mut table, file);
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NON_KEY_VARS.contains(&k.as_str()))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            apply_override(&mut table, &defaults, &path, &var, &value)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                anyhow!("configuration key `{key}`: {}", e.inner().message())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Rules that types alone do not express.
    /// The public email domains: `accounts.public_domains` plus the file's.
    pub fn public_domains(&self) -> Result<PublicDomains> {
        Ok(PublicDomains::load(&self.accounts)?)
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("kafka.partitions", self.kafka.partitions as i64),
            (
                "kafka.replication_factor",
                self.kafka.replication_factor as i64,
            ),
            ("ingest.max_events", self.ingest.max_events as i64),
            ("ingest.max_body_bytes", self.ingest.max_body_bytes as i64),
            (
                "ingest.max_inflight_body_bytes",
                self.ingest.max_inflight_body_bytes as i64,
            ),
            (
                "ingest.produce_timeout_ms",
                self.ingest.produce_timeout_ms as i64,
            ),
            (
                "aggregator.batch_max_events",
                self.aggregator.batch_max_events as i64,
            ),
            (
                "aggregator.batch_max_wait_ms",
                self.aggregator.batch_max_wait_ms as i64,
            ),
            (
                "aggregator.state_max_accounts",
                self.aggregator.state_max_accounts as i64,
            ),
            (
                "aggregator.state_snapshots_in_flight",
                self.aggregator.state_snapshots_in_flight as i64,
            ),
            (
                "aggregator.clickhouse_backlog_events",
                self.aggregator.clickhouse_backlog_events as i64,
            ),
            (
                "postgres.max_connections",
                self.postgres.max_connections as i64,
            ),
            (
                "ingest.header_read_timeout_ms",
                self.ingest.header_read_timeout_ms as i64,
            ),
            (
                "ingest.body_read_timeout_ms",
                self.ingest.body_read_timeout_ms as i64,
            ),
            ("scorer.interval_ms", self.scorer.interval_ms as i64),
            ("scorer.batch_size", self.scorer.batch_size as i64),
            (
                "scorer.sustained_minutes",
                self.scorer.sustained_minutes as i64,
            ),
        ];
        self.console
            .validate()
            .map_err(|(key, why)| anyhow!("configuration key `{key}`: {why}"))?;
        for (key, v) in positive {
            if v < 1 {
                bail!("configuration key `{key}`: must be at least 1, got {v}");
            }
        }
        if self.ingest.max_inflight_body_bytes < self.ingest.max_body_bytes {
            bail!(
                "configuration key `ingest.max_inflight_body_bytes`: must be at least ingest.max_body_bytes ({}), got {}; no full-size body could be read",
                self.ingest.max_body_bytes,
                self.ingest.max_inflight_body_bytes
            );
        }
        let nonempty = [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.usage_topic", &self.kafka.usage_topic),
            ("kafka.account_topic", &self.kafka.account_topic),
            ("kafka.dead_letter_topic", &self.kafka.dead_letter_topic),
            ("kafka.signal_topic", &self.kafka.signal_topic),
            ("clickhouse.database", &self.clickhouse.database),
            ("aggregator.group_id", &self.aggregator.group_id),
            ("notifier.group_id", &self.notifier.group_id),
            ("notifier.data_dir", &self.notifier.data_dir),
            ("privacy.ip_hash_key", &self.privacy.ip_hash_key),
        ];
        for (key, v) in nonempty {
            if v.trim().is_empty() {
                bail!("configuration key `{key}`: must not be empty");
            }
        }
        // Every key the components touch is tagged for Redis Cluster (`keys::hot`), so a
        // cluster serves them; its nodes must be Redis URLs.
        for node in self.redis.cluster_node_list() {
            if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                bail!("configuration key `redis.cluster_nodes`: {node:?} is not a redis:// or rediss:// URL");
            }
        }
        if meterline_schemas::keys::hot::HotKeys::new(self.redis.key_prefix.clone()).is_err() {
            bail!(
                "configuration key `redis.key_prefix`: {:?} contains a brace, which would put every account in one Redis Cluster slot",
                self.redis.key_prefix
            );
        }
        if !self
            .clickhouse
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("configuration key `clickhouse.database`: use only letters, digits and _");
        }
        for (key, addr) in [
            ("http.listen", &self.http.listen),
            ("http.aggregator_listen", &self.http.aggregator_listen),
            ("http.scorer_listen", &self.http.scorer_listen),
            ("http.notifier_listen", &self.http.notifier_listen),
        ] {
            addr.parse::<std::net::SocketAddr>().map_err(|e| {
                anyhow!("configuration key `{key}`: {addr:?} is not an address:port ({e})")
            })?;
        }
        self.tiers.validate(&self.quota)?;
        self.review.validate()?;
        self.public_domains()?;
        self.notifier
            .validate()
            .map_err(|e| anyhow!("configuration key `{}", e.replacen(':', "`:", 1)))?;
        self.scorer
            .validate()
            .map_err(|e| anyhow!("configuration key `{}", e.replacen(':', "`:", 1)))?;
        if self.scorer.full_pass_hour > 23 {
            bail!("configuration key `scorer.full_pass_hour`: must be an hour, 0 to 23");
        }
        for (key, url) in [
            ("clickhouse.url", &self.clickhouse.url),
            ("redis.url", &self.redis.url),
            ("postgres.url", &self.postgres.url),
        ] {
            if !url.contains("://") {
                bail!("configuration key `{key}`: {url:?} is not a URL");
            }
        }
        Ok(())
    }

    /// The `METERLINE_…` variables that, laid over `base`, give this configuration: one for
    /// each key whose value differs. A child process started with them, and with what gave
    /// `base` (the same file and environment), loads exactly `self`. Fails, naming the key,
    /// for a change no variable can make (a list, a key removed).
    pub fn env_changes(&self, base: &Config) -> Result<Vec<(String, String)>> {
        let to_table = |c: &Config| toml::Table::try_from(c).context("serialising a configuration");
        let mut out = Vec::new();
        env_changes_of(&to_table(self)?, &to_table(base)?, ENV_PREFIX, &mut out)?;
        Ok(out)
    }
}

/// [`Config::env_changes`] below one section, whose variables start with `var_prefix`.
fn env_changes_of(
    table: &toml::Table,
    base: &toml::Table,
    var_prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<()> {
    let key_of = |k: &str| {
        var_prefix[ENV_PREFIX.len()..]
            .replace("__", ".")
            .to_lowercase()
            + k
    };
    if let Some(gone) = base.keys().find(|k| !table.contains_key(*k)) {
        bail!(
            "configuration key `{}`: a removed key cannot be set by a variable",
            key_of(gone)
        );
    }
    for (k, v) in table {
        let was = base.get(k);
        if was == Some(v) {
            continue;
        }
        // Variables are read back in lower case, split at `__`.
        if k.to_lowercase() != *k || k.contains("__") {
            bail!("configuration key `{}`: no variable can name it", key_of(k));
        }
        let var = format!("{var_prefix}{}", k.to_uppercase());
        let value = match v {
            toml::Value::Table(t) => {
                let empty = toml::Table::new();
                let base = match was {
                    Some(toml::Value::Table(b)) => b,
                    _ => &empty,
                };
                env_changes_of(t, base, &format!("{var}__"), out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(_) | toml::Value::Datetime(_) => bail!(
                "configuration key `{}`: a list or date cannot be set by a variable",
                key_of(k)
            ),
        };
        out.push((var, value));
    }
    Ok(())
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets `path` in `table` to `raw`, parsed as the type the same key has in `defaults`.
fn apply_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    var: &str,
    raw: &str,
) -> Result<()> {
    let key = path.join(".");
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| anyhow!("{var}: empty key"))?;
    let mut default_node = Some(defaults);
    let mut node = table;
    for p in parents {
        let d = default_node.and_then(|d| d.get(p));
        match d {
            Some(toml::Value::Table(t)) => default_node = Some(t),
            // Free-form maps such as kafka.properties have no defaults below them.
            Some(_) => bail!("configuration key `{key}` (from {var}): `{p}` is not a section"),
            None if default_node.is_some_and(|d| d.is_empty()) => default_node = None,
            None => bail!("configuration key `{key}` (from {var}): unknown key"),
        }
        node = node
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| {
                anyhow!("configuration key `{key}` (from {var}): `{p}` is not a section")
            })?;
    }
    let bad = |what: &str| anyhow!("configuration key `{key}` (from {var}): {raw:?} is not {what}");
    let value = match default_node.and_then(|d| d.get(last)) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        Some(toml::Value::Table(_)) | Some(toml::Value::Array(_)) => {
            bail!("configuration key `{key}` (from {var}): is a section; set its keys one by one")
        }
        Some(_) => toml::Value::String(raw.to_owned()),
        None if default_node.is_some_and(|d| !d.is_empty())
            || default_node.is_none() && parents.is_empty() =>
        {
            bail!("configuration key `{key}` (from {var}): unknown key")
        }
        None => toml::Value::String(raw.to_owned()),
    };
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
