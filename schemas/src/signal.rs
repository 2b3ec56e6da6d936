//! The signal contract between the scorer and the notifier: what a signal is about
//! ([`SignalKind`]) and the record on the `account-signals` topic ([`AccountSignal`], the Avro
//! record `io.meterline.v1.AccountSignal` of `account_signal.avsc`).
//!
//! A kind travels as text: in the Avro record, in JSON, in configuration keys
//! (`notifier.routes.<kind>`) and in PostgreSQL `TEXT` columns. [`SignalKind::as_str`] is the
//! one spelling of each; reading text back goes through [`SignalKind::from_str`] (also
//! `TryFrom<&str>` and `TryFrom<String>`, which `#[sqlx(try_from = "String")]` uses), and a
//! kind this build does not know is an [`UnknownSignalKind`] error naming it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::avro::{self, Schema};
use crate::SchemaError;

/// What a signal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    DealReady,
    Pql,
    LimitStage,
    RateLimitSustained,
    PluginGate,
    PowerUser,
    AbuseSuspected,
    KeySharing,
    MultiAccount,
    /// The brief's auto-escalation thresholds (sustained request rate, monthly tokens,
    /// regions), raised on their own whatever the deal score.
    Escalation,
    /// A new calendar month gave back the allowance of an account that hit a limit the month
    /// before: the re-engagement moment of seed 002 ("your allowance has reset").
    AllowanceReset,
}

impl SignalKind {
    /// Every kind, in declaration order.
    pub const ALL: [SignalKind; 11] = [
        SignalKind::DealReady,
        SignalKind::Pql,
        SignalKind::LimitStage,
        SignalKind::RateLimitSustained,
        SignalKind::PluginGate,
        SignalKind::PowerUser,
        SignalKind::AbuseSuspected,
        SignalKind::KeySharing,
        SignalKind::MultiAccount,
        SignalKind::Escalation,
        SignalKind::AllowanceReset,
    ];

    /// The kind's text on the wire, in configuration and in PostgreSQL.
    pub const fn as_str(self) -> &'static str {
        match self {
            SignalKind::DealReady => "deal_ready",
            SignalKind::Pql => "pql",
            SignalKind::LimitStage => "limit_stage",
            SignalKind::RateLimitSustained => "rate_limit_sustained",
            SignalKind::PluginGate => "plugin_gate",
            SignalKind::PowerUser => "power_user",
            SignalKind::AbuseSuspected => "abuse_suspected",
            SignalKind::KeySharing => "key_sharing",
            SignalKind::MultiAccount => "multi_account",
            SignalKind::Escalation => "escalation",
            SignalKind::AllowanceReset => "allowance_reset",
        }
    }
}

/// Text that is not one of the [`SignalKind`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a signal kind (one of {list})", list = kind_list())]
pub struct UnknownSignalKind(pub String);

fn kind_list() -> String {
    SignalKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for SignalKind {
    type Err = UnknownSignalKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SignalKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownSignalKind(s.to_owned()))
    }
}

impl TryFrom<&str> for SignalKind {
    type Error = UnknownSignalKind;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for SignalKind {
    type Error = UnknownSignalKind;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:<22}` lines up tables.
        f.pad(self.as_str())
    }
}

impl Serialize for SignalKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SignalKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Kind;
        impl serde::de::Visitor<'_> for Kind {
            type Value = SignalKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a signal kind")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SignalKind, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Kind)
    }
}

/// A signal as the scorer raises it and the notifier reads it: the Avro record
/// `io.meterline.v1.AccountSignal`, fields in the schema's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountSignal {
    /// The dedup key: `account:kind:episode`.
    pub signal_id: String,
    pub kind: SignalKind,
    pub account_id: String,
    pub episode: String,
    /// Microseconds since the Unix epoch (UTC).
    pub raised_at: i64,
    pub plan: String,
    pub deal_readiness: i32,
    pub pql: i32,
    pub abuse: i32,
    pub reasons: Vec<String>,
    /// JSON: the inputs and what matched.
    pub evidence: String,
}

/// The record as it is on the wire, before its kind is checked.
#[derive(Deserialize)]
struct WireSignal {
    signal_id: String,
    kind: String,
    account_id: String,
    episode: String,
    raised_at: i64,
    plan: String,
    deal_readiness: i32,
    pql: i32,
    abuse: i32,
    reasons: Vec<String>,
    evidence: String,
}

/// Why a signal record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SignalDecodeError {
    /// Not an `AccountSignal` record at all (corrupt, truncated, another schema).
    #[error(transparent)]
    Malformed(#[from] SchemaError),
    /// A well-formed record whose kind this build does not know (a newer scorer, say).
    #[error("signal {signal_id}: {kind}")]
    UnknownKind {
        signal_id: String,
        kind: UnknownSignalKind,
    },
}

impl AccountSignal {
    /// Encodes the record in the Confluent framing under `schema_id`.
    pub fn encode(&self, schema_id: i32, schema: &Schema) -> Result<Vec<u8>, SchemaError> {
        avro::encode(schema_id, schema, self)
    }

    /// Decodes an Avro body written with `writer`, resolved against `reader` (see
    /// [`avro::decode_body`]).
    pub fn decode(
        writer: &Schema,
        reader: &Schema,
        body: &[u8],
    ) -> Result<Self, SignalDecodeError> {
        let w: WireSignal = avro::decode_body(writer, reader, body)?;
        let kind = match w.kind.parse() {
            Ok(k) => k,
            Err(kind) => {
                return Err(SignalDecodeError::UnknownKind {
                    signal_id: w.signal_id,
                    kind,
                })
            }
        };
        Ok(AccountSignal {
            signal_id: w.signal_id,
            kind,
            account_id: w.account_id,
            episode: w.episode,
            raised_at: w.raised_at,
            plan: w.plan,
            deal_readiness: w.deal_readiness,
            pql: w.pql,
            abuse: w.abuse,
            reasons: w.reasons,
            evidence: w.evidence,
        })
    }

    /// `raised_at` as a time (now, for a value out of range).
    pub fn raised_at(&self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.raised_at)
            .single()
            .unwrap_or_else(Utc::now)
    }

    /// The evidence as JSON (`null` when it is not JSON).
    pub fn evidence(&self) -> Value {
        serde_json::from_str(&self.evidence).unwrap_or(Value::Null)
    }

    /// The limit stage (percent) of a `limit_stage` signal: from the evidence, or from the
    /// episode, which the scorer writes as `<limit>:<stage>:<window>`.
    pub fn limit_stage(&self) -> Option<u32> {
        let e = self.evidence();
        e.pointer("/limit/stage")
            .and_then(Value::as_u64)
            .map(|s| s as u32)
            .or_else(|| self.episode.split(':').nth(1).and_then(|s| s.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccountSignal {
        AccountSignal {
            signal_id: "a:limit_stage:month_requests:85:202611".into(),
            kind: SignalKind::LimitStage,
            account_id: "a".into(),
            episode: "month_requests:85:202611".into(),
            raised_at: 1_795_000_000_000_000,
            plan: "pro".into(),
            deal_readiness: 1,
            pql: 2,
            abuse: 3,
            reasons: vec!["one".into(), "two".into()],
            evidence: r#"{"limit":{"name":"month_requests","stage":95}}"#.into(),
        }
    }

    /// The wire strings are the contract: a renamed variant must not change them.
    #[test]
    fn kinds_keep_their_wire_strings_and_parse_back() {
        let wire = [
            "deal_ready",
            "pql",
            "limit_stage",
            "rate_limit_sustained",
            "plugin_gate",
            "power_user",
            "abuse_suspected",
            "key_sharing",
            "multi_account",
            "escalation",
            "allowance_reset",
        ];
        let spelled: Vec<&str> = SignalKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(spelled, wire);
        for k in SignalKind::ALL {
            assert_eq!(k.as_str().parse::<SignalKind>(), Ok(k));
            assert_eq!(SignalKind::try_from(k.as_str().to_owned()), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(
                serde_json::from_value::<SignalKind>(k.as_str().into()).unwrap(),
                k
            );
        }
        assert_eq!(format!("[{:<12}]", SignalKind::Pql), "[pql         ]");
        // The schema's documentation lists the same kinds.
        assert!(avro::ACCOUNT_SIGNAL_SCHEMA.contains(&wire.join(", ")));
    }

    #[test]
    fn an_unknown_kind_is_named_with_the_known_ones() {
        let e = "deal".parse::<SignalKind>().unwrap_err();
        assert_eq!(e, UnknownSignalKind("deal".into()));
        assert_eq!(
            e.to_string(),
            "\"deal\" is not a signal kind (one of deal_ready, pql, limit_stage, rate_limit_sustained, plugin_gate, power_user, abuse_suspected, key_sharing, multi_account, escalation, allowance_reset)"
        );
        let e = serde_json::from_value::<SignalKind>("Deal_Ready".into()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("\"Deal_Ready\" is not a signal kind"),
            "{e}"
        );
    }

    #[test]
    fn the_record_round_trips_through_the_wire_format() {
        let schema = avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).unwrap();
        let s = sample();
        let bytes = s.encode(4, &schema).unwrap();
        let (id, body) = avro::split_frame(&bytes).unwrap();
        assert_eq!(id, 4);
        assert_eq!(AccountSignal::decode(&schema, &schema, body).unwrap(), s);
    }

    /// A newer scorer's kind is a readable record with an unknown kind, not a corrupt one.
    #[test]
    fn an_unknown_kind_on_the_wire_is_told_apart_from_a_corrupt_record() {
        let schema = avro::parse_schema(avro::ACCOUNT_SIGNAL_SCHEMA).unwrap();
        let mut value = apache_avro::to_value(sample()).unwrap();
        let apache_avro::types::Value::Record(fields) = &mut value else {
            panic!("not a record")
        };
        fields[1].1 = apache_avro::types::Value::String("churn_risk".into());
        let body = apache_avro::to_avro_datum(&schema, value).unwrap();
        match AccountSignal::decode(&schema, &schema, &body) {
            Err(SignalDecodeError::UnknownKind { signal_id, kind }) => {
                assert_eq!(signal_id, sample().signal_id);
                assert_eq!(kind, UnknownSignalKind("churn_risk".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            AccountSignal::decode(&schema, &schema, &body[..body.len() - 1]),
            Err(SignalDecodeError::Malformed(_))
        ));
    }

    #[test]
    fn stage_comes_from_the_evidence_or_the_episode() {
        let mut s = sample();
        assert_eq!(s.limit_stage(), Some(95));
        s.evidence = "{}".into();
        assert_eq!(s.limit_stage(), Some(85));
    }
}
