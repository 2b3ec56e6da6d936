//! What can go wrong in a console request, and the page each answer is.
//!
//! Every error is an HTML page (the same layout, escaped like every page) with a status that
//! says what happened: a request without a session is sent to sign in (`GET`) or refused with
//! `401` (`POST`), a viewer's action and a bad CSRF token are `403`, bad input names its field.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No live session: sign in first.
    #[error("sign in first")]
    SignInFirst { redirect: bool },
    #[error("{0}")]
    Forbidden(String),
    /// A form without the session's CSRF token.
    #[error(
        "csrf: the form's token is missing or not this session's; reload the page and try again"
    )]
    Csrf,
    /// Bad input: names the field and the reason.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A store is down or refused; the message says which.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        ConsoleError::Unavailable(format!("PostgreSQL: {e}"))
    }
}

impl From<clickhouse::error::Error> for ConsoleError {
    fn from(e: clickhouse::error::Error) -> Self {
        ConsoleError::Unavailable(format!("ClickHouse: {e}"))
    }
}

impl From<minijinja::Error> for ConsoleError {
    fn from(e: minijinja::Error) -> Self {
        ConsoleError::Internal(format!("template: {e:#}"))
    }
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::SignInFirst { .. } => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let ConsoleError::SignInFirst { redirect: true } = self {
            return Redirect::to("/console/login").into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "console request failed");
        }
        let body = crate::templates::global()
            .render(
                "error.html",
                minijinja::context! { status => status.as_u16(), message => self.to_string() },
            )
            .unwrap_or_else(|e| format!("{status}: template error {e}"));
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;
