//! Where scores and signals go.
//!
//! * Current scores: PostgreSQL `account_scores` (served at `GET /v1/accounts/{id}/scores`).
//! * Score history: ClickHouse `account_scores`, one row each time a score or tag changes.
//! * Signals: the `account-signals` topic, once per (account, kind, episode). The episode is
//!   claimed in PostgreSQL `account_signals` and the record produced *inside* that transaction:
//!   the claim commits only after Kafka acknowledged, so a failed produce leaves the episode
//!   unclaimed (it is raised on the next pass) and a restart never raises a claimed one again.
//!   (A crash between Kafka's ack and the commit can produce it twice; the dedup key travels
//!   with the record so consumers can tell.)
//! * Review moves ([`meterline_schemas::review`]): a suspicion, the high-confidence rule's
//!   denial, the end of a suspicion, as account events on the `account-events` topic. The
//!   aggregator applies them to the `accounts` row (so they are ordered with people's decisions
//!   on the same partition); their ids are derived from the account's `review_seq`, so the same
//!   move decided again before the first is applied is one event. The scorer's own bookkeeping,
//!   when it last found the account suspected (which bounds an episode), is
//!   `account_scores.last_suspected_at`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use meterline_schemas::avro::Schema;
use meterline_schemas::review::{
    scorer_event_id, Assessment, ReviewAction, ReviewConfig, ReviewRecord, ReviewState,
};
use meterline_schemas::{AccountEvent, AccountId, AccountSignal, SignalKind};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use sqlx::PgPool;

use crate::score::{Scores, Signal};
use crate::ScoreError;

#[derive(Clone)]
pub struct SignalTopic {
    pub topic: String,
    pub schema_id: i32,
    pub schema: Arc<Schema>,
}

#[derive(Clone)]
pub struct ScoreStore {
    pub pg: PgPool,
    pub clickhouse: clickhouse::Client,
    pub producer: FutureProducer,
    pub signals: SignalTopic,
    /// How long a rate-limit episode stays open after its last minute over the limit.
    pub episode_quiet: chrono::Duration,
    /// Where review moves go: the `account-events` topic and the account event schema.
    pub account_events: SignalTopic,
    pub review: Arc<ReviewConfig>,
}

/// A row of the ClickHouse `account_scores` table, fields in column order.
#[derive(Row, Serialize)]
pub struct HistoryRow {
    pub account_id: String,
    pub scored_at: u32,
    pub plan: String,
    pub deal_readiness: u8,
    pub pql: u8,
    pub abuse: u8,
    pub abuse_suspected: u8,
    pub power_user: u8,
    pub tags: Vec<String>,
    pub reasons: String,
}

/// Sets or clears the scorer's abuse flag (`accounts.abuse_flagged_at`: the score is at the
/// suspected threshold now). It decides nothing by itself: enforcement follows the review
/// state ([`ScoreStore::review`]).
pub async fn set_abuse_flag(
    pool: &PgPool,
    account: &str,
    flagged: bool,
) -> Result<(), sqlx::Error> {
    // Only a change writes (and so notifies the read path); clearing never creates a row.
    let sql = if flagged {
        "INSERT INTO accounts (account_id, abuse_flagged_at) VALUES ($1, now()) \
         ON CONFLICT (account_id) DO UPDATE SET abuse_flagged_at = now(), updated_at = now() \
         WHERE accounts.abuse_flagged_at IS NULL"
    } else {
        "UPDATE accounts SET abuse_flagged_at = NULL, updated_at = now() \
         WHERE account_id = $1 AND abuse_flagged_at IS NOT NULL"
    };
    sqlx::query(sql).bind(account).execute(pool).await?;
    Ok(())
}

fn summary(s: &Scores) -> (u32, u32, u32, bool, bool, Vec<String>) {
    (
        s.deal_readiness.value,
        s.pql.value,
        s.abuse.value,
        s.abuse_suspected,
        s.power_user.is_some(),
        s.tags.clone(),
    )
}

impl ScoreStore {
    /// Saves current scores; appends history when anything a person would notice changed.
    /// Returns when the account was last suspected before this scoring (for
    /// [`ScoreStore::review`]).
    pub async fn save(&self, s: &Scores) -> Result<Option<DateTime<Utc>>, ScoreError> {
        let json = serde_json::to_value(s).map_err(|e| ScoreError::Encode(e.to_string()))?;
        let previous: Option<(serde_json::Value, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT scores, last_suspected_at FROM account_scores WHERE account_id = $1",
        )
        .bind(&s.account_id)
        .fetch_optional(&self.pg)
        .await?;
        let last_suspected = previous.as_ref().and_then(|(_, at)| *at);
        let changed = previous
            .and_then(|(p, _)| serde_json::from_value::<PreviousSummary>(p).ok())
            .is_none_or(|p| p.summary() != summary(s));
        if changed {
            let mut insert = self
                .clickhouse
                .insert::<HistoryRow>("account_scores")
                .await?;
            insert
                .write(&HistoryRow {
                    account_id: s.account_id.clone(),
                    scored_at: s.scored_at.timestamp().max(0) as u32,
                    plan: s.plan.as_str().into(),
                    deal_readiness: s.deal_readiness.value as u8,
                    pql: s.pql.value as u8,
                    abuse: s.abuse.value as u8,
                    abuse_suspected: u8::from(s.abuse_suspected),
                    power_user: u8::from(s.power_user.is_some()),
                    tags: s.tags.clone(),
                    reasons: serde_json::to_string(&HistoryReasons {
                        abuse: &s.abuse.reasons,
                        deal_readiness: &s.deal_readiness.reasons,
                        pql: &s.pql.reasons,
                    })
                    .unwrap_or_default(),
                })
                .await?;
            insert.end().await?;
        }
        sqlx::query(
            "INSERT INTO account_scores (account_id, deal_readiness, pql, abuse, scores, scored_at, last_suspected_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (account_id) DO UPDATE SET deal_readiness = EXCLUDED.deal_readiness, pql = EXCLUDED.pql, \
             abuse = EXCLUDED.abuse, scores = EXCLUDED.scores, scored_at = EXCLUDED.scored_at, \
             last_suspected_at = COALESCE(EXCLUDED.last_suspected_at, account_scores.last_suspected_at)",
        )
        .bind(&s.account_id)
        .bind(s.deal_readiness.value as i32)
        .bind(s.pql.value as i32)
        .bind(s.abuse.value as i32)
        .bind(&json)
        .bind(s.scored_at)
        .bind(s.abuse_suspected.then_some(s.scored_at))
        .execute(&self.pg)
        .await?;
        set_abuse_flag(&self.pg, &s.account_id, s.abuse_suspected).await?;
        Ok(last_suspected)
    }

    /// Makes the review move the scores call for, if any ([`ReviewConfig::next_action`]):
    /// produces it to `account-events` and returns it. `last_suspected` is what [`Self::save`]
    /// returned.
    pub async fn review(
        &self,
        s: &Scores,
        last_suspected: Option<DateTime<Utc>>,
    ) -> Result<Option<ReviewAction>, ScoreError> {
        let row: Option<(Option<String>, Option<i32>, i64)> = sqlx::query_as(
            "SELECT review_state, review_score, review_seq FROM accounts WHERE account_id = $1",
        )
        .bind(&s.account_id)
        .fetch_optional(&self.pg)
        .await?;
        let record = row
            .map(|(state, score, seq)| ReviewRecord {
                state: state.as_deref().and_then(ReviewState::parse),
                score: score.map(|v| v.max(0) as u32),
                seq,
            })
            .unwrap_or_default();
        let assessment = Assessment {
            plan: s.plan,
            score: s.abuse.value,
            suspected: s.abuse_suspected,
            age_hours: s.inputs.age_hours,
            at: s.scored_at,
            last_suspected_at: last_suspected,
        };
        let Some(action) = self.review.next_action(&record, &assessment) else {
            return Ok(None);
        };
        let reasons: Vec<String> = s
            .abuse
            .reasons
            .iter()
            .map(|r| format!("{} (+{}): {}", r.rule, r.points, r.detail))
            .collect();
        let mut reason = match action {
            ReviewAction::Suspect => {
                format!("abuse score {}: {}", s.abuse.value, reasons.join("; "))
            }
            ReviewAction::AutoDeny => format!(
                "high-confidence rule: a free account {:.2} h old (< {} h) with abuse score {} (>= {}): {}",
                s.inputs.age_hours.unwrap_or_default(),
                self.review.auto_deny_max_age_hours,
                s.abuse.value,
                self.review.auto_deny_min_score,
                reasons.join("; ")
            ),
            ReviewAction::Expire => format!(
                "not suspected since {}: {} whole day(s) without suspicion end the episode",
                last_suspected.map(|t| t.to_rfc3339()).unwrap_or_else(|| "ever".into()),
                self.review.episode_quiet_days
            ),
        };
        if reason.chars().count() > 1_900 {
            reason = reason.chars().take(1_900).collect::<String>() + "…";
        }
        let kind = action.event();
        let account =
            AccountId::parse(&s.account_id).map_err(|e| ScoreError::Encode(e.to_string()))?;
        let event = AccountEvent::review(
            scorer_event_id(&s.account_id, kind, record.seq),
            s.scored_at,
            account,
            kind,
            action.actor(),
            &reason,
            Some(s.abuse.value),
        )
        .map_err(|e| ScoreError::Encode(e.to_string()))?;
        let topic = &self.account_events;
        let payload = meterline_schemas::avro::encode(topic.schema_id, &topic.schema, &event)
            .map_err(|e| ScoreError::Encode(e.to_string()))?;
        self.producer
            .send(
                FutureRecord::to(&topic.topic)
                    .key(&s.account_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| ScoreError::Kafka(e.to_string()))?;
        Ok(Some(action))
    }

    /// Raises `sig` unless its episode was raised before. Returns whether it was raised now.
    pub async fn raise(&self, sig: &Signal) -> Result<bool, ScoreError> {
        let mut episode = sig.episode.clone();
        if sig.kind == SignalKind::RateLimitSustained {
            // An episode lasts until `episode_quiet` passes without a minute over the limit.
            let latest: Option<(String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT episode, last_seen_at FROM account_signals WHERE account_id = $1 AND kind = $2 \
                 ORDER BY last_seen_at DESC LIMIT 1",
            )
            .bind(&sig.account_id)
            .bind(sig.kind.as_str())
            .fetch_optional(&self.pg)
            .await?;
            let run_start = parse_minute(&sig.episode);
            if let (Some((open, last_seen)), Some(start)) = (latest, run_start) {
                if start - last_seen <= self.episode_quiet {
                    episode = open;
                }
            }
        }
        let dedup_key = format!("{}:{}:{}", sig.account_id, sig.kind.as_str(), episode);
        let last_seen = sig.last_seen.unwrap_or(sig.raised_at);
        let mut tx = self.pg.begin().await?;
        let claimed: Option<(String,)> = sqlx::query_as(
            "INSERT INTO account_signals (dedup_key, account_id, kind, episode, raised_at, last_seen_at, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key",
        )
        .bind(&dedup_key)
        .bind(&sig.account_id)
        .bind(sig.kind.as_str())
        .bind(&episode)
        .bind(sig.raised_at)
        .bind(last_seen)
        .bind(serde_json::to_value(sig).map_err(|e| ScoreError::Encode(e.to_string()))?)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            sqlx::query(
                "UPDATE account_signals SET last_seen_at = GREATEST(last_seen_at, $2) WHERE dedup_key = $1",
            )
            .bind(&dedup_key)
            .bind(last_seen)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(false);
        }
        let record = AccountSignal {
            signal_id: dedup_key.clone(),
            kind: sig.kind,
            account_id: sig.account_id.clone(),
            episode: episode.clone(),
            raised_at: sig.raised_at.timestamp_micros(),
            plan: sig.plan.as_str().to_owned(),
            deal_readiness: sig.deal_readiness as i32,
            pql: sig.pql as i32,
            abuse: sig.abuse as i32,
            reasons: sig.reasons.clone(),
            evidence: sig.evidence.to_string(),
        };
        let payload = record
            .encode(self.signals.schema_id, &self.signals.schema)
            .map_err(|e| ScoreError::Encode(e.to_string()))?;
        self.producer
            .send(
                FutureRecord::to(&self.signals.topic)
                    .key(&sig.account_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| ScoreError::Kafka(e.to_string()))?;
        tx.commit().await?;
        Ok(true)
    }
}

fn parse_minute(stamp: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(&format!("{stamp}00"), "%Y%m%d%H%M%S")
        .ok()
        .map(|n| n.and_utc())
}

/// The fields of a saved score that decide whether history gets a row.
#[derive(serde::Deserialize)]
struct PreviousSummary {
    deal_readiness: ValueOnly,
    pql: ValueOnly,
    abuse: ValueOnly,
    abuse_suspected: bool,
    power_user: Option<serde_json::Value>,
    tags: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ValueOnly {
    value: u32,
}

impl PreviousSummary {
    fn summary(&self) -> (u32, u32, u32, bool, bool, Vec<String>) {
        (
            self.deal_readiness.value,
            self.pql.value,
            self.abuse.value,
            self.abuse_suspected,
            self.power_user.is_some(),
            self.tags.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn minute_stamps_parse() {
        assert_eq!(
            parse_minute("202611221205"),
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 12, 5, 0).unwrap())
        );
        assert_eq!(parse_minute("nonsense"), None);
    }
}

/// The `reasons` JSON of a score-history row: each score's reasons by score name (in the
/// order `serde_json::json!` wrote them before, so the history's text is unchanged).
#[derive(serde::Serialize)]
struct HistoryReasons<'a> {
    abuse: &'a [crate::rules::Reason],
    deal_readiness: &'a [crate::rules::Reason],
    pql: &'a [crate::rules::Reason],
}
