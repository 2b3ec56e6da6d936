//! Limit proximity: every limit's ratio and stage, the shape of the approach, and the time left
//! at the current pace.
//!
//! * `collision`: the account reached the collision stage (85 %) within 48 hours of signing up,
//!   or its daily usage jumped more than 3× day over day in the last week.
//! * `trajectory`: usage on each of the last 7 complete days, trending up (the last three days
//!   above the first three, and a positive least-squares slope).

use meterline_schemas::limits::{
    limit_statuses, AccountProfile, LimitMetric, LimitStatus, LimitWindow, QuotaConfig, TiersConfig,
};
use serde::Serialize;

use crate::config::ScorerConfig;
use crate::facts::AccountFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApproachShape {
    Trajectory,
    Collision,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitProximity {
    #[serde(flatten)]
    pub status: LimitStatus,
    /// For limits at a stage: how the account got there.
    pub shape: Option<ApproachShape>,
    /// Hours until the limit at the last 7 days' pace (month limits, not yet reached).
    pub hours_to_limit: Option<f64>,
}

pub fn profile(f: &AccountFacts) -> AccountProfile {
    AccountProfile {
        plan: f.plan,
        overrides: f.overrides.clone(),
        review: None,
    }
}

/// The weighted tokens of the last 7 complete days, oldest first.
fn last_complete_week(f: &AccountFacts) -> &[crate::facts::DayUsage] {
    let n = f.daily.len();
    if n < 8 {
        return &[];
    }
    &f.daily[n - 8..n - 1]
}

pub fn shape(
    f: &AccountFacts,
    statuses: &[LimitStatus],
    c: &ScorerConfig,
) -> Option<ApproachShape> {
    let young = f.age_hours().is_some_and(|h| h <= c.collision_hours);
    let at_collision_stage = statuses
        .iter()
        .any(|s| s.stage.is_some_and(|st| st >= c.collision_stage));
    let n = f.daily.len();
    let recent = &f.daily[n.saturating_sub(7)..];
    let jumped = recent.windows(2).any(|w| {
        w[0].weighted_tokens > 0.0 && w[1].weighted_tokens > c.collision_jump * w[0].weighted_tokens
    });
    if (young && at_collision_stage) || jumped {
        return Some(ApproachShape::Collision);
    }
    let week = last_complete_week(f);
    if week.len() >= c.trajectory_days && week.iter().all(|d| d.weighted_tokens > 0.0) {
        let y: Vec<f64> = week.iter().map(|d| d.weighted_tokens).collect();
        let k = y.len() as f64;
        let mean_x = (k - 1.0) / 2.0;
        let mean_y = y.iter().sum::<f64>() / k;
        let slope: f64 = y
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 - mean_x) * (v - mean_y))
            .sum();
        let first: f64 = y[..3].iter().sum();
        let last: f64 = y[y.len() - 3..].iter().sum();
        if slope > 0.0 && last > first {
            return Some(ApproachShape::Trajectory);
        }
    }
    None
}

fn pace_per_day(f: &AccountFacts, metric: LimitMetric) -> Option<f64> {
    let week = last_complete_week(f);
    if week.is_empty() {
        return None;
    }
    let total: f64 = week
        .iter()
        .map(|d| match metric {
            LimitMetric::Requests => d.requests as f64,
            LimitMetric::WeightedTokens => d.weighted_tokens,
            _ => 0.0,
        })
        .sum();
    (total > 0.0).then(|| total / week.len() as f64)
}

pub fn proximity(
    f: &AccountFacts,
    quota: &QuotaConfig,
    tiers: &TiersConfig,
    c: &ScorerConfig,
) -> Vec<LimitProximity> {
    let tier = tiers.get(f.plan);
    let snapshot = f.raw.snapshot(quota, tier, f.now);
    let statuses = limit_statuses(quota, tier, &profile(f), &snapshot, false, f.now);
    let shape = shape(f, &statuses, c);
    statuses
        .into_iter()
        .filter(|s| s.window != LimitWindow::Session)
        .map(|s| {
            let hours_to_limit = match (s.window, s.used) {
                (LimitWindow::Month, Some(used)) if s.limit > 0.0 && used < s.limit => {
                    pace_per_day(f, s.metric).map(|p| (s.limit - used) / p * 24.0)
                }
                _ => None,
            }
            .map(|h| (h * 10.0).round() / 10.0);
            LimitProximity {
                shape: s.stage.and(shape),
                hours_to_limit,
                status: s,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::DayUsage;
    use chrono::{Duration, Utc};

    fn with_days(weighted: &[f64]) -> AccountFacts {
        let mut f = AccountFacts::empty("a", Utc::now());
        f.daily = weighted
            .iter()
            .map(|w| DayUsage {
                weighted_tokens: *w,
                requests: *w as u64,
                ..DayUsage::default()
            })
            .collect();
        f
    }

    fn at_stage(stage: u32) -> Vec<LimitStatus> {
        vec![LimitStatus {
            name: "month_weighted_tokens".into(),
            window: LimitWindow::Month,
            metric: LimitMetric::WeightedTokens,
            used: Some(0.0),
            limit: 1.0,
            ratio: Some(0.0),
            stage: Some(stage),
            resets_at: None,
        }]
    }

    #[test]
    fn shapes() {
        let c = ScorerConfig::default();
        // Steady growth over 7 complete days (today last): trajectory.
        let f = with_days(&[10.0, 11.0, 12.0, 14.0, 15.0, 17.0, 19.0, 5.0]);
        assert_eq!(
            shape(&f, &at_stage(70), &c),
            Some(ApproachShape::Trajectory)
        );
        // Flat: nothing.
        let f = with_days(&[10.0; 8]);
        assert_eq!(shape(&f, &at_stage(70), &c), None);
        // A 3× jump is not more than 3×; 3.01× is a collision.
        let f = with_days(&[10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 30.0]);
        assert_eq!(shape(&f, &at_stage(70), &c), None);
        let f = with_days(&[10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 30.1]);
        assert_eq!(shape(&f, &at_stage(70), &c), Some(ApproachShape::Collision));
        // 85 % within 48 h of signup: collision; 70 % is not enough, nor is 49 h.
        let mut f = with_days(&[0.0; 8]);
        f.signed_up_at = Some(f.now - Duration::hours(47));
        assert_eq!(shape(&f, &at_stage(85), &c), Some(ApproachShape::Collision));
        assert_eq!(shape(&f, &at_stage(70), &c), None);
        f.signed_up_at = Some(f.now - Duration::hours(49));
        assert_eq!(shape(&f, &at_stage(85), &c), None);
    }
}
