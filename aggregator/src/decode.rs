//! Kafka record bytes to events. A record that cannot be decoded is poison: it is sent to the
//! dead-letter topic with the reason, never dropped silently and never allowed to stall the
//! partition. A registry that cannot be reached is not poison: the batch is retried.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use meterline_infra::registry::SchemaRegistry;
use meterline_infra::RegistryError;
use meterline_schemas::avro::Schema;
use meterline_schemas::{avro, usage_codec, AccountEvent, UsageEvent};
use serde::de::DeserializeOwned;

use crate::SinkError;

/// A record as read from Kafka.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Usage,
    Account,
}

#[derive(Debug, Clone)]
pub struct Decoded<T> {
    pub partition: i32,
    pub offset: i64,
    pub event: T,
}

#[derive(Debug, Clone)]
pub struct Poison {
    pub record: RawRecord,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct DecodedBatch {
    pub usage: Vec<Decoded<UsageEvent>>,
    pub account: Vec<Decoded<AccountEvent>>,
    pub poison: Vec<Poison>,
}

#[derive(Clone)]
pub struct Decoder {
    registry: SchemaRegistry,
    usage_reader: Arc<Schema>,
    account_reader: Arc<Schema>,
    /// Per usage writer-schema id: whether it is the v1 schema, which the hand-written codec
    /// reads directly (no resolution needed). Ids never change meaning, so this never expires.
    usage_fast_path: Arc<RwLock<HashMap<i32, bool>>>,
}

impl Decoder {
    pub fn new(registry: SchemaRegistry) -> Self {
        Self {
            registry,
            usage_reader: Arc::new(
                avro::parse_schema(avro::USAGE_EVENT_SCHEMA).expect("bundled schema parses"),
            ),
            account_reader: Arc::new(
                avro::parse_schema(avro::ACCOUNT_EVENT_SCHEMA).expect("bundled schema parses"),
            ),
            usage_fast_path: Default::default(),
        }
    }

    /// A usage record: through the hand-written codec when it was written with the v1 schema,
    /// through apache-avro's schema resolution otherwise.
    async fn decode_usage(&self, bytes: &[u8]) -> Result<Result<UsageEvent, String>, SinkError> {
        let Ok((id, body)) = avro::split_frame(bytes) else {
            return self.decode_one(&self.usage_reader, bytes).await;
        };
        let fast = self
            .usage_fast_path
            .read()
            .expect("poisoned")
            .get(&id)
            .copied();
        let fast = match fast {
            Some(f) => f,
            None => {
                let writer = match self.registry.fetch(id).await {
                    Ok(w) => w,
                    // The general path words the error.
                    Err(_) => return self.decode_one(&self.usage_reader, bytes).await,
                };
                let f = usage_codec::is_v1_schema(&writer);
                self.usage_fast_path
                    .write()
                    .expect("poisoned")
                    .insert(id, f);
                f
            }
        };
        if fast {
            Ok(usage_codec::decode_body(body).map_err(|e| e.to_string()))
        } else {
            self.decode_one(&self.usage_reader, bytes).await
        }
    }

    async fn decode_one<T: DeserializeOwned>(
        &self,
        reader: &Schema,
        bytes: &[u8],
    ) -> Result<Result<T, String>, SinkError> {
        let (id, body) = match avro::split_frame(bytes) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let writer = match self.registry.fetch(id).await {
            Ok(w) => w,
            Err(RegistryError::UnknownSchemaId(id)) => {
                return Ok(Err(format!("unknown schema id {id}")))
            }
            Err(e) => return Err(SinkError::Registry(e.to_string())),
        };
        Ok(avro::decode_body::<T>(&writer, reader, body).map_err(|e| e.to_string()))
    }

    /// Decodes every record, sorting them into usage events, account events and poison.
    pub async fn decode(
        &self,
        records: &[RawRecord],
        stream_of: impl Fn(&str) -> Option<Stream>,
    ) -> Result<DecodedBatch, SinkError> {
        let mut out = DecodedBatch::default();
        for r in records {
            let poison = |reason: String| Poison {
                record: r.clone(),
                reason,
            };
            let Some(payload) = r.payload.as_deref() else {
                out.poison.push(poison("empty payload".into()));
                continue;
            };
            match stream_of(&r.topic) {
                Some(Stream::Usage) => match self.decode_usage(payload).await? {
                    Ok(event) => out.usage.push(Decoded {
                        partition: r.partition,
                        offset: r.offset,
                        event,
                    }),
                    Err(reason) => out.poison.push(poison(reason)),
                },
                Some(Stream::Account) => match self
                    .decode_one::<AccountEvent>(&self.account_reader, payload)
                    .await?
                {
                    Ok(event) => out.account.push(Decoded {
                        partition: r.partition,
                        offset: r.offset,
                        event,
                    }),
                    Err(reason) => out.poison.push(poison(reason)),
                },
                None => out
                    .poison
                    .push(poison(format!("record from unexpected topic {}", r.topic))),
            }
        }
        Ok(out)
    }
}
