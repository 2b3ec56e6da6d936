//! `GET /console`: the first page after sign-in (the lists with their sizes, search) and
//! `GET /console/search?q=`: an account by id or email domain.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::lists::{self, List, ListQuery, Request};
use crate::config::percent_encode;
use crate::error::{ConsoleError, Result};
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

/// `GET /console`.
pub async fn page(State(state): State<ConsoleState>, session: Session) -> Result<Page> {
    // Each list's size, counted at once on the pool's connections.
    let totals = futures::future::try_join_all(List::ALL.into_iter().map(|list| {
        let state = &state;
        async move {
            let req = Request::parse(list.slug(), &ListQuery::default())?;
            lists::count(&state.pool, state.thresholds, &req).await
        }
    }))
    .await?;
    let counts: Vec<_> = List::ALL
        .into_iter()
        .zip(totals)
        .map(|(list, total)| context! { slug => list.slug(), title => list.title(), total })
        .collect();
    render(
        "home.html",
        context! { session, title => "Overview", counts },
    )
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    pub q: Option<String>,
}

/// `GET /console/search?q=`: one exact account id goes straight to its page; otherwise the
/// accounts whose id starts with the text or whose email domain is it (at most 100).
pub async fn search(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<SearchQuery>,
) -> Result<Response> {
    let text = q.q.as_deref().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err(ConsoleError::BadRequest(
            "q: required (an account id or an email domain)".into(),
        ));
    }
    if text.chars().count() > 256 {
        return Err(ConsoleError::BadRequest(
            "q: longer than 256 characters".into(),
        ));
    }
    let exact: Option<(String,)> =
        sqlx::query_as("SELECT account_id FROM accounts WHERE account_id = $1")
            .bind(text)
            .fetch_optional(&state.pool)
            .await?;
    if let Some((id,)) = exact {
        return Ok(
            Redirect::to(&format!("/console/accounts/{}", percent_encode(&id))).into_response(),
        );
    }
    let pattern = format!(
        "{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT account_id, plan, email_domain FROM accounts \
         WHERE account_id LIKE $1 OR lower(email_domain) = lower($2) \
         ORDER BY account_id LIMIT 100",
    )
    .bind(&pattern)
    .bind(text)
    .fetch_all(&state.pool)
    .await?;
    let results: Vec<_> = rows
        .into_iter()
        .map(|(account_id, plan, email_domain)| context! { account_id, plan, email_domain })
        .collect();
    Ok(render(
        "home.html",
        context! { session, title => "Search", q => text, results, searched => true },
    )?
    .into_response())
}
