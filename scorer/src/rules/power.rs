//! Power users: genuine heavy use, an upgrade target and never an abuser. An account is one when
//! it hit its monthly limit in each of the last 3 months, or when its sessions run at least 3×
//! the population's median length with diverse input.

use meterline_schemas::limits::{LimitMetric, LimitName, LimitWindow, TiersConfig};

use super::{median, Reason};
use crate::config::ScorerConfig;
use crate::facts::AccountFacts;
use crate::rules::abuse::input_diversity;

pub fn power_user(f: &AccountFacts, tiers: &TiersConfig, c: &ScorerConfig) -> Option<Reason> {
    let month_limit = crate::rules::proximity::profile(f)
        .limits(tiers.get(f.plan))
        .into_iter()
        .find(|(n, _)| {
            *n == LimitName {
                window: LimitWindow::Month,
                metric: LimitMetric::WeightedTokens,
            }
        })
        .map(|(_, v)| v)
        .filter(|v| *v > 0.0);
    if let Some(limit) = month_limit {
        let months = &f.previous_months_weighted;
        if months.len() >= c.power_limit_months
            && months[..c.power_limit_months].iter().all(|m| *m >= limit)
        {
            return Some(Reason {
                rule: "monthly_limit_hit_repeatedly".into(),
                points: 0,
                detail: format!(
                    "hit the monthly limit of {limit} weighted tokens in each of the last {} months",
                    c.power_limit_months
                ),
            });
        }
    }
    let diverse = input_diversity(f).is_some_and(|d| d >= c.abuse.input_diversity_under);
    let mut lengths: Vec<f64> = f
        .sessions_today
        .iter()
        .map(|s| (s.end - s.start).num_milliseconds() as f64 / 1000.0)
        .collect();
    if let (Some(own), Some(population)) = (median(&mut lengths), f.median_session_secs) {
        if diverse && population > 0.0 && own >= c.power_session_ratio_at_least * population {
            return Some(Reason {
                rule: "long_sessions".into(),
                points: 0,
                detail: format!(
                    "sessions of {own:.0} s, {:.1}× the median of {population:.0} s, with diverse input",
                    own / population
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::SessionSpan;
    use chrono::{Duration, Utc};

    #[test]
    fn three_months_at_the_limit() {
        let c = ScorerConfig::default();
        let t = TiersConfig::default();
        let mut f = AccountFacts::empty("a", Utc::now());
        f.previous_months_weighted = vec![2_000_000.0, 2_000_000.0, 1_999_999.0];
        assert!(power_user(&f, &t, &c).is_none());
        f.previous_months_weighted = vec![2_000_000.0, 2_500_000.0, 2_000_000.0];
        assert!(power_user(&f, &t, &c).is_some());
    }

    #[test]
    fn long_sessions_need_diverse_input() {
        let c = ScorerConfig::default();
        let t = TiersConfig::default();
        let mut f = AccountFacts::empty("a", Utc::now());
        f.median_session_secs = Some(100.0);
        f.sessions_today = vec![SessionSpan {
            session_id: "s".into(),
            start: f.now - Duration::seconds(300),
            end: f.now,
        }];
        f.prompts_today = 10;
        f.distinct_prompts_today = 9;
        assert!(power_user(&f, &t, &c).is_some());
        f.distinct_prompts_today = 1;
        assert!(power_user(&f, &t, &c).is_none());
        f.distinct_prompts_today = 9;
        f.sessions_today[0].start = f.now - Duration::seconds(299);
        assert!(power_user(&f, &t, &c).is_none());
    }
}
