//! Plugin-gate triggers, soft rate-limit gating and the auto-escalation tags.
//!
//! A plugin gate sells the lowest plan that includes the plugin (`[tiers] plugins`,
//! [`TiersConfig::lowest_plan_including`]); when that is not above the account's plan (it has
//! the plugin already) or no plan includes it, there is nothing to sell and no trigger.

use chrono::{DateTime, Duration, Utc};
use meterline_schemas::limits::TiersConfig;
use meterline_schemas::Plan;
use serde::Serialize;

use crate::config::ScorerConfig;
use crate::facts::AccountFacts;

/// A plugin the account's usage says it would benefit from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginTrigger {
    pub plugin: String,
    pub trigger: String,
    pub message: String,
    pub evidence: String,
    /// The lowest plan that includes the plugin: the one to offer.
    pub plan: Plan,
}

pub fn plugin_triggers(
    f: &AccountFacts,
    tiers: &TiersConfig,
    c: &ScorerConfig,
) -> Vec<PluginTrigger> {
    let g = &c.gates;
    let mut out = Vec::new();
    let mut fire = |plugin: &str, evidence: String| {
        let offer = tiers.lowest_plan_including(plugin).filter(|p| *p > f.plan);
        if let (Some(gate), Some(plan)) = (g.plugins.get(plugin), offer) {
            out.push(PluginTrigger {
                plugin: plugin.into(),
                trigger: gate.trigger.clone(),
                message: gate.message.clone(),
                evidence,
                plan,
            });
        }
    };
    if f.providers_7d >= g.providers_7d_at_least {
        fire(
            "audit_logger",
            format!(
                "{} providers in 7 days (≥ {})",
                f.providers_7d, g.providers_7d_at_least
            ),
        );
    }
    if f.pii_requests_7d >= g.pii_requests_7d_at_least {
        fire(
            "guardrails",
            format!(
                "PII in {} requests in 7 days (≥ {})",
                f.pii_requests_7d, g.pii_requests_7d_at_least
            ),
        );
    }
    if f.clouds_7d >= g.clouds_7d_at_least {
        fire(
            "multi_cloud_router",
            format!(
                "{} clouds in 7 days (≥ {})",
                f.clouds_7d, g.clouds_7d_at_least
            ),
        );
    }
    out
}

/// A run of minutes over a per-minute limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateRun {
    pub start: DateTime<Utc>,
    /// The last minute over the limit.
    pub last_over: DateTime<Utc>,
    pub minutes_over: u32,
    pub peak_rpm: u64,
}

/// The latest run of at least `c.sustained_minutes` consecutive minutes above `limit` requests
/// (missing minutes count as zero). Runs separated by fewer than `c.episode_quiet_minutes`
/// quiet minutes are one episode: the run starts where that episode started.
pub fn sustained_run(f: &AccountFacts, limit: f64, c: &ScorerConfig) -> Option<RateRun> {
    if limit < 0.0 {
        return None;
    }
    let over: Vec<(DateTime<Utc>, u64)> = f
        .minutes
        .iter()
        .filter(|(_, n)| *n as f64 > limit)
        .copied()
        .collect();
    // Group consecutive minutes into runs.
    let mut runs: Vec<RateRun> = Vec::new();
    for (m, n) in over {
        match runs.last_mut() {
            Some(r) if m - r.last_over == Duration::minutes(1) => {
                r.last_over = m;
                r.minutes_over += 1;
                r.peak_rpm = r.peak_rpm.max(n);
            }
            _ => runs.push(RateRun {
                start: m,
                last_over: m,
                minutes_over: 1,
                peak_rpm: n,
            }),
        }
    }
    // Join qualifying runs into episodes, keep the latest.
    let mut episode: Option<RateRun> = None;
    for r in runs
        .into_iter()
        .filter(|r| r.minutes_over >= c.sustained_minutes)
    {
        episode = match episode {
            Some(e)
                if r.start - e.last_over <= Duration::minutes(c.episode_quiet_minutes as i64) =>
            {
                Some(RateRun {
                    start: e.start,
                    last_over: r.last_over,
                    minutes_over: e.minutes_over + r.minutes_over,
                    peak_rpm: e.peak_rpm.max(r.peak_rpm),
                })
            }
            _ => Some(r),
        };
    }
    episode
}

/// The brief's auto-escalation thresholds, as tags.
pub fn escalation_tags(f: &AccountFacts, c: &ScorerConfig) -> Vec<String> {
    let mut tags = Vec::new();
    if let Some(r) = sustained_run(f, c.escalation_rpm_over as f64, c) {
        tags.push(format!(
            "sustained_over_{}_rpm (peak {})",
            c.escalation_rpm_over, r.peak_rpm
        ));
    }
    if f.month_raw_tokens > c.escalation_monthly_tokens_over {
        tags.push(format!(
            "over_{}_tokens_this_month",
            c.escalation_monthly_tokens_over
        ));
    }
    if f.month_regions.len() as u64 >= c.escalation_regions_at_least {
        tags.push(format!("{}_plus_regions", c.escalation_regions_at_least));
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn minutes(counts: &[u64]) -> AccountFacts {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let mut f = AccountFacts::empty("a", t0 + Duration::minutes(counts.len() as i64));
        f.minutes = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (t0 + Duration::minutes(i as i64), *n))
            .collect();
        f
    }

    #[test]
    fn three_minutes_over_is_sustained_two_is_not() {
        let c = ScorerConfig::default();
        assert!(sustained_run(&minutes(&[150, 150, 90, 150]), 100.0, &c).is_none());
        let r = sustained_run(&minutes(&[90, 150, 101, 200, 90]), 100.0, &c).unwrap();
        assert_eq!((r.minutes_over, r.peak_rpm), (3, 200));
        // Exactly at the limit is not over it.
        assert!(sustained_run(&minutes(&[100, 100, 100]), 100.0, &c).is_none());
        // Unlimited never is.
        assert!(sustained_run(&minutes(&[1_000_000; 5]), -1.0, &c).is_none());
    }

    #[test]
    fn an_episode_ends_after_ten_quiet_minutes() {
        let c = ScorerConfig::default();
        // Over 3, quiet 9, over 3: one episode starting at minute 0.
        let mut v = vec![200; 3];
        v.extend([0; 9]);
        v.extend([200; 3]);
        let r = sustained_run(&minutes(&v), 100.0, &c).unwrap();
        assert_eq!(r.start, minutes(&v).minutes[0].0);
        assert_eq!(r.minutes_over, 6);
        // Quiet 10 (11 minutes between the runs' ends and starts): a new episode.
        let mut v = vec![200; 3];
        v.extend([0; 10]);
        v.extend([200; 3]);
        let f = minutes(&v);
        let r = sustained_run(&f, 100.0, &c).unwrap();
        assert_eq!(r.start, f.minutes[13].0);
    }

    #[test]
    fn plugin_triggers_at_their_boundaries() {
        let c = ScorerConfig::default();
        let mut f = AccountFacts::empty("a", Utc::now());
        let t = TiersConfig::default();
        f.providers_7d = 2;
        f.pii_requests_7d = 4;
        f.clouds_7d = 1;
        assert!(plugin_triggers(&f, &t, &c).is_empty());
        f.providers_7d = 3;
        f.pii_requests_7d = 5;
        f.clouds_7d = 2;
        let fired: Vec<_> = plugin_triggers(&f, &t, &c)
            .into_iter()
            .map(|t| (t.plugin, t.trigger, t.plan))
            .collect();
        assert_eq!(
            fired,
            vec![
                (
                    "audit_logger".into(),
                    "multi_model_routing_detected".into(),
                    Plan::Enterprise
                ),
                (
                    "guardrails".into(),
                    "pii_detected_in_prompts".into(),
                    Plan::Enterprise
                ),
                (
                    "multi_cloud_router".into(),
                    "cross_cloud_traffic_detected".into(),
                    Plan::Enterprise
                ),
            ]
        );
    }

    /// A gate offers the lowest plan including the plugin, and only when that is above the
    /// account's plan. (plan, plans including guardrails, expected offer)
    #[test]
    fn a_plugin_the_plan_includes_is_no_gate() {
        let c = ScorerConfig::default();
        let cases: [(Plan, &[Plan], Option<Plan>); 7] = [
            (Plan::Free, &[Plan::Enterprise], Some(Plan::Enterprise)),
            (Plan::Pro, &[Plan::Enterprise], Some(Plan::Enterprise)),
            (Plan::Enterprise, &[Plan::Enterprise], None),
            (Plan::Free, &[Plan::Pro, Plan::Enterprise], Some(Plan::Pro)),
            (Plan::Pro, &[Plan::Pro, Plan::Enterprise], None),
            (Plan::Free, &[Plan::Free, Plan::Pro], None),
            (Plan::Free, &[], None),
        ];
        for (plan, including, want) in cases {
            let mut t = TiersConfig::default();
            for p in [Plan::Free, Plan::Pro, Plan::Enterprise] {
                let tier = match p {
                    Plan::Free => &mut t.free,
                    Plan::Pro => &mut t.pro,
                    Plan::Enterprise => &mut t.enterprise,
                };
                tier.plugins.retain(|x| x != "guardrails");
                if including.contains(&p) {
                    tier.plugins.push("guardrails".into());
                }
            }
            let mut f = AccountFacts::empty("a", Utc::now());
            f.plan = plan;
            f.pii_requests_7d = 5;
            let got: Vec<_> = plugin_triggers(&f, &t, &c)
                .into_iter()
                .map(|t| t.plan)
                .collect();
            assert_eq!(
                got,
                want.into_iter().collect::<Vec<_>>(),
                "{plan} {including:?}"
            );
        }
    }

    /// (minutes of 5,001 requests, tokens this month, regions, expected tags)
    #[test]
    fn escalation_tags_at_their_boundaries() {
        let c = ScorerConfig::default();
        let cases: [(&[u64], u64, usize, &[&str]); 6] = [
            (&[5_001, 5_001], 0, 0, &[]),
            (&[5_000, 5_000, 5_000], 0, 0, &[]),
            (
                &[5_001, 5_001, 5_001],
                0,
                0,
                &["sustained_over_5000_rpm (peak 5001)"],
            ),
            (&[], 50_000_000, 2, &[]),
            (&[], 50_000_001, 0, &["over_50000000_tokens_this_month"]),
            (&[], 0, 3, &["3_plus_regions"]),
        ];
        for (rpm, tokens, regions, want) in cases {
            let mut f = minutes(rpm);
            f.month_raw_tokens = tokens;
            f.month_regions = (0..regions).map(|i| format!("r{i}")).collect();
            assert_eq!(escalation_tags(&f, &c), want, "{rpm:?} {tokens} {regions}");
        }
    }
}
