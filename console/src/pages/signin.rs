//! Signing in and out.
//!
//! * `GET /console/login`: the form (a token field), with a double-submit CSRF token;
//! * `POST /console/login`: checks the token (scope `console` or `review`), starts a session,
//!   sets the cookie and goes to the console's first page;
//! * `POST /console/logout`: ends the session (CSRF-checked) and removes the cookie.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::CookieJar;
use chrono::Duration;
use meterline_ingest::error::ApiError;
use minijinja::context;

use super::Fields;
use crate::audit::{self, Entry};
use crate::error::{ConsoleError, Result};
use crate::session::{self, Session, LOGIN_COOKIE};
use crate::templates::page;
use crate::ConsoleState;

fn login_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    jar: CookieJar,
    error: Option<String>,
) -> Result<Response> {
    let csrf = session::random_token();
    let jar = jar.add(session::cookie(
        LOGIN_COOKIE,
        csrf.clone(),
        "/console/login",
        Duration::hours(1),
        session::secure(&state.config, headers),
    ));
    let status = if error.is_some() {
        axum::http::StatusCode::UNAUTHORIZED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, jar, page("login.html", context! { csrf, error })?).into_response())
}

/// `GET /console/login`.
pub async fn form(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response> {
    login_page(&state, &headers, jar, None)
}

/// `POST /console/login`.
pub async fn sign_in(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(fields): Form<Fields>,
) -> Result<Response> {
    let expected = jar.get(LOGIN_COOKIE).map(|c| c.value().to_owned());
    match (expected, fields.get("csrf")) {
        (Some(e), Some(g)) if session::same(&e, g) => {}
        _ => return Err(ConsoleError::Csrf),
    }
    let token = super::required(&fields, "token", 200)?;
    let principal = match state
        .tokens
        .authenticate(Some(&format!("Bearer {token}")))
        .await
    {
        Ok(p) => p,
        Err(ApiError::Unauthorized(_)) => {
            audit::record(
                &state,
                Entry {
                    actor: "-",
                    action: "sign_in",
                    outcome: "refused: unknown or revoked token",
                    ..Default::default()
                },
            )
            .await?;
            return login_page(
                &state,
                &headers,
                jar,
                Some("token: unknown or revoked".into()),
            );
        }
        Err(e) => return Err(ConsoleError::Unavailable(e.to_string())),
    };
    let (session, id) = match Session::create(&state, &principal, token).await {
        Ok(s) => s,
        Err(e) => {
            if let ConsoleError::Forbidden(why) = &e {
                audit::record(
                    &state,
                    Entry {
                        actor: &principal.name,
                        action: "sign_in",
                        outcome: &format!("refused: {why}"),
                        ..Default::default()
                    },
                )
                .await?;
            }
            return Err(e);
        }
    };
    audit::record(
        &state,
        Entry {
            actor: &session.name,
            action: "sign_in",
            outcome: if session.can_act {
                "done: reviewer"
            } else {
                "done: viewer"
            },
            ..Default::default()
        },
    )
    .await?;
    let secure = session::secure(&state.config, &headers);
    let jar = jar
        .add(session::session_cookie(id, &state.config, secure))
        .add(session::cookie(
            LOGIN_COOKIE,
            String::new(),
            "/console/login",
            Duration::zero(),
            secure,
        ));
    Ok((jar, Redirect::to("/console")).into_response())
}

/// `POST /console/logout`.
pub async fn sign_out(
    State(state): State<ConsoleState>,
    session: Session,
    headers: HeaderMap,
    jar: CookieJar,
    Form(fields): Form<Fields>,
) -> Result<Response> {
    session.check_csrf(fields.get("csrf").map(String::as_str))?;
    session.end(&state).await?;
    audit::record(
        &state,
        Entry {
            actor: &session.name,
            action: "sign_out",
            outcome: "done",
            ..Default::default()
        },
    )
    .await?;
    let jar = jar.add(session::removal(session::secure(&state.config, &headers)));
    Ok((jar, Redirect::to("/console/login")).into_response())
}
