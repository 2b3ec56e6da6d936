//! Limit names: which window a limit counts over and what it counts.
//!
//! A limit's name is `{window}_{metric}` (`day_requests`, `month_weighted_tokens`, …). The
//! configuration and the overrides store names as strings; [`LimitName::parse`] turns one into
//! its two halves once, and rejects names that mean nothing (`session_sessions`: a session
//! cannot limit sessions).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The window a limit is counted over.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    Session,
    Day,
    Month,
}

impl LimitWindow {
    pub const ALL: [LimitWindow; 3] = [LimitWindow::Session, LimitWindow::Day, LimitWindow::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitWindow::Session => "session",
            LimitWindow::Day => "day",
            LimitWindow::Month => "month",
        }
    }

    /// When the window holding `now` resets; a session never resets, it ends.
    pub fn resets_at(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let day = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()?;
        match self {
            LimitWindow::Session => None,
            LimitWindow::Day => Some(day + Duration::days(1)),
            LimitWindow::Month => {
                let (y, m) = if now.month() == 12 {
                    (now.year() + 1, 1)
                } else {
                    (now.year(), now.month() + 1)
                };
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()
            }
        }
    }
}

/// What a limit counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitMetric {
    Requests,
    Sessions,
    WeightedTokens,
    CostUsd,
}

impl LimitMetric {
    pub const ALL: [LimitMetric; 4] = [
        LimitMetric::Requests,
        LimitMetric::Sessions,
        LimitMetric::WeightedTokens,
        LimitMetric::CostUsd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitMetric::Requests => "requests",
            LimitMetric::Sessions => "sessions",
            LimitMetric::WeightedTokens => "weighted_tokens",
            LimitMetric::CostUsd => "cost_usd",
        }
    }

    /// Counts are used up; budgets are spent, and a cheaper model can still serve.
    pub fn is_budget(self) -> bool {
        matches!(self, LimitMetric::WeightedTokens | LimitMetric::CostUsd)
    }
}

/// A limit's name, `{window}_{metric}`, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitName {
    pub window: LimitWindow,
    pub metric: LimitMetric,
}

impl LimitName {
    pub fn parse(s: &str) -> Result<Self, String> {
        for window in LimitWindow::ALL {
            let Some(rest) = s
                .strip_prefix(window.as_str())
                .and_then(|r| r.strip_prefix('_'))
            else {
                continue;
            };
            for metric in LimitMetric::ALL {
                if rest == metric.as_str() {
                    if window == LimitWindow::Session && metric == LimitMetric::Sessions {
                        return Err("a session cannot limit sessions".into());
                    }
                    return Ok(LimitName { window, metric });
                }
            }
        }
        Err(format!(
            "unknown limit {s:?}: expected {{session|day|month}}_{{requests|sessions|weighted_tokens|cost_usd}}"
        ))
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.window.as_str(), self.metric.as_str())
    }
}

/// The per-minute request rate's name, for overrides and decisions.
pub const RATE_LIMIT_NAME: &str = "requests_per_minute";
/// The pseudo-limit a disallowed model is recorded under.
pub const ALLOWED_MODELS_NAME: &str = "allowed_models";
/// Unlimited.
pub const UNLIMITED: f64 = -1.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_names_parse_and_bad_ones_say_why() {
        let n = LimitName::parse("month_weighted_tokens").unwrap();
        assert_eq!(
            (n.window, n.metric),
            (LimitWindow::Month, LimitMetric::WeightedTokens)
        );
        assert_eq!(n.to_string(), "month_weighted_tokens");
        assert!(LimitName::parse("session_sessions").is_err());
        assert!(LimitName::parse("week_requests")
            .unwrap_err()
            .contains("unknown limit"));
    }

    #[test]
    fn resets() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        assert_eq!(
            LimitWindow::Day.resets_at(t),
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            LimitWindow::Month.resets_at(t),
            Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(LimitWindow::Session.resets_at(t), None);
    }
}
