//! The review queue: accounts in review ([`meterline_schemas::review`]) with their evidence,
//! and a person's decision on one. `meterline review list|show|confirm|clear` and the
//! admin-scoped `/v1/review` endpoints both come through here.
//!
//! A decision is not written to PostgreSQL here: it is an account event
//! (`review_confirmed` / `review_cleared`, with the actor, the reason and the abuse score the
//! person saw) produced to the `account-events` topic, acknowledged by Kafka like any event.
//! The aggregator applies it to the `accounts` row, whose trigger tells every read path, and
//! writes it to ClickHouse `account_events`; so the decision takes effect within seconds and
//! its history is where the growth and trust-and-safety teams already look.

use chrono::{DateTime, Utc};
use meterline_schemas::review::ReviewState;
use meterline_schemas::{avro, AccountEvent, AccountId, FieldError};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::app::TopicSchema;
use crate::producer::{EventProducer, OutgoingRecord, ProduceError};

/// An account in review, as the queue lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewEntry {
    #[schema(value_type = AccountId)]
    pub account_id: String,
    pub plan: String,
    pub state: ReviewState,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// Who put it there: a person, `meterline:scorer` or `meterline:high-confidence-rule`.
    #[schema(required)]
    pub actor: Option<String>,
    /// Why, in their words.
    #[schema(required)]
    pub reason: Option<String>,
    /// The abuse score the state was recorded at.
    #[schema(required)]
    pub recorded_score: Option<i32>,
    /// The abuse score now (the scorer's latest), with the rules that make it up.
    #[schema(required)]
    pub abuse_score: Option<i32>,
    pub abuse_reasons: Vec<String>,
}

/// One review event of an account's history.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct ReviewHistoryItem {
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    #[schema(required)]
    pub actor: Option<String>,
    #[schema(required)]
    pub reason: Option<String>,
    #[schema(required)]
    pub abuse_score: Option<i64>,
}

/// An account's review with its evidence.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewDetail {
    #[schema(value_type = AccountId)]
    pub account_id: String,
    pub plan: String,
    /// Null: not in review.
    #[schema(required)]
    pub review: Option<ReviewEntry>,
    /// The scorer's abuse score with its reasons (rule, points, detail), as last computed.
    #[schema(value_type = Option<Object>, required)]
    pub abuse: Option<Value>,
    /// Whether the scorer suspects the account now.
    #[schema(required)]
    pub abuse_suspected: Option<bool>,
    /// The inputs the scores were computed from (sessions today, median gap, input
    /// diversity, account age, …).
    #[schema(value_type = Option<Object>, required)]
    pub inputs: Option<Value>,
    #[schema(required)]
    pub scored_at: Option<DateTime<Utc>>,
    /// Every review event, oldest first.
    pub history: Vec<ReviewHistoryItem>,
}

/// A person's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Confirm,
    Clear,
}

impl Verdict {
    pub fn state(self) -> ReviewState {
        match self {
            Verdict::Confirm => ReviewState::Confirmed,
            Verdict::Clear => ReviewState::Cleared,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("account_id: {0:?} is not in review; there is nothing to clear")]
    NotInReview(String),
    #[error("review state: {0} (PostgreSQL)")]
    Postgres(#[from] sqlx::Error),
    #[error("kafka: {0}; the decision was not recorded, retry it")]
    Kafka(#[from] ProduceError),
    #[error("avro encoding: {0}")]
    Encode(String),
}

type EntryRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<Value>,
);

const ENTRY_SELECT: &str = "SELECT a.account_id, a.plan, a.review_state, COALESCE(a.review_changed_at, a.updated_at), a.review_actor, \
     a.review_reason, a.review_score, s.abuse, s.scores -> 'abuse' -> 'reasons' \
     FROM accounts a LEFT JOIN account_scores s USING (account_id)";

fn reasons(v: Option<Value>) -> Vec<String> {
    v.and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            format!(
                "{} (+{}): {}",
                r["rule"].as_str().unwrap_or("?"),
                r["points"].as_u64().unwrap_or(0),
                r["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn entry(row: EntryRow) -> Option<ReviewEntry> {
    let (account_id, plan, state, since, actor, reason, recorded, abuse, abuse_reasons) = row;
    Some(ReviewEntry {
        account_id,
        plan,
        // The column's CHECK constraint admits only known states.
        state: ReviewState::parse(&state)?,
        since,
        actor,
        reason,
        recorded_score: recorded,
        abuse_score: abuse,
        abuse_reasons: reasons(abuse_reasons),
    })
}

/// Accounts in review, most recent first; only `state` and only `account` when given.
pub async fn list(
    pool: &PgPool,
    state: Option<ReviewState>,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<ReviewEntry>, sqlx::Error> {
    let rows: Vec<EntryRow> = sqlx::query_as(&format!(
        "{ENTRY_SELECT} WHERE a.review_state IS NOT NULL \
         AND ($1::text IS NULL OR a.review_state = $1) AND ($2::text IS NULL OR a.account_id = $2) \
         ORDER BY a.review_changed_at DESC, a.account_id LIMIT $3"
    ))
    .bind(state.map(ReviewState::as_str))
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(entry).collect())
}

/// One account's review and evidence; `None` when the account is unknown and never scored.
pub async fn show(pool: &PgPool, account: &AccountId) -> Result<Option<ReviewDetail>, sqlx::Error> {
    let review = list(pool, None, Some(account.as_str()), 1)
        .await?
        .into_iter()
        .next();
    let plan: Option<(String,)> = sqlx::query_as("SELECT plan FROM accounts WHERE account_id = $1")
        .bind(account.as_str())
        .fetch_optional(pool)
        .await?;
    let scores: Option<(Value, DateTime<Utc>)> =
        sqlx::query_as("SELECT scores, scored_at FROM account_scores WHERE account_id = $1")
            .bind(account.as_str())
            .fetch_optional(pool)
            .await?;
    if plan.is_none() && scores.is_none() {
        return Ok(None);
    }
    let history: Vec<ReviewHistoryItem> = sqlx::query_as(
        "SELECT type AS kind, occurred_at, payload ->> 'actor' AS actor, payload ->> 'reason' AS reason, \
         (payload ->> 'abuse_score')::bigint AS abuse_score \
         FROM account_events WHERE account_id = $1 AND type LIKE 'review\\_%' \
         ORDER BY occurred_at, received_at",
    )
    .bind(account.as_str())
    .fetch_all(pool)
    .await?;
    let (scores, scored_at) = match scores {
        Some((v, at)) => (Some(v), Some(at)),
        None => (None, None),
    };
    Ok(Some(ReviewDetail {
        account_id: account.as_str().to_owned(),
        plan: plan.map(|(p,)| p).unwrap_or_else(|| "free".into()),
        review,
        abuse: scores.as_ref().map(|s| s["abuse"].clone()),
        abuse_suspected: scores.as_ref().and_then(|s| s["abuse_suspected"].as_bool()),
        inputs: scores.as_ref().map(|s| s["inputs"].clone()),
        scored_at,
        history,
    }))
}

/// Records a person's decision on `account`: checks it, and produces the account event to
/// Kafka (acks=all). Returns the event as recorded. Clearing needs the account to be in review;
/// confirming does not (a person may deny an account nobody flagged).
pub async fn decide(
    pool: &PgPool,
    producer: &EventProducer,
    topic: &TopicSchema,
    account: &AccountId,
    verdict: Verdict,
    actor: &str,
    reason: &str,
) -> Result<AccountEvent, ReviewError> {
    let now = Utc::now();
    // Checked before anything is looked up, so bad input is named first.
    AccountEvent::review(
        uuid::Uuid::new_v4().to_string(),
        now,
        account.clone(),
        verdict.state().event(),
        actor,
        reason,
        None,
    )?;
    let row: Option<(Option<String>, Option<i32>, Option<i32>)> = sqlx::query_as(
        "SELECT a.review_state, a.review_score, s.abuse \
         FROM accounts a LEFT JOIN account_scores s USING (account_id) WHERE a.account_id = $1",
    )
    .bind(account.as_str())
    .fetch_optional(pool)
    .await?;
    let (state, recorded, current) = row.unwrap_or((None, None, None));
    if verdict == Verdict::Clear && state.is_none() {
        return Err(ReviewError::NotInReview(account.as_str().to_owned()));
    }
    // The score the person decided at: a clearance's baseline for a new suspicion.
    let score = current.or(recorded).map(|s| s.max(0) as u32);
    let event = AccountEvent::review(
        uuid::Uuid::new_v4().to_string(),
        now,
        account.clone(),
        verdict.state().event(),
        actor,
        reason,
        score,
    )?;
    let payload = avro::encode(topic.schema_id, &topic.schema, &event)
        .map_err(|e| ReviewError::Encode(e.to_string()))?;
    producer
        .produce_all(
            &topic.topic,
            &[OutgoingRecord {
                key: account.as_str().to_owned(),
                payload,
            }],
        )
        .await?;
    tracing::info!(account_id = %account, kind = event.kind.as_str(), actor = event.actor.as_deref().unwrap_or(""), "review decision recorded");
    Ok(event)
}
