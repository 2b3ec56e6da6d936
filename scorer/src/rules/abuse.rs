//! Abuse: the brief's four signals and their weights (new account 30, machine-speed timing 25,
//! more than 20 sessions today 25, templated input 20; 50 or more is suspected abuse), and the
//! two checks that stand on their own: a shared API key and multi-accounting.
//!
//! ## A shared key: a crowd, not a fleet
//!
//! One API key seen from `key_sharing_ips_per_minute` (5) or more client IPs within a minute
//! is only a *candidate*: a customer's backend (8 pods behind one key) looks exactly like that
//! too. What tells them apart is how the addresses behave over time:
//!
//! | | distinct IPs over 24 h ÷ distinct IPs in the minute (churn) |
//! |---|---|
//! | a fleet: the same servers all day | about 1 (a redeploy or two: 2) |
//! | a crowd: unrelated people who come and go | well above 1 |
//!
//! So a candidate is sharing when its churn is at least `key_sharing_churn_at_least` (3.0): a
//! fleet would have to replace every address three times in a day. The events carry what this
//! needs (`client_ip_hash`, `api_key_id`, `occurred_at`), so no schema change. Distinct devices
//! and sessions on the key over the day go with the evidence, for a person, but do not decide:
//! a crowd of API clients sends no device id, and pods may each send one.
//!
//! Evidence we do not have: how many *networks* the addresses come from. Client IPs are
//! HMAC-hashed whole at ingest, so two addresses of one /24 (or one cloud provider's range)
//! cannot be told from two addresses on different continents. A network-level field (say a
//! hash of the /24 or /48 prefix, or the ASN, computed at ingest) would let a crowd that stays
//! all day be caught too; that is a usage-event schema change, left for a later issue.
//!
//! Plan scope (which accounts these watch) is applied in [`crate::score`]: by default abuse,
//! key sharing and multi-accounting watch the free tier only.

use super::{median, Score};
use crate::config::AbuseConfig;
use crate::facts::{AccountFacts, FingerprintMatch, KeyMinute};

/// The median gap between consecutive session starts today, in seconds.
pub fn median_session_gap(f: &AccountFacts) -> Option<f64> {
    let mut starts: Vec<i64> = f
        .sessions_today
        .iter()
        .map(|s| s.start.timestamp_millis())
        .collect();
    starts.sort_unstable();
    let mut gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1000.0)
        .collect();
    median(&mut gaps)
}

/// Distinct prompt hashes over requests carrying one, today.
pub fn input_diversity(f: &AccountFacts) -> Option<f64> {
    (f.prompts_today > 0).then(|| f.distinct_prompts_today as f64 / f.prompts_today as f64)
}

pub fn abuse_score(f: &AccountFacts, c: &AbuseConfig) -> Score {
    let mut s = Score::default();
    if let Some(age) = f.age_hours().filter(|a| *a < c.new_account_hours) {
        s.add(
            "new_account",
            c.new_account_points,
            format!("signed up {age:.2} h ago (< {} h)", c.new_account_hours),
        );
    }
    if let Some(gap) = median_session_gap(f).filter(|g| *g < c.machine_gap_secs) {
        s.add(
            "machine_speed",
            c.machine_speed_points,
            format!(
                "median gap between sessions {gap:.2} s (< {} s)",
                c.machine_gap_secs
            ),
        );
    }
    let sessions = f.sessions_today.len() as u64;
    if sessions > c.sessions_today_over {
        s.add(
            "burst_sessions",
            c.sessions_today_points,
            format!("{sessions} sessions today (> {})", c.sessions_today_over),
        );
    }
    if let Some(d) = input_diversity(f).filter(|d| *d < c.input_diversity_under) {
        s.add(
            "low_input_diversity",
            c.low_diversity_points,
            format!(
                "input diversity {d:.3} ({} distinct prompts / {} requests; < {})",
                f.distinct_prompts_today, f.prompts_today, c.input_diversity_under
            ),
        );
    }
    s
}

pub fn is_suspected(score: &Score, c: &AbuseConfig) -> bool {
    score.value >= c.suspected_at
}

/// Distinct client IPs on the key over the last 24 hours per distinct IP in the minute: about
/// 1 for a fleet, much more for a crowd.
pub fn ip_churn(k: &KeyMinute) -> f64 {
    k.ips_24h.max(k.distinct_ips) as f64 / k.distinct_ips.max(1) as f64
}

fn candidates<'a>(f: &'a AccountFacts, c: &'a AbuseConfig) -> impl Iterator<Item = &'a KeyMinute> {
    f.shared_keys
        .iter()
        .filter(|k| k.distinct_ips >= c.key_sharing_ips_per_minute)
}

/// API keys used by a crowd: many client IPs within one minute, and addresses that come and go.
pub fn shared_keys(f: &AccountFacts, c: &AbuseConfig) -> Vec<KeyMinute> {
    candidates(f, c)
        .filter(|k| ip_churn(k) >= c.key_sharing_churn_at_least)
        .cloned()
        .collect()
}

/// API keys used from many client IPs within one minute that keep their addresses: a fleet.
pub fn fleet_keys(f: &AccountFacts, c: &AbuseConfig) -> Vec<KeyMinute> {
    candidates(f, c)
        .filter(|k| ip_churn(k) < c.key_sharing_churn_at_least)
        .cloned()
        .collect()
}

/// Accounts matching on enough fingerprint signals; one signal alone never counts.
pub fn multi_accounts(f: &AccountFacts, c: &AbuseConfig) -> Vec<FingerprintMatch> {
    f.fingerprint_matches
        .iter()
        .filter(|m| m.signals.len() as u32 >= c.multi_account_matches.max(2))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::SessionSpan;
    use chrono::{Duration, Utc};

    fn sessions(f: &mut AccountFacts, n: usize, gap_ms: i64) {
        let t0 = f.now - Duration::hours(3);
        f.sessions_today = (0..n)
            .map(|i| SessionSpan {
                session_id: format!("s{i}"),
                start: t0 + Duration::milliseconds(i as i64 * gap_ms),
                end: t0 + Duration::milliseconds(i as i64 * gap_ms + 500),
            })
            .collect();
    }

    #[test]
    fn each_signal_at_its_boundary() {
        let c = AbuseConfig::default();
        let now = Utc::now();
        type Setup = fn(&mut AccountFacts);
        let cases: Vec<(&str, Setup, u32)> = vec![
            ("nothing known", |_| {}, 0),
            (
                "2 h old",
                |f| f.signed_up_at = Some(f.now - Duration::hours(2)),
                0,
            ),
            (
                "1 h 59 m old",
                |f| f.signed_up_at = Some(f.now - Duration::minutes(119)),
                30,
            ),
            ("gaps of 3 s", |f| sessions(f, 5, 3_000), 0),
            ("gaps of 2.9 s", |f| sessions(f, 5, 2_900), 25),
            ("20 sessions, slow", |f| sessions(f, 20, 60_000), 0),
            ("21 sessions, slow", |f| sessions(f, 21, 60_000), 25),
            (
                "diversity 0.15",
                |f| {
                    f.prompts_today = 100;
                    f.distinct_prompts_today = 15
                },
                0,
            ),
            (
                "diversity 0.14",
                |f| {
                    f.prompts_today = 100;
                    f.distinct_prompts_today = 14
                },
                20,
            ),
        ];
        for (name, setup, want) in cases {
            let mut f = AccountFacts::empty("a", now);
            setup(&mut f);
            assert_eq!(abuse_score(&f, &c).value, want, "{name}");
        }
    }

    #[test]
    fn suspected_from_50() {
        let c = AbuseConfig::default();
        let now = Utc::now();
        // 25 + 20 = 45: not yet. 30 + 20 = 50: suspected.
        let mut f = AccountFacts::empty("a", now);
        sessions(&mut f, 21, 60_000);
        f.prompts_today = 100;
        f.distinct_prompts_today = 1;
        let s = abuse_score(&f, &c);
        assert_eq!(s.value, 45);
        assert!(!is_suspected(&s, &c));
        let mut f = AccountFacts::empty("a", now);
        f.signed_up_at = Some(now - Duration::minutes(10));
        f.prompts_today = 100;
        f.distinct_prompts_today = 1;
        let s = abuse_score(&f, &c);
        assert_eq!(s.value, 50);
        assert!(is_suspected(&s, &c));
        // 49 is impossible with these weights; with a custom threshold the boundary holds.
        let c49 = AbuseConfig {
            suspected_at: 51,
            ..AbuseConfig::default()
        };
        assert!(!is_suspected(&s, &c49));
    }

    #[test]
    fn one_fingerprint_signal_never_flags() {
        let c = AbuseConfig::default();
        let mut f = AccountFacts::empty("a", Utc::now());
        f.fingerprint_matches = vec![
            FingerprintMatch {
                other_account: "b".into(),
                signals: vec!["signup_ip_hash".into()],
            },
            FingerprintMatch {
                other_account: "c".into(),
                signals: vec!["device_id".into(), "browser_signature".into()],
            },
        ];
        let m = multi_accounts(&f, &c);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].other_account, "c");
        // Even configured to 1, a single signal does not flag.
        let c1 = AbuseConfig {
            multi_account_matches: 1,
            ..AbuseConfig::default()
        };
        assert_eq!(multi_accounts(&f, &c1).len(), 1);
    }

    /// (name, IPs in the minute, IPs over 24 h, shared?)
    #[test]
    fn key_sharing_needs_5_ips_in_a_minute_and_churn() {
        let c = AbuseConfig::default();
        let cases = [
            ("4 IPs in a minute, 40 over the day", 4, 40, false),
            ("a crowd: 5 in a minute, 15 over the day", 5, 15, true),
            ("churn 2.8: 5 in a minute, 14 over the day", 5, 14, false),
            ("a fleet: 8 pods all day", 8, 8, false),
            ("churn 3.0: 8 in a minute, 24 over the day", 8, 24, true),
            ("a fleet redeployed once: 8, then 8 more", 8, 16, false),
            ("a crowd: 6 in a minute, 24 over the day", 6, 24, true),
            ("an old row with no day count", 6, 0, false),
        ];
        for (name, minute_ips, day_ips, shared) in cases {
            let mut f = AccountFacts::empty("a", Utc::now());
            f.shared_keys = vec![KeyMinute {
                api_key_id: "k".into(),
                minute: f.now,
                distinct_ips: minute_ips,
                ips_24h: day_ips,
                ..KeyMinute::default()
            }];
            assert_eq!(shared_keys(&f, &c).len(), usize::from(shared), "{name}");
            let fleet = minute_ips >= c.key_sharing_ips_per_minute && !shared;
            assert_eq!(fleet_keys(&f, &c).len(), usize::from(fleet), "{name}");
        }
        // The ratio is configurable: at 2.0 a fleet redeployed once is a crowd.
        let c2 = AbuseConfig {
            key_sharing_churn_at_least: 2.0,
            ..AbuseConfig::default()
        };
        let mut f = AccountFacts::empty("a", Utc::now());
        f.shared_keys = vec![KeyMinute {
            api_key_id: "k".into(),
            minute: f.now,
            distinct_ips: 8,
            ips_24h: 16,
            ..KeyMinute::default()
        }];
        assert_eq!(shared_keys(&f, &c2).len(), 1);
    }
}
