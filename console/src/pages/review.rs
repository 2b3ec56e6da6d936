//! The review queue (issue 19's review actions, in a browser).
//!
//! * `GET /console/review`: the accounts in review, most recent first, each with its abuse
//!   reasons, its shared keys (distinct client networks in the minute and the day) and the
//!   accounts matching its signup fingerprints; then the accounts not in review whose scores
//!   hold key-sharing or fingerprint evidence (the key-sharing and multi-account signals do
//!   not put an account in review, a person may);
//! * `GET /console/review/{id}`: one account's review, evidence, inputs and history, with the
//!   confirm and clear forms for a person who may act;
//! * `POST /console/review/{id}/confirm|clear` with a `reason`: the decision, recorded by
//!   `meterline_ingest::read::review::decide` as an account event (actor: the token's name),
//!   exactly as `meterline review` and `POST /v1/review/{id}/…` record it. The read path
//!   follows within seconds: a confirmed account's quota checks answer `deny`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use meterline_ingest::read::review::{self, ReviewError, Verdict};
use minijinja::context;
use serde::Deserialize;
use serde_json::Value;

use super::account::account_id;
use super::{required, when, Fields};
use crate::audit::{self, Entry};
use crate::config::percent_encode;
use crate::error::{ConsoleError, Result};
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

/// The evidence beside an account's abuse score: shared keys and fingerprint matches.
async fn evidence(state: &ConsoleState, ids: &[String]) -> Result<HashMap<String, (Value, Value)>> {
    let rows: Vec<(String, Value, Value)> = sqlx::query_as(
        "SELECT account_id, COALESCE(scores -> 'shared_keys', '[]'), COALESCE(scores -> 'multi_accounts', '[]') \
         FROM account_scores WHERE account_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&state.pool)
    .await?;
    Ok(rows.into_iter().map(|(id, k, m)| (id, (k, m))).collect())
}

/// `GET /console/review`.
pub async fn queue(State(state): State<ConsoleState>, session: Session) -> Result<Page> {
    let entries = review::list(&state.pool, None, None, 200).await?;
    let ids: Vec<String> = entries.iter().map(|e| e.account_id.clone()).collect();
    let mut evidence = evidence(&state, &ids).await?;
    let rows: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let (keys, matches) = evidence
                .remove(&e.account_id)
                .unwrap_or((Value::Null, Value::Null));
            let since = when(e.since);
            context! { e, since, keys, matches }
        })
        .collect();
    // Key sharing and linked accounts: the scorer raises signals for them but does not put
    // the account in review; a person may, from here.
    let others: Vec<(String, String, Option<i32>, Value, Value)> = sqlx::query_as(
        "SELECT account_id, COALESCE(a.plan, ''), s.abuse, s.scores -> 'shared_keys', s.scores -> 'multi_accounts' \
         FROM account_scores s LEFT JOIN accounts a USING (account_id) \
         WHERE s.abuse_evidence \
           AND NOT (account_id = ANY($1)) \
         ORDER BY s.abuse DESC, account_id LIMIT 200",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let others: Vec<_> = others
        .into_iter()
        .map(|(account_id, plan, abuse, keys, matches)| {
            context! { account_id, plan, abuse, keys, matches }
        })
        .collect();
    render(
        "review_queue.html",
        context! { session, title => "Review queue", rows, others },
    )
}

#[derive(Debug, Deserialize)]
pub struct Done {
    pub done: Option<String>,
}

/// `GET /console/review/{id}`.
pub async fn account(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Page> {
    let account = account_id(&id)?;
    let detail = review::show(&state.pool, &account).await?.ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "account_id: {:?} is unknown and has not been scored",
            account.as_str()
        ))
    })?;
    let mut evidence = evidence(&state, &[account.as_str().to_owned()]).await?;
    let (keys, matches) = evidence
        .remove(account.as_str())
        .unwrap_or((Value::Null, Value::Null));
    let history: Vec<_> = detail
        .history
        .iter()
        .map(|h| context! { h, at => when(h.occurred_at) })
        .collect();
    let since = detail.review.as_ref().map(|r| when(r.since));
    let scored_at = super::when_opt(detail.scored_at);
    // Only known words come back from the redirect; anything else is not shown.
    let done = match done.done.as_deref() {
        Some("confirm") => Some("Confirmed: quota checks will answer deny within seconds."),
        Some("clear") => Some("Cleared: normal limits again within seconds."),
        _ => None,
    };
    let audit = audit::recent(&state.pool, Some(account.as_str()), 20).await?;
    let audit: Vec<_> = audit
        .into_iter()
        .map(|a| context! { a, at => when(a.at) })
        .collect();
    render(
        "review_account.html",
        context! {
            session,
            title => format!("Review: {}", account.as_str()),
            d => detail,
            since,
            scored_at,
            keys,
            matches,
            history,
            done,
            audit,
        },
    )
}

/// `POST /console/review/{id}/confirm|clear`.
pub async fn decide(
    State(state): State<ConsoleState>,
    session: Session,
    Path((id, verdict)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Result<Response> {
    let verdict = match verdict.as_str() {
        "confirm" => Verdict::Confirm,
        "clear" => Verdict::Clear,
        other => {
            return Err(ConsoleError::NotFound(format!(
                "verdict: {other:?} is not confirm or clear"
            )))
        }
    };
    let action = match verdict {
        Verdict::Confirm => "review_confirm",
        Verdict::Clear => "review_clear",
    };
    let account = account_id(&id)?;
    audit::admit(
        &state,
        &session,
        fields.get("csrf").map(String::as_str),
        Entry {
            action,
            account_id: Some(account.as_str()),
            ..Default::default()
        },
    )
    .await?;
    let reason = required(&fields, "reason", 2000)?;
    let result = review::decide(
        &state.pool,
        &state.producer,
        &state.account_topic,
        &account,
        verdict,
        &session.name,
        reason,
    )
    .await;
    let outcome = match &result {
        Ok(_) => "done".to_owned(),
        Err(e) => format!("failed: {e}"),
    };
    audit::record(
        &state,
        Entry {
            actor: &session.name,
            action,
            account_id: Some(account.as_str()),
            reason: Some(reason),
            outcome: &outcome,
            ..Default::default()
        },
    )
    .await?;
    result.map_err(|e| {
        let message = e.to_string();
        match e {
            ReviewError::Field(_) | ReviewError::NotInReview(_) => {
                ConsoleError::BadRequest(message)
            }
            ReviewError::Postgres(_) | ReviewError::Kafka(_) => ConsoleError::Unavailable(message),
            ReviewError::Encode(_) => ConsoleError::Internal(message),
        }
    })?;
    let done = match verdict {
        Verdict::Confirm => "confirm",
        Verdict::Clear => "clear",
    };
    Ok(Redirect::to(&format!(
        "/console/review/{}?done={done}",
        percent_encode(account.as_str())
    ))
    .into_response())
}
