//! Abuse: the brief's four signals and their weights (new account 30, machine-speed timing 25,
//! more than 20 sessions today 25, templated input 20; 50 or more is suspected abuse), and the
//! two checks that stand on their own: a shared API key and multi-accounting.

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

/// API keys seen from too many client IPs within one minute.
pub fn shared_keys(f: &AccountFacts, c: &AbuseConfig) -> Vec<KeyMinute> {
    f.shared_keys
        .iter()
        .filter(|k| k.distinct_ips >= c.key_sharing_ips_per_minute)
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

    #[test]
    fn key_sharing_from_5_ips_in_a_minute() {
        let c = AbuseConfig::default();
        let mut f = AccountFacts::empty("a", Utc::now());
        let minute = f.now;
        f.shared_keys = vec![
            KeyMinute {
                api_key_id: "k4".into(),
                minute,
                distinct_ips: 4,
            },
            KeyMinute {
                api_key_id: "k5".into(),
                minute,
                distinct_ips: 5,
            },
        ];
        let shared = shared_keys(&f, &c);
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].api_key_id, "k5");
    }
}
