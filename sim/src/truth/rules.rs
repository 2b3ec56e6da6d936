//! The parameters of the shared rule definitions, in one place: the values the scorer's
//! configuration defaults to, written down here a second time on purpose, so the ground truth
//! never reads the code under test.

use meterline_schemas::SignalKind;
use serde::Serialize;

/// The signal kinds the ground truth predicts, and `--check` holds to its thresholds.
pub const CHECKED: [SignalKind; 7] = [
    SignalKind::DealReady,
    SignalKind::Escalation,
    SignalKind::PluginGate,
    SignalKind::PowerUser,
    SignalKind::AbuseSuspected,
    SignalKind::KeySharing,
    SignalKind::MultiAccount,
];

/// Every parameter of the shared rule definitions (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rules {
    pub new_account_hours: f64,
    pub new_account_points: u32,
    pub machine_gap_secs: f64,
    pub machine_speed_points: u32,
    pub sessions_today_over: usize,
    pub sessions_today_points: u32,
    pub input_diversity_under: f64,
    pub low_diversity_points: u32,
    pub suspected_at: u32,

    pub monthly_tokens_over: u64,
    pub monthly_tokens_points: u32,
    pub regions_over: usize,
    pub regions_points: u32,
    pub plugins_desired_at_least: usize,
    pub plugins_desired_points: u32,
    pub team_size_over: u64,
    pub team_size_points: u32,
    pub company_size_over: u64,
    pub company_size_points: u32,
    pub deal_ready_above: u32,

    pub providers_7d_at_least: usize,
    pub pii_requests_7d_at_least: u64,
    pub clouds_7d_at_least: usize,

    pub escalation_rpm_over: u64,
    pub escalation_sustained_minutes: usize,
    pub escalation_monthly_tokens_over: u64,
    pub escalation_regions_at_least: usize,

    pub power_min_requests_30d: u64,
    pub power_session_ratio_at_least: f64,
    pub power_upgrade_views_30d: u64,
    /// "Top 5 %": fewer than this share of the plan's active accounts spend more.
    pub power_top_spend_share: f64,

    pub key_sharing_ips_per_minute: usize,
    /// A crowd's minute spans at least this many /24 networks...
    pub crowd_min_networks: usize,
    /// ...and the key's distinct addresses today are at least this many times the minute's.
    pub crowd_day_to_minute_ratio: f64,

    pub multi_account_matches: usize,
}

/// The shared definitions' values (issue 19 and the domain brief).
pub const RULES: Rules = Rules {
    new_account_hours: 2.0,
    new_account_points: 30,
    machine_gap_secs: 3.0,
    machine_speed_points: 25,
    sessions_today_over: 20,
    sessions_today_points: 25,
    input_diversity_under: 0.15,
    low_diversity_points: 20,
    suspected_at: 50,

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
    deal_ready_above: 70,

    providers_7d_at_least: 3,
    pii_requests_7d_at_least: 5,
    clouds_7d_at_least: 2,

    escalation_rpm_over: 5_000,
    escalation_sustained_minutes: 3,
    escalation_monthly_tokens_over: 50_000_000,
    escalation_regions_at_least: 3,

    power_min_requests_30d: 1_000,
    power_session_ratio_at_least: 3.0,
    power_upgrade_views_30d: 2,
    power_top_spend_share: 0.05,

    key_sharing_ips_per_minute: 5,
    crowd_min_networks: 3,
    crowd_day_to_minute_ratio: 3.0,

    multi_account_matches: 2,
};
