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
//!    stricter limits, without a grace buffer, and served the fallback model
//!    (`reason: abuse_suspected`), by the rules below; a paying account is never denied or
//!    restricted without a person;
//! 2. `limit_reached`, when a *count* limit is used up past its grace buffer, or a *budget*
//!    is spent past its grace buffer and no fallback model can help (the tier has none, or the
//!    request already asks for it);
//! 3. `degrade` to the tier's fallback model (`budget_spent`), when a budget is spent and the
//!    fallback can help;
//! 4. `degrade` (`model_not_allowed`) when the requested model is not allowed on the tier;
//! 5. `degrade` (`budget_near`) when the tier steers (`budget_steer`) and a budget is at its
//!    `budget_steer_stage` (95 % by default; off by default);
//! 6. `allow` from the grace buffer: a limit past 100 % but within the buffer. The request is
//!    served, the warning is that limit at the last stage (100 %), the `message` is the 100 %
//!    one, and a `grace` object tells the gateway (never the account holder);
//! 7. `allow` with a `warning` once any limit is at its first stage (70 % by default) or the
//!    per-minute rate is over its limit (the rate limit is soft: never more than a warning);
//! 8. `allow`.
//!
//! A limit is *spent* when this request's own share (1 request, 1 new session, its estimated
//! weighted tokens) would take it past the limit, and a budget also when `used ≥ limit`. So
//! with 10 sessions allowed and 10 used, a request in one of those sessions is still allowed
//! (with the 100 % warning), and one that opens an eleventh is not.
//!
//! **Grace** (seed 002's hidden overage buffer, 15–20 % of the budget): each tier has a
//! `grace_percent` (15 on free, 0 on the others by default). The cutoff moves from the limit
//! to the limit plus the buffer ([`grace_cap`]): for counts the buffer is rounded down to whole
//! units, so with 100 requests a day and 15 %, requests 101 to 115 are served from grace and
//! the 116th is cut off. The account holder sees the same 100 % message throughout, so the
//! buffer stays hidden. For *budgets* (weighted tokens, cost) grace means the same thing at
//! the cutoff and nothing before it: a spent budget still degrades to the fallback model at
//! 100 % (degraded service is the soft landing seed 002 recommends, and the budget is the
//! engineering protection it says to enforce), and where the fallback cannot help (the request
//! is already on it, or the tier has none) the request is served until the budget plus its
//! buffer is spent, and only then cut off. Grace use is recorded once per account, limit and
//! window (the read path's `grace_used` quota event, copied into ClickHouse `grace_usage`).
//!
//! The words come separately: [`friction::Friction::annotate`] gives a decision its
//! `message` for a person and its `stage_name` for gateways, from templates in configuration
//! (`[quota.messages]`, `[tiers.<plan>.messages]`).
//!
//! The module is split by concern, in the order a request meets them:
//!
//! * [`names`]: [`LimitWindow`], [`LimitMetric`] and the [`LimitName`] made of them;
//! * [`tiers`]: the `[quota]` and `[tiers]` configuration, its defaults and its validation;
//! * [`hot_state`]: from the counters read from Redis ([`RawUsage`]) to amounts per limit
//!   ([`UsageSnapshot`]);
//! * [`decision`]: [`limit_statuses`] and [`decide`];
//! * [`friction`]: the messages for people, and the template configuration.
//!
//! Everything is re-exported here, so callers write `meterline_schemas::limits::decide`.
//!
//! [`Plan`]: crate::domain::Plan

pub mod decision;
pub mod friction;
pub mod hot_state;
pub mod names;
pub mod tiers;

pub use decision::{
    decide, grace_cap, limit_statuses, restricted_view, stage_of, AccountProfile, Decision,
    DecisionKind, Degradation, DegradeReason, Grace, LimitNotice, LimitReached, LimitStatus,
    QuotaRequest, RateStatus, Upgrade,
};
pub use friction::{Friction, MessageOverrides, Messages};
pub use hot_state::{weighted_tokens, RawUsage, UsageSnapshot, WindowCounters};
pub use names::{
    LimitMetric, LimitName, LimitWindow, ALLOWED_MODELS_NAME, RATE_LIMIT_NAME, UNLIMITED,
};
pub use tiers::{ConfigError, QuotaConfig, TierConfig, TiersConfig};
