//! Deal readiness, exactly the brief's formula, capped at 100:
//! +30 monthly tokens > 50M, +20 regions > 2, +25 plugins desired ≥ 2, +15 team size > 20,
//! +10 company size > 100.

use super::Score;
use crate::config::DealConfig;
use crate::facts::AccountFacts;

pub fn deal_readiness(f: &AccountFacts, plugins_desired: u64, c: &DealConfig) -> Score {
    let mut s = Score::default();
    if f.month_raw_tokens > c.monthly_tokens_over {
        s.add(
            "monthly_tokens",
            c.monthly_tokens_points,
            format!(
                "{} tokens this month (> {})",
                f.month_raw_tokens, c.monthly_tokens_over
            ),
        );
    }
    let regions = f.month_regions.len() as u64;
    if regions > c.regions_over {
        s.add(
            "regions",
            c.regions_points,
            format!(
                "{regions} regions this month (> {}): {}",
                c.regions_over,
                f.month_regions
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if plugins_desired >= c.plugins_desired_at_least {
        s.add(
            "plugins_desired",
            c.plugins_desired_points,
            format!(
                "{plugins_desired} plugins desired (≥ {})",
                c.plugins_desired_at_least
            ),
        );
    }
    let team = f.team_size();
    if team > c.team_size_over {
        s.add(
            "team_size",
            c.team_size_points,
            format!(
                "team of {team} (> {}; larger of {} seats and {} users in 30 days)",
                c.team_size_over,
                f.seats.unwrap_or(0),
                f.users_30d
            ),
        );
    }
    if let Some(size) = f.company_size.filter(|s| *s > c.company_size_over) {
        s.add(
            "company_size",
            c.company_size_points,
            format!("company of {size} (> {})", c.company_size_over),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn facts() -> AccountFacts {
        AccountFacts::empty("a", Utc::now())
    }

    #[test]
    fn each_rule_at_its_boundary() {
        let c = DealConfig::default();
        // (setup, plugins desired, expected score)
        type Setup = fn(&mut AccountFacts);
        let cases: Vec<(&str, Setup, u64, u32)> = vec![
            ("nothing", |_| {}, 0, 0),
            (
                "exactly 50M tokens",
                |f| f.month_raw_tokens = 50_000_000,
                0,
                0,
            ),
            ("50M + 1 tokens", |f| f.month_raw_tokens = 50_000_001, 0, 30),
            (
                "2 regions",
                |f| f.month_regions = ["a", "b"].map(String::from).into(),
                0,
                0,
            ),
            (
                "3 regions",
                |f| f.month_regions = ["a", "b", "c"].map(String::from).into(),
                0,
                20,
            ),
            ("1 plugin desired", |_| {}, 1, 0),
            ("2 plugins desired", |_| {}, 2, 25),
            ("20 seats", |f| f.seats = Some(20), 0, 0),
            ("21 seats", |f| f.seats = Some(21), 0, 15),
            (
                "21 users, 3 seats",
                |f| {
                    f.seats = Some(3);
                    f.users_30d = 21
                },
                0,
                15,
            ),
            ("company of 100", |f| f.company_size = Some(100), 0, 0),
            ("company of 101", |f| f.company_size = Some(101), 0, 10),
        ];
        for (name, setup, plugins, want) in cases {
            let mut f = facts();
            setup(&mut f);
            let s = deal_readiness(&f, plugins, &c);
            assert_eq!(s.value, want, "{name}");
            assert_eq!(
                s.reasons.iter().map(|r| r.points).sum::<u32>(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn everything_at_once_is_capped_at_100() {
        let mut f = facts();
        f.month_raw_tokens = 60_000_000;
        f.month_regions = ["a", "b", "c"].map(String::from).into();
        f.seats = Some(30);
        f.company_size = Some(500);
        let s = deal_readiness(&f, 3, &DealConfig::default());
        assert_eq!(s.value, 100);
        assert_eq!(s.reasons.len(), 5);
    }
}
