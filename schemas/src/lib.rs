//! The event contract between gateways, ingest and the aggregator.
//!
//! Everything that crosses a process boundary is defined here, once:
//!
//! * [`domain`]: newtypes that parse input once ([`AccountId`], [`Plan`], …), so code past
//!   ingest can never hold an invalid value.
//! * [`usage`] and [`account`]: the JSON a gateway posts (`*Input`, every field optional so a
//!   missing field is reported by name) and the validated event that is written to Kafka.
//! * [`avro`]: the Avro schemas (the `.avsc` files next to this crate) and the Confluent wire
//!   format: magic byte `0`, a big-endian 4-byte schema id, then the Avro body.
//! * [`usage_codec`]: the same Avro bytes for usage events, written and read field by field
//!   on the hot path, without apache-avro's generic value tree.
//! * [`privacy`]: keyed hashing of client IPs, which are never stored in clear text.
//! * [`contact`]: contact email addresses (personal data, never printed) and the signed
//!   one-click unsubscribe links of the email channel.
//! * [`public_domains`]: the email domains that name no company (`gmail.com`, …).
//! * [`review`]: a person in the loop before enforcement: review states, what each does to a
//!   quota decision, and when the scorer puts an account in review.
//! * [`signal`]: the scorer's signals as the notifier reads them: [`SignalKind`] and the
//!   `account-signals` record [`AccountSignal`].

pub mod account;
pub mod avro;
pub mod contact;
pub mod domain;
pub mod error;
pub mod keys;
pub mod limits;
pub mod privacy;
pub mod public_domains;
pub mod review;
pub mod signal;
pub mod usage;
pub mod usage_codec;

pub use account::{AccountEvent, AccountEventInput};
pub use contact::{ContactEmail, UnsubscribeKey};
pub use domain::{AccountEventType, AccountId, EventId, Plan};
pub use error::{FieldError, SchemaError};
pub use privacy::IpHasher;
pub use signal::{AccountSignal, SignalKind};
pub use usage::{UsageEvent, UsageEventInput};

/// How far in the future an event's `occurred_at` may be: clock skew between gateways.
pub const MAX_FUTURE_SKEW_SECS: i64 = 5 * 60;
/// How old a usage event may be and still be accepted. Deduplication keeps usage event ids
/// for longer than this, so no accepted event can be counted twice. Account events may be of
/// any age (their ids are kept for good, in PostgreSQL).
pub const MAX_EVENT_AGE_SECS: i64 = 35 * 24 * 3600;
