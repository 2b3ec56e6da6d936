//! `[scorer]`: every weight and threshold. The defaults come from the domain brief.
//!
//! Every rule family also names the plans it watches (`plans`, `key_sharing_plans`, …): an
//! account on another plan still gets its scores computed and stored, for a person to look at,
//! but raises no signal of that kind and is never suspected. The defaults follow the brief:
//! abuse, key sharing and multi-accounting watch the free tier; everything that sells a higher
//! plan (deal readiness, PQL, escalation, plugin gates, power users, sustained rate limiting)
//! watches the plans that have one to sell, free and pro. Enterprise is sold nothing.

use std::collections::BTreeMap;

use meterline_schemas::{Plan, SignalKind};
use serde::{Deserialize, Serialize};

/// Free only: abuse, key sharing, multi-accounting.
fn free_only() -> Vec<Plan> {
    vec![Plan::Free]
}

/// The plans with a higher plan to sell.
fn below_top() -> Vec<Plan> {
    vec![Plan::Free, Plan::Pro]
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DealConfig {
    /// Raw input + output tokens this calendar month above which `monthly_tokens_points` count.
    pub monthly_tokens_over: u64,
    pub monthly_tokens_points: u32,
    pub regions_over: u64,
    pub regions_points: u32,
    pub plugins_desired_at_least: u64,
    pub plugins_desired_points: u32,
    pub team_size_over: u64,
    pub team_size_points: u32,
    pub company_size_over: u64,
    pub company_size_points: u32,
    /// A score above this raises `deal_ready`.
    pub ready_above: u32,
    /// The plans `deal_ready` watches.
    pub plans: Vec<Plan>,
}

impl Default for DealConfig {
    fn default() -> Self {
        Self {
            monthly_tokens_over: 50_000_000,
            monthly_tokens_points: 30,
            regions_over: 2,
            regions_points: 20,
            plugins_desired_at_least: 2,
            plugins_desired_points: 25,
            team_size_over: 20,
            team_size_points: 15,
            company_size_over: 100,
            company_size_points: 10,
            ready_above: 70,
            plans: below_top(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbuseConfig {
    pub new_account_hours: f64,
    pub new_account_points: u32,
    /// Median gap between session starts today, in seconds, under which timing is machine-speed.
    pub machine_gap_secs: f64,
    pub machine_speed_points: u32,
    pub sessions_today_over: u64,
    pub sessions_today_points: u32,
    /// Distinct prompt hashes / requests today, under which input is templated.
    pub input_diversity_under: f64,
    pub low_diversity_points: u32,
    /// A score at or above this is suspected abuse.
    pub suspected_at: u32,
    /// One API key seen from this many distinct client-IP hashes within one minute is a
    /// candidate for sharing (a crowd or a fleet).
    pub key_sharing_ips_per_minute: u64,
    /// A candidate is a crowd, and so sharing, when the key's distinct client IPs over the last
    /// 24 hours are at least this many times that minute's: addresses that come and go. A
    /// fleet keeps the same addresses all day (a ratio near 1).
    pub key_sharing_churn_at_least: f64,
    /// Two accounts matching on this many of signup-IP hash, device id and browser signature.
    pub multi_account_matches: u32,
    /// The plans `abuse_suspected` watches (and the abuse flag is set for).
    pub plans: Vec<Plan>,
    /// The plans `key_sharing` watches.
    pub key_sharing_plans: Vec<Plan>,
    /// The plans `multi_account` watches.
    pub multi_account_plans: Vec<Plan>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            new_account_hours: 2.0,
            new_account_points: 30,
            machine_gap_secs: 3.0,
            machine_speed_points: 25,
            sessions_today_over: 20,
            sessions_today_points: 25,
            input_diversity_under: 0.15,
            low_diversity_points: 20,
            suspected_at: 50,
            key_sharing_ips_per_minute: 5,
            key_sharing_churn_at_least: 3.0,
            multi_account_matches: 2,
            plans: free_only(),
            key_sharing_plans: free_only(),
            multi_account_plans: free_only(),
        }
    }
}

/// The PQL signal table: weights add up to 100.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PqlConfig {
    /// Any limit at or above this share (very strong).
    pub limit_ratio_at_least: f64,
    pub limit_points: u32,
    /// Requests naming a gated plugin in 30 days (strong).
    pub gate_hits_at_least: u64,
    pub gate_points: u32,
    /// Week-over-week growth of requests above this share (strong).
    pub weekly_growth_over: f64,
    pub growth_points: u32,
    /// Accounts sharing the email domain, this one included (moderate). Public email domains
    /// (`[accounts] public_domains`) never count.
    pub domain_accounts_at_least: u64,
    pub domain_points: u32,
    /// A score at or above this raises `pql`.
    pub qualified_at: u32,
    /// The plans `pql` watches.
    pub plans: Vec<Plan>,
}

impl Default for PqlConfig {
    fn default() -> Self {
        Self {
            limit_ratio_at_least: 0.80,
            limit_points: 40,
            gate_hits_at_least: 3,
            gate_points: 25,
            weekly_growth_over: 0.20,
            growth_points: 20,
            domain_accounts_at_least: 3,
            domain_points: 15,
            qualified_at: 60,
            plans: below_top(),
        }
    }
}

/// A plugin-gate trigger: the plugin it sells and its upsell message.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginGate {
    pub trigger: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatesConfig {
    pub providers_7d_at_least: u64,
    pub pii_requests_7d_at_least: u64,
    pub clouds_7d_at_least: u64,
    /// Plugin → trigger name and upsell message.
    pub plugins: BTreeMap<String, PluginGate>,
    /// Plugins only paid tiers include: a request naming one is a feature-gate hit.
    pub gated_plugins: Vec<String>,
    /// The plans `plugin_gate` watches. A plugin the account's plan already includes (per
    /// `[tiers]`' `plugins`) is never a gate, whatever this says.
    pub plans: Vec<Plan>,
}

impl Default for GatesConfig {
    fn default() -> Self {
        let gate = |t: &str, m: &str| PluginGate {
            trigger: t.into(),
            message: m.into(),
        };
        Self {
            providers_7d_at_least: 3,
            pii_requests_7d_at_least: 5,
            clouds_7d_at_least: 2,
            plugins: [
                (
                    "audit_logger".to_owned(),
                    gate(
                        "multi_model_routing_detected",
                        "You route across several providers: Audit Logger keeps one trail of every model call.",
                    ),
                ),
                (
                    "guardrails".to_owned(),
                    gate(
                        "pii_detected_in_prompts",
                        "PII is reaching your prompts: Advanced Guardrails redacts it before it leaves.",
                    ),
                ),
                (
                    "multi_cloud_router".to_owned(),
                    gate(
                        "cross_cloud_traffic_detected",
                        "Your traffic spans clouds: Multi-Cloud Router fails over and routes by cost.",
                    ),
                ),
            ]
            .into(),
            gated_plugins: vec![
                "audit_logger".into(),
                "guardrails".into(),
                "compliance_reporter".into(),
                "multi_cloud_router".into(),
            ],
            plans: below_top(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// How often the dirty set is drained.
    pub interval_ms: u64,
    /// Accounts scored per round of queries.
    pub batch_size: usize,
    /// UTC hour of the daily full pass.
    pub full_pass_hour: u32,
    /// Rate limit: minutes over the tier's per-minute limit in a row that raise
    /// `rate_limit_sustained`, and minutes under it that end the episode.
    pub sustained_minutes: u32,
    pub episode_quiet_minutes: u32,
    /// The plans `rate_limit_sustained` watches.
    pub rate_limit_plans: Vec<Plan>,
    /// Auto-escalation: requests per minute sustained for `sustained_minutes`.
    pub escalation_rpm_over: u64,
    pub escalation_monthly_tokens_over: u64,
    pub escalation_regions_at_least: u64,
    /// The plans `escalation` watches.
    pub escalation_plans: Vec<Plan>,
    /// Collision: reaching this stage within this many hours of signup, or a day-over-day jump.
    pub collision_stage: u32,
    pub collision_hours: f64,
    pub collision_jump: f64,
    /// Trajectory: days of steady growth.
    pub trajectory_days: usize,
    /// Power users: at least this many requests in the last 30 days, whatever else they show;
    /// a light account never qualifies.
    pub power_min_requests_30d: u64,
    /// Power users: sessions this many times the population's median length, with diverse input.
    pub power_session_ratio_at_least: f64,
    /// Power users: the monthly limit hit in each of this many previous months.
    pub power_limit_months: usize,
    /// Power users: this many `upgrade_page_viewed` account events in 30 days.
    pub power_upgrade_views_at_least: u64,
    /// Power users: 30-day spend in this top share of the active accounts on the same plan
    /// (0.05: the top 5 %), while the abuse score is below `abuse.suspected_at`.
    pub power_spend_top_share: f64,
    /// The plans `power_user` watches.
    pub power_plans: Vec<Plan>,
    /// Limit stages at or above this raise `limit_stage`.
    pub limit_signal_stage: u32,
    /// The plans `allowance_reset` watches: at the start of a month, accounts on them that
    /// hit a limit (its last stage) the month before get one `allowance_reset` signal.
    pub allowance_reset_plans: Vec<Plan>,
    /// The month's reset sweep runs in its first this-many days (UTC); a scorer started later
    /// in the month does not tell anyone that their allowance reset weeks ago.
    pub allowance_reset_within_days: u32,
    pub deal: DealConfig,
    pub abuse: AbuseConfig,
    pub pql: PqlConfig,
    pub gates: GatesConfig,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            batch_size: 200,
            full_pass_hour: 3,
            sustained_minutes: 3,
            episode_quiet_minutes: 10,
            rate_limit_plans: below_top(),
            escalation_rpm_over: 5_000,
            escalation_monthly_tokens_over: 50_000_000,
            escalation_regions_at_least: 3,
            escalation_plans: below_top(),
            collision_stage: 85,
            collision_hours: 48.0,
            collision_jump: 3.0,
            trajectory_days: 7,
            power_min_requests_30d: 1_000,
            power_session_ratio_at_least: 3.0,
            power_limit_months: 3,
            power_upgrade_views_at_least: 2,
            power_spend_top_share: 0.05,
            power_plans: below_top(),
            limit_signal_stage: 70,
            allowance_reset_plans: below_top(),
            allowance_reset_within_days: 3,
            deal: DealConfig::default(),
            abuse: AbuseConfig::default(),
            pql: PqlConfig::default(),
            gates: GatesConfig::default(),
        }
    }
}

impl ScorerConfig {
    /// The configuration key naming the plans `kind` watches, and those plans; `None` for a
    /// kind every plan gets (`limit_stage`: a fact about the account's own limits).
    pub fn scope(&self, kind: SignalKind) -> Option<(&'static str, &[Plan])> {
        Some(match kind {
            SignalKind::DealReady => ("scorer.deal.plans", &self.deal.plans),
            SignalKind::Pql => ("scorer.pql.plans", &self.pql.plans),
            SignalKind::AbuseSuspected => ("scorer.abuse.plans", &self.abuse.plans),
            SignalKind::KeySharing => (
                "scorer.abuse.key_sharing_plans",
                &self.abuse.key_sharing_plans,
            ),
            SignalKind::MultiAccount => (
                "scorer.abuse.multi_account_plans",
                &self.abuse.multi_account_plans,
            ),
            SignalKind::PluginGate => ("scorer.gates.plans", &self.gates.plans),
            SignalKind::PowerUser => ("scorer.power_plans", &self.power_plans),
            SignalKind::RateLimitSustained => ("scorer.rate_limit_plans", &self.rate_limit_plans),
            SignalKind::Escalation => ("scorer.escalation_plans", &self.escalation_plans),
            SignalKind::AllowanceReset => {
                ("scorer.allowance_reset_plans", &self.allowance_reset_plans)
            }
            SignalKind::LimitStage => return None,
        })
    }

    /// Whether signals of `kind` are raised for an account on `plan`.
    pub fn watches(&self, kind: SignalKind, plan: Plan) -> bool {
        self.scope(kind)
            .is_none_or(|(_, plans)| plans.contains(&plan))
    }

    /// The rules types do not express. The error names the key. (Plan names are checked when
    /// the configuration is read: a name that is not free, pro or enterprise does not parse.)
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=28).contains(&self.allowance_reset_within_days) {
            return Err(format!(
                "scorer.allowance_reset_within_days: {} is not a number of days from 1 to 28 (every month has them)",
                self.allowance_reset_within_days
            ));
        }
        let share = self.power_spend_top_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!(
                "scorer.power_spend_top_share: {share} is not a share in (0, 1]"
            ));
        }
        let churn = self.abuse.key_sharing_churn_at_least;
        if !(churn.is_finite() && churn >= 1.0) {
            return Err(format!(
                "scorer.abuse.key_sharing_churn_at_least: {churn} is below 1 (the addresses of a day always include the minute's)"
            ));
        }
        if self.abuse.key_sharing_ips_per_minute < 2 {
            return Err(format!(
                "scorer.abuse.key_sharing_ips_per_minute: {} cannot tell a shared key from one client; use 2 or more",
                self.abuse.key_sharing_ips_per_minute
            ));
        }
        for kind in SignalKind::ALL {
            if let Some((key, plans)) = self.scope(kind) {
                let mut seen = plans.to_vec();
                seen.sort();
                seen.dedup();
                if seen.len() != plans.len() {
                    return Err(format!("{key}: names a plan twice"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scopes_follow_the_brief() {
        let c = ScorerConfig::default();
        use Plan::*;
        use SignalKind::*;
        // (kind, free, pro, enterprise)
        let cases = [
            (AbuseSuspected, true, false, false),
            (KeySharing, true, false, false),
            (MultiAccount, true, false, false),
            (DealReady, true, true, false),
            (Pql, true, true, false),
            (Escalation, true, true, false),
            (PluginGate, true, true, false),
            (PowerUser, true, true, false),
            (RateLimitSustained, true, true, false),
            (LimitStage, true, true, true),
            (AllowanceReset, true, true, false),
        ];
        for (kind, free, pro, ent) in cases {
            assert_eq!(
                [
                    c.watches(kind, Free),
                    c.watches(kind, Pro),
                    c.watches(kind, Enterprise)
                ],
                [free, pro, ent],
                "{kind:?}"
            );
        }
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validation_names_the_key() {
        type Edit = fn(&mut ScorerConfig);
        let cases: Vec<(Edit, Option<&str>)> = vec![
            (
                |c| c.allowance_reset_within_days = 0,
                Some("scorer.allowance_reset_within_days"),
            ),
            (|c| c.allowance_reset_within_days = 1, None),
            (|c| c.allowance_reset_within_days = 28, None),
            (
                |c| c.allowance_reset_within_days = 29,
                Some("scorer.allowance_reset_within_days"),
            ),
            (
                |c| c.power_spend_top_share = 0.0,
                Some("scorer.power_spend_top_share"),
            ),
            (|c| c.power_spend_top_share = 1.0, None),
            (
                |c| c.power_spend_top_share = 1.01,
                Some("scorer.power_spend_top_share"),
            ),
            (
                |c| c.abuse.key_sharing_churn_at_least = 0.99,
                Some("scorer.abuse.key_sharing_churn_at_least"),
            ),
            (|c| c.abuse.key_sharing_churn_at_least = 1.0, None),
            (
                |c| c.abuse.key_sharing_ips_per_minute = 1,
                Some("scorer.abuse.key_sharing_ips_per_minute"),
            ),
            (|c| c.abuse.key_sharing_ips_per_minute = 2, None),
            (
                |c| c.deal.plans = vec![Plan::Free, Plan::Free],
                Some("scorer.deal.plans"),
            ),
            // No plans at all turns the rule off: allowed.
            (|c| c.deal.plans = vec![], None),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            let mut c = ScorerConfig::default();
            edit(&mut c);
            match (c.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(key)) => assert!(e.starts_with(&format!("{key}:")), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, wanted an error naming {want:?}"),
            }
        }
    }

    #[test]
    fn a_plan_name_that_is_not_a_plan_does_not_parse() {
        let e = serde_json::from_str::<ScorerConfig>(r#"{"abuse": {"plans": ["gold"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gold"), "{e}");
        let c: ScorerConfig =
            serde_json::from_str(r#"{"abuse": {"plans": ["free", "pro"]}}"#).unwrap();
        assert_eq!(c.abuse.plans, vec![Plan::Free, Plan::Pro]);
    }
}
