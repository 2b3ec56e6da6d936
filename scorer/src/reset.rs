//! The monthly reset: seed 002's re-engagement moment. An account that hit a limit last month
//! (reached its last stage, 100 % by default, in any day or month window of that month) gets
//! its allowance back on the 1st; one `allowance_reset` signal per account and month tells the
//! notifier to say so ("your allowance has reset"), with the plan that would have spared it
//! the wall.
//!
//! Where the hits come from: PostgreSQL `limit_stage_crossings`, the scorer's own record of
//! each stage it saw an account reach ([`crate::crossings`]). Its `window_id` is the month
//! (`YYYYMM`) or the day (`YYYYMMDD`), so last month's windows are those starting with last
//! month's stamp.
//!
//! Who is left out, and why:
//! * accounts not on `scorer.allowance_reset_plans` (Enterprise by default: nothing to sell);
//! * accounts in review (suspected, auto-denied or confirmed abuse): a reset is not an
//!   invitation to come back and abuse the tier;
//! * every account once the month is older than `scorer.allowance_reset_within_days`: the
//!   message is about the 1st, not the 20th.
//!
//! The sweep is idempotent: the episode is the new month's stamp, and [`crate::store`] raises
//! each (account, kind, episode) once, so a restarted scorer sweeping again raises nothing new.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, Utc};
use meterline_schemas::keys::Grain;
use meterline_schemas::review::ReviewState;
use meterline_schemas::{Plan, SignalKind};
use serde_json::json;

use crate::config::ScorerConfig;
use crate::score::Signal;

/// One limit an account hit last month: the windows (days, or the month) it hit it in.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Hit {
    pub account_id: String,
    /// The account's plan now; `None` when it has no `accounts` row (a free account).
    pub plan: Option<String>,
    pub review_state: Option<String>,
    pub limit_name: String,
    pub windows: i64,
}

/// The month that just ended and the one that began, as `YYYYMM` stamps.
pub fn months(now: DateTime<Utc>) -> (String, String) {
    let this = Grain::Month.window_start(now);
    let last = Grain::Month.window_start(this - Duration::seconds(1));
    (Grain::Month.stamp(last), Grain::Month.stamp(this))
}

/// Whether the sweep for `now`'s month may run: the month is young enough.
pub fn in_sweep_window(c: &ScorerConfig, now: DateTime<Utc>) -> bool {
    now.day() <= c.allowance_reset_within_days
}

/// The `allowance_reset` signals for last month's hits (see the module documentation).
pub fn reset_signals(c: &ScorerConfig, hits: &[Hit], now: DateTime<Utc>) -> Vec<Signal> {
    let (last, this) = months(now);
    let mut by_account: BTreeMap<&str, (Plan, Vec<&Hit>)> = BTreeMap::new();
    for h in hits {
        let in_review = h
            .review_state
            .as_deref()
            .and_then(ReviewState::parse)
            .is_some_and(|s| s != ReviewState::Cleared);
        if in_review {
            continue;
        }
        let plan = h
            .plan
            .as_deref()
            .and_then(|p| Plan::parse("plan", p).ok())
            .unwrap_or(Plan::Free);
        if !c.watches(SignalKind::AllowanceReset, plan) {
            continue;
        }
        by_account
            .entry(&h.account_id)
            .or_insert((plan, Vec::new()))
            .1
            .push(h);
    }
    by_account
        .into_iter()
        .map(|(account, (plan, hits))| {
            let reasons = hits
                .iter()
                .map(|h| match h.windows {
                    1 => format!("hit {} once in {last}", h.limit_name),
                    n => format!("hit {} in {n} windows of {last}", h.limit_name),
                })
                .collect();
            let limits: Vec<_> = hits
                .iter()
                .map(|h| json!({"limit": h.limit_name, "windows": h.windows}))
                .collect();
            Signal {
                kind: SignalKind::AllowanceReset,
                account_id: account.to_owned(),
                episode: this.clone(),
                plan,
                raised_at: now,
                deal_readiness: 0,
                pql: 0,
                abuse: 0,
                reasons,
                evidence: json!({"month": last, "limits": limits}),
                last_seen: None,
            }
        })
        .collect()
}

/// Last month's hits from PostgreSQL `limit_stage_crossings`, with each account's plan and
/// review state.
pub async fn last_month_hits(
    pg: &sqlx::PgPool,
    last_stage: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Hit>, sqlx::Error> {
    let (last, _) = months(now);
    sqlx::query_as(
        "SELECT c.account_id, a.plan, a.review_state, c.limit_name, \
                count(DISTINCT c.window_id) AS windows \
         FROM limit_stage_crossings c LEFT JOIN accounts a ON a.account_id = c.account_id \
         WHERE c.stage >= $1 AND c.window_id LIKE $2 \
         GROUP BY c.account_id, a.plan, a.review_state, c.limit_name \
         ORDER BY c.account_id, c.limit_name",
    )
    .bind(last_stage as i32)
    .bind(format!("{last}%"))
    .fetch_all(pg)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hit(account: &str, plan: Option<&str>, review: Option<&str>, limit: &str) -> Hit {
        Hit {
            account_id: account.into(),
            plan: plan.map(String::from),
            review_state: review.map(String::from),
            limit_name: limit.into(),
            windows: 1,
        }
    }

    #[test]
    fn months_cross_the_year() {
        let cases = [
            ((2027, 1, 1, 0, 0, 0), ("202612", "202701")),
            ((2026, 12, 31, 23, 59, 59), ("202611", "202612")),
            ((2028, 3, 1, 0, 0, 1), ("202802", "202803")),
        ];
        for ((y, m, d, h, mi, s), (last, this)) in cases {
            let now = Utc.with_ymd_and_hms(y, m, d, h, mi, s).unwrap();
            assert_eq!(months(now), (last.to_owned(), this.to_owned()), "{now}");
        }
    }

    #[test]
    fn the_sweep_runs_only_early_in_the_month() {
        let c = ScorerConfig::default();
        let at = |d| Utc.with_ymd_and_hms(2026, 12, d, 12, 0, 0).unwrap();
        let window = c.allowance_reset_within_days;
        assert!(in_sweep_window(&c, at(1)));
        assert!(in_sweep_window(&c, at(window)));
        assert!(!in_sweep_window(&c, at(window + 1)));
    }

    /// Plan × review state: who is told that their allowance reset.
    #[test]
    fn free_and_pro_accounts_not_in_review_get_one_signal_each() {
        let c = ScorerConfig::default();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 0).unwrap();
        let hits = vec![
            hit("a-free", None, None, "day_requests"),
            hit("a-free", None, None, "month_weighted_tokens"),
            hit("b-pro", Some("pro"), Some("cleared"), "month_requests"),
            hit("c-ent", Some("enterprise"), None, "month_requests"),
            hit(
                "d-suspected",
                Some("free"),
                Some("suspected"),
                "day_requests",
            ),
            hit(
                "e-denied",
                Some("free"),
                Some("auto_denied"),
                "day_requests",
            ),
            hit(
                "f-confirmed",
                Some("pro"),
                Some("confirmed"),
                "day_requests",
            ),
        ];
        let sigs = reset_signals(&c, &hits, now);
        let got: Vec<(&str, Plan, usize)> = sigs
            .iter()
            .map(|s| (s.account_id.as_str(), s.plan, s.reasons.len()))
            .collect();
        assert_eq!(
            got,
            vec![("a-free", Plan::Free, 2), ("b-pro", Plan::Pro, 1)]
        );
        let a = &sigs[0];
        assert_eq!(a.kind, SignalKind::AllowanceReset);
        assert_eq!(a.episode, "202612");
        assert_eq!(a.dedup_key(), "a-free:allowance_reset:202612");
        assert_eq!(a.reasons[0], "hit day_requests once in 202611");
        assert_eq!(a.evidence["month"], "202611");
        assert_eq!(a.evidence["limits"][1]["limit"], "month_weighted_tokens");
    }

    #[test]
    fn the_plan_scope_is_configurable() {
        let c = ScorerConfig {
            allowance_reset_plans: vec![Plan::Pro],
            ..Default::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 0).unwrap();
        let hits = vec![
            hit("a", None, None, "day_requests"),
            Hit {
                windows: 4,
                ..hit("b", Some("pro"), None, "day_requests")
            },
        ];
        let sigs = reset_signals(&c, &hits, now);
        assert_eq!(sigs.len(), 1);
        assert_eq!(
            sigs[0].reasons,
            vec!["hit day_requests in 4 windows of 202611"]
        );
    }
}
