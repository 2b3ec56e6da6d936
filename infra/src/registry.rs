//! Schema ids.
//!
//! Producers register the schema they write with and put its id in every message; consumers
//! fetch the writer schema by id. With `schema_registry_url` set we speak the Confluent Schema
//! Registry REST API (`POST /subjects/{subject}/versions`, `GET /schemas/ids/{id}`); without it
//! the ids live in our own PostgreSQL table `avro_schemas`, keyed by the schema's canonical form
//! so that registering the same schema twice returns the same id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Failures of registering or looking up a schema.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No schema has this id: a record that names it will never decode (poison).
    #[error("unknown schema id {0}")]
    UnknownSchemaId(i32),
    /// The registry could not be asked, or answered with an error: retry.
    #[error("schema registry: {0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored schema that does not parse.
    #[error("avro: {0}")]
    Avro(String),
}

impl From<apache_avro::Error> for RegistryError {
    fn from(e: apache_avro::Error) -> Self {
        RegistryError::Avro(e.to_string())
    }
}

#[derive(Clone)]
enum Backend {
    Postgres(PgPool),
    Confluent {
        base_url: String,
        http: reqwest::Client,
    },
}

/// Registers and resolves schemas, caching every id it has seen: ids are immutable, so the
/// cache never needs invalidating.
#[derive(Clone)]
pub struct SchemaRegistry {
    backend: Backend,
    by_id: Arc<RwLock<HashMap<i32, Arc<Schema>>>>,
}

impl SchemaRegistry {
    pub fn postgres(pool: PgPool) -> Self {
        Self {
            backend: Backend::Postgres(pool),
            by_id: Default::default(),
        }
    }

    pub fn confluent(base_url: &str) -> Self {
        Self {
            backend: Backend::Confluent {
                base_url: base_url.trim_end_matches('/').to_owned(),
                http: reqwest::Client::new(),
            },
            by_id: Default::default(),
        }
    }

    /// Registers `schema_text` under `subject` (Confluent's TopicNameStrategy: `{topic}-value`)
    /// and returns its id.
    pub async fn register(&self, subject: &str, schema_text: &str) -> Result<i32, RegistryError> {
        let schema = Schema::parse_str(schema_text)?;
        let canonical = schema.canonical_form();
        let id = match &self.backend {
            Backend::Postgres(pool) => {
                let fingerprint = hex_sha256(&canonical);
                // Upsert that returns the id whether or not the row was new.
                let id: i32 = sqlx::query_scalar(
                    "INSERT INTO avro_schemas (subject, fingerprint, schema_text) VALUES ($1, $2, $3)
                     ON CONFLICT (subject, fingerprint) DO UPDATE SET subject = EXCLUDED.subject
                     RETURNING id",
                )
                .bind(subject)
                .bind(&fingerprint)
                .bind(schema_text)
                .fetch_one(pool)
                .await?;
                id
            }
            Backend::Confluent { base_url, http } => {
                #[derive(serde::Deserialize)]
                struct Registered {
                    id: i32,
                }
                let resp = http
                    .post(format!("{base_url}/subjects/{subject}/versions"))
                    .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    .json(&serde_json::json!({ "schema": schema_text }))
                    .send()
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(RegistryError::Unavailable(format!(
                        "register {subject}: {status} {body}"
                    )));
                }
                resp.json::<Registered>()
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))?
                    .id
            }
        };
        self.by_id
            .write()
            .expect("poisoned")
            .insert(id, Arc::new(schema));
        Ok(id)
    }

    /// The writer schema for `id`.
    pub async fn fetch(&self, id: i32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.read().expect("poisoned").get(&id) {
            return Ok(s.clone());
        }
        let text: String = match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT schema_text FROM avro_schemas WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
                    .ok_or(RegistryError::UnknownSchemaId(id))?
            }
            Backend::Confluent { base_url, http } => {
                #[derive(serde::Deserialize)]
                struct ById {
                    schema: String,
                }
                let resp = http
                    .get(format!("{base_url}/schemas/ids/{id}"))
                    .send()
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err(RegistryError::UnknownSchemaId(id));
                }
                if !resp.status().is_success() {
                    return Err(RegistryError::Unavailable(format!(
                        "fetch {id}: {}",
                        resp.status()
                    )));
                }
                resp.json::<ById>()
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))?
                    .schema
            }
        };
        let schema = Arc::new(Schema::parse_str(&text)?);
        self.by_id
            .write()
            .expect("poisoned")
            .insert(id, schema.clone());
        Ok(schema)
    }
}

fn hex_sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}
