//! Reading the hot state: from the counters Redis holds to amounts per limit.
//!
//! The read path fetches an account's window hashes (month, day and, if one was named, the
//! session), its session sets' sizes and its per-minute counters in one pipelined round trip,
//! as a [`RawUsage`]. [`RawUsage::snapshot`] turns those counters into a [`UsageSnapshot`]:
//! one amount per [`LimitName`], with the tier's token multiplier applied, which is all the
//! decision needs to know about usage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::names::{LimitMetric, LimitName, LimitWindow};
use super::tiers::{QuotaConfig, TierConfig};

/// What the hot state says about one account, as read for one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSnapshot {
    /// Used amounts per window and metric, tier weighting already applied.
    pub used: BTreeMap<LimitName, f64>,
    /// Whether the request's session is already counted in the day's / month's session set.
    pub session_known_today: bool,
    pub session_known_this_month: bool,
    /// Requests in the current and the previous minute, and how far into the current minute.
    pub requests_this_minute: f64,
    pub requests_last_minute: f64,
    pub minute_elapsed: f64,
}

impl UsageSnapshot {
    /// A sliding 60-second estimate: all of this minute plus the part of the previous minute
    /// that is still inside the last 60 seconds.
    pub fn rolling_rpm(&self) -> f64 {
        self.requests_this_minute + self.requests_last_minute * (1.0 - self.minute_elapsed)
    }
}

/// A window hash as read from Redis: field → counter.
pub type WindowCounters = std::collections::HashMap<String, i64>;

/// The hot-state keys one decision reads, as they came back from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawUsage {
    pub month: WindowCounters,
    pub day: WindowCounters,
    /// The asked-about session's hash, if a session was named.
    pub session: Option<WindowCounters>,
    pub day_sessions: u64,
    pub month_sessions: u64,
    pub session_known_today: bool,
    pub session_known_this_month: bool,
    pub requests_this_minute: i64,
    pub requests_last_minute: i64,
}

impl RawUsage {
    /// Turns counters into amounts per limit, with the tier's token multiplier applied.
    pub fn snapshot(
        &self,
        quota: &QuotaConfig,
        tier: &TierConfig,
        now: DateTime<Utc>,
    ) -> UsageSnapshot {
        let mut used = BTreeMap::new();
        let mut window = |w: LimitWindow, h: &WindowCounters, sessions: Option<u64>| {
            let get = |f: &str| h.get(f).copied().unwrap_or(0) as f64;
            let mut put = |m: LimitMetric, v: f64| {
                used.insert(
                    LimitName {
                        window: w,
                        metric: m,
                    },
                    v,
                );
            };
            put(LimitMetric::Requests, get("req"));
            put(
                LimitMetric::WeightedTokens,
                weighted_tokens(
                    quota,
                    tier.weight_multiplier,
                    h.iter().map(|(k, v)| (k.as_str(), *v)),
                ),
            );
            put(LimitMetric::CostUsd, get("cost") / 1_000_000.0);
            if let Some(n) = sessions {
                put(LimitMetric::Sessions, n as f64);
            }
        };
        window(LimitWindow::Month, &self.month, Some(self.month_sessions));
        window(LimitWindow::Day, &self.day, Some(self.day_sessions));
        if let Some(s) = &self.session {
            window(LimitWindow::Session, s, None);
        }
        UsageSnapshot {
            used,
            session_known_today: self.session_known_today,
            session_known_this_month: self.session_known_this_month,
            requests_this_minute: self.requests_this_minute as f64,
            requests_last_minute: self.requests_last_minute as f64,
            minute_elapsed: f64::from(now.timestamp().rem_euclid(60) as u32) / 60.0,
        }
    }
}

/// Sums weighted tokens over a window hash's `m:{model}:in` / `m:{model}:out` fields.
pub fn weighted_tokens<'a>(
    quota: &QuotaConfig,
    multiplier: f64,
    fields: impl IntoIterator<Item = (&'a str, i64)>,
) -> f64 {
    let mut per_model: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (field, v) in fields {
        let Some(rest) = field.strip_prefix("m:") else {
            continue;
        };
        if let Some(model) = rest.strip_suffix(":in") {
            per_model.entry(model).or_default().0 += v as f64;
        } else if let Some(model) = rest.strip_suffix(":out") {
            per_model.entry(model).or_default().1 += v as f64;
        }
    }
    per_model
        .into_iter()
        .map(|(m, (i, o))| quota.model_tokens(m, i, o))
        .sum::<f64>()
        * multiplier
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::limits::TiersConfig;

    #[test]
    fn weighted_tokens_apply_io_weights_model_weights_and_the_multiplier() {
        let q = QuotaConfig::default();
        // gpt-4o: (100 × 1 + 10 × 3) × 2 = 260; unknown model: (50 + 0) × 1 = 50.
        let fields = [
            ("req", 2),
            ("m:gpt-4o:in", 100),
            ("m:gpt-4o:out", 10),
            ("m:gpt-4o:req", 1),
            ("m:mystery:in", 50),
        ];
        assert_eq!(weighted_tokens(&q, 1.0, fields), 310.0);
        assert_eq!(weighted_tokens(&q, 0.5, fields), 155.0);
    }

    #[test]
    fn raw_counters_become_amounts_per_limit() {
        let q = QuotaConfig::default();
        let t = TiersConfig::default();
        let h = |pairs: &[(&str, i64)]| -> WindowCounters {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let raw = RawUsage {
            month: h(&[("req", 10), ("cost", 2_500_000), ("m:gpt-4o:in", 100)]),
            day: h(&[("req", 4), ("m:gpt-4o:in", 40)]),
            session: Some(h(&[("req", 1), ("m:gpt-4o:out", 5)])),
            day_sessions: 2,
            month_sessions: 7,
            requests_this_minute: 3,
            requests_last_minute: 6,
            ..Default::default()
        };
        // 30 s into the minute: half of the previous minute still counts.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 30).unwrap();
        let snap = raw.snapshot(&q, &t.pro, at);
        let used = |n: &str| snap.used[&LimitName::parse(n).unwrap()];
        assert_eq!(used("month_requests"), 10.0);
        assert_eq!(used("month_cost_usd"), 2.5);
        assert_eq!(used("month_sessions"), 7.0);
        // gpt-4o weighs 2, pro multiplies by 0.5.
        assert_eq!(used("month_weighted_tokens"), 100.0);
        assert_eq!(used("day_weighted_tokens"), 40.0);
        assert_eq!(used("session_weighted_tokens"), 15.0);
        assert_eq!(used("day_sessions"), 2.0);
        assert_eq!(snap.rolling_rpm(), 6.0);
    }
}
