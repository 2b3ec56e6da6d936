//! An experiment as stored, and where it is at a given time.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ExperimentSpec;

/// An experiment as stored, with how many accounts each variant has.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    #[serde(flatten)]
    pub spec: ExperimentSpec,
    pub stopped_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Variant → assigned accounts.
    pub assigned: BTreeMap<String, i64>,
}

/// Where an experiment is at a given time. Not stored: it follows from `starts_at`, `ends_at`
/// and `stopped_at` ([`Experiment::state`]; [`super::store::assign_at_signup`] asks PostgreSQL the same
/// question for `Running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExperimentState {
    /// Its start is still ahead.
    Scheduled,
    /// Assigning new signups.
    Running,
    /// Its end has passed.
    Ended,
    /// Stopped by `meterline experiments stop`.
    Stopped,
}

impl ExperimentState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ExperimentState::Scheduled => "scheduled",
            ExperimentState::Running => "running",
            ExperimentState::Ended => "ended",
            ExperimentState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ExperimentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:<10}` lines up tables.
        f.pad(self.as_str())
    }
}

impl Experiment {
    pub fn state(&self, now: DateTime<Utc>) -> ExperimentState {
        if self.stopped_at.is_some() {
            ExperimentState::Stopped
        } else if now < self.spec.starts_at {
            ExperimentState::Scheduled
        } else if self.spec.ends_at.is_some_and(|e| now >= e) {
            ExperimentState::Ended
        } else {
            ExperimentState::Running
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn the_state_follows_from_start_end_and_stop() {
        let start = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut e = Experiment {
            spec: ExperimentSpec {
                name: "x".into(),
                description: String::new(),
                plan: "free".into(),
                starts_at: start,
                ends_at: Some(start + Duration::days(30)),
                variants: vec![],
            },
            stopped_at: None,
            created_at: start,
            assigned: BTreeMap::new(),
        };
        let state = |e: &Experiment, t| e.state(t);
        assert_eq!(
            state(&e, start - Duration::seconds(1)),
            ExperimentState::Scheduled
        );
        assert_eq!(state(&e, start), ExperimentState::Running);
        assert_eq!(
            state(&e, start + Duration::days(30)),
            ExperimentState::Ended
        );
        e.stopped_at = Some(start);
        assert_eq!(
            state(&e, start - Duration::days(1)),
            ExperimentState::Stopped
        );
        // The text the experiment tables print.
        let text: Vec<String> = [
            ExperimentState::Scheduled,
            ExperimentState::Running,
            ExperimentState::Ended,
            ExperimentState::Stopped,
        ]
        .iter()
        .map(|s| format!("{s:<10}|"))
        .collect();
        assert_eq!(
            text,
            ["scheduled |", "running   |", "ended     |", "stopped   |"]
        );
    }
}
