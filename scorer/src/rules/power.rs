//! Power users: genuine heavy use, an upgrade target and never an abuser.
//!
//! An account is one when it has real volume (at least `power_min_requests_30d` requests in
//! the last 30 days, 1,000 by default: a light account never qualifies, however long its
//! sessions) and any of:
//!
//! | rule | default |
//! |---|---|
//! | `monthly_limit_hit_repeatedly`: the monthly limit reached in each of the last months | 3 months |
//! | `long_sessions`: today's median session this many times the population's, with diverse input | 3×, diversity ≥ 0.15 |
//! | `upgrade_page_views`: `upgrade_page_viewed` account events in 30 days | 2 |
//! | `top_spend`: 30-day spend in the top share of active accounts on the same plan, while the abuse score is below the suspected threshold | top 5 % |
//!
//! The first rule that holds is the reason given. A power user is never suspected of abuse
//! (see [`crate::score::score`]).

use meterline_schemas::limits::{LimitMetric, LimitName, LimitWindow, TiersConfig};

use super::{median, Reason, Score};
use crate::config::ScorerConfig;
use crate::facts::AccountFacts;
use crate::rules::abuse::input_diversity;

pub fn power_user(
    f: &AccountFacts,
    tiers: &TiersConfig,
    c: &ScorerConfig,
    abuse: &Score,
) -> Option<Reason> {
    let volume = f.requests_30d();
    if volume < c.power_min_requests_30d {
        return None;
    }
    let reason = |rule: &str, detail: String| Reason {
        rule: rule.into(),
        points: 0,
        detail: format!(
            "{detail}; {volume} requests in 30 days (≥ {})",
            c.power_min_requests_30d
        ),
    };
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
        if c.power_limit_months > 0
            && months.len() >= c.power_limit_months
            && months[..c.power_limit_months].iter().all(|m| *m >= limit)
        {
            return Some(reason(
                "monthly_limit_hit_repeatedly",
                format!(
                    "hit the monthly limit of {limit} weighted tokens in each of the last {} months",
                    c.power_limit_months
                ),
            ));
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
            return Some(reason(
                "long_sessions",
                format!(
                    "sessions of {own:.0} s, {:.1}× the median of {population:.0} s, with diverse input",
                    own / population
                ),
            ));
        }
    }
    if c.power_upgrade_views_at_least > 0 && f.upgrade_views_30d >= c.power_upgrade_views_at_least {
        return Some(reason(
            "upgrade_page_views",
            format!(
                "viewed the upgrade page {} times in 30 days (≥ {})",
                f.upgrade_views_30d, c.power_upgrade_views_at_least
            ),
        ));
    }
    let spend = f.spend_30d_micros();
    if let Some(top) = f.plan_spend_top_micros {
        if spend > 0 && spend >= top && abuse.value < c.abuse.suspected_at {
            return Some(reason(
                "top_spend",
                format!(
                    "spent {spend} µ$ in 30 days, in the top {:.0} % of active {} accounts (≥ {top}), abuse score {} (< {})",
                    c.power_spend_top_share * 100.0,
                    f.plan,
                    abuse.value,
                    c.abuse.suspected_at
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{DayUsage, SessionSpan};
    use chrono::{Duration, TimeZone, Utc};

    /// `requests` spread over the 30 days, with `cost` micro-dollars in all.
    fn volume(f: &mut AccountFacts, requests: u64, cost: u64) {
        f.daily = (0..30)
            .map(|i| DayUsage {
                day: f.now - Duration::days(29 - i),
                requests: requests / 30 + u64::from((i as u64) < requests % 30),
                cost_micros: cost / 30 + u64::from((i as u64) < cost % 30),
                ..DayUsage::default()
            })
            .collect();
    }

    fn long_sessions(f: &mut AccountFacts, secs: i64) {
        f.median_session_secs = Some(100.0);
        f.sessions_today = vec![SessionSpan {
            session_id: "s".into(),
            start: f.now - Duration::seconds(secs),
            end: f.now,
        }];
        f.prompts_today = 100;
        f.distinct_prompts_today = 15;
    }

    fn abuse(points: u32) -> Score {
        let mut s = Score::default();
        if points > 0 {
            s.add("x", points, String::new());
        }
        s
    }

    /// Each rule one unit either side of its boundary, and the volume floor under each.
    #[test]
    fn each_rule_at_its_boundary() {
        let c = ScorerConfig::default();
        let t = TiersConfig::default();
        type Setup = fn(&mut AccountFacts);
        // (name, setup, abuse score, expected rule)
        let cases: Vec<(&str, Setup, u32, Option<&str>)> = vec![
            ("heavy, nothing else", |f| volume(f, 5_000, 0), 0, None),
            (
                "limit hit 3 months, one a token short",
                |f| {
                    volume(f, 1_000, 0);
                    f.previous_months_weighted = vec![2_000_000.0, 2_000_000.0, 1_999_999.0]
                },
                0,
                None,
            ),
            (
                "limit hit 3 months",
                |f| {
                    volume(f, 1_000, 0);
                    f.previous_months_weighted = vec![2_000_000.0, 2_500_000.0, 2_000_000.0]
                },
                0,
                Some("monthly_limit_hit_repeatedly"),
            ),
            (
                "limit hit 3 months, 999 requests",
                |f| {
                    volume(f, 999, 0);
                    f.previous_months_weighted = vec![2_000_000.0; 3]
                },
                0,
                None,
            ),
            (
                "sessions 3× the median",
                |f| {
                    volume(f, 1_000, 0);
                    long_sessions(f, 300)
                },
                0,
                Some("long_sessions"),
            ),
            (
                "sessions 2.99× the median",
                |f| {
                    volume(f, 1_000, 0);
                    long_sessions(f, 299)
                },
                0,
                None,
            ),
            (
                "long sessions, diversity 0.14",
                |f| {
                    volume(f, 1_000, 0);
                    long_sessions(f, 300);
                    f.distinct_prompts_today = 14
                },
                0,
                None,
            ),
            (
                "12 requests in long sessions (misfire 6)",
                |f| {
                    volume(f, 12, 0);
                    long_sessions(f, 3_000)
                },
                0,
                None,
            ),
            (
                "2 upgrade page views",
                |f| {
                    volume(f, 1_000, 0);
                    f.upgrade_views_30d = 2
                },
                0,
                Some("upgrade_page_views"),
            ),
            (
                "1 upgrade page view",
                |f| {
                    volume(f, 1_000, 0);
                    f.upgrade_views_30d = 1
                },
                0,
                None,
            ),
            (
                "2 upgrade page views, 999 requests",
                |f| {
                    volume(f, 999, 0);
                    f.upgrade_views_30d = 2
                },
                0,
                None,
            ),
            (
                "spend at the plan's top-5 % line",
                |f| {
                    volume(f, 1_000, 9_000);
                    f.plan_spend_top_micros = Some(9_000)
                },
                49,
                Some("top_spend"),
            ),
            (
                "spend a micro-dollar under the line",
                |f| {
                    volume(f, 1_000, 8_999);
                    f.plan_spend_top_micros = Some(9_000)
                },
                0,
                None,
            ),
            (
                "top spend with a suspected abuse score",
                |f| {
                    volume(f, 1_000, 9_000);
                    f.plan_spend_top_micros = Some(9_000)
                },
                50,
                None,
            ),
            (
                "nothing spent on a plan where nobody spends",
                |f| {
                    volume(f, 1_000, 0);
                    f.plan_spend_top_micros = Some(0)
                },
                0,
                None,
            ),
        ];
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        for (name, setup, abuse_points, want) in cases {
            let mut f = AccountFacts::empty("a", now);
            setup(&mut f);
            let got = power_user(&f, &t, &c, &abuse(abuse_points));
            assert_eq!(
                got.as_ref().map(|r| r.rule.as_str()),
                want,
                "{name}: {got:?}"
            );
            if let Some(r) = got {
                assert!(r.detail.contains("requests in 30 days"), "{name}: {r:?}");
            }
        }
    }
}
