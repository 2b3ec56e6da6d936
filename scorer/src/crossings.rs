//! Limit stage crossings: the instrumented limit.
//!
//! The brief asks that every limit emit "approached" and "hit" events from the day it ships,
//! because the first cohort's data cannot be recovered later. Each time the scorer sees an
//! account at a stage of a day or month limit (70 %, 85 %, 95 %: `approached`; the last
//! stage: `hit`) that it has not recorded for that window, it writes one row per stage reached
//! to ClickHouse `limit_stage_crossings` (the `limit_events` view), then remembers it in
//! PostgreSQL `limit_stage_crossings`. The order matters: remembered only after the write
//! lands; a crash in between writes the same row again, and the view folds it.
//!
//! The time of a crossing is *event time*: the minute in which the account's cumulative usage
//! in the window, replayed from ClickHouse's minute rollup, first reached the stage. So a
//! time-to-limit measured from signup means what it says even when the scorer runs late or
//! events arrive in a backfill. Session counts (distinct sessions) have no minute replay and
//! use the time the scorer saw them.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use clickhouse::Row;
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::{LimitMetric, LimitWindow, QuotaConfig, TierConfig};
use serde::{Deserialize, Serialize};

use crate::score::Scores;
use crate::store::ScoreStore;
use crate::ScoreError;

/// A stage of a limit in a window, reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub limit_name: String,
    pub window: LimitWindow,
    pub metric: LimitMetric,
    pub window_id: String,
    pub window_start: DateTime<Utc>,
    pub stage: u32,
    /// `approached` below the last stage, `hit` at it.
    pub kind: &'static str,
    pub used: f64,
    pub limit: f64,
}

/// Every stage at or below the one each day and month limit is at now.
pub fn crossings(s: &Scores, stages: &[u32]) -> Vec<Crossing> {
    let last = stages.last().copied().unwrap_or(100);
    let mut out = Vec::new();
    for l in &s.limits {
        let st = &l.status;
        let (Some(at), Some(used)) = (st.stage, st.used) else {
            continue;
        };
        let grain = match st.window {
            LimitWindow::Day => Grain::Day,
            LimitWindow::Month => Grain::Month,
            LimitWindow::Session => continue,
        };
        let start = grain.window_start(s.scored_at);
        for stage in stages.iter().copied().filter(|x| *x <= at) {
            out.push(Crossing {
                limit_name: st.name.clone(),
                window: st.window,
                metric: st.metric,
                window_id: grain.stamp(start),
                window_start: start,
                stage,
                kind: if stage >= last { "hit" } else { "approached" },
                used,
                limit: st.limit,
            });
        }
    }
    out
}

/// One minute of one model's usage, from `usage_minute`.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct MinuteUsage {
    pub minute: u32,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
}

/// The first minute (from `from` on) in which the cumulative amount of `metric` reached
/// `stage` percent of `limit`. Rows must be in minute order.
pub fn crossing_minute(
    rows: &[MinuteUsage],
    from: DateTime<Utc>,
    metric: LimitMetric,
    limit: f64,
    stage: u32,
    quota: &QuotaConfig,
    tier: &TierConfig,
) -> Option<DateTime<Utc>> {
    if limit <= 0.0 {
        return None;
    }
    let from = from.timestamp();
    let mut total = 0.0;
    let mut i = 0;
    while i < rows.len() {
        let minute = rows[i].minute;
        // A minute's models together, then the check: the stage is reached in a minute.
        while i < rows.len() && rows[i].minute == minute {
            let r = &rows[i];
            if i64::from(r.minute) >= from {
                total += match metric {
                    LimitMetric::Requests => r.requests as f64,
                    LimitMetric::WeightedTokens => {
                        quota.model_tokens(&r.model, r.input_tokens as f64, r.output_tokens as f64)
                            * tier.weight_multiplier
                    }
                    LimitMetric::CostUsd => r.cost_micros as f64 / 1_000_000.0,
                    LimitMetric::Sessions => return None,
                };
            }
            i += 1;
        }
        // The same slack as `stage_of`: exactly 70 % of 1,000 is the 70 % stage.
        if total / limit * 100.0 + 1e-9 >= f64::from(stage) {
            return Utc.timestamp_opt(i64::from(minute), 0).single();
        }
    }
    None
}

/// A row of the ClickHouse `limit_stage_crossings` table, fields in column order.
#[derive(Row, Serialize)]
pub struct CrossingRow<'a> {
    pub event_id: String,
    pub occurred_at: u32,
    pub observed_at: u32,
    pub account_id: &'a str,
    pub plan: &'a str,
    pub limit_name: &'a str,
    pub window_id: &'a str,
    pub stage: u8,
    pub kind: &'a str,
    pub used: f64,
    pub limit_value: f64,
}

impl ScoreStore {
    /// Records the stage crossings in `s` that are not recorded yet. Returns how many.
    pub async fn record_crossings(
        &self,
        s: &Scores,
        quota: &QuotaConfig,
        tier: &TierConfig,
    ) -> Result<usize, ScoreError> {
        let all = crossings(s, &quota.stages);
        if all.is_empty() {
            return Ok(0);
        }
        let windows: Vec<&str> = all
            .iter()
            .map(|c| c.window_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let known: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT limit_name, window_id, stage FROM limit_stage_crossings WHERE account_id = $1 AND window_id = ANY($2)",
        )
        .bind(&s.account_id)
        .bind(&windows)
        .fetch_all(&self.pg)
        .await?;
        let known: HashSet<(String, String, u32)> = known
            .into_iter()
            .map(|(l, w, st)| (l, w, st.max(0) as u32))
            .collect();
        let new: Vec<Crossing> = all
            .into_iter()
            .filter(|c| !known.contains(&(c.limit_name.clone(), c.window_id.clone(), c.stage)))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        // One replay of the month (it holds the day) serves every new crossing.
        let month_start = Grain::Month.window_start(s.scored_at);
        let minutes: Vec<MinuteUsage> = self
            .clickhouse
            .query(
                "SELECT toUInt32(window_start) AS minute, model, sum(requests) AS requests,
                        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                        sum(cost_micros) AS cost_micros
                   FROM usage_minute
                  WHERE account_id = ? AND window_start >= toDateTime(?) AND window_start <= toDateTime(?)
                  GROUP BY minute, model ORDER BY minute, model",
            )
            .bind(&s.account_id)
            .bind(month_start.timestamp().max(0) as u32)
            .bind(s.scored_at.timestamp().max(0) as u32)
            .fetch_all()
            .await?;
        let mut at: BTreeMap<(String, String, u32), DateTime<Utc>> = BTreeMap::new();
        for c in &new {
            let when = crossing_minute(
                &minutes,
                c.window_start,
                c.metric,
                c.limit,
                c.stage,
                quota,
                tier,
            )
            .unwrap_or(s.scored_at);
            at.insert((c.limit_name.clone(), c.window_id.clone(), c.stage), when);
        }
        let mut insert = self
            .clickhouse
            .insert::<CrossingRow<'_>>("limit_stage_crossings")
            .await?;
        for c in &new {
            let when = at[&(c.limit_name.clone(), c.window_id.clone(), c.stage)];
            insert
                .write(&CrossingRow {
                    event_id: format!(
                        "{}:{}:{}:{}",
                        s.account_id, c.limit_name, c.window_id, c.stage
                    ),
                    occurred_at: when.timestamp().max(0) as u32,
                    observed_at: s.scored_at.timestamp().max(0) as u32,
                    account_id: &s.account_id,
                    plan: s.plan.as_str(),
                    limit_name: &c.limit_name,
                    window_id: &c.window_id,
                    stage: c.stage.min(255) as u8,
                    kind: c.kind,
                    used: c.used,
                    limit_value: c.limit,
                })
                .await?;
        }
        insert.end().await?;
        for c in &new {
            let when = at[&(c.limit_name.clone(), c.window_id.clone(), c.stage)];
            sqlx::query(
                "INSERT INTO limit_stage_crossings (account_id, limit_name, window_id, stage, occurred_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&s.account_id)
            .bind(&c.limit_name)
            .bind(&c.window_id)
            .bind(c.stage as i32)
            .bind(when)
            .execute(&self.pg)
            .await?;
        }
        Ok(new.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: u32, model: &str, requests: u64, input: u64, output: u64) -> MinuteUsage {
        MinuteUsage {
            minute,
            model: model.into(),
            requests,
            input_tokens: input,
            output_tokens: output,
            cost_micros: input + output,
        }
    }

    fn at(secs: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(i64::from(secs), 0).unwrap()
    }

    #[test]
    fn the_crossing_is_the_minute_the_cumulative_amount_reaches_the_stage() {
        let quota = QuotaConfig::default();
        let tier = meterline_schemas::limits::TiersConfig::default().free;
        let rows = [
            row(60, "gpt-4o-mini", 5, 0, 0),
            row(120, "gpt-4o-mini", 5, 0, 0),
            row(120, "llama-3-8b", 4, 0, 0),
            row(180, "gpt-4o-mini", 6, 0, 0),
        ];
        let f = |stage| {
            crossing_minute(
                &rows,
                at(0),
                LimitMetric::Requests,
                20.0,
                stage,
                &quota,
                &tier,
            )
        };
        // 5 (25 %), 14 (70 %: both models of minute 120 count together), 20 (100 %).
        assert_eq!(f(70), Some(at(120)));
        assert_eq!(f(95), Some(at(180)));
        assert_eq!(f(100), Some(at(180)));
        // Usage before the window's start does not count.
        assert_eq!(
            crossing_minute(
                &rows,
                at(120),
                LimitMetric::Requests,
                20.0,
                100,
                &quota,
                &tier
            ),
            None
        );
    }

    #[test]
    fn weighted_tokens_use_model_weights_and_the_tier_multiplier() {
        let quota = QuotaConfig::default();
        let tier = meterline_schemas::limits::TiersConfig::default().free;
        // gpt-4o-mini weighs 0.5; output tokens weigh 3: (100 + 3 × 100) × 0.5 = 200 a minute.
        let rows = [
            row(60, "gpt-4o-mini", 1, 100, 100),
            row(120, "gpt-4o-mini", 1, 100, 100),
        ];
        let weighted = quota.model_tokens("gpt-4o-mini", 100.0, 100.0);
        assert_eq!(weighted, 200.0);
        assert_eq!(
            crossing_minute(
                &rows,
                at(0),
                LimitMetric::WeightedTokens,
                400.0,
                100,
                &quota,
                &tier
            ),
            Some(at(120))
        );
        assert_eq!(
            crossing_minute(
                &rows,
                at(0),
                LimitMetric::WeightedTokens,
                400.0,
                70,
                &quota,
                &tier
            ),
            Some(at(120))
        );
        assert_eq!(
            crossing_minute(
                &rows,
                at(0),
                LimitMetric::WeightedTokens,
                400.0,
                50,
                &quota,
                &tier
            ),
            Some(at(60))
        );
        assert_eq!(
            crossing_minute(&rows, at(0), LimitMetric::Sessions, 4.0, 50, &quota, &tier),
            None
        );
    }
}
