//! Avro encoding in the Confluent wire format.
//!
//! A message is `0x00`, the writer schema's id as a big-endian `i32`, then the Avro binary
//! body. Readers look the writer schema up by id and resolve it against their own reader
//! schema, which is what lets a v1 reader read v2 events and the other way round.
//!
//! Encoding goes from the serde `Serialize` impl straight to bytes
//! ([`apache_avro::write_avro_datum_ref`]); building an `apache_avro::types::Value` per event
//! first is about ten times slower.

pub use apache_avro::Schema;
use serde::{de::DeserializeOwned, Serialize};

use crate::SchemaError;

pub const USAGE_EVENT_SCHEMA: &str = include_str!("../usage_event.avsc");
pub const ACCOUNT_EVENT_SCHEMA: &str = include_str!("../account_event.avsc");
pub const ACCOUNT_SIGNAL_SCHEMA: &str = include_str!("../account_signal.avsc");

pub const MAGIC: u8 = 0;
pub const HEADER_LEN: usize = 5;

pub fn parse_schema(text: &str) -> Result<Schema, SchemaError> {
    Ok(Schema::parse_str(text)?)
}

/// Writes `value` with `schema` into `out` in the Confluent framing.
pub fn encode_into<T: Serialize>(
    schema_id: i32,
    schema: &Schema,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), SchemaError> {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    apache_avro::write_avro_datum_ref(schema, value, out)?;
    Ok(())
}

pub fn encode<T: Serialize>(
    schema_id: i32,
    schema: &Schema,
    value: &T,
) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(256);
    encode_into(schema_id, schema, value, &mut out)?;
    Ok(out)
}

/// Splits a framed message into its schema id and Avro body.
pub fn split_frame(bytes: &[u8]) -> Result<(i32, &[u8]), SchemaError> {
    if bytes.len() < HEADER_LEN {
        return Err(SchemaError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(SchemaError::BadMagic(bytes[0]));
    }
    let id = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Decodes an Avro body written with `writer`, resolved against `reader`. The body must be
/// exactly one record: apache-avro reads a string, boolean or union cut off by the end of the
/// input as null, so the body is first walked strictly ([`check_exact`]) to refuse truncated
/// records, and trailing bytes are refused too.
pub fn decode_body<T: DeserializeOwned>(
    writer: &Schema,
    reader: &Schema,
    body: &[u8],
) -> Result<T, SchemaError> {
    check_exact(writer, body)?;
    let mut cursor = body;
    // Resolution is only needed when the schemas differ.
    let reader = if std::ptr::eq(writer, reader) || writer == reader {
        None
    } else {
        Some(reader)
    };
    let value = apache_avro::from_avro_datum(writer, &mut cursor, reader)?;
    if !cursor.is_empty() {
        return Err(SchemaError::Avro(format!(
            "{} trailing bytes after the record",
            cursor.len()
        )));
    }
    Ok(apache_avro::from_value(&value)?)
}

/// Walks `body` as one datum of `schema`, failing on any read past the end and on leftover
/// bytes.
pub fn check_exact(schema: &Schema, body: &[u8]) -> Result<(), SchemaError> {
    let mut cursor = body;
    skip(schema, schema, None, &mut cursor)?;
    if !cursor.is_empty() {
        return Err(SchemaError::Avro(format!(
            "{} trailing bytes after the record",
            cursor.len()
        )));
    }
    Ok(())
}

fn truncated() -> SchemaError {
    SchemaError::Avro("record is truncated".into())
}

fn take<'a>(cursor: &mut &'a [u8], n: usize) -> Result<&'a [u8], SchemaError> {
    if cursor.len() < n {
        return Err(truncated());
    }
    let (head, tail) = cursor.split_at(n);
    *cursor = tail;
    Ok(head)
}

fn varint(cursor: &mut &[u8]) -> Result<i64, SchemaError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = take(cursor, 1)?[0];
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(SchemaError::Avro("varint longer than 10 bytes".into()))
}

fn length(cursor: &mut &[u8]) -> Result<usize, SchemaError> {
    let n = varint(cursor)?;
    usize::try_from(n).map_err(|_| SchemaError::Avro(format!("negative length {n}")))
}

/// `root` is the whole schema, for resolving named references; those are rare in our schemas,
/// so the name table is only built when one is met (building it per record cost more than the
/// walk itself).
fn skip(
    schema: &Schema,
    root: &Schema,
    ns: Option<&str>,
    cursor: &mut &[u8],
) -> Result<(), SchemaError> {
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => match take(cursor, 1)?[0] {
            0 | 1 => Ok(()),
            b => Err(SchemaError::Avro(format!("invalid boolean byte {b}"))),
        },
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => varint(cursor).map(|_| ()),
        Schema::Float => take(cursor, 4).map(|_| ()),
        Schema::Double => take(cursor, 8).map(|_| ()),
        Schema::String | Schema::Uuid => {
            let n = length(cursor)?;
            std::str::from_utf8(take(cursor, n)?)
                .map(|_| ())
                .map_err(|_| SchemaError::Avro("string is not UTF-8".into()))
        }
        Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) => {
            let n = length(cursor)?;
            take(cursor, n).map(|_| ())
        }
        Schema::Fixed(f) => take(cursor, f.size).map(|_| ()),
        Schema::Duration => take(cursor, 12).map(|_| ()),
        Schema::Enum(e) => {
            let i = varint(cursor)?;
            if i < 0 || i as usize >= e.symbols.len() {
                return Err(SchemaError::Avro(format!(
                    "enum index {i} out of range for {}",
                    e.name
                )));
            }
            Ok(())
        }
        Schema::Union(u) => {
            let i = varint(cursor)?;
            let variant = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| SchemaError::Avro(format!("union index {i} out of range")))?;
            skip(variant, root, ns, cursor)
        }
        Schema::Array(a) => loop {
            let n = varint(cursor)?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                length(cursor)?;
            }
            for _ in 0..n.unsigned_abs() {
                skip(&a.items, root, ns, cursor)?;
            }
        },
        Schema::Map(m) => loop {
            let n = varint(cursor)?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                length(cursor)?;
            }
            for _ in 0..n.unsigned_abs() {
                skip(&Schema::String, root, ns, cursor)?;
                skip(&m.types, root, ns, cursor)?;
            }
        },
        Schema::Record(r) => {
            let inner_ns = r.name.namespace.as_deref().or(ns);
            for f in &r.fields {
                skip(&f.schema, root, inner_ns, cursor)?;
            }
            Ok(())
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(&ns.map(String::from));
            let resolved = apache_avro::schema::ResolvedSchema::try_from(root)?;
            let target = resolved
                .get_names()
                .get(&full)
                .ok_or_else(|| SchemaError::Avro(format!("unresolved schema reference {full}")))?;
            skip(target, root, ns, cursor)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{AccountEvent, AccountEventType, AccountId, Plan, UsageEvent};

    pub(crate) fn sample_usage() -> UsageEvent {
        UsageEvent {
            event_id: "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a11".into(),
            occurred_at: 1_790_000_000_000_000,
            received_at: 1_790_000_000_500_000,
            account_id: AccountId::parse("acct-1").unwrap(),
            api_key_id: "k".into(),
            gateway_id: "g".into(),
            region: "eu-west-1".into(),
            cloud: "gcp".into(),
            provider: "anthropic".into(),
            model: "claude".into(),
            input_tokens: 12,
            output_tokens: 34,
            cost_micros: Some(56),
            latency_ms: None,
            status: Some(200),
            session_id: Some("s".into()),
            user_id: None,
            plugins: vec!["guardrails".into(), "audit_logger".into()],
            pii_detected: true,
            client_ip_hash: Some("ab".repeat(16)),
            device_id: None,
            prompt_hash: Some("p".into()),
        }
    }

    #[test]
    fn usage_event_round_trips_through_the_wire_format() {
        let schema = parse_schema(USAGE_EVENT_SCHEMA).unwrap();
        let e = sample_usage();
        let bytes = encode(7, &schema, &e).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        let (id, body) = split_frame(&bytes).unwrap();
        assert_eq!(id, 7);
        let back: UsageEvent = decode_body(&schema, &schema, body).unwrap();
        assert_eq!(back, e);
    }

    /// A review decision, with the fields account schema version 3 added.
    fn sample_review() -> AccountEvent {
        AccountEvent::review(
            "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a13".into(),
            chrono::Utc::now(),
            AccountId::parse("a").unwrap(),
            AccountEventType::ReviewCleared,
            "ana",
            "CI traffic, checked with the customer",
            Some(70),
        )
        .unwrap()
    }

    /// Sets the profile fields every account schema version has, as null, in a record written
    /// by hand as an older writer would.
    fn null_profile(value: &mut apache_avro::types::Record<'_>) {
        for f in [
            "plan",
            "seats",
            "email_domain",
            "company_size",
            "signup_ip_hash",
            "device_id",
            "browser_signature",
        ] {
            value.put(
                f,
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            );
        }
    }

    #[test]
    fn account_event_round_trips() {
        let schema = parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap();
        let e = AccountEvent {
            event_id: "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a12".into(),
            occurred_at: 1,
            received_at: 2,
            account_id: AccountId::parse("a").unwrap(),
            kind: AccountEventType::PlanChanged,
            plan: Some(Plan::Pro),
            seats: Some(3),
            email_domain: None,
            company_size: Some(500),
            signup_ip_hash: None,
            device_id: None,
            browser_signature: Some("sig".into()),
            notice_id: Some("5f0c8a1e-3b1d-4c2a-9f3e-2a7d9c1b0e44".into()),
            actor: None,
            reason: None,
            abuse_score: None,
            contact_email: None,
        };
        let bytes = encode(1, &schema, &e).unwrap();
        let back: AccountEvent = decode_body(&schema, &schema, &bytes[5..]).unwrap();
        assert_eq!(back, e);
        // A review decision, with the version-3 fields.
        let e = sample_review();
        let bytes = encode(1, &schema, &e).unwrap();
        let back: AccountEvent = decode_body(&schema, &schema, &bytes[5..]).unwrap();
        assert_eq!(back, e);
        // A profile change with the version-4 contact email.
        let mut e = AccountEvent::new(
            "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a14".into(),
            chrono::Utc::now(),
            AccountId::parse("a").unwrap(),
            AccountEventType::ProfileUpdated,
        );
        e.contact_email =
            Some(crate::ContactEmail::parse("contact_email", "ana@example.com").unwrap());
        let bytes = encode(1, &schema, &e).unwrap();
        let back: AccountEvent = decode_body(&schema, &schema, &bytes[5..]).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.contact_email.unwrap().expose(), "ana@example.com");
    }

    /// The account schema as version `version` (1 to 3) was: version 2 added `notice_id`,
    /// version 3 the review event types with actor, reason and abuse_score, version 4 the
    /// profile_updated and email_unsubscribed types with contact_email.
    fn older_account_schema(version: u8) -> Schema {
        let mut doc: serde_json::Value = serde_json::from_str(ACCOUNT_EVENT_SCHEMA).unwrap();
        let mut dropped = vec!["contact_email"];
        let mut symbols = vec!["profile_updated", "email_unsubscribed"];
        if version < 3 {
            dropped.extend(["actor", "reason", "abuse_score"]);
            symbols.extend([
                "review_suspected",
                "review_auto_denied",
                "review_expired",
                "review_confirmed",
                "review_cleared",
            ]);
        }
        if version < 2 {
            dropped.push("notice_id");
        }
        doc["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| !dropped.contains(&f["name"].as_str().unwrap()));
        let kind = doc["fields"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["name"] == "type")
            .unwrap();
        kind["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .retain(|s| !symbols.contains(&s.as_str().unwrap()));
        parse_schema(&doc.to_string()).unwrap()
    }

    /// Version 3 had no contact email and no profile or unsubscribe types; its records still
    /// read, with no contact email.
    #[test]
    fn version_3_account_events_read_with_no_contact_email() {
        let v4 = parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap();
        let v3 = older_account_schema(3);
        let e = sample_review();
        // Written as a version-3 writer would: the same record without contact_email.
        let mut value = apache_avro::to_value(&e).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields.retain(|(name, _)| name != "contact_email");
        }
        let body = apache_avro::to_avro_datum(&v3, value.resolve(&v3).unwrap()).unwrap();
        let back: AccountEvent = decode_body(&v3, &v4, &body).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.contact_email, None);
    }

    /// Version 2 had no review types and no actor, reason or abuse score; its records still
    /// read, with those as `None`.
    #[test]
    fn version_2_account_events_read_with_no_review_fields() {
        let v3 = parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap();
        let v2 = older_account_schema(2);
        let mut value = apache_avro::types::Record::new(&v2).unwrap();
        value.put("event_id", "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a12");
        value.put("occurred_at", 1i64);
        value.put("received_at", 2i64);
        value.put("account_id", "a");
        value.put(
            "type",
            apache_avro::types::Value::Enum(5, "notice_clicked".into()),
        );
        null_profile(&mut value);
        value.put(
            "notice_id",
            apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::String("n".into())),
            ),
        );
        let body = apache_avro::to_avro_datum(&v2, value).unwrap();
        let e: AccountEvent = decode_body(&v2, &v3, &body).unwrap();
        assert_eq!(e.kind, AccountEventType::NoticeClicked);
        assert_eq!(e.notice_id.as_deref(), Some("n"));
        assert_eq!((e.actor, e.reason, e.abuse_score), (None, None, None));
    }

    /// Version 1 of the account schema had no `notice_id`; its records still read.
    #[test]
    fn version_1_account_events_read_with_no_notice() {
        let v2 = parse_schema(ACCOUNT_EVENT_SCHEMA).unwrap();
        let v1 = older_account_schema(1);
        let mut value = apache_avro::types::Record::new(&v1).unwrap();
        value.put("event_id", "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a12");
        value.put("occurred_at", 1i64);
        value.put("received_at", 2i64);
        value.put("account_id", "a");
        value.put("type", apache_avro::types::Value::Enum(0, "signup".into()));
        null_profile(&mut value);
        let body = apache_avro::to_avro_datum(&v1, value).unwrap();
        let e: AccountEvent = decode_body(&v1, &v2, &body).unwrap();
        assert_eq!(e.kind, AccountEventType::Signup);
        assert_eq!(e.notice_id, None);
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        assert!(matches!(
            split_frame(&[0, 0]),
            Err(SchemaError::TooShort(2))
        ));
        assert!(matches!(
            split_frame(&[9, 0, 0, 0, 1, 2]),
            Err(SchemaError::BadMagic(9))
        ));
        let schema = parse_schema(USAGE_EVENT_SCHEMA).unwrap();
        let bytes = encode(1, &schema, &sample_usage()).unwrap();
        let body = &bytes[5..];
        for cut in 1..body.len() {
            let r = decode_body::<UsageEvent>(&schema, &schema, &body[..body.len() - cut]);
            assert!(r.is_err(), "cut {cut}: {r:?}");
        }
    }

    /// v2 of the usage schema adds one optional field. Old readers must read new events and
    /// new readers must read old events: that is the compatibility rule for schema changes.
    const USAGE_V2: &str = r#"{"type":"record","name":"UsageEvent","namespace":"io.meterline.v1","fields":[
        {"name":"event_id","type":"string"},{"name":"occurred_at","type":"long"},{"name":"received_at","type":"long"},
        {"name":"account_id","type":"string"},{"name":"api_key_id","type":"string"},{"name":"gateway_id","type":"string"},
        {"name":"region","type":"string"},{"name":"cloud","type":"string"},{"name":"provider","type":"string"},
        {"name":"model","type":"string"},{"name":"input_tokens","type":"long"},{"name":"output_tokens","type":"long"},
        {"name":"cost_micros","type":["null","long"],"default":null},{"name":"latency_ms","type":["null","long"],"default":null},
        {"name":"status","type":["null","int"],"default":null},{"name":"session_id","type":["null","string"],"default":null},
        {"name":"user_id","type":["null","string"],"default":null},{"name":"plugins","type":{"type":"array","items":"string"},"default":[]},
        {"name":"pii_detected","type":"boolean","default":false},{"name":"client_ip_hash","type":["null","string"],"default":null},
        {"name":"device_id","type":["null","string"],"default":null},{"name":"prompt_hash","type":["null","string"],"default":null},
        {"name":"cached_tokens","type":["null","long"],"default":null}]}"#;

    #[test]
    fn v1_reader_reads_v2_writer_and_back() {
        let v1 = parse_schema(USAGE_EVENT_SCHEMA).unwrap();
        let v2 = parse_schema(USAGE_V2).unwrap();
        let e = sample_usage();

        // v2 writer: the v1 record plus `cached_tokens`, encoded through the generic value path
        // because only the test has a v2 type.
        let mut value = apache_avro::to_value(&e).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields.push((
                "cached_tokens".into(),
                apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Long(99))),
            ));
        }
        let v2_body = apache_avro::to_avro_datum(&v2, value).unwrap();
        let read_by_v1: UsageEvent = decode_body(&v2, &v1, &v2_body).unwrap();
        assert_eq!(read_by_v1, e);

        // v1 writer, v2 reader: the new field takes its default.
        let v1_body = encode(1, &v1, &e).unwrap();
        let mut cursor = &v1_body[5..];
        let read_by_v2 = apache_avro::from_avro_datum(&v1, &mut cursor, Some(&v2)).unwrap();
        let apache_avro::types::Value::Record(fields) = read_by_v2 else {
            panic!("not a record")
        };
        let cached = fields.iter().find(|(n, _)| n == "cached_tokens").unwrap();
        assert_eq!(
            cached.1,
            apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))
        );
        let model = fields.iter().find(|(n, _)| n == "model").unwrap();
        assert_eq!(model.1, apache_avro::types::Value::String("claude".into()));
    }
}
