//! Usage events: one per gateway request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{label, optional_label, AccountId, EventId};
use crate::{FieldError, IpHasher, MAX_EVENT_AGE_SECS, MAX_FUTURE_SKEW_SECS};

/// Longest value accepted for free-text fields such as `region` or `model`.
pub const MAX_LABEL_LEN: usize = 256;
/// At most this many plugins on one request.
pub const MAX_PLUGINS: usize = 64;
/// Token counts above this are not plausible for one request and would overflow Avro's signed
/// `long` in sums; they are refused.
pub const MAX_TOKENS: u64 = 1 << 40;

/// A usage event as a gateway posts it. Every field is optional here so that a missing field is
/// reported by its name rather than as a generic parse failure; [`UsageEventInput::validate`]
/// turns it into a [`UsageEvent`]. Unknown fields are ignored, so gateways can be upgraded first.
///
/// In the OpenAPI document it is `UsageEvent`, with the fields an event needs marked required.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(
    as = UsageEvent,
    description = "The event contract; README.md lists every field's rule."
)]
pub struct UsageEventInput {
    #[schema(value_type = String)]
    pub event_id: Option<String>,
    #[schema(value_type = String)]
    pub occurred_at: Option<String>,
    #[schema(value_type = AccountId)]
    pub account_id: Option<String>,
    #[schema(value_type = String)]
    pub api_key_id: Option<String>,
    #[schema(value_type = String)]
    pub gateway_id: Option<String>,
    #[schema(value_type = String)]
    pub region: Option<String>,
    #[schema(value_type = String)]
    pub cloud: Option<String>,
    #[schema(value_type = String)]
    pub provider: Option<String>,
    #[schema(value_type = String)]
    pub model: Option<String>,
    #[schema(value_type = u64)]
    pub input_tokens: Option<u64>,
    #[schema(value_type = u64)]
    pub output_tokens: Option<u64>,
    /// Cost in millionths of a US dollar.
    pub cost_micros: Option<u64>,
    pub latency_ms: Option<u64>,
    pub status: Option<i64>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub plugins: Option<Vec<String>>,
    pub pii_detected: Option<bool>,
    pub client_ip: Option<String>,
    pub device_id: Option<String>,
    pub prompt_hash: Option<String>,
}

/// A validated usage event: the Avro record `io.meterline.v1.UsageEvent`
/// (`schemas/usage_event.avsc`). Times are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub event_id: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub account_id: AccountId,
    pub api_key_id: String,
    pub gateway_id: String,
    pub region: String,
    pub cloud: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: Option<i64>,
    pub latency_ms: Option<i64>,
    pub status: Option<i32>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub plugins: Vec<String>,
    pub pii_detected: bool,
    pub client_ip_hash: Option<String>,
    pub device_id: Option<String>,
    pub prompt_hash: Option<String>,
}

impl UsageEvent {
    pub fn occurred_at_secs(&self) -> i64 {
        self.occurred_at.div_euclid(1_000_000)
    }

    /// An error in the sense of the rollups: the upstream answered with status 400 or above.
    pub fn is_error(&self) -> bool {
        self.status.is_some_and(|s| s >= 400)
    }
}

/// How far back an event's `occurred_at` may lie. The future-skew bound (5 minutes) is the
/// same for every event; the age bound depends on what the event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Horizon {
    /// Usage events: at most [`MAX_EVENT_AGE_SECS`] (35 days) old. Their deduplication record,
    /// the Redis seen-sets, lives a day longer than that and no more, so an older usage event
    /// could be counted twice: it is refused.
    Recent,
    /// Account events: facts about an account's lifecycle (a signup last year, a move to
    /// Enterprise in March), accepted at any age from the Unix epoch on, where ClickHouse's
    /// `DateTime` starts. Their deduplication record is PostgreSQL `account_events`, keyed by
    /// event id with no horizon, and the `accounts` update orders fields by event time, so an
    /// old event neither counts twice nor undoes a newer one.
    AnyAge,
}

/// Parses and bounds `occurred_at`: RFC 3339, at most 5 minutes ahead of `now`, and within
/// `horizon` behind it. Returns microseconds since the epoch.
pub(crate) fn parse_occurred_at(
    raw: Option<String>,
    now: DateTime<Utc>,
    horizon: Horizon,
) -> Result<i64, FieldError> {
    let raw = raw.ok_or_else(|| FieldError::required("occurred_at"))?;
    let at = DateTime::parse_from_rfc3339(&raw)
        .map_err(|e| {
            FieldError::new(
                "occurred_at",
                format!("{raw:?} is not an RFC 3339 timestamp ({e})"),
            )
        })?
        .with_timezone(&Utc);
    let delta = at.signed_duration_since(now).num_seconds();
    if delta > MAX_FUTURE_SKEW_SECS {
        return Err(FieldError::new(
            "occurred_at",
            "more than 5 minutes in the future",
        ));
    }
    match horizon {
        Horizon::Recent if -delta > MAX_EVENT_AGE_SECS => {
            return Err(FieldError::new("occurred_at", "more than 35 days old"));
        }
        Horizon::AnyAge if at.timestamp() < 0 => {
            return Err(FieldError::new(
                "occurred_at",
                "before 1970-01-01T00:00:00Z, where the event history starts",
            ));
        }
        _ => {}
    }
    Ok(at.timestamp_micros())
}

/// The envelope every usage event has: `event_id`, `occurred_at` (as microseconds, at most
/// 35 days old) and `account_id`, checked in that order.
pub(crate) fn envelope(
    event_id: Option<String>,
    occurred_at: Option<String>,
    account_id: Option<String>,
    now: DateTime<Utc>,
) -> Result<(EventId, i64, AccountId), FieldError> {
    envelope_within(event_id, occurred_at, account_id, now, Horizon::Recent)
}

/// The envelope of an account event: as [`envelope`], but `occurred_at` may be of any age
/// ([`Horizon::AnyAge`]).
pub(crate) fn account_envelope(
    event_id: Option<String>,
    occurred_at: Option<String>,
    account_id: Option<String>,
    now: DateTime<Utc>,
) -> Result<(EventId, i64, AccountId), FieldError> {
    envelope_within(event_id, occurred_at, account_id, now, Horizon::AnyAge)
}

fn envelope_within(
    event_id: Option<String>,
    occurred_at: Option<String>,
    account_id: Option<String>,
    now: DateTime<Utc>,
    horizon: Horizon,
) -> Result<(EventId, i64, AccountId), FieldError> {
    let event_id = EventId::parse(
        event_id
            .as_deref()
            .ok_or_else(|| FieldError::required("event_id"))?,
    )?;
    let occurred_at = parse_occurred_at(occurred_at, now, horizon)?;
    let account_id = AccountId::parse(
        account_id
            .as_deref()
            .ok_or_else(|| FieldError::required("account_id"))?,
    )?;
    Ok((event_id, occurred_at, account_id))
}

fn tokens(field: &str, v: Option<u64>) -> Result<i64, FieldError> {
    let v = v.ok_or_else(|| FieldError::required(field))?;
    if v > MAX_TOKENS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TOKENS}"),
        ));
    }
    Ok(v as i64)
}

fn bounded_i64(field: &str, v: Option<u64>) -> Result<Option<i64>, FieldError> {
    v.map(|v| {
        i64::try_from(v)
            .map_err(|_| FieldError::new(field, format!("must be at most {}", i64::MAX)))
    })
    .transpose()
}

impl UsageEventInput {
    /// Checks every rule of the event contract and returns the event to publish. The first
    /// failing field is reported.
    pub fn validate(
        self,
        now: DateTime<Utc>,
        ip_hasher: &IpHasher,
    ) -> Result<UsageEvent, FieldError> {
        let (event_id, occurred_at, account_id) =
            envelope(self.event_id, self.occurred_at, self.account_id, now)?;
        let api_key_id = label("api_key_id", self.api_key_id, MAX_LABEL_LEN)?;
        let gateway_id = label("gateway_id", self.gateway_id, MAX_LABEL_LEN)?;
        let region = label("region", self.region, MAX_LABEL_LEN)?;
        let cloud = label("cloud", self.cloud, MAX_LABEL_LEN)?;
        let provider = label("provider", self.provider, MAX_LABEL_LEN)?;
        let model = label("model", self.model, MAX_LABEL_LEN)?;
        let input_tokens = tokens("input_tokens", self.input_tokens)?;
        let output_tokens = tokens("output_tokens", self.output_tokens)?;
        let cost_micros = bounded_i64("cost_micros", self.cost_micros)?;
        let latency_ms = bounded_i64("latency_ms", self.latency_ms)?;
        let status = match self.status {
            None => None,
            Some(s) if (100..=599).contains(&s) => Some(s as i32),
            Some(s) => {
                return Err(FieldError::new(
                    "status",
                    format!("{s} is not an HTTP status (100-599)"),
                ))
            }
        };
        let session_id = optional_label("session_id", self.session_id, MAX_LABEL_LEN)?;
        let user_id = optional_label("user_id", self.user_id, MAX_LABEL_LEN)?;
        let plugins = self.plugins.unwrap_or_default();
        if plugins.len() > MAX_PLUGINS {
            return Err(FieldError::new(
                "plugins",
                format!("more than {MAX_PLUGINS} entries"),
            ));
        }
        for (i, p) in plugins.iter().enumerate() {
            optional_label(&format!("plugins[{i}]"), Some(p.clone()), MAX_LABEL_LEN)?;
        }
        let client_ip_hash = self
            .client_ip
            .map(|ip| ip_hasher.hash_ip("client_ip", &ip))
            .transpose()?;
        let device_id = optional_label("device_id", self.device_id, MAX_LABEL_LEN)?;
        let prompt_hash = optional_label("prompt_hash", self.prompt_hash, MAX_LABEL_LEN)?;
        Ok(UsageEvent {
            event_id: event_id.to_string(),
            occurred_at,
            received_at: now.timestamp_micros(),
            account_id,
            api_key_id,
            gateway_id,
            region,
            cloud,
            provider,
            model,
            input_tokens,
            output_tokens,
            cost_micros,
            latency_ms,
            status,
            session_id,
            user_id,
            plugins,
            pii_detected: self.pii_detected.unwrap_or(false),
            client_ip_hash,
            device_id,
            prompt_hash,
        })
    }
}

/// Deserialises one JSON value into `T`, naming the field that has the wrong type:
/// `input_tokens: invalid type: string "12", expected u64`.
pub fn from_json_naming_field<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, FieldError> {
    // serde would happily read a struct from a JSON array; an event is an object.
    if !json.trim_start().starts_with('{') {
        let kind = match json.trim_start().chars().next() {
            Some('[') => "an array",
            Some('"') => "a string",
            Some('t' | 'f') => "a boolean",
            Some('n') => "null",
            _ => "a number",
        };
        return Err(FieldError::new(
            "",
            format!("event must be a JSON object, not {kind}"),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(json);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end()
                .map_err(|e| FieldError::new("", strip_position(&e)))?;
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let reason = strip_position(e.inner());
            let reason = if field.is_empty() && reason.starts_with("invalid type") {
                format!("event must be a JSON object ({reason})")
            } else {
                reason
            };
            Err(FieldError::new(field, reason))
        }
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "event_id": "0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a11",
            "occurred_at": "2026-11-22T11:59:00Z",
            "account_id": "acct-1",
            "api_key_id": "key-1",
            "gateway_id": "gw-1",
            "region": "us-east-1",
            "cloud": "aws",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": 20,
            "client_ip": "198.51.100.4",
            "status": 502
        })
    }

    fn check(v: serde_json::Value) -> Result<UsageEvent, FieldError> {
        let input: UsageEventInput = from_json_naming_field(&v.to_string())?;
        input.validate(now(), &IpHasher::new("test-key"))
    }

    #[test]
    fn a_valid_event_validates_and_hashes_the_ip() {
        let e = check(valid()).unwrap();
        assert_eq!(e.input_tokens, 100);
        assert!(e.is_error());
        assert_eq!(e.occurred_at, now().timestamp_micros() - 60_000_000);
        let hash = e.client_ip_hash.unwrap();
        assert_eq!(hash.len(), 32);
        assert!(!hash.contains("198.51"));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("event_id", serde_json::Value::Null, "event_id: required"),
            ("event_id", "x".into(), "event_id: \"x\" is not a UUID"),
            (
                "occurred_at",
                "2026-11-22T12:05:01Z".into(),
                "occurred_at: more than 5 minutes in the future",
            ),
            (
                "occurred_at",
                "2026-10-18T11:59:59Z".into(),
                "occurred_at: more than 35 days old",
            ),
            (
                "occurred_at",
                "yesterday".into(),
                "occurred_at: \"yesterday\" is not an RFC 3339 timestamp",
            ),
            ("account_id", "".into(), "account_id: must not be empty"),
            ("model", serde_json::Value::Null, "model: required"),
            ("region", "".into(), "region: must not be empty"),
            (
                "input_tokens",
                "12".into(),
                "input_tokens: invalid type: string \"12\", expected u64",
            ),
            (
                "output_tokens",
                (-1).into(),
                "output_tokens: invalid value: integer `-1`, expected u64",
            ),
            (
                "input_tokens",
                (1u64 << 41).into(),
                "input_tokens: must be at most",
            ),
            (
                "status",
                700.into(),
                "status: 700 is not an HTTP status (100-599)",
            ),
            (
                "client_ip",
                "10.0.0.300".into(),
                "client_ip: not an IPv4 or IPv6 address",
            ),
            (
                "plugins",
                "audit_logger".into(),
                "plugins: invalid type: string",
            ),
            (
                "pii_detected",
                "yes".into(),
                "pii_detected: invalid type: string",
            ),
        ];
        for (field, value, expected) in cases {
            let mut v = valid();
            if value.is_null() {
                v.as_object_mut().unwrap().remove(field);
            } else {
                v[field] = value;
            }
            let err = check(v).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{field}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn occurred_at_boundaries_are_inclusive() {
        for ok in [
            "2026-11-22T12:05:00Z",
            "2026-10-18T12:00:00Z",
            "2026-11-22T13:04:00+01:00",
        ] {
            let mut v = valid();
            v["occurred_at"] = ok.into();
            assert!(check(v).is_ok(), "{ok}");
        }
    }

    #[test]
    fn account_events_may_be_of_any_age_usage_events_not() {
        let id = || Some("0b6c3b0e-6f59-4a38-9a8e-3d1b2b7b9a11".to_owned());
        let acct = || Some("acct-1".to_owned());
        // (occurred_at, the account envelope's answer, the usage envelope's answer)
        type Answer = Result<(), &'static str>;
        let cases: Vec<(&str, Answer, Answer)> = vec![
            ("2026-11-22T11:59:00Z", Ok(()), Ok(())),
            ("2026-10-18T12:00:00Z", Ok(()), Ok(())),
            (
                "2026-10-18T11:59:59Z",
                Ok(()),
                Err("occurred_at: more than 35 days old"),
            ),
            (
                "2025-06-01T00:00:00Z",
                Ok(()),
                Err("occurred_at: more than 35 days old"),
            ),
            (
                "1970-01-01T00:00:00Z",
                Ok(()),
                Err("occurred_at: more than 35 days old"),
            ),
            (
                "1969-12-31T23:59:59Z",
                Err("occurred_at: before 1970-01-01T00:00:00Z, where the event history starts"),
                Err("occurred_at: more than 35 days old"),
            ),
            ("2026-11-22T12:05:00Z", Ok(()), Ok(())),
            (
                "2026-11-22T12:05:01Z",
                Err("occurred_at: more than 5 minutes in the future"),
                Err("occurred_at: more than 5 minutes in the future"),
            ),
        ];
        for (at, account, usage) in cases {
            let got = account_envelope(id(), Some(at.to_owned()), acct(), now())
                .map(|(_, micros, _)| {
                    let parsed = DateTime::parse_from_rfc3339(at).unwrap();
                    assert_eq!(micros, parsed.timestamp_micros(), "{at}");
                })
                .map_err(|e| e.to_string());
            assert_eq!(got, account.map_err(str::to_owned), "account event at {at}");
            let got = envelope(id(), Some(at.to_owned()), acct(), now())
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(got, usage.map_err(str::to_owned), "usage event at {at}");
        }
    }

    #[test]
    fn a_non_object_is_named_as_such() {
        let err = from_json_naming_field::<UsageEventInput>("[1]").unwrap_err();
        assert!(
            err.to_string().starts_with("event must be a JSON object"),
            "{err}"
        );
    }
}
