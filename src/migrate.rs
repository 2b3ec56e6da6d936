//! `meterline migrate`: PostgreSQL (sqlx migrations), ClickHouse (ordered `.sql` files recorded
//! in `schema_migrations`) and the Kafka topics. Safe to run any number of times.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use include_dir::{include_dir, Dir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::Config;

static CLICKHOUSE_MIGRATIONS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/migrations/clickhouse");

pub async fn run(config: &Config) -> Result<()> {
    postgres(config).await?;
    clickhouse(config).await?;
    kafka_topics(config).await?;
    Ok(())
}

/// Creates the database named in `postgres.url` when it does not exist, then applies the
/// migrations under `migrations/postgres/`.
pub async fn postgres(config: &Config) -> Result<()> {
    let opts = PgConnectOptions::from_str(&config.postgres.url).context("postgres.url")?;
    let db = opts.get_database().unwrap_or("postgres").to_owned();
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it.
        let quoted = format!("\"{}\"", db.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            // Two migrators racing: the other one created it.
            if !e.to_string().contains("already exists") {
                return Err(e).context("creating the PostgreSQL database");
            }
        }
        tracing::info!(database = %db, "created PostgreSQL database");
    }
    admin.close().await.ok();
    let pool = connect_postgres(config).await?;
    sqlx::migrate!("migrations/postgres")
        .run(&pool)
        .await
        .context("PostgreSQL migrations")?;
    pool.close().await;
    Ok(())
}

pub async fn connect_postgres(config: &Config) -> Result<PgPool> {
    let opts = PgConnectOptions::from_str(&config.postgres.url)
        .context("postgres.url")?
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(config.postgres.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .context("connecting to PostgreSQL")
}

/// Splits a migration file into statements: `;` at the end of a line ends one. Comment lines
/// are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if trimmed.ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_owned();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The ClickHouse migrations in order: (name, statements).
pub fn clickhouse_migrations() -> Vec<(String, Vec<String>)> {
    let mut files: Vec<_> = CLICKHOUSE_MIGRATIONS
        .files()
        .filter(|f| f.path().extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort_by_key(|f| f.path().to_owned());
    files
        .into_iter()
        .map(|f| {
            let name = f
                .path()
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, split_statements(f.contents_utf8().unwrap_or("")))
        })
        .collect()
}

pub async fn clickhouse(config: &Config) -> Result<()> {
    let db = &config.clickhouse.database;
    let server = clickhouse::Client::default()
        .with_url(&config.clickhouse.url)
        .with_user(&config.clickhouse.user)
        .with_password(&config.clickhouse.password)
        .with_validation(false);
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await
        .context("connecting to ClickHouse")?;
    let client = config.clickhouse.client();
    client
        .query("CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY name")
        .execute()
        .await?;
    let applied: Vec<String> = client
        .query("SELECT name FROM schema_migrations")
        .fetch_all()
        .await?;
    for (name, statements) in clickhouse_migrations() {
        if applied.contains(&name) {
            continue;
        }
        for stmt in &statements {
            client.query(stmt).execute().await.with_context(|| {
                format!(
                    "ClickHouse migration {name}: {}",
                    stmt.lines().next().unwrap_or("")
                )
            })?;
        }
        client
            .query("INSERT INTO schema_migrations (name, applied_at) VALUES (?, now())")
            .bind(&name)
            .execute()
            .await?;
        tracing::info!(migration = %name, "applied ClickHouse migration");
    }
    Ok(())
}

/// Creates the topics with the configured partition count; existing topics are left alone.
pub async fn kafka_topics(config: &Config) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        meterline_infra::kafka::client_config(&config.kafka)
            .create()
            .context("creating the Kafka admin client")?;
    let k = &config.kafka;
    let topics: Vec<NewTopic<'_>> = [
        &k.usage_topic,
        &k.account_topic,
        &k.dead_letter_topic,
        &k.signal_topic,
    ]
    .into_iter()
    .map(|t| {
        NewTopic::new(
            t,
            k.partitions,
            TopicReplication::Fixed(k.replication_factor),
        )
    })
    .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .context("creating Kafka topics")?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating Kafka topic {t}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_line_final_semicolons() {
        let s = split_statements(
            "-- c\nCREATE TABLE a (x String);\n\nSELECT 1\nFROM b;\nSELECT ';' ;\n",
        );
        assert_eq!(
            s,
            vec![
                "CREATE TABLE a (x String)",
                "SELECT 1\nFROM b",
                "SELECT ';'"
            ]
        );
    }

    #[test]
    fn bundled_clickhouse_migrations_are_ordered_and_avoid_features_18_16_lacks() {
        let m = clickhouse_migrations();
        assert!(m.len() >= 2);
        assert!(m.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, stmts) in m {
            for s in stmts {
                let upper = s.to_uppercase();
                for banned in [
                    " TTL ",
                    "DATETIME64",
                    "LOWCARDINALITY",
                    "MAP(",
                    "CODEC(",
                    " OVER (",
                ] {
                    // A word of its own: `arrayMap(` is a function 18.16 has, `Map(` a type it lacks.
                    let used = upper.match_indices(banned).any(|(i, _)| {
                        !upper[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                    assert!(!used, "{name} uses {banned}");
                }
            }
        }
    }
}
