//! Tier configuration: `[quota]` (what every tier shares) and `[tiers]` (one table per plan),
//! their defaults (the domain brief's tiers) and their validation.
//!
//! Serde checks the shapes; [`TiersConfig::validate`] checks the rules types cannot express
//! (stages ascend, a fallback model is allowed on its tier, limit names parse, …) and names
//! the configuration key that breaks one, so start-up fails with a pointer to the line to fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::friction::{default_stage_names, Friction, MessageOverrides, Messages};
use super::names::{LimitName, UNLIMITED};
use crate::domain::Plan;

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
    /// Stage percentage → the `stage_name` a decision at that stage carries for gateways.
    pub stage_names: BTreeMap<String, String>,
    /// The texts for people ([`super::friction`]).
    pub messages: Messages,
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
            stage_names: default_stage_names(),
            messages: Messages::default(),
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
    /// The gateway plugins the plan includes (the brief: Audit Logger, Advanced Guardrails,
    /// Compliance Reporter and Multi-Cloud Router are Enterprise features). An offer for a
    /// plugin names the lowest plan that lists it.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// The hidden overage buffer, in percent of a limit: past 100 % but within it, a request
    /// is served with the 100 % message (see [`super::decision`]). 0: none.
    #[serde(default)]
    pub grace_percent: f64,
    /// Steer to the fallback model once a budget reaches `budget_steer_stage`, instead of
    /// only once it is spent.
    #[serde(default)]
    pub budget_steer: bool,
    #[serde(default = "default_steer_stage")]
    pub budget_steer_stage: u32,
    /// This tier's own message texts, replacing `[quota.messages]`' ones.
    #[serde(default, skip_serializing_if = "MessageOverrides::is_empty")]
    pub messages: MessageOverrides,
}

fn default_steer_stage() -> u32 {
    95
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
                plugins: vec![],
                grace_percent: 15.0,
                budget_steer: false,
                budget_steer_stage: 95,
                messages: MessageOverrides::default(),
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
                plugins: vec![],
                grace_percent: 0.0,
                budget_steer: false,
                budget_steer_stage: 95,
                messages: MessageOverrides::default(),
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
                plugins: strings(&[
                    "audit_logger",
                    "guardrails",
                    "compliance_reporter",
                    "multi_cloud_router",
                ]),
                grace_percent: 0.0,
                budget_steer: false,
                budget_steer_stage: 95,
                messages: MessageOverrides::default(),
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

    /// The lowest plan whose tier includes `plugin`, or `None` when no plan does.
    pub fn lowest_plan_including(&self, plugin: &str) -> Option<Plan> {
        [Plan::Free, Plan::Pro, Plan::Enterprise]
            .into_iter()
            .find(|p| self.get(*p).plugins.iter().any(|x| x == plugin))
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
            if !tier.grace_percent.is_finite() || !(0.0..=100.0).contains(&tier.grace_percent) {
                return Err(bad(
                    at("grace_percent"),
                    format!("{} is not a percentage in 0..=100", tier.grace_percent),
                ));
            }
            if !(1..=100).contains(&tier.budget_steer_stage) {
                return Err(bad(
                    at("budget_steer_stage"),
                    format!("{} is not a percentage in 1..=100", tier.budget_steer_stage),
                ));
            }
        }
        // The message templates compile and render; errors name the template's key.
        Friction::new(quota, self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_enterprise_features_by_default() {
        let mut t = TiersConfig::default();
        for p in [
            "audit_logger",
            "guardrails",
            "compliance_reporter",
            "multi_cloud_router",
        ] {
            assert_eq!(t.lowest_plan_including(p), Some(Plan::Enterprise), "{p}");
        }
        assert_eq!(t.lowest_plan_including("teleporter"), None);
        t.pro.plugins.push("guardrails".into());
        assert_eq!(t.lowest_plan_including("guardrails"), Some(Plan::Pro));
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
}
