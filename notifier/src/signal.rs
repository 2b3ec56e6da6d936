//! The scorer's signals as the notifier reads them: `io.meterline.v1.AccountSignal` records on
//! the `account-signals` topic (`schemas/account_signal.avsc`).

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSignal {
    /// The dedup key: `account:kind:episode`.
    pub signal_id: String,
    pub kind: String,
    pub account_id: String,
    pub episode: String,
    /// Microseconds since the Unix epoch.
    pub raised_at: i64,
    pub plan: String,
    pub deal_readiness: i32,
    pub pql: i32,
    pub abuse: i32,
    pub reasons: Vec<String>,
    /// JSON: the inputs and what matched.
    pub evidence: String,
}

impl AccountSignal {
    pub fn raised_at(&self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.raised_at)
            .single()
            .unwrap_or_else(Utc::now)
    }

    pub fn evidence(&self) -> Value {
        serde_json::from_str(&self.evidence).unwrap_or(Value::Null)
    }

    /// The limit stage (percent) of a `limit_stage` signal.
    pub fn limit_stage(&self) -> Option<u32> {
        let e = self.evidence();
        e.pointer("/limit/stage")
            .and_then(Value::as_u64)
            .map(|s| s as u32)
            .or_else(|| {
                // episode: "<limit>:<stage>:<window>"
                self.episode.split(':').nth(1).and_then(|s| s.parse().ok())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_comes_from_the_evidence_or_the_episode() {
        let mut s = AccountSignal {
            signal_id: "a:limit_stage:month_requests:85:202611".into(),
            kind: "limit_stage".into(),
            account_id: "a".into(),
            episode: "month_requests:85:202611".into(),
            raised_at: 0,
            plan: "pro".into(),
            deal_readiness: 0,
            pql: 0,
            abuse: 0,
            reasons: vec![],
            evidence: r#"{"limit":{"name":"month_requests","stage":95}}"#.into(),
        };
        assert_eq!(s.limit_stage(), Some(95));
        s.evidence = "{}".into();
        assert_eq!(s.limit_stage(), Some(85));
    }
}
