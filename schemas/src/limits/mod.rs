//! Tiers, limits and quota decisions: pure logic, no I/O.
//!
//! A *tier* (one per [`Plan`]) has a per-minute request rate, a list of allowed models with a
//! fallback for degraded service, and limits at three granularities: per session, per UTC day
//! and per UTC calendar month. Each limit is named `{window}_{metric}`:
//!
//! | metric | kind | measured from the hot state |
//! |---|---|---|
//! | `requests` | count | the window hash's `req` |
//! | `sessions` | count | the day's or month's session set (not per session) |
//! | `weighted_tokens` | budget | per model: `(in × input_weight + out × output_weight) × model weight`, summed, × the tier's multiplier |
//! | `cost_usd` | budget | the window hash's `cost` (micro-dollars) / 1,000,000 |
//!
//! A limit of `-1` is unlimited. Accounts may carry overrides of any limit (and of
//! `requests_per_minute`); the limit A/B experiments write them.
//!
//! [`decide`] turns an account's usage into the answer for `POST /v1/quota/check`. Its rules,
//! most severe first:
//!
//! 1. the review state ([`crate::review`]): `deny` for confirmed abuse (any plan) or a free
//!    account the high-confidence rule denied; a suspected free account is decided against
//!    stricter limits and served the fallback model (`reason: abuse_suspected`), by the rules
//!    below; a paying account is never denied or restricted without a person;
//! 2. `limit_reached`, when a *count* limit is used up, or a *budget* is spent and no fallback
//!    model can help (the tier has none, or the request already asks for it);
//! 3. `degrade` to the tier's fallback model, when the requested model is not allowed on the
//!    tier or a budget is spent;
//! 4. `allow` with a `warning` once any limit is at its first stage (70 % by default) or the
//!    per-minute rate is over its limit (the rate limit is soft: never more than a warning);
//! 5. `allow`.
//!
//! A limit is *spent* when this request's own share (1 request, 1 new session, its estimated
//! weighted tokens) would take it past the limit, and a budget also when `used ≥ limit`. So
//! with 10 sessions allowed and 10 used, a request in one of those sessions is still allowed
//! (with the 100 % warning), and one that opens an eleventh is not.
//!
//! The module is split by concern, in the order a request meets them:
//!
//! * [`names`]: [`LimitWindow`], [`LimitMetric`] and the [`LimitName`] made of them;
//! * [`tiers`]: the `[quota]` and `[tiers]` configuration, its defaults and its validation;
//! * [`hot_state`]: from the counters read from Redis ([`RawUsage`]) to amounts per limit
//!   ([`UsageSnapshot`]);
//! * [`decision`]: [`limit_statuses`] and [`decide`].
//!
//! Everything is re-exported here, so callers write `meterline_schemas::limits::decide`.
//!
//! [`Plan`]: crate::domain::Plan

pub mod decision;
pub mod hot_state;
pub mod names;
pub mod tiers;

pub use decision::{
    decide, limit_statuses, restricted_view, stage_of, AccountProfile, Decision, DecisionKind,
    Degradation, DegradeReason, LimitNotice, LimitReached, LimitStatus, QuotaRequest, RateStatus,
    Upgrade,
};
pub use hot_state::{weighted_tokens, RawUsage, UsageSnapshot, WindowCounters};
pub use names::{
    LimitMetric, LimitName, LimitWindow, ALLOWED_MODELS_NAME, RATE_LIMIT_NAME, UNLIMITED,
};
pub use tiers::{ConfigError, QuotaConfig, TierConfig, TiersConfig};
