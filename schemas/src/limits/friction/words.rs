//! Numbers and times as a person reads them: the values the message templates get.
//!
//! * limits by what they count and over which window: `day_requests` is "daily requests",
//!   `month_weighted_tokens` "monthly tokens", `session_cost_usd` "per-session spend";
//! * amounts with thousands separators ("12,500"), dollars with cents ("$4.80"), whole
//!   percentages rounded *down* (99.6 % is "99", never a premature "100");
//! * resets in UTC, absolute and relative: a day limit "resets at 00:00 UTC (in 3 h 12 min)",
//!   a month limit "resets on 1 December (in 9 days)", a session limit "resets when a new
//!   session starts". A relative time rounds up to the minute below an hour (59 s is "1 min",
//!   never "0 min"), shows hours and minutes below a day, and whole days (to the nearest)
//!   beyond.
//!
//! Everything is UTC: the windows are UTC windows, and a message says so rather than guess the
//! reader's zone.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::domain::Plan;
use crate::limits::names::{
    LimitMetric, LimitName, LimitWindow, ALLOWED_MODELS_NAME, RATE_LIMIT_NAME,
};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A limit's name for people: "daily requests", "monthly tokens", "requests per minute".
pub fn limit_label(limit: &str) -> String {
    if limit == RATE_LIMIT_NAME {
        return "requests per minute".into();
    }
    if limit == ALLOWED_MODELS_NAME {
        return "models".into();
    }
    match LimitName::parse(limit) {
        Ok(n) => {
            let window = match n.window {
                LimitWindow::Session => "per-session",
                LimitWindow::Day => "daily",
                LimitWindow::Month => "monthly",
            };
            let metric = match n.metric {
                LimitMetric::Requests => "requests",
                LimitMetric::Sessions => "sessions",
                LimitMetric::WeightedTokens => "tokens",
                LimitMetric::CostUsd => "spend",
            };
            format!("{window} {metric}")
        }
        Err(_) => limit.replace('_', " "),
    }
}

/// The metric a limit name counts, if it is a limit (not the rate or the model list).
pub fn metric_of(limit: &str) -> Option<LimitMetric> {
    LimitName::parse(limit).ok().map(|n| n.metric)
}

/// An amount of `metric` for people: dollars with cents for cost, else a whole number with
/// thousands separators (rounded to the nearest).
pub fn amount(metric: Option<LimitMetric>, v: f64) -> String {
    let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
    if metric == Some(LimitMetric::CostUsd) {
        let cents = (v * 100.0).round() as u64;
        return format!("${}.{:02}", grouped(cents / 100), cents % 100);
    }
    grouped(v.round() as u64)
}

/// `1234567` → "1,234,567".
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `used / limit` in whole percent, rounded down (with a little slack for float error, so 70 %
/// of 1,000 is 70 and not 69); 0 for an unlimited or zero limit.
pub fn percent(used: f64, limit: f64) -> u64 {
    if limit <= 0.0 || !used.is_finite() {
        return 0;
    }
    (used / limit * 100.0 + 1e-9).floor().max(0.0) as u64
}

/// A plan's name for people: "Free", "Pro", "Enterprise".
pub fn plan_label(plan: Plan) -> &'static str {
    match plan {
        Plan::Free => "Free",
        Plan::Pro => "Pro",
        Plan::Enterprise => "Enterprise",
    }
}

/// How long until `then`: "1 min", "3 h 12 min", "5 h", "9 days". Never "0 min": a reset in
/// the past or this very second is "1 min" away at most.
pub fn relative(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let secs = (then - now).num_seconds().max(1);
    let minutes = (secs + 59) / 60;
    if minutes < 60 {
        return format!("{minutes} min");
    }
    if minutes < 24 * 60 {
        let (h, m) = (minutes / 60, minutes % 60);
        return if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        };
    }
    let days = (minutes + 12 * 60) / (24 * 60);
    if days == 1 {
        "1 day".into()
    } else {
        format!("{days} days")
    }
}

/// "00:00 UTC".
pub fn clock(at: DateTime<Utc>) -> String {
    format!("{:02}:{:02} UTC", at.hour(), at.minute())
}

/// "1 December".
pub fn date(at: DateTime<Utc>) -> String {
    format!("{} {}", at.day(), MONTHS[at.month0() as usize])
}

/// When a limit's window resets, in words: the whole phrase a template writes after "Your
/// allowance " and its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reset {
    /// "resets at 00:00 UTC (in 3 h 12 min)", "resets on 1 December (in 9 days)", "resets
    /// when a new session starts"; empty when the limit does not reset (the model list).
    pub phrase: String,
    /// "00:00 UTC"; empty for sessions.
    pub time: String,
    /// "1 December"; empty for sessions.
    pub date: String,
    /// "3 h 12 min"; empty for sessions.
    pub relative: String,
}

/// The reset of `limit`'s window, which ends at `resets_at` (`None` for sessions and for
/// limits that do not reset), seen at `now`.
pub fn reset(limit: &str, resets_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Reset {
    let window = LimitName::parse(limit).ok().map(|n| n.window);
    if window == Some(LimitWindow::Session) {
        return Reset {
            phrase: "resets when a new session starts".into(),
            ..Reset::default()
        };
    }
    let Some(at) = resets_at else {
        return Reset::default();
    };
    let rel = relative(now, at);
    let phrase = if window == Some(LimitWindow::Month) {
        format!("resets on {} ({})", date(at), in_(&rel))
    } else {
        format!("resets at {} ({})", clock(at), in_(&rel))
    };
    Reset {
        phrase,
        time: clock(at),
        date: date(at),
        relative: rel,
    }
}

fn in_(rel: &str) -> String {
    format!("in {rel}")
}
