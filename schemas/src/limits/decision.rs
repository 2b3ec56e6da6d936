//! The quota decision: where an account stands against each of its limits
//! ([`limit_statuses`], also shown by `GET /v1/accounts/{id}/usage`) and the answer to one
//! request ([`decide`]). The rules, most severe first, are in the [module
//! documentation](super).
//!
//! Everything here is a pure function of the configuration, the account's profile, its usage
//! snapshot, the request and the clock, so each rule is tested without Redis.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::hot_state::UsageSnapshot;
use super::names::{LimitMetric, LimitName, LimitWindow, ALLOWED_MODELS_NAME, RATE_LIMIT_NAME};
use super::tiers::{QuotaConfig, TierConfig};
use crate::domain::Plan;
use crate::review::{enforcement, Enforcement, ReviewConfig, ReviewState, SUSPECTED_REASON};

/// An account as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountProfile {
    pub plan: Plan,
    /// Limit name (or `requests_per_minute`) → value, overriding the tier.
    pub overrides: BTreeMap<String, f64>,
    /// Where the account stands in review ([`crate::review`]); `None`: not in review.
    pub review: Option<ReviewState>,
}

impl Default for AccountProfile {
    fn default() -> Self {
        Self {
            plan: Plan::Free,
            overrides: BTreeMap::new(),
            review: None,
        }
    }
}

/// The tier and profile a decision uses: for a restricted account (a suspected free one), the
/// stricter limits and the fallback model of [`ReviewConfig::restrict`], overrides scaled alike;
/// `None` when the account is decided as it is.
pub fn restricted_view(
    review: &ReviewConfig,
    tier: &TierConfig,
    profile: &AccountProfile,
) -> Option<(TierConfig, AccountProfile)> {
    if enforcement(profile.review, profile.plan) != Enforcement::Restricted {
        return None;
    }
    let mut p = profile.clone();
    for (name, v) in p.overrides.iter_mut() {
        *v = review.scale(name, *v);
    }
    Some((review.restrict(tier), p))
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
    /// A budget is near its end (at the tier's `budget_steer_stage`) and the tier steers to
    /// the fallback model from there, to make the rest last.
    BudgetNear,
    /// The account is suspected of abuse: it is served the fallback model until a person
    /// reviews it.
    AbuseSuspected,
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

/// For the gateway only: the request is served from the hidden overage buffer past 100 % of
/// a limit. Do not show this to the account holder; show `message`, which is the 100 % one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Grace {
    /// The limit past 100 %.
    #[schema(example = "day_requests")]
    pub limit: String,
    /// Used before this request.
    pub used: f64,
    pub limit_value: f64,
    /// The buffer, in percent of the limit (the tier's `grace_percent`).
    pub grace_percent: f64,
    /// How much is served before the cutoff: the limit plus the buffer (for counts, the
    /// buffer rounded down to whole requests or sessions).
    pub served_up_to: f64,
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
    /// Why the account is treated differently: on `deny`, `abuse_confirmed` (a person
    /// confirmed abuse) or `abuse_high_confidence` (the high-confidence rule); on any other
    /// decision, `abuse_suspected` (stricter limits and the fallback model until a person
    /// reviews the account).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For the account holder: what this decision means, with the numbers filled in (the
    /// indicator, nudge, upgrade prompt or warm cutoff of the stage reached, the degradation,
    /// the rate). Absent when there is nothing to say. Plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "You have used 3,600 of your 5,000 daily requests (72 %). Your allowance resets at 00:00 UTC (in 3 h 12 min)."
    )]
    pub message: Option<String>,
    /// The friction stage the message belongs to (`quota.stage_names`: `indicator`, `nudge`,
    /// `upgrade_prompt`, `cutoff` by default); absent when the message is not about a stage
    /// of a limit (a degradation, the per-minute rate) or there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "upgrade_prompt")]
    pub stage_name: Option<String>,
    /// Set when the request is served from the hidden overage buffer (for the gateway only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<Grace>,
}

/// Where the hidden overage buffer of a limit ends: the limit plus `grace_percent` of it, the
/// buffer rounded down to whole units for counts (15 % of 10 sessions is 1 more, not 1.5).
pub fn grace_cap(grace_percent: f64, metric: LimitMetric, limit: f64) -> f64 {
    let extra = limit * grace_percent / 100.0;
    if metric.is_budget() {
        limit + extra
    } else {
        limit + (extra + 1e-9).floor()
    }
}

/// Orders limits by how far along they are; one without a ratio (a zero limit) is furthest.
fn by_ratio(a: &LimitStatus, b: &LimitStatus) -> std::cmp::Ordering {
    a.ratio
        .unwrap_or(f64::INFINITY)
        .total_cmp(&b.ratio.unwrap_or(f64::INFINITY))
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

/// Decides one request. See the module documentation for the rules; the review state comes
/// first ([`crate::review::enforcement`]: a paying account is denied only on a person's
/// confirmation, whatever put it in review).
pub fn decide(
    quota: &QuotaConfig,
    review: &ReviewConfig,
    tier: &TierConfig,
    profile: &AccountProfile,
    usage: &UsageSnapshot,
    request: &QuotaRequest,
    now: DateTime<Utc>,
) -> Decision {
    if let Enforcement::Deny(reason) = enforcement(profile.review, profile.plan) {
        let rpm_limit = profile.requests_per_minute(tier);
        let rpm = round6(usage.rolling_rpm());
        return Decision {
            decision: DecisionKind::Deny,
            plan: profile.plan,
            model: request.model.clone(),
            warning: None,
            degraded: None,
            limit_reached: None,
            rate: RateStatus {
                requests_per_minute: rpm,
                limit: rpm_limit,
                over: rpm_limit >= 0.0 && rpm > rpm_limit,
            },
            reason: Some(reason.into()),
            message: None,
            stage_name: None,
            grace: None,
        };
    }
    if let Some((tier, profile)) = restricted_view(review, tier, profile) {
        let mut d = decide_limits(quota, &tier, &profile, usage, request, now);
        if let Some(g) = d.degraded.as_mut() {
            if g.reason == DegradeReason::ModelNotAllowed {
                g.reason = DegradeReason::AbuseSuspected;
            }
        }
        d.reason = Some(SUSPECTED_REASON.into());
        return d;
    }
    decide_limits(quota, tier, profile, usage, request, now)
}

/// The limit rules (2 to 5 of the module documentation).
fn decide_limits(
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
        message: None,
        stage_name: None,
        grace: None,
    };

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
    // Past a limit: a count once this request would take it past (a session already counted
    // is not counted again), a budget also at it. `spent` is past 100 %, `cut` past the
    // hidden overage buffer too.
    let past = |s: &LimitStatus, cap: f64| {
        let u = s.used.unwrap_or(0.0);
        (s.metric.is_budget() && u >= cap) || u + share(s) > cap + 1e-9
    };
    let spent: Vec<&LimitStatus> = statuses
        .iter()
        .filter(|s| s.limit >= 0.0 && s.used.is_some())
        .filter(|s| past(s, s.limit))
        .collect();
    let cut: Vec<&LimitStatus> = spent
        .iter()
        .copied()
        .filter(|s| past(s, grace_cap(tier.grace_percent, s.metric, s.limit)))
        .collect();

    let fallback = (!tier.fallback_model.is_empty()).then(|| tier.fallback_model.clone());
    let model_allowed = tier.allows_model(&request.model);
    let upgrade = tier.upgrade_plan().map(|plan| Upgrade {
        plan,
        upgrade_url: quota.upgrade_link(plan),
    });

    // Counts first: a cheaper model does not help with them.
    let count_cut = cut.iter().find(|s| !s.metric.is_budget());
    let budget_cut = cut.iter().find(|s| s.metric.is_budget());
    let budget_spent = spent.iter().find(|s| s.metric.is_budget());
    let fallback_helps = fallback
        .as_deref()
        .is_some_and(|f| f != request.model || !model_allowed);
    if let Some(s) = count_cut.or(budget_cut.filter(|_| !fallback_helps)) {
        decision.decision = DecisionKind::LimitReached;
        decision.limit_reached = Some(LimitReached {
            notice: notice(s, &quota.stages),
            upgrade,
        });
        return decision;
    }
    // Past 100 % of a limit and within its buffer: whatever is decided below serves the
    // request, so it is served from grace (a spent budget the fallback can help with is not:
    // it degrades).
    let graced = spent
        .iter()
        .copied()
        .filter(|s| !cut.contains(s))
        .filter(|s| !(s.metric.is_budget() && fallback_helps))
        .max_by(|a, b| by_ratio(a, b));
    decision.grace = graced.map(|s| Grace {
        limit: s.name.clone(),
        used: s.used.unwrap_or(0.0),
        limit_value: s.limit,
        grace_percent: tier.grace_percent,
        served_up_to: round6(grace_cap(tier.grace_percent, s.metric, s.limit)),
    });
    if let (Some(s), Some(f)) = (budget_spent.filter(|_| fallback_helps), fallback.as_ref()) {
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
    // Budget steering: from the tier's steer stage on, a budget is served by the fallback.
    if let (true, Some(f)) = (tier.budget_steer && fallback_helps, fallback.as_ref()) {
        let near = statuses
            .iter()
            .filter(|s| s.metric.is_budget() && s.limit > 0.0)
            .filter(|s| {
                s.ratio
                    .is_some_and(|r| r * 100.0 + 1e-9 >= f64::from(tier.budget_steer_stage))
            })
            .max_by(|a, b| by_ratio(a, b));
        if let Some(s) = near {
            decision.decision = DecisionKind::Degrade;
            decision.model = f.clone();
            decision.degraded = Some(Degradation {
                reason: DegradeReason::BudgetNear,
                requested_model: request.model.clone(),
                fallback_model: f.clone(),
                budget: Some(notice(s, &quota.stages)),
            });
            return decision;
        }
    }
    // Past 100 % and within the buffer: served, with the 100 % warning of that limit.
    // The warning names the limit in grace, else the one nearest to (or furthest past) its
    // end.
    decision.warning = graced
        .or_else(|| {
            statuses
                .iter()
                .filter(|s| s.stage.is_some())
                .max_by(|a, b| by_ratio(a, b))
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
mod tests;
