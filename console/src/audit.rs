//! The console's audit trail: every action with who (the token's name), what, on what, why
//! and how it ended, in PostgreSQL `console_audit`. Refused actions (a viewer acting, a form
//! without its CSRF token) are recorded too, as `refused` with the reason.

use serde::Serialize;
use sqlx::PgPool;

use crate::error::Result;
use crate::session::Session;
use crate::ConsoleState;

/// One action.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Entry<'a> {
    /// The token's name; `-` before sign-in.
    pub actor: &'a str,
    /// `sign_in`, `sign_out`, `review_confirm`, `review_clear`, `notification_retry`.
    pub action: &'a str,
    pub account_id: Option<&'a str>,
    /// What else it was about (a notification id).
    pub target: Option<&'a str>,
    /// The person's reason, for decisions.
    pub reason: Option<&'a str>,
    /// `done`, or `refused: …` / `failed: …`.
    pub outcome: &'a str,
}

/// Writes `e` to `console_audit` and counts it (`meterline_console_actions_total`).
pub async fn record(state: &ConsoleState, e: Entry<'_>) -> Result<(), sqlx::Error> {
    state.metrics.action(e.action, e.outcome);
    let pool = &state.pool;
    sqlx::query(
        "INSERT INTO console_audit (actor, action, account_id, target, reason, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.actor)
    .bind(e.action)
    .bind(e.account_id)
    .bind(e.target)
    .bind(e.reason)
    .bind(e.outcome)
    .execute(pool)
    .await?;
    tracing::info!(
        actor = e.actor,
        action = e.action,
        account_id = e.account_id.unwrap_or(""),
        outcome = e.outcome,
        "console action"
    );
    Ok(())
}

/// The steps before any action: the form's CSRF token (`csrf`) must be the session's, and
/// the session must be allowed to act. A refused action is recorded as `entry` by the
/// session's name with the outcome `refused: <why>`, and the refusal returned; an admitted one
/// records nothing yet (its handler records how it ended).
pub async fn admit(
    state: &ConsoleState,
    session: &Session,
    csrf: Option<&str>,
    entry: Entry<'_>,
) -> Result<()> {
    let Err(e) = session
        .check_csrf(csrf)
        .and_then(|()| session.require_act())
    else {
        return Ok(());
    };
    record(
        state,
        Entry {
            actor: &session.name,
            outcome: &format!("refused: {e}"),
            ..entry
        },
    )
    .await?;
    Err(e)
}

/// A recorded action, as the audit page lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recorded {
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub account_id: Option<String>,
    pub target: Option<String>,
    pub reason: Option<String>,
    pub outcome: String,
}

/// The latest actions, newest first; only `account`'s when given.
pub async fn recent(
    pool: &PgPool,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, actor, action, account_id, target, reason, outcome FROM console_audit \
         WHERE ($1::text IS NULL OR account_id = $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(account)
    .bind(limit)
    .fetch_all(pool)
    .await
}
