//! `GET /console/accounts/{id}`: one account, the page Slack deal alerts and HubSpot deals
//! link to.
//!
//! * profile: plan, company (domain and size), seats, signup, review state (PostgreSQL
//!   `accounts`);
//! * every score with its reasons, the limits with their stages and reset times, power use,
//!   escalation tags, shared keys and fingerprint matches, and the notes on what was held back
//!   (the scorer's latest `account_scores.scores`);
//! * the 30-day usage chart (ClickHouse `usage_day`, [`crate::chart`]);
//! * the signals timeline (`account_signals`), the notifications with their status and
//!   destination (`meterline_notifier::outbox::list`), the dashboard notices shown and clicked
//!   (`dashboard_notices`) and the experiment assignments (`experiment_assignments`).

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use meterline_schemas::AccountId;
use minijinja::context;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use super::{when, when_opt};
use crate::chart::{self, Chart};
use crate::error::{ConsoleError, Result};
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub plan: String,
    pub seats: Option<i64>,
    pub email_domain: Option<String>,
    pub company_size: Option<i64>,
    pub signed_up_at: String,
    pub churned_at: String,
    pub review_state: Option<String>,
    pub review_reason: Option<String>,
    pub review_actor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreView {
    pub name: &'static str,
    pub value: i64,
    pub reasons: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    pub name: String,
    pub used: String,
    pub limit: String,
    pub percent: String,
    pub stage: Option<u64>,
    pub resets_at: String,
    pub shape: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignalView {
    pub kind: String,
    pub episode: String,
    pub raised_at: String,
    pub last_seen_at: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoticeView {
    pub kind: String,
    pub message: String,
    pub plan: String,
    pub created_at: String,
    pub shown_at: String,
    pub clicked_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub id: i64,
    pub destination: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub delivered_to: String,
    pub last_error: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssignmentView {
    pub experiment: String,
    pub variant: String,
    pub signed_up_at: String,
    pub assigned_at: String,
}

/// Everything the account page shows.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub account_id: String,
    pub profile: Option<Profile>,
    pub scored_at: String,
    pub scores: Vec<ScoreView>,
    pub abuse_suspected: bool,
    pub power_user: Option<Value>,
    pub limits: Vec<LimitView>,
    pub tags: Vec<String>,
    pub notes: Vec<String>,
    pub shared_keys: Vec<Value>,
    pub multi_accounts: Vec<Value>,
    pub chart: Chart,
    pub signals: Vec<SignalView>,
    pub notifications: Vec<NotificationView>,
    pub notices: Vec<NoticeView>,
    pub assignments: Vec<AssignmentView>,
}

type ProfileRow = (
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn number(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x < 0.0 => "unlimited".into(),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn limits(scores: &Value) -> Vec<LimitView> {
    scores["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| LimitView {
            name: l["name"].as_str().unwrap_or("?").to_owned(),
            used: number(&l["used"]),
            limit: number(&l["limit"]),
            percent: l["ratio"]
                .as_f64()
                .map(|r| format!("{:.0} %", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            stage: l["stage"].as_u64(),
            resets_at: l["resets_at"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| when(t.with_timezone(&Utc)))
                .unwrap_or_else(|| "-".into()),
            shape: l["shape"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn array(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Reads the account's page; `None` when the account is unknown and was never scored.
pub async fn load(state: &ConsoleState, account: &AccountId) -> Result<Option<AccountView>> {
    let id = account.as_str();
    let pool = &state.pool;
    let now = Utc::now();
    let (profile, scores, usage) = tokio::join!(
        sqlx::query_as::<_, ProfileRow>(
            "SELECT plan, seats, email_domain, company_size, signed_up_at, churned_at, \
                    review_state, review_reason, review_actor FROM accounts WHERE account_id = $1",
        )
        .bind(id)
        .fetch_optional(pool),
        sqlx::query_as::<_, (Value, DateTime<Utc>)>(
            "SELECT scores, scored_at FROM account_scores WHERE account_id = $1",
        )
        .bind(id)
        .fetch_optional(pool),
        chart::usage(&state.clickhouse, id, now),
    );
    let (profile, scores) = (profile?, scores?);
    if profile.is_none() && scores.is_none() {
        return Ok(None);
    }
    let usage = usage?;
    let (signals, notifications, notices, assignments) = tokio::join!(
        sqlx::query_as::<_, (String, String, DateTime<Utc>, DateTime<Utc>, Value)>(
            "SELECT kind, episode, raised_at, last_seen_at, payload -> 'reasons' FROM account_signals \
             WHERE account_id = $1 ORDER BY raised_at DESC LIMIT 100",
        )
        .bind(id)
        .fetch_all(pool),
        meterline_notifier::outbox::list(pool, None, Some(id), 100),
        sqlx::query_as::<_, (String, String, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>)>(
            "SELECT kind, message, plan, created_at, shown_at, clicked_at, expires_at FROM dashboard_notices \
             WHERE account_id = $1 ORDER BY created_at DESC LIMIT 100",
        )
        .bind(id)
        .fetch_all(pool),
        sqlx::query_as::<_, (String, String, DateTime<Utc>, DateTime<Utc>)>(
            "SELECT experiment, variant, signed_up_at, assigned_at FROM experiment_assignments \
             WHERE account_id = $1 ORDER BY assigned_at",
        )
        .bind(id)
        .fetch_all(pool),
    );
    let (s, scored_at) = match scores {
        Some((s, at)) => (s, when(at)),
        None => (Value::Null, String::new()),
    };
    let score = |name: &'static str, key: &str| ScoreView {
        name,
        value: s[key]["value"].as_i64().unwrap_or(0),
        reasons: array(&s[key]["reasons"]),
    };
    Ok(Some(AccountView {
        account_id: id.to_owned(),
        profile: profile.map(
            |(
                plan,
                seats,
                email_domain,
                company_size,
                signed_up,
                churned,
                state,
                reason,
                actor,
            )| {
                Profile {
                    plan,
                    seats,
                    email_domain,
                    company_size,
                    signed_up_at: when_opt(signed_up),
                    churned_at: when_opt(churned),
                    review_state: state,
                    review_reason: reason,
                    review_actor: actor,
                }
            },
        ),
        scored_at,
        scores: if s.is_null() {
            Vec::new()
        } else {
            vec![
                score("Deal readiness", "deal_readiness"),
                score("PQL", "pql"),
                score("Abuse", "abuse"),
            ]
        },
        abuse_suspected: s["abuse_suspected"].as_bool().unwrap_or(false),
        power_user: Some(s["power_user"].clone()).filter(|v| !v.is_null()),
        limits: limits(&s),
        tags: strings(&s["tags"]),
        notes: strings(&s["notes"]),
        shared_keys: array(&s["shared_keys"]),
        multi_accounts: array(&s["multi_accounts"]),
        chart: chart::layout(&usage, now.date_naive()),
        signals: signals?
            .into_iter()
            .map(|(kind, episode, raised, last_seen, reasons)| SignalView {
                kind,
                episode,
                raised_at: when(raised),
                last_seen_at: when(last_seen),
                reasons: strings(&reasons),
            })
            .collect(),
        notifications: notifications?
            .into_iter()
            .map(|n| NotificationView {
                id: n.id,
                destination: n.destination,
                kind: n.kind.as_str().to_owned(),
                status: n.status.as_str().to_owned(),
                attempts: n.attempts,
                delivered_to: n.delivered_to.unwrap_or_default(),
                last_error: n.last_error.unwrap_or_default(),
                created_at: when(n.created_at),
            })
            .collect(),
        notices: notices?
            .into_iter()
            .map(
                |(kind, message, plan, created, shown, clicked, expires)| NoticeView {
                    kind,
                    message,
                    plan,
                    created_at: when(created),
                    shown_at: when_opt(shown),
                    clicked_at: when_opt(clicked),
                    expires_at: when(expires),
                },
            )
            .collect(),
        assignments: assignments?
            .into_iter()
            .map(
                |(experiment, variant, signed_up, assigned)| AssignmentView {
                    experiment,
                    variant,
                    signed_up_at: when(signed_up),
                    assigned_at: when(assigned),
                },
            )
            .collect(),
    }))
}

/// Parses an account id from a path, naming the field when it is not one.
pub fn account_id(raw: &str) -> Result<AccountId> {
    AccountId::parse(raw).map_err(|e| ConsoleError::BadRequest(format!("{e} (got {raw:?})")))
}

/// `GET /console/accounts/{id}`.
pub async fn page_for(state: &ConsoleState, session: &Session, raw: &str) -> Result<Page> {
    let account = account_id(raw)?;
    let view = load(state, &account)
        .instrument(tracing::info_span!("console_account", account_id = %account))
        .await?
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "account_id: {:?} is unknown and has not been scored",
                account.as_str()
            ))
        })?;
    render(
        "account.html",
        context! { session, a => view, title => account.as_str() },
    )
}

pub async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Page> {
    page_for(&state, &session, &id).await
}
