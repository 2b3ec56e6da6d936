//! `[scorer]`: every weight and threshold. The defaults come from the domain brief.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// One API key seen from this many distinct client-IP hashes within one minute is shared.
    pub key_sharing_ips_per_minute: u64,
    /// Two accounts matching on this many of signup-IP hash, device id and browser signature.
    pub multi_account_matches: u32,
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
            multi_account_matches: 2,
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
    /// Accounts sharing the email domain, this one included (moderate).
    pub domain_accounts_at_least: u64,
    pub domain_points: u32,
    /// A score at or above this raises `pql`.
    pub qualified_at: u32,
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
    /// Auto-escalation: requests per minute sustained for `sustained_minutes`.
    pub escalation_rpm_over: u64,
    pub escalation_monthly_tokens_over: u64,
    pub escalation_regions_at_least: u64,
    /// Collision: reaching this stage within this many hours of signup, or a day-over-day jump.
    pub collision_stage: u32,
    pub collision_hours: f64,
    pub collision_jump: f64,
    /// Trajectory: days of steady growth.
    pub trajectory_days: usize,
    /// Power users: sessions this many times the population's median length, with diverse input.
    pub power_session_ratio_at_least: f64,
    pub power_limit_months: usize,
    /// Limit stages at or above this raise `limit_stage`.
    pub limit_signal_stage: u32,
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
            escalation_rpm_over: 5_000,
            escalation_monthly_tokens_over: 50_000_000,
            escalation_regions_at_least: 3,
            collision_stage: 85,
            collision_hours: 48.0,
            collision_jump: 3.0,
            trajectory_days: 7,
            power_session_ratio_at_least: 3.0,
            power_limit_months: 3,
            limit_signal_stage: 70,
            deal: DealConfig::default(),
            abuse: AbuseConfig::default(),
            pql: PqlConfig::default(),
            gates: GatesConfig::default(),
        }
    }
}
