//! The `{detail}` of an outreach notice (`limit_stage`, `allowance_reset`): the limit in words a
//! person uses ("daily requests", not `day_requests`), the numbers, and when it resets, from
//! the signal's evidence.

use chrono::{DateTime, Utc};
use meterline_schemas::limits::{LimitMetric, LimitName, LimitWindow};
use serde_json::Value;

/// `day_requests` → "daily requests"; a name that does not parse is shown as it is.
pub fn limit_words(name: &str) -> String {
    let Ok(n) = LimitName::parse(name) else {
        return name.replace('_', " ");
    };
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

/// 8512345 → "8,512,345": the exact number, as a person reads it.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn amount(metric: Option<LimitMetric>, v: f64) -> String {
    match metric {
        Some(LimitMetric::CostUsd) => format!("${v:.2}"),
        _ => grouped(v.max(0.0).round() as u64),
    }
}

/// "You've used 87 % of your daily requests (870 of 1,000); they reset at 00:00 UTC on
/// 1 December." from a `limit_stage` signal's `{"limit": {...}}` evidence.
pub fn limit_stage_detail(evidence: &Value) -> String {
    let Some(l) = evidence.get("limit") else {
        return String::new();
    };
    let name = l.get("name").and_then(Value::as_str).unwrap_or("");
    let metric = LimitName::parse(name).ok().map(|n| n.metric);
    let used = l.get("used").and_then(Value::as_f64).unwrap_or(0.0);
    let max = l.get("limit").and_then(Value::as_f64).unwrap_or(0.0);
    let pct = if max > 0.0 {
        (used / max * 100.0).floor() as u64
    } else {
        100
    };
    let mut out = format!(
        "You've used {pct} % of your {} ({} of {})",
        limit_words(name),
        amount(metric, used),
        amount(metric, max)
    );
    let resets = l
        .get("resets_at")
        .and_then(Value::as_str)
        .and_then(|r| DateTime::parse_from_rfc3339(r).ok())
        .map(|r| r.with_timezone(&Utc));
    if let Some(r) = resets {
        out.push_str(&format!(
            "; it resets at {} UTC on {}",
            r.format("%H:%M"),
            r.format("%-d %B")
        ));
    }
    out.push('.');
    out
}

/// "Last month you hit your daily requests limit." from an `allowance_reset` signal's
/// `{"limits": [{"limit": ...}]}` evidence.
pub fn allowance_reset_detail(evidence: &Value) -> String {
    let names: Vec<String> = evidence
        .get("limits")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l.get("limit").and_then(Value::as_str))
                .map(limit_words)
                .collect()
        })
        .unwrap_or_default();
    match names.as_slice() {
        [] => String::new(),
        [one] => format!("Last month you hit your {one} limit."),
        [init @ .., last] => format!(
            "Last month you hit your {} and {last} limits.",
            init.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limit_names_read_as_words() {
        let cases = [
            ("day_requests", "daily requests"),
            ("month_weighted_tokens", "monthly tokens"),
            ("session_requests", "per-session requests"),
            ("month_cost_usd", "monthly spend"),
            ("day_sessions", "daily sessions"),
            ("not_a_limit", "not a limit"),
        ];
        for (name, words) in cases {
            assert_eq!(limit_words(name), words, "{name}");
        }
    }

    #[test]
    fn a_limit_stage_says_what_is_used_and_when_it_resets() {
        let cases = [
            (
                json!({"limit": {"name": "day_requests", "used": 870.0, "limit": 1000.0,
                    "resets_at": "2026-12-01T00:00:00Z"}}),
                "You've used 87 % of your daily requests (870 of 1,000); it resets at 00:00 UTC on 1 December.",
            ),
            (
                json!({"limit": {"name": "month_weighted_tokens", "used": 8_512_345.0,
                    "limit": 10_000_000.0, "resets_at": "2027-01-01T00:00:00Z"}}),
                "You've used 85 % of your monthly tokens (8,512,345 of 10,000,000); it resets at 00:00 UTC on 1 January.",
            ),
            (
                json!({"limit": {"name": "month_cost_usd", "used": 9.5, "limit": 10.0}}),
                "You've used 95 % of your monthly spend ($9.50 of $10.00).",
            ),
            (json!({}), ""),
        ];
        for (evidence, want) in cases {
            assert_eq!(limit_stage_detail(&evidence), want, "{evidence}");
        }
    }

    #[test]
    fn an_allowance_reset_names_the_limits_hit() {
        let limits = |names: &[&str]| json!({"month": "202611", "limits": names.iter().map(|n| json!({"limit": n, "windows": 1})).collect::<Vec<_>>()});
        assert_eq!(
            allowance_reset_detail(&limits(&["day_requests"])),
            "Last month you hit your daily requests limit."
        );
        assert_eq!(
            allowance_reset_detail(&limits(&[
                "day_requests",
                "day_sessions",
                "month_weighted_tokens"
            ])),
            "Last month you hit your daily requests, daily sessions and monthly tokens limits."
        );
        assert_eq!(allowance_reset_detail(&limits(&[])), "");
    }
}
