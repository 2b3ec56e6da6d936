//! The gateway read path: where an account stands against its limits (`GET
//! /v1/accounts/{id}/usage`) and what to do with a request (`POST /v1/quota/check`).
//!
//! A decision reads Redis once ([`hot_state`]) and nothing else: the account's plan,
//! overrides and review state come from an in-process [`directory`] that PostgreSQL keeps fresh
//! by notification, its unseen dashboard notice (`dashboard_notice`) from the in-process
//! [`notices`] cache, kept fresh the same way, the tiers from configuration, and the rules are
//! the pure functions in [`meterline_schemas::limits`]. Decisions worth counting go to
//! ClickHouse through the [`recorder`]'s queue, off the request path.

pub mod directory;
pub mod hot_state;
pub mod notices;
pub mod recorder;
pub mod review;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::{
    Decision, DecisionKind, Friction, LimitName, LimitNotice, LimitWindow, QuotaConfig,
    TiersConfig, ALLOWED_MODELS_NAME, RATE_LIMIT_NAME,
};
use meterline_schemas::review::ReviewConfig;

pub use directory::AccountDirectory;
pub use hot_state::HotState;
pub use notices::{DashboardNotice, NoticeCache};
pub use recorder::{DecisionRecord, DecisionRecorder, RecorderMetrics};

/// What the read endpoints share.
#[derive(Clone)]
pub struct ReadPath {
    pub quota: Arc<QuotaConfig>,
    /// How a suspected account is restricted (`[review]`).
    pub review: Arc<ReviewConfig>,
    pub tiers: Arc<TiersConfig>,
    /// The decisions' messages, compiled from `[quota.messages]` and `[tiers.<plan>.messages]`.
    pub friction: Arc<Friction>,
    pub directory: AccountDirectory,
    /// Each account's unseen dashboard notice, for `dashboard_notice` in decisions.
    pub notices: NoticeCache,
    pub hot: HotState,
    pub recorder: DecisionRecorder,
}

/// The window a notice's limit is counted over, as an id and the Unix second it resets.
fn window_of(limit: &str, session_id: Option<&str>, now: DateTime<Utc>) -> (String, i64) {
    let month = || {
        let start = Grain::Month.window_start(now);
        (
            Grain::Month.stamp(start),
            Grain::Month.next_window(start).timestamp(),
        )
    };
    if limit == RATE_LIMIT_NAME {
        let start = Grain::Minute.window_start(now);
        return (
            Grain::Minute.stamp(start),
            Grain::Minute.next_window(start).timestamp(),
        );
    }
    if limit == ALLOWED_MODELS_NAME {
        return month();
    }
    match LimitName::parse(limit).map(|n| n.window) {
        Ok(LimitWindow::Session) => (
            format!("session:{}", session_id.unwrap_or("")),
            now.timestamp() + meterline_schemas::keys::SESSION_RETENTION_SECS,
        ),
        Ok(LimitWindow::Day) => {
            let start = Grain::Day.window_start(now);
            (
                Grain::Day.stamp(start),
                Grain::Day.next_window(start).timestamp(),
            )
        }
        _ => month(),
    }
}

/// The records a decision calls for: its warning (and its grace use), its degradation or its
/// reached limit.
pub fn records_for(
    account: &str,
    requested_model: &str,
    session_id: Option<&str>,
    decision: &Decision,
    now: DateTime<Utc>,
) -> Vec<DecisionRecord> {
    let make = |event_type: &str, n: &LimitNotice| {
        let (window, expires) = window_of(&n.limit, session_id, now);
        DecisionRecord::new(
            now,
            account,
            event_type,
            decision.plan.as_str(),
            &n.limit,
            n.stage,
            &window,
            expires,
            n.used,
            n.limit_value,
            requested_model,
            &decision.model,
        )
    };
    let mut out = Vec::new();
    match decision.decision {
        DecisionKind::Allow => {
            if let Some(w) = &decision.warning {
                out.push(make("quota_warning_shown", w));
            }
        }
        DecisionKind::Degrade => {
            if let Some(d) = &decision.degraded {
                let n = d.budget.clone().unwrap_or_else(|| LimitNotice {
                    limit: ALLOWED_MODELS_NAME.into(),
                    stage: 100,
                    used: 0.0,
                    limit_value: 0.0,
                    resets_at: None,
                });
                out.push(make("model_downgrade_triggered", &n));
            }
        }
        DecisionKind::LimitReached => {
            if let Some(r) = &decision.limit_reached {
                out.push(make("limit_reached", &r.notice));
            }
        }
        DecisionKind::Deny => {}
    }
    // Served from the hidden buffer (an allow, or a degradation while a count is in grace):
    // once per account, limit and window; ClickHouse copies it into `grace_usage`.
    if let Some(g) = &decision.grace {
        let n = LimitNotice {
            limit: g.limit.clone(),
            stage: 100,
            used: g.used,
            limit_value: g.limit_value,
            resets_at: None,
        };
        out.push(make("grace_used", &n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use meterline_schemas::limits::{decide, AccountProfile, QuotaRequest, RawUsage, TiersConfig};

    #[test]
    fn each_decision_is_recorded_under_its_limit_stage_and_window() {
        let q = QuotaConfig::default();
        let t = TiersConfig::default();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap();
        let mut raw = RawUsage::default();
        raw.day.insert("m:gpt-4o-mini:in".into(), 2 * 180_000);
        let snapshot = raw.snapshot(&q, &t.free, now);
        let request = QuotaRequest {
            model: "gpt-4o-mini".into(),
            estimated_input_tokens: 0,
            estimated_output_tokens: 0,
            session_id: None,
        };
        let d = decide(
            &q,
            &ReviewConfig::default(),
            &t.free,
            &AccountProfile::default(),
            &snapshot,
            &request,
            now,
        );
        // 180,000 of 250,000 weighted tokens today: the 70 % stage.
        let recs = records_for("acct", "gpt-4o-mini", None, &d, now);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].dedup_key,
            "acct:quota_warning_shown:day_weighted_tokens:70:20261122"
        );
        assert_eq!(
            recs[0].expires_at,
            Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        // The same decision later the same day has the same key and id.
        let later = now + chrono::Duration::hours(3);
        let again = records_for("acct", "gpt-4o-mini", None, &d, later);
        assert_eq!(again[0].dedup_key, recs[0].dedup_key);
        assert_eq!(again[0].row.event_id, recs[0].row.event_id);

        // A model the tier does not allow: recorded per month.
        let request = QuotaRequest {
            model: "gpt-4o".into(),
            ..request
        };
        let d = decide(
            &q,
            &ReviewConfig::default(),
            &t.free,
            &AccountProfile::default(),
            &RawUsage::default().snapshot(&q, &t.free, now),
            &request,
            now,
        );
        let recs = records_for("acct", "gpt-4o", None, &d, now);
        assert_eq!(
            recs[0].dedup_key,
            "acct:model_downgrade_triggered:allowed_models:100:202611"
        );
        assert_eq!(recs[0].row.served_model, "gpt-4o-mini");

        // Served from grace (5,100 of 5,000 requests today, free's buffer is 15 %): the
        // 100 % warning and the grace use, each once per day.
        let mut raw = RawUsage::default();
        raw.day.insert("req".into(), 5_100);
        let request = QuotaRequest {
            model: "gpt-4o-mini".into(),
            ..request
        };
        let d = decide(
            &q,
            &ReviewConfig::default(),
            &t.free,
            &AccountProfile::default(),
            &raw.snapshot(&q, &t.free, now),
            &request,
            now,
        );
        assert_eq!(d.decision, DecisionKind::Allow);
        let keys: Vec<_> = records_for("acct", "gpt-4o-mini", None, &d, now)
            .into_iter()
            .map(|r| (r.dedup_key, r.row.used, r.row.limit_value))
            .collect();
        assert_eq!(
            keys,
            vec![
                (
                    "acct:quota_warning_shown:day_requests:100:20261122".to_owned(),
                    5_100.0,
                    5_000.0
                ),
                (
                    "acct:grace_used:day_requests:100:20261122".to_owned(),
                    5_100.0,
                    5_000.0
                ),
            ]
        );
    }
}
