//! Limit A/B experiments: the discipline of the domain brief, in code.
//!
//! An experiment gives accounts that sign up on one plan after its start different limits,
//! per variant, and the growth team reads the outcome in ClickHouse (`cohort_metrics`). Three
//! rules shape this module:
//!
//! * **New cohorts only.** An account is assigned when its signup is applied (by the
//!   aggregator, in the same PostgreSQL transaction as the signup, see [`store::assign_at_signup`]),
//!   and only when it signed up at or after the experiment's start. Nothing is backfilled.
//! * **Deterministic.** The variant is a hash of the experiment and the account
//!   ([`choose_variant`]), so a replayed signup lands where the first one did.
//! * **Never reduce a limit an account already has.** [`guard`] refuses a variant edit, an
//!   overlapping experiment on the same limit, or a stop that reverts accounts to a lower
//!   default, and names the accounts and limits. A plain stop keeps every assigned account's
//!   limits.
//!
//! The assignment is stored as the account's limit overrides (scoped to the experiment's
//! plan, with source `experiment:<name>`), which the quota decisions and the scorer read like
//! any other override.

pub mod guard;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use meterline_schemas::limits::{LimitName, TierConfig, RATE_LIMIT_NAME};
use meterline_schemas::Plan;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What can go wrong managing experiments.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A definition or a change that does not make sense: `field: reason`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no experiment named {0:?}")]
    NotFound(String),
    #[error("an experiment named {0:?} already exists")]
    Exists(String),
    /// The guard refused a change that would lower a limit assigned accounts already have.
    #[error("{0}")]
    Refused(guard::Refusal),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One variant: its share of new signups and the limits it gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    pub weight: u32,
    #[serde(default)]
    pub control: bool,
    /// Limit name (`month_weighted_tokens`, …, or `requests_per_minute`) → value; `-1` is
    /// unlimited. A limit not named keeps the plan's default.
    #[serde(default)]
    pub limits: BTreeMap<String, f64>,
}

/// An experiment as defined (in TOML or on the command line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "free")]
    pub plan: String,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    pub variants: Vec<VariantSpec>,
}

fn free() -> String {
    "free".into()
}

/// Checks a limit name and value as overrides accept them.
pub fn check_limit(field: &str, name: &str, value: f64) -> Result<(), ExperimentError> {
    if name != RATE_LIMIT_NAME {
        LimitName::parse(name).map_err(|e| invalid(field, e))?;
    }
    if !value.is_finite() || (value < 0.0 && value != -1.0) {
        return Err(invalid(
            field,
            format!("{value} is not a limit: use a number >= 0, or -1 for unlimited"),
        ));
    }
    Ok(())
}

impl ExperimentSpec {
    /// Reads a TOML definition (see `docs/analytics.md`).
    pub fn from_toml(text: &str) -> Result<Self, ExperimentError> {
        let spec: ExperimentSpec = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| format!("experiment file (bytes {}..{})", s.start, s.end))
                .unwrap_or_else(|| "experiment file".into());
            invalid(field, e.message().to_owned())
        })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn plan(&self) -> Plan {
        Plan::parse("plan", &self.plan).unwrap_or(Plan::Free)
    }

    /// Every rule a definition must follow; the error names the field.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(invalid(
                "name",
                "1 to 64 characters from a-z, A-Z, 0-9, '-', '_' and '.'",
            ));
        }
        Plan::parse("plan", &self.plan).map_err(|e| invalid("plan", e.to_string()))?;
        if let Some(end) = self.ends_at {
            if end <= self.starts_at {
                return Err(invalid("ends_at", "must be after starts_at"));
            }
        }
        if self.variants.len() < 2 {
            return Err(invalid(
                "variants",
                "an experiment needs at least two variants (one of them the control)",
            ));
        }
        let controls = self.variants.iter().filter(|v| v.control).count();
        if controls != 1 {
            return Err(invalid(
                "variants",
                format!("exactly one variant must be the control (found {controls})"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, v) in self.variants.iter().enumerate() {
            let field = format!("variants[{i}]");
            if v.name.is_empty()
                || v.name.len() > 64
                || !v
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    format!("{field}.name"),
                    "1 to 64 characters from a-z, A-Z, 0-9, '-', '_' and '.'",
                ));
            }
            if !seen.insert(v.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is used twice", v.name),
                ));
            }
            if v.weight == 0 {
                return Err(invalid(format!("{field}.weight"), "must be at least 1"));
            }
            for (k, value) in &v.limits {
                check_limit(&format!("{field}.limits.{k}"), k, *value)?;
            }
        }
        Ok(())
    }

    /// The limits any variant sets.
    pub fn limit_names(&self) -> BTreeSet<&str> {
        self.variants
            .iter()
            .flat_map(|v| v.limits.keys().map(String::as_str))
            .collect()
    }
}

/// A 64-bit hash of the experiment and the account: the same pair always gives the same value.
pub fn assignment_hash(experiment: &str, account_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(experiment.as_bytes());
    // A separator, so ("ab", "c") and ("a", "bc") hash differently.
    h.update([0u8]);
    h.update(account_id.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The variant an account lands in: the hash, modulo the total weight, falls into one
/// variant's share. Variants are taken in name order so the order of a definition does not
/// matter. The modulo bias is below 2^-50 for any realistic total weight.
pub fn choose_variant<'a>(
    experiment: &str,
    account_id: &str,
    variants: &'a [VariantSpec],
) -> Option<&'a VariantSpec> {
    let mut ordered: Vec<&VariantSpec> = variants.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    let total: u64 = ordered.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = assignment_hash(experiment, account_id) % total;
    for v in ordered {
        let w = u64::from(v.weight);
        if point < w {
            return Some(v);
        }
        point -= w;
    }
    None
}

/// A limit's value as an order: `-1` (unlimited) and an absent limit rank above every number.
pub fn limit_rank(v: Option<f64>) -> f64 {
    match v {
        Some(x) if x >= 0.0 => x,
        _ => f64::INFINITY,
    }
}

/// What a plan gives an account for `limit` without overrides (`None`: no such limit, so
/// unlimited).
pub fn tier_default(tier: &TierConfig, limit: &str) -> Option<f64> {
    if limit == RATE_LIMIT_NAME {
        Some(tier.requests_per_minute)
    } else {
        tier.limits.get(limit).copied()
    }
}

/// Formats a limit value for messages.
pub fn show_limit(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 0.0 => format!("{x}"),
        _ => "unlimited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, weight: u32, control: bool) -> VariantSpec {
        VariantSpec {
            name: name.into(),
            weight,
            control,
            limits: BTreeMap::new(),
        }
    }

    #[test]
    fn assignment_is_deterministic_and_independent_of_definition_order() {
        let a = [v("control", 50, true), v("generous", 50, false)];
        let b = [v("generous", 50, false), v("control", 50, true)];
        for i in 0..1_000 {
            let account = format!("acct-{i}");
            let first = choose_variant("exp", &account, &a).unwrap().name.clone();
            assert_eq!(choose_variant("exp", &account, &a).unwrap().name, first);
            assert_eq!(choose_variant("exp", &account, &b).unwrap().name, first);
        }
    }

    #[test]
    fn allocation_is_within_two_points_of_the_weights_over_ten_thousand_accounts() {
        let variants = [
            v("control", 50, true),
            v("generous", 30, false),
            v("tight", 20, false),
        ];
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..10_000 {
            let account = format!("acct-{i:05}");
            let chosen = choose_variant("free-tokens-q4", &account, &variants).unwrap();
            *counts.entry(chosen.name.clone()).or_default() += 1;
        }
        for variant in &variants {
            let share = f64::from(counts[&variant.name]) / 10_000.0;
            let expected = f64::from(variant.weight) / 100.0;
            assert!(
                (share - expected).abs() <= 0.02,
                "{}: {share} vs {expected}",
                variant.name
            );
        }
    }

    #[test]
    fn different_experiments_split_the_same_accounts_independently() {
        let variants = [v("a", 1, true), v("b", 1, false)];
        let same = (0..2_000)
            .filter(|i| {
                let acct = format!("acct-{i}");
                choose_variant("one", &acct, &variants).unwrap().name
                    == choose_variant("two", &acct, &variants).unwrap().name
            })
            .count();
        // Independent halves agree about half the time.
        assert!((800..1_200).contains(&same), "{same}");
    }

    fn spec(text: &str) -> Result<ExperimentSpec, ExperimentError> {
        ExperimentSpec::from_toml(text)
    }

    const GOOD: &str = r#"
name = "free-tokens-q4"
starts_at = "2026-12-01T00:00:00Z"
[[variants]]
name = "control"
weight = 50
control = true
[[variants]]
name = "generous"
weight = 50
limits = { month_weighted_tokens = 3000000, requests_per_minute = -1 }
"#;

    #[test]
    fn a_toml_definition_parses() {
        let s = spec(GOOD).unwrap();
        assert_eq!(s.plan, "free");
        assert_eq!(s.variants.len(), 2);
        assert_eq!(s.variants[1].limits["month_weighted_tokens"], 3_000_000.0);
        assert_eq!(
            s.limit_names().into_iter().collect::<Vec<_>>(),
            ["month_weighted_tokens", "requests_per_minute"]
        );
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases = [
            (
                GOOD.replace("month_weighted_tokens", "month_bananas"),
                "variants[1].limits.month_bananas",
            ),
            (
                GOOD.replace("3000000", "-5"),
                "variants[1].limits.month_weighted_tokens",
            ),
            (
                GOOD.replace("control = true", "control = false"),
                "variants",
            ),
            (
                GOOD.replace("weight = 50\ncontrol", "weight = 0\ncontrol"),
                "variants[0].weight",
            ),
            (
                GOOD.replace("\"generous\"", "\"control\""),
                "variants[1].name",
            ),
            (GOOD.replace("free-tokens-q4", "has space"), "name"),
            (
                GOOD.replace(
                    "starts_at = \"2026-12-01T00:00:00Z\"",
                    "starts_at = \"2026-12-01T00:00:00Z\"\nends_at = \"2026-01-01T00:00:00Z\"",
                ),
                "ends_at",
            ),
            (format!("{GOOD}\nsurprise = 1"), "experiment file"),
        ];
        for (text, field) in cases {
            let err = spec(&text).unwrap_err();
            assert!(err.to_string().starts_with(field), "{field}: got {err}");
        }
    }

    #[test]
    fn unlimited_ranks_above_every_number() {
        assert!(limit_rank(Some(-1.0)) > limit_rank(Some(1e18)));
        assert!(limit_rank(None) > limit_rank(Some(0.0)));
        assert!(limit_rank(Some(20.0)) < limit_rank(Some(30.0)));
    }
}
