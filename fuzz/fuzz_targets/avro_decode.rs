//! The Avro decoder the aggregator runs on every Kafka record: Confluent framing, then a strict
//! walk and decode of one record. Any bytes must come back as an event or an error (which the
//! aggregator dead-letters), never a panic, a hang or an allocation the input did not pay for.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meterline_schemas::avro::{
    decode_body, parse_schema, split_frame, Schema, ACCOUNT_EVENT_SCHEMA, USAGE_EVENT_SCHEMA,
};
use meterline_schemas::{AccountEvent, UsageEvent};

fn schemas() -> &'static (Schema, Schema) {
    static S: OnceLock<(Schema, Schema)> = OnceLock::new();
    S.get_or_init(|| {
        (
            parse_schema(USAGE_EVENT_SCHEMA).unwrap(),
            parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (usage, account) = schemas();
    let body = match split_frame(data) {
        Ok((_id, body)) => body,
        Err(_) => data,
    };
    let _ = decode_body::<UsageEvent>(usage, usage, body);
    let _ = decode_body::<AccountEvent>(account, account, body);
});
