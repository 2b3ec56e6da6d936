//! The product-qualified-lead score, from the brief's signal table:
//!
//! | signal | strength | default points |
//! |---|---|---|
//! | any limit at 80 % or more | very strong | 40 |
//! | a feature gate hit 3+ times (requests naming a gated plugin, 30 days) | strong | 25 |
//! | requests growing > 20 % week over week | strong | 20 |
//! | several accounts of one email domain (3+) | moderate | 15 |
//!
//! A public email domain (`gmail.com`, …; `[accounts] public_domains`) is not a company: its
//! accounts are never rolled up and never get the domain points ([`crate::score`] notes why).

use super::Score;
use crate::config::PqlConfig;
use crate::facts::AccountFacts;

/// Requests in the last 7 days against the 7 before, as growth (0.25 = +25 %); `None` without a
/// previous week to compare with.
pub fn weekly_growth(f: &AccountFacts) -> Option<f64> {
    let n = f.daily.len();
    if n < 14 {
        return None;
    }
    let this: u64 = f.daily[n - 7..].iter().map(|d| d.requests).sum();
    let last: u64 = f.daily[n - 14..n - 7].iter().map(|d| d.requests).sum();
    (last > 0).then(|| (this as f64 - last as f64) / last as f64)
}

/// `max_ratio`: the highest ratio over the account's finite limits, with its limit's name.
pub fn pql(f: &AccountFacts, max_ratio: Option<(f64, &str)>, c: &PqlConfig) -> Score {
    let mut s = Score::default();
    if let Some((r, name)) = max_ratio.filter(|(r, _)| *r >= c.limit_ratio_at_least) {
        s.add(
            "limit_proximity",
            c.limit_points,
            format!(
                "{name} at {:.0} % (≥ {:.0} %)",
                r * 100.0,
                c.limit_ratio_at_least * 100.0
            ),
        );
    }
    if f.gate_hits_30d >= c.gate_hits_at_least {
        s.add(
            "feature_gate_hits",
            c.gate_points,
            format!(
                "{} requests for gated plugins in 30 days (≥ {})",
                f.gate_hits_30d, c.gate_hits_at_least
            ),
        );
    }
    if let Some(g) = weekly_growth(f).filter(|g| *g > c.weekly_growth_over) {
        s.add(
            "weekly_growth",
            c.growth_points,
            format!(
                "requests up {:.0} % week over week (> {:.0} %)",
                g * 100.0,
                c.weekly_growth_over * 100.0
            ),
        );
    }
    if f.domain_accounts >= c.domain_accounts_at_least && !f.email_domain_public {
        s.add(
            "email_domain",
            c.domain_points,
            format!(
                "{} accounts share the email domain {} (≥ {})",
                f.domain_accounts,
                f.email_domain.as_deref().unwrap_or("?"),
                c.domain_accounts_at_least
            ),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::DayUsage;
    use chrono::Utc;

    fn days(requests: &[u64]) -> Vec<DayUsage> {
        requests
            .iter()
            .map(|r| DayUsage {
                requests: *r,
                ..DayUsage::default()
            })
            .collect()
    }

    #[test]
    fn each_signal_at_its_boundary() {
        let c = PqlConfig::default();
        let f = AccountFacts::empty("a", Utc::now());
        assert_eq!(pql(&f, Some((0.7999, "x")), &c).value, 0);
        assert_eq!(pql(&f, Some((0.80, "x")), &c).value, 40);
        let mut f = AccountFacts::empty("a", Utc::now());
        f.gate_hits_30d = 2;
        assert_eq!(pql(&f, None, &c).value, 0);
        f.gate_hits_30d = 3;
        assert_eq!(pql(&f, None, &c).value, 25);
        let mut f = AccountFacts::empty("a", Utc::now());
        // 100 a day, then 120 a day: exactly +20 % is not more than 20 %.
        f.daily = days(&[[100; 7], [120; 7]].concat());
        assert_eq!(pql(&f, None, &c).value, 0);
        f.daily = days(&[[100; 7], [121; 7]].concat());
        assert_eq!(pql(&f, None, &c).value, 20);
        let mut f = AccountFacts::empty("a", Utc::now());
        f.domain_accounts = 2;
        assert_eq!(pql(&f, None, &c).value, 0);
        f.domain_accounts = 3;
        assert_eq!(pql(&f, None, &c).value, 15);
        // A public domain never counts, however many share it.
        f.email_domain = Some("gmail.com".into());
        f.email_domain_public = true;
        f.domain_accounts = 300;
        assert_eq!(pql(&f, None, &c).value, 0);
    }
}
