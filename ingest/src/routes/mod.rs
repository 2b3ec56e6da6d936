//! One file per endpoint group.

pub mod events;
pub mod health;
pub mod notices;
pub mod openapi;
pub mod read;
pub mod review;
pub mod unsubscribe;

use meterline_schemas::{avro, AccountEvent};

use crate::error::ApiError;
use crate::producer::OutgoingRecord;
use crate::AppState;

/// Produces one account event that an endpoint records (a notice shown or clicked, an email
/// unsubscribe), keyed by its account, and waits for Kafka's acknowledgement. Kafka refusing
/// it is a 503 saying that `what` was not recorded.
pub(crate) async fn produce_account_event(
    state: &AppState,
    event: &AccountEvent,
    what: &str,
) -> Result<(), ApiError> {
    let topic = &state.account;
    let payload = avro::encode(topic.schema_id, &topic.schema, event)
        .map_err(|e| ApiError::Internal(format!("avro encoding: {e}")))?;
    let record = OutgoingRecord {
        key: event.account_id.as_str().to_owned(),
        payload,
    };
    state
        .producer
        .produce_all(&topic.topic, &[record])
        .await
        .map_err(|e| ApiError::Unavailable {
            reason: format!("kafka: {e}; {what} was not recorded, retry it"),
            retry_after_secs: state.config.retry_after_secs,
        })
}
