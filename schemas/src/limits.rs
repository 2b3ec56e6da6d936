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
//! 1. `deny`, only for an account whose abuse flag is set;
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

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::Plan;

/// The window a limit is counted over.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    Session,
    Day,
    Month,
}

impl LimitWindow {
    pub const ALL: [LimitWindow; 3] = [LimitWindow::Session, LimitWindow::Day, LimitWindow::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitWindow::Session => "session",
            LimitWindow::Day => "day",
            LimitWindow::Month => "month",
        }
    }

    /// When the window holding `now` resets; a session never resets, it ends.
    pub fn resets_at(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let day = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()?;
        match self {
            LimitWindow::Session => None,
            LimitWindow::Day => Some(day + Duration::days(1)),
            LimitWindow::Month => {
                let (y, m) = if now.month() == 12 {
                    (now.year() + 1, 1)
                } else {
                    (now.year(), now.month() + 1)
                };
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()
            }
        }
    }
}

/// What a limit counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitMetric {
    Requests,
    Sessions,
    WeightedTokens,
    CostUsd,
}

impl LimitMetric {
    pub const ALL: [LimitMetric; 4] = [
        LimitMetric::Requests,
        LimitMetric::Sessions,
        LimitMetric::WeightedTokens,
        LimitMetric::CostUsd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitMetric::Requests => "requests",
            LimitMetric::Sessions => "sessions",
            LimitMetric::WeightedTokens => "weighted_tokens",
            LimitMetric::CostUsd => "cost_usd",
        }
    }

    /// Counts are used up; budgets are spent, and a cheaper model can still serve.
    pub fn is_budget(self) -> bool {
        matches!(self, LimitMetric::WeightedTokens | LimitMetric::CostUsd)
    }
}

/// A limit's name, `{window}_{metric}`, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitName {
    pub window: LimitWindow,
    pub metric: LimitMetric,
}

impl LimitName {
    pub fn parse(s: &str) -> Result<Self, String> {
        for window in LimitWindow::ALL {
            let Some(rest) = s
                .strip_prefix(window.as_str())
                .and_then(|r| r.strip_prefix('_'))
            else {
                continue;
            };
            for metric in LimitMetric::ALL {
                if rest == metric.as_str() {
                    if window == LimitWindow::Session && metric == LimitMetric::Sessions {
                        return Err("a session cannot limit sessions".into());
                    }
                    return Ok(LimitName { window, metric });
                }
            }
        }
        Err(format!(
            "unknown limit {s:?}: expected {{session|day|month}}_{{requests|sessions|weighted_tokens|cost_usd}}"
        ))
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.window.as_str(), self.metric.as_str())
    }
}

/// The per-minute request rate's name, for overrides and decisions.
pub const RATE_LIMIT_NAME: &str = "requests_per_minute";
/// The pseudo-limit a disallowed model is recorded under.
pub const ALLOWED_MODELS_NAME: &str = "allowed_models";
/// Unlimited.
pub const UNLIMITED: f64 = -1.0;

/// `[quota]`: what every tier shares.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Warning stages in percent of a limit, ascending.
    pub stages: Vec<u32>,
    /// Where `limit_reached` answers send people; `?plan=` is appended.
    pub upgrade_url: String,
    pub input_weight: f64,
    pub output_weight: f64,
    /// The weight of a model `model_weights` does not list.
    pub default_model_weight: f64,
    pub model_weights: BTreeMap<String, f64>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        let model_weights = [
            ("gpt-4o-mini", 0.5),
            ("gpt-4o", 2.0),
            ("claude-3-haiku", 0.5),
            ("claude-sonnet", 2.0),
            ("claude-opus", 5.0),
            ("llama-3-8b", 0.25),
            ("llama-3-70b", 1.0),
        ]
        .into_iter()
        .map(|(m, w)| (m.to_owned(), w))
        .collect();
        Self {
            stages: vec![70, 85, 95, 100],
            upgrade_url: "https://meterline.example/upgrade".into(),
            input_weight: 1.0,
            output_weight: 3.0,
            default_model_weight: 1.0,
            model_weights,
        }
    }
}

impl QuotaConfig {
    pub fn model_weight(&self, model: &str) -> f64 {
        self.model_weights
            .get(model)
            .copied()
            .unwrap_or(self.default_model_weight)
    }

    /// Unweighted-by-tier weighted tokens of one model's input and output.
    pub fn model_tokens(&self, model: &str, input: f64, output: f64) -> f64 {
        (input * self.input_weight + output * self.output_weight) * self.model_weight(model)
    }

    /// The link that lifts a limit by moving to `plan`.
    pub fn upgrade_link(&self, plan: Plan) -> String {
        let sep = if self.upgrade_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}plan={}", self.upgrade_url, plan.as_str())
    }
}

/// One tier.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Multiplies weighted tokens: paid tiers use their budget more slowly.
    pub weight_multiplier: f64,
    /// Soft: over it, requests are allowed with a warning. `-1`: unlimited.
    pub requests_per_minute: f64,
    /// `["*"]` allows every model.
    pub allowed_models: Vec<String>,
    /// The model a degraded request is served with; empty for none.
    pub fallback_model: String,
    pub audit_retention_days: u32,
    /// The plan that lifts this tier's limits; empty for the top tier.
    pub upgrade_to: String,
    /// `{window}_{metric}` → limit; `-1` is unlimited.
    pub limits: BTreeMap<String, f64>,
}

impl TierConfig {
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.iter().any(|m| m == "*" || m == model)
    }

    pub fn upgrade_plan(&self) -> Option<Plan> {
        Plan::parse("upgrade_to", &self.upgrade_to).ok()
    }

    /// The tier's limits, parsed (configuration is validated at start-up, so bad names are
    /// not expected here and are skipped).
    pub fn parsed_limits(&self) -> impl Iterator<Item = (LimitName, f64)> + '_ {
        self.limits
            .iter()
            .filter_map(|(k, v)| LimitName::parse(k).ok().map(|n| (n, *v)))
    }
}

/// `[tiers]`: one table per plan.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    pub free: TierConfig,
    pub pro: TierConfig,
    pub enterprise: TierConfig,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn limits(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
    v.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

impl Default for TiersConfig {
    /// The domain brief's tiers: 100 / 1,000 / unlimited requests a minute, 3 / 15 / all
    /// models, 7 days / 90 days / 7 years of audit retention, token multipliers 1.0 / 0.5 / 0.2.
    fn default() -> Self {
        Self {
            free: TierConfig {
                weight_multiplier: 1.0,
                requests_per_minute: 100.0,
                allowed_models: strings(&["gpt-4o-mini", "claude-3-haiku", "llama-3-8b"]),
                fallback_model: "gpt-4o-mini".into(),
                audit_retention_days: 7,
                upgrade_to: "pro".into(),
                limits: limits(&[
                    ("session_weighted_tokens", 50_000.0),
                    ("day_weighted_tokens", 250_000.0),
                    ("month_weighted_tokens", 2_000_000.0),
                    ("day_requests", 5_000.0),
                    ("month_sessions", 300.0),
                    ("month_cost_usd", 5.0),
                ]),
            },
            pro: TierConfig {
                weight_multiplier: 0.5,
                requests_per_minute: 1_000.0,
                allowed_models: strings(&[
                    "gpt-4o-mini",
                    "gpt-4o",
                    "gpt-4.1",
                    "gpt-4.1-mini",
                    "o3-mini",
                    "claude-3-haiku",
                    "claude-sonnet",
                    "claude-opus",
                    "gemini-1.5-flash",
                    "gemini-1.5-pro",
                    "llama-3-8b",
                    "llama-3-70b",
                    "mistral-large",
                    "mixtral-8x7b",
                    "command-r-plus",
                ]),
                fallback_model: "gpt-4o-mini".into(),
                audit_retention_days: 90,
                upgrade_to: "enterprise".into(),
                limits: limits(&[
                    ("session_weighted_tokens", 1_000_000.0),
                    ("day_weighted_tokens", 5_000_000.0),
                    ("month_weighted_tokens", 100_000_000.0),
                    ("day_requests", 200_000.0),
                    ("month_sessions", -1.0),
                    ("month_cost_usd", 500.0),
                ]),
            },
            enterprise: TierConfig {
                weight_multiplier: 0.2,
                requests_per_minute: UNLIMITED,
                allowed_models: strings(&["*"]),
                fallback_model: String::new(),
                audit_retention_days: 7 * 365 + 2,
                upgrade_to: String::new(),
                limits: limits(&[
                    ("session_weighted_tokens", UNLIMITED),
                    ("day_weighted_tokens", UNLIMITED),
                    ("month_weighted_tokens", UNLIMITED),
                    ("day_requests", UNLIMITED),
                    ("month_sessions", UNLIMITED),
                    ("month_cost_usd", UNLIMITED),
                ]),
            },
        }
    }
}

/// A configuration rule broken: names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

fn check_limit_value(key: &str, v: f64) -> Result<(), ConfigError> {
    if !v.is_finite() || (v < 0.0 && v != UNLIMITED) {
        return Err(bad(key, format!("{v} is negative; use -1 for unlimited")));
    }
    Ok(())
}

impl TiersConfig {
    pub fn get(&self, plan: Plan) -> &TierConfig {
        match plan {
            Plan::Free => &self.free,
            Plan::Pro => &self.pro,
            Plan::Enterprise => &self.enterprise,
        }
    }

    /// The rules types cannot express; each error names its key.
    pub fn validate(&self, quota: &QuotaConfig) -> Result<(), ConfigError> {
        if quota.stages.is_empty() {
            return Err(bad("quota.stages", "needs at least one stage"));
        }
        for w in quota.stages.windows(2) {
            if w[0] >= w[1] {
                return Err(bad(
                    "quota.stages",
                    format!("stages must ascend: {} comes before {}", w[0], w[1]),
                ));
            }
        }
        if let Some(s) = quota.stages.iter().find(|s| **s == 0 || **s > 100) {
            return Err(bad(
                "quota.stages",
                format!("{s} is not a percentage in 1..=100"),
            ));
        }
        for (key, v) in [
            ("quota.input_weight", quota.input_weight),
            ("quota.output_weight", quota.output_weight),
            ("quota.default_model_weight", quota.default_model_weight),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(key, format!("{v} must be a non-negative number")));
            }
        }
        for (m, v) in &quota.model_weights {
            if !v.is_finite() || *v < 0.0 {
                return Err(bad(
                    format!("quota.model_weights.{m}"),
                    format!("{v} must be a non-negative number"),
                ));
            }
        }
        for plan in [Plan::Free, Plan::Pro, Plan::Enterprise] {
            let tier = self.get(plan);
            let at = |k: &str| format!("tiers.{}.{k}", plan.as_str());
            if !tier.weight_multiplier.is_finite() || tier.weight_multiplier <= 0.0 {
                return Err(bad(at("weight_multiplier"), "must be greater than 0"));
            }
            check_limit_value(&at("requests_per_minute"), tier.requests_per_minute)?;
            if tier.allowed_models.is_empty() {
                return Err(bad(
                    at("allowed_models"),
                    "lists no model; use [\"*\"] for all",
                ));
            }
            if !tier.fallback_model.is_empty() && !tier.allows_model(&tier.fallback_model) {
                return Err(bad(
                    at("fallback_model"),
                    format!(
                        "{:?} is not one of the tier's allowed_models",
                        tier.fallback_model
                    ),
                ));
            }
            if !tier.upgrade_to.is_empty() {
                let up = Plan::parse("upgrade_to", &tier.upgrade_to)
                    .map_err(|_| bad(at("upgrade_to"), "must be free, pro or enterprise"))?;
                if up <= plan {
                    return Err(bad(at("upgrade_to"), "must be a higher plan"));
                }
            }
            for (name, v) in &tier.limits {
                let key = at(&format!("limits.{name}"));
                LimitName::parse(name).map_err(|r| bad(&key, r))?;
                check_limit_value(&key, *v)?;
            }
        }
        Ok(())
    }
}

/// What the hot state says about one account, as read for one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSnapshot {
    /// Used amounts per window and metric, tier weighting already applied.
    pub used: BTreeMap<LimitName, f64>,
    /// Whether the request's session is already counted in the day's / month's session set.
    pub session_known_today: bool,
    pub session_known_this_month: bool,
    /// Requests in the current and the previous minute, and how far into the current minute.
    pub requests_this_minute: f64,
    pub requests_last_minute: f64,
    pub minute_elapsed: f64,
}

impl UsageSnapshot {
    /// A sliding 60-second estimate: all of this minute plus the part of the previous minute
    /// that is still inside the last 60 seconds.
    pub fn rolling_rpm(&self) -> f64 {
        self.requests_this_minute + self.requests_last_minute * (1.0 - self.minute_elapsed)
    }
}

/// A window hash as read from Redis: field → counter.
pub type WindowCounters = std::collections::HashMap<String, i64>;

/// The hot-state keys one decision reads, as they came back from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawUsage {
    pub month: WindowCounters,
    pub day: WindowCounters,
    /// The asked-about session's hash, if a session was named.
    pub session: Option<WindowCounters>,
    pub day_sessions: u64,
    pub month_sessions: u64,
    pub session_known_today: bool,
    pub session_known_this_month: bool,
    pub requests_this_minute: i64,
    pub requests_last_minute: i64,
}

impl RawUsage {
    /// Turns counters into amounts per limit, with the tier's token multiplier applied.
    pub fn snapshot(
        &self,
        quota: &QuotaConfig,
        tier: &TierConfig,
        now: DateTime<Utc>,
    ) -> UsageSnapshot {
        let mut used = BTreeMap::new();
        let mut window = |w: LimitWindow, h: &WindowCounters, sessions: Option<u64>| {
            let get = |f: &str| h.get(f).copied().unwrap_or(0) as f64;
            let mut put = |m: LimitMetric, v: f64| {
                used.insert(
                    LimitName {
                        window: w,
                        metric: m,
                    },
                    v,
                );
            };
            put(LimitMetric::Requests, get("req"));
            put(
                LimitMetric::WeightedTokens,
                weighted_tokens(
                    quota,
                    tier.weight_multiplier,
                    h.iter().map(|(k, v)| (k.as_str(), *v)),
                ),
            );
            put(LimitMetric::CostUsd, get("cost") / 1_000_000.0);
            if let Some(n) = sessions {
                put(LimitMetric::Sessions, n as f64);
            }
        };
        window(LimitWindow::Month, &self.month, Some(self.month_sessions));
        window(LimitWindow::Day, &self.day, Some(self.day_sessions));
        if let Some(s) = &self.session {
            window(LimitWindow::Session, s, None);
        }
        UsageSnapshot {
            used,
            session_known_today: self.session_known_today,
            session_known_this_month: self.session_known_this_month,
            requests_this_minute: self.requests_this_minute as f64,
            requests_last_minute: self.requests_last_minute as f64,
            minute_elapsed: f64::from(now.timestamp().rem_euclid(60) as u32) / 60.0,
        }
    }
}

/// Sums weighted tokens over a window hash's `m:{model}:in` / `m:{model}:out` fields.
pub fn weighted_tokens<'a>(
    quota: &QuotaConfig,
    multiplier: f64,
    fields: impl IntoIterator<Item = (&'a str, i64)>,
) -> f64 {
    let mut per_model: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (field, v) in fields {
        let Some(rest) = field.strip_prefix("m:") else {
            continue;
        };
        if let Some(model) = rest.strip_suffix(":in") {
            per_model.entry(model).or_default().0 += v as f64;
        } else if let Some(model) = rest.strip_suffix(":out") {
            per_model.entry(model).or_default().1 += v as f64;
        }
    }
    per_model
        .into_iter()
        .map(|(m, (i, o))| quota.model_tokens(m, i, o))
        .sum::<f64>()
        * multiplier
}

/// An account as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountProfile {
    pub plan: Plan,
    /// Limit name (or `requests_per_minute`) → value, overriding the tier.
    pub overrides: BTreeMap<String, f64>,
    pub abuse_flagged: bool,
}

impl Default for AccountProfile {
    fn default() -> Self {
        Self {
            plan: Plan::Free,
            overrides: BTreeMap::new(),
            abuse_flagged: false,
        }
    }
}

impl AccountProfile {
    /// The account's limits: the tier's, with overrides on top, in name order.
    pub fn limits(&self, tier: &TierConfig) -> Vec<(LimitName, f64)> {
        let mut out: BTreeMap<LimitName, f64> = tier.parsed_limits().collect();
        for (k, v) in &self.overrides {
            if let Ok(n) = LimitName::parse(k) {
                out.insert(n, *v);
            }
        }
        out.into_iter().collect()
    }

    pub fn requests_per_minute(&self, tier: &TierConfig) -> f64 {
        self.overrides
            .get(RATE_LIMIT_NAME)
            .copied()
            .unwrap_or(tier.requests_per_minute)
    }
}

/// One limit and where the account stands against it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LimitStatus {
    /// `{window}_{metric}`.
    #[schema(example = "month_weighted_tokens")]
    pub name: String,
    pub window: LimitWindow,
    pub metric: LimitMetric,
    /// Null for a session limit when no session was asked about.
    #[schema(required)]
    pub used: Option<f64>,
    /// `-1`: unlimited.
    pub limit: f64,
    /// `used / limit`; null when unlimited.
    #[schema(required)]
    pub ratio: Option<f64>,
    /// The highest warning stage reached, in percent (70, 85, 95, 100 by default).
    #[schema(required)]
    pub stage: Option<u32>,
    /// Null for sessions, which end rather than reset.
    #[schema(required)]
    pub resets_at: Option<DateTime<Utc>>,
}

/// Rounds to 6 decimals so JSON stays readable and comparisons stable.
fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

pub fn stage_of(stages: &[u32], ratio: f64) -> Option<u32> {
    // Stages are percentages; compare in percent with a little slack for float error, so
    // exactly 70 % of 1,000 (700 / 1000 = 0.7) is the 70 % stage.
    let pct = ratio * 100.0 + 1e-9;
    stages.iter().rev().find(|s| pct >= f64::from(**s)).copied()
}

/// Every limit of the account, for `/usage` and for decisions.
pub fn limit_statuses(
    quota: &QuotaConfig,
    tier: &TierConfig,
    profile: &AccountProfile,
    usage: &UsageSnapshot,
    has_session: bool,
    now: DateTime<Utc>,
) -> Vec<LimitStatus> {
    profile
        .limits(tier)
        .into_iter()
        .map(|(name, limit)| {
            let used = if name.window == LimitWindow::Session && !has_session {
                None
            } else {
                Some(round6(usage.used.get(&name).copied().unwrap_or(0.0)))
            };
            let ratio = match used {
                Some(u) if limit > 0.0 => Some(round6(u / limit)),
                Some(u) if limit == 0.0 => Some(if u > 0.0 { f64::INFINITY } else { 1.0 }),
                _ => None,
            }
            .filter(|r| r.is_finite());
            let stage = ratio.and_then(|r| stage_of(&quota.stages, r)).or_else(|| {
                // A zero limit is used up from the start.
                (limit == 0.0).then(|| *quota.stages.last().expect("validated"))
            });
            LimitStatus {
                name: name.to_string(),
                window: name.window,
                metric: name.metric,
                used,
                limit,
                ratio,
                stage,
                resets_at: name.window.resets_at(now),
            }
        })
        .collect()
}

/// `POST /v1/quota/check`'s input, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRequest {
    pub model: String,
    pub estimated_input_tokens: u64,
    pub estimated_output_tokens: u64,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Degrade,
    LimitReached,
    Deny,
}

/// Why a request is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DegradeReason {
    ModelNotAllowed,
    BudgetSpent,
}

/// A limit at a stage: the body of a warning, a degradation or a reached limit.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LimitNotice {
    /// A limit name, `requests_per_minute` or `allowed_models`.
    pub limit: String,
    pub stage: u32,
    pub used: f64,
    pub limit_value: f64,
    #[schema(required)]
    pub resets_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Degradation {
    pub reason: DegradeReason,
    pub requested_model: String,
    pub fallback_model: String,
    /// The spent budget, for `budget_spent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<LimitNotice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Upgrade {
    pub plan: Plan,
    pub upgrade_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LimitReached {
    #[serde(flatten)]
    pub notice: LimitNotice,
    /// Null on the top tier: there is no plan above it.
    #[schema(required)]
    pub upgrade: Option<Upgrade>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RateStatus {
    pub requests_per_minute: f64,
    pub limit: f64,
    pub over: bool,
}

/// The answer to a quota check.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Decision {
    pub decision: DecisionKind,
    pub plan: Plan,
    /// The model to serve the request with: the fallback on `degrade`.
    pub model: String,
    #[schema(required)]
    pub warning: Option<LimitNotice>,
    #[schema(required)]
    pub degraded: Option<Degradation>,
    #[schema(required)]
    pub limit_reached: Option<LimitReached>,
    pub rate: RateStatus,
    /// Set on `deny`: `abuse_suspected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn notice(s: &LimitStatus, stages: &[u32]) -> LimitNotice {
    LimitNotice {
        limit: s.name.clone(),
        stage: s
            .stage
            .unwrap_or_else(|| *stages.last().expect("validated")),
        used: s.used.unwrap_or(0.0),
        limit_value: s.limit,
        resets_at: s.resets_at,
    }
}

/// Decides one request. See the module documentation for the rules.
pub fn decide(
    quota: &QuotaConfig,
    tier: &TierConfig,
    profile: &AccountProfile,
    usage: &UsageSnapshot,
    request: &QuotaRequest,
    now: DateTime<Utc>,
) -> Decision {
    let has_session = request.session_id.is_some();
    let statuses = limit_statuses(quota, tier, profile, usage, has_session, now);
    let rpm_limit = profile.requests_per_minute(tier);
    let rpm = round6(usage.rolling_rpm());
    let rate = RateStatus {
        requests_per_minute: rpm,
        limit: rpm_limit,
        over: rpm_limit >= 0.0 && rpm > rpm_limit,
    };
    let mut decision = Decision {
        decision: DecisionKind::Allow,
        plan: profile.plan,
        model: request.model.clone(),
        warning: None,
        degraded: None,
        limit_reached: None,
        rate,
        reason: None,
    };
    if profile.abuse_flagged {
        decision.decision = DecisionKind::Deny;
        decision.reason = Some("abuse_suspected".into());
        return decision;
    }

    let request_tokens = quota.model_tokens(
        &request.model,
        request.estimated_input_tokens as f64,
        request.estimated_output_tokens as f64,
    ) * tier.weight_multiplier;
    let share = |s: &LimitStatus| -> f64 {
        match s.metric {
            LimitMetric::Requests => 1.0,
            LimitMetric::Sessions => {
                let known = match s.window {
                    LimitWindow::Day => usage.session_known_today,
                    _ => usage.session_known_this_month,
                };
                if has_session && !known {
                    1.0
                } else {
                    0.0
                }
            }
            LimitMetric::WeightedTokens => request_tokens,
            // Cost is only known afterwards.
            LimitMetric::CostUsd => 0.0,
        }
    };
    let spent: Vec<&LimitStatus> = statuses
        .iter()
        .filter(|s| s.limit >= 0.0)
        .filter_map(|s| s.used.map(|u| (s, u)))
        .filter(|(s, u)| {
            // A budget at its limit is spent; a count is used up only if this request would
            // add to it (a session already counted is not counted again).
            (s.metric.is_budget() && *u >= s.limit) || *u + share(s) > s.limit + 1e-9
        })
        .map(|(s, _)| s)
        .collect();

    let fallback = (!tier.fallback_model.is_empty()).then(|| tier.fallback_model.clone());
    let model_allowed = tier.allows_model(&request.model);
    let upgrade = tier.upgrade_plan().map(|plan| Upgrade {
        plan,
        upgrade_url: quota.upgrade_link(plan),
    });

    // Counts first: a cheaper model does not help with them.
    let count_spent = spent.iter().find(|s| !s.metric.is_budget());
    let budget_spent = spent.iter().find(|s| s.metric.is_budget());
    let fallback_helps = fallback
        .as_deref()
        .is_some_and(|f| f != request.model || !model_allowed);
    if let Some(s) = count_spent.or(budget_spent.filter(|_| !fallback_helps)) {
        decision.decision = DecisionKind::LimitReached;
        decision.limit_reached = Some(LimitReached {
            notice: notice(s, &quota.stages),
            upgrade,
        });
        return decision;
    }
    if let (Some(s), Some(f)) = (budget_spent, fallback.as_ref()) {
        decision.decision = DecisionKind::Degrade;
        decision.model = f.clone();
        decision.degraded = Some(Degradation {
            reason: DegradeReason::BudgetSpent,
            requested_model: request.model.clone(),
            fallback_model: f.clone(),
            budget: Some(notice(s, &quota.stages)),
        });
        return decision;
    }
    if !model_allowed {
        match fallback {
            Some(f) => {
                decision.decision = DecisionKind::Degrade;
                decision.model = f.clone();
                decision.degraded = Some(Degradation {
                    reason: DegradeReason::ModelNotAllowed,
                    requested_model: request.model.clone(),
                    fallback_model: f,
                    budget: None,
                });
            }
            None => {
                // No model to fall back to: the plan above is the answer.
                decision.decision = DecisionKind::LimitReached;
                decision.limit_reached = Some(LimitReached {
                    notice: LimitNotice {
                        limit: ALLOWED_MODELS_NAME.into(),
                        stage: *quota.stages.last().expect("validated"),
                        used: 0.0,
                        limit_value: 0.0,
                        resets_at: None,
                    },
                    upgrade,
                });
            }
        }
        return decision;
    }
    // The warning names the limit nearest to (or furthest past) its end.
    decision.warning = statuses
        .iter()
        .filter(|s| s.stage.is_some())
        .max_by(|a, b| {
            a.ratio
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.ratio.unwrap_or(f64::INFINITY))
        })
        .map(|s| notice(s, &quota.stages));
    if decision.warning.is_none() && decision.rate.over {
        decision.warning = Some(LimitNotice {
            limit: RATE_LIMIT_NAME.into(),
            stage: *quota.stages.last().expect("validated"),
            used: rpm,
            limit_value: rpm_limit,
            resets_at: Some(
                Utc.timestamp_opt(now.timestamp() - now.timestamp() % 60 + 60, 0)
                    .single()
                    .unwrap_or(now),
            ),
        });
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap()
    }

    fn request(model: &str, input: u64) -> QuotaRequest {
        QuotaRequest {
            model: model.into(),
            estimated_input_tokens: input,
            estimated_output_tokens: 0,
            session_id: None,
        }
    }

    fn usage(pairs: &[(&str, f64)]) -> UsageSnapshot {
        UsageSnapshot {
            used: pairs
                .iter()
                .map(|(k, v)| (LimitName::parse(k).unwrap(), *v))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_configuration_is_valid_and_matches_the_brief() {
        let t = TiersConfig::default();
        t.validate(&QuotaConfig::default()).unwrap();
        assert_eq!(t.free.requests_per_minute, 100.0);
        assert_eq!(t.pro.requests_per_minute, 1_000.0);
        assert_eq!(t.enterprise.requests_per_minute, -1.0);
        assert_eq!(t.free.allowed_models.len(), 3);
        assert_eq!(t.pro.allowed_models.len(), 15);
        assert_eq!(
            (
                t.free.audit_retention_days,
                t.pro.audit_retention_days,
                t.enterprise.audit_retention_days
            ),
            (7, 90, 2557)
        );
        assert_eq!(
            (
                t.free.weight_multiplier,
                t.pro.weight_multiplier,
                t.enterprise.weight_multiplier
            ),
            (1.0, 0.5, 0.2)
        );
        assert_eq!(QuotaConfig::default().stages, vec![70, 85, 95, 100]);
    }

    #[test]
    fn limit_names_parse_and_bad_ones_say_why() {
        let n = LimitName::parse("month_weighted_tokens").unwrap();
        assert_eq!(
            (n.window, n.metric),
            (LimitWindow::Month, LimitMetric::WeightedTokens)
        );
        assert_eq!(n.to_string(), "month_weighted_tokens");
        assert!(LimitName::parse("session_sessions").is_err());
        assert!(LimitName::parse("week_requests")
            .unwrap_err()
            .contains("unknown limit"));
    }

    #[test]
    fn bad_configuration_names_the_key() {
        let q = QuotaConfig::default();
        let mut t = TiersConfig::default();
        t.free.limits.insert("day_requests".into(), -5.0);
        assert_eq!(
            t.validate(&q).unwrap_err().key,
            "tiers.free.limits.day_requests"
        );
        let mut t = TiersConfig::default();
        t.pro.limits.insert("weekly_tokens".into(), 5.0);
        assert_eq!(
            t.validate(&q).unwrap_err().key,
            "tiers.pro.limits.weekly_tokens"
        );
        let mut t = TiersConfig::default();
        t.free.fallback_model = "gpt-4o".into();
        let e = t.validate(&q).unwrap_err();
        assert_eq!(e.key, "tiers.free.fallback_model");
        assert!(e
            .to_string()
            .contains("not one of the tier's allowed_models"));
        let t = TiersConfig::default();
        let mut q2 = q.clone();
        q2.stages = vec![70, 95, 85, 100];
        let e = t.validate(&q2).unwrap_err();
        assert_eq!(e.key, "quota.stages");
        assert!(e.reason.contains("ascend"), "{e}");
        let mut t = TiersConfig::default();
        t.enterprise.requests_per_minute = -2.0;
        assert_eq!(
            t.validate(&q).unwrap_err().key,
            "tiers.enterprise.requests_per_minute"
        );
    }

    #[test]
    fn weighted_tokens_apply_io_weights_model_weights_and_the_multiplier() {
        let q = QuotaConfig::default();
        // gpt-4o: (100 × 1 + 10 × 3) × 2 = 260; unknown model: (50 + 0) × 1 = 50.
        let fields = [
            ("req", 2),
            ("m:gpt-4o:in", 100),
            ("m:gpt-4o:out", 10),
            ("m:gpt-4o:req", 1),
            ("m:mystery:in", 50),
        ];
        assert_eq!(weighted_tokens(&q, 1.0, fields), 310.0);
        assert_eq!(weighted_tokens(&q, 0.5, fields), 155.0);
    }

    #[test]
    fn stages_at_the_boundaries() {
        let s = [70, 85, 95, 100];
        assert_eq!(stage_of(&s, 0.6999), None);
        assert_eq!(stage_of(&s, 0.7), Some(70));
        assert_eq!(stage_of(&s, 0.85), Some(85));
        assert_eq!(stage_of(&s, 0.9499), Some(85));
        assert_eq!(stage_of(&s, 1.0), Some(100));
        assert_eq!(stage_of(&s, 3.0), Some(100));
    }

    #[test]
    fn rules_in_order_of_severity() {
        let q = QuotaConfig::default();
        let t = TiersConfig::default();
        let free = AccountProfile::default();
        // Under every stage: plain allow.
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[]),
            &request("gpt-4o-mini", 10),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::Allow);
        assert!(d.warning.is_none());
        // A count used up: limit_reached with the plan above.
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[("day_requests", 5_000.0)]),
            &request("gpt-4o-mini", 10),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::LimitReached);
        let r = d.limit_reached.unwrap();
        assert_eq!(r.notice.limit, "day_requests");
        assert_eq!(r.upgrade.unwrap().plan, Plan::Pro);
        // A budget spent: degrade to the fallback...
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[("month_weighted_tokens", 2_000_000.0)]),
            &request("claude-3-haiku", 10),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::Degrade);
        assert_eq!(d.model, "gpt-4o-mini");
        // ...unless the request already asks for it.
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[("month_weighted_tokens", 2_000_000.0)]),
            &request("gpt-4o-mini", 10),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::LimitReached);
        // The estimate counts: 1,000 left, a request for 1,001 weighted tokens does not fit.
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[("day_weighted_tokens", 249_000.0)]),
            &request("llama-3-70b", 1_001),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::Degrade);
        let d = decide(
            &q,
            &t.free,
            &free,
            &usage(&[("day_weighted_tokens", 249_000.0)]),
            &request("llama-3-70b", 1_000),
            now(),
        );
        // llama-3-70b is not a free model: degraded for that reason instead.
        assert_eq!(d.degraded.unwrap().reason, DegradeReason::ModelNotAllowed);
        // Abuse beats everything.
        let flagged = AccountProfile {
            abuse_flagged: true,
            ..AccountProfile::default()
        };
        let d = decide(
            &q,
            &t.free,
            &flagged,
            &usage(&[]),
            &request("gpt-4o-mini", 1),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::Deny);
    }

    #[test]
    fn the_rate_limit_is_soft() {
        let q = QuotaConfig::default();
        let t = TiersConfig::default();
        let u = UsageSnapshot {
            requests_this_minute: 90.0,
            requests_last_minute: 100.0,
            minute_elapsed: 0.5,
            ..Default::default()
        };
        assert_eq!(u.rolling_rpm(), 140.0);
        let d = decide(
            &q,
            &t.free,
            &AccountProfile::default(),
            &u,
            &request("gpt-4o-mini", 1),
            now(),
        );
        assert_eq!(d.decision, DecisionKind::Allow);
        assert!(d.rate.over);
        assert_eq!(d.warning.unwrap().limit, RATE_LIMIT_NAME);
    }

    #[test]
    fn overrides_replace_tier_limits() {
        let t = TiersConfig::default();
        let p = AccountProfile {
            overrides: [("month_weighted_tokens".to_owned(), 3_000_000.0)].into(),
            ..AccountProfile::default()
        };
        let limits: BTreeMap<_, _> = p.limits(&t.free).into_iter().collect();
        assert_eq!(
            limits[&LimitName::parse("month_weighted_tokens").unwrap()],
            3_000_000.0
        );
    }

    #[test]
    fn raw_counters_become_amounts_per_limit() {
        let q = QuotaConfig::default();
        let t = TiersConfig::default();
        let h = |pairs: &[(&str, i64)]| -> WindowCounters {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let raw = RawUsage {
            month: h(&[("req", 10), ("cost", 2_500_000), ("m:gpt-4o:in", 100)]),
            day: h(&[("req", 4), ("m:gpt-4o:in", 40)]),
            session: Some(h(&[("req", 1), ("m:gpt-4o:out", 5)])),
            day_sessions: 2,
            month_sessions: 7,
            requests_this_minute: 3,
            requests_last_minute: 6,
            ..Default::default()
        };
        // 30 s into the minute: half of the previous minute still counts.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 30).unwrap();
        let snap = raw.snapshot(&q, &t.pro, at);
        let used = |n: &str| snap.used[&LimitName::parse(n).unwrap()];
        assert_eq!(used("month_requests"), 10.0);
        assert_eq!(used("month_cost_usd"), 2.5);
        assert_eq!(used("month_sessions"), 7.0);
        // gpt-4o weighs 2, pro multiplies by 0.5.
        assert_eq!(used("month_weighted_tokens"), 100.0);
        assert_eq!(used("day_weighted_tokens"), 40.0);
        assert_eq!(used("session_weighted_tokens"), 15.0);
        assert_eq!(used("day_sessions"), 2.0);
        assert_eq!(snap.rolling_rpm(), 6.0);
    }

    #[test]
    fn resets() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        assert_eq!(
            LimitWindow::Day.resets_at(t),
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            LimitWindow::Month.resets_at(t),
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(LimitWindow::Session.resets_at(t), None);
    }
}
