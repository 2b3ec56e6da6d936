//! Sessions: a token is exchanged once for a cookie, and the cookie names a row in PostgreSQL.
//!
//! * Sign-in takes an API token with the `console` scope (a viewer) or the `review` scope (may
//!   act; `admin` holds every scope), checked by ingest's [`TokenStore`]. A token limited to
//!   one account is refused: the console shows every account.
//! * The session id is 256 random bits, sent once in the cookie; PostgreSQL keeps only its
//!   SHA-256 (`console_sessions`), like API tokens. Each session has its own CSRF token, put in
//!   every form and checked on every `POST` in constant time.
//! * The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/console`, with `Max-Age` the
//!   session's life, and `Secure` when the console is reached over TLS: an `https://`
//!   `console.base_url`, `console.secure_cookies`, or a request that arrived with
//!   `X-Forwarded-Proto: https`.
//! * A session ends when it expires, when its person signs out, or when its token is revoked
//!   (every lookup joins `api_tokens`).
//!
//! The sign-in form itself is protected by a double-submit token: `GET /console/login` sets
//! a short-lived cookie and writes the same value in the form, and the `POST` must carry both.
//!
//! [`TokenStore`]: meterline_ingest::TokenStore

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Duration, Utc};
use meterline_ingest::{Principal, Scope};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::ConsoleConfig;
use crate::error::{ConsoleError, Result};
use crate::ConsoleState;

/// The session cookie's name.
pub const COOKIE: &str = "meterline_console";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "meterline_console_login";

/// A signed-in person: the token's name, what they may do, and the session's CSRF token.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub name: String,
    pub can_act: bool,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    #[serde(skip)]
    id_sha256: Vec<u8>,
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Equal strings, compared in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What a principal may do in the console; `None`: nothing, it may not sign in.
pub fn role(principal: &Principal) -> Result<bool> {
    if principal.account_id.is_some() {
        return Err(ConsoleError::Forbidden(format!(
            "token: {:?} is limited to one account; the console needs a token for every account",
            principal.name
        )));
    }
    let has = |s| principal.scopes.contains(&s);
    if has(Scope::Review) || has(Scope::Admin) {
        Ok(true)
    } else if has(Scope::Console) {
        Ok(false)
    } else {
        Err(ConsoleError::Forbidden(format!(
            "token: {:?} has neither the console nor the review scope (meterline tokens add NAME --scope console)",
            principal.name
        )))
    }
}

impl Session {
    /// Refuses a form whose `csrf` field is not this session's token.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<()> {
        match given {
            Some(g) if same(g, &self.csrf) => Ok(()),
            _ => Err(ConsoleError::Csrf),
        }
    }

    /// Refuses a viewer.
    pub fn require_act(&self) -> Result<()> {
        if self.can_act {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "{:?} signed in with the console scope, which can look but not act; acting needs a token with the review scope",
                self.name
            )))
        }
    }

    /// Starts a session for `principal`; returns it with the cookie value.
    pub async fn create(
        state: &ConsoleState,
        principal: &Principal,
        token: &str,
    ) -> Result<(Session, String)> {
        let can_act = role(principal)?;
        let id = random_token();
        let session = Session {
            name: principal.name.clone(),
            can_act,
            csrf: random_token(),
            expires_at: Utc::now() + Duration::minutes(i64::from(state.config.session_ttl_minutes)),
            id_sha256: sha256(&id),
        };
        // Old sessions go as new ones come: the table holds the live ones and a few more.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
            .execute(&state.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (session_sha256, token_sha256, token_name, can_act, csrf_token, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.id_sha256)
        .bind(&meterline_ingest::auth::hash_token(token)[..])
        .bind(&session.name)
        .bind(session.can_act)
        .bind(&session.csrf)
        .bind(session.expires_at)
        .execute(&state.pool)
        .await?;
        Ok((session, id))
    }

    /// The live session behind a cookie value, if any.
    pub async fn lookup(state: &ConsoleState, id: &str) -> Result<Option<Session>> {
        let id_sha256 = sha256(id);
        let row: Option<(String, bool, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT s.token_name, s.can_act, s.csrf_token, s.expires_at FROM console_sessions s \
             JOIN api_tokens t ON t.token_sha256 = s.token_sha256 AND t.revoked_at IS NULL \
             WHERE s.session_sha256 = $1 AND s.expires_at > now()",
        )
        .bind(&id_sha256)
        .fetch_optional(&state.pool)
        .await?;
        Ok(row.map(|(name, can_act, csrf, expires_at)| Session {
            name,
            can_act,
            csrf,
            expires_at,
            id_sha256,
        }))
    }

    /// Ends this session.
    pub async fn end(&self, state: &ConsoleState) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE session_sha256 = $1")
            .bind(&self.id_sha256)
            .execute(&state.pool)
            .await?;
        Ok(())
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self> {
        let refuse = ConsoleError::SignInFirst {
            redirect: parts.method == Method::GET,
        };
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(COOKIE) else {
            return Err(refuse);
        };
        Session::lookup(state, cookie.value()).await?.ok_or(refuse)
    }
}

/// Whether the console is reached over TLS, so its cookies must be `Secure`.
pub fn secure(config: &ConsoleConfig, headers: &HeaderMap) -> bool {
    config.secure_cookies
        || config.base_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A cookie with the console's flags.
pub fn cookie(
    name: &'static str,
    value: String,
    path: &'static str,
    max_age: Duration,
    secure: bool,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(path)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age.num_seconds()))
        .build()
}

/// The session cookie.
pub fn session_cookie(value: String, config: &ConsoleConfig, secure: bool) -> Cookie<'static> {
    cookie(
        COOKIE,
        value,
        "/console",
        Duration::minutes(i64::from(config.session_ttl_minutes)),
        secure,
    )
}

/// The cookie that removes the session cookie.
pub fn removal(secure: bool) -> Cookie<'static> {
    cookie(COOKIE, String::new(), "/console", Duration::zero(), secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn the_session_cookie_has_its_flags() {
        let c = session_cookie("v".into(), &ConsoleConfig::default(), true).to_string();
        for flag in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/console",
            "Max-Age=28800",
        ] {
            assert!(c.contains(flag), "{c} lacks {flag}");
        }
        let c = session_cookie("v".into(), &ConsoleConfig::default(), false).to_string();
        assert!(!c.contains("Secure"), "{c}");
    }

    fn principal(scopes: &[Scope], account: Option<&str>) -> Principal {
        Principal {
            name: "t".into(),
            scopes: scopes.to_vec(),
            account_id: account.map(String::from),
        }
    }

    #[test]
    fn roles_follow_scopes() {
        assert!(!role(&principal(&[Scope::Console], None)).unwrap());
        assert!(role(&principal(&[Scope::Review], None)).unwrap());
        assert!(role(&principal(&[Scope::Admin], None)).unwrap());
        assert!(role(&principal(&[Scope::Read, Scope::Ingest], None)).is_err());
        assert!(role(&principal(&[Scope::Review], Some("a"))).is_err());
    }
}
