//! Bearer tokens.
//!
//! A token is shown once, when it is created, and only its SHA-256 is stored: the tokens are
//! 256 random bits, so a fast hash is enough (there is nothing to brute-force), and looking a
//! token up by its hash means the secret itself is never compared byte by byte.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Post usage and account events (gateways).
    Ingest,
    /// Read usage and decisions.
    Read,
    /// Manage the system.
    Admin,
    /// Sign in to the web console and look (a viewer).
    Console,
    /// Sign in to the web console and act: review decisions, notification retries.
    Review,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Console => "console",
            Scope::Review => "review",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            "console" => Some(Scope::Console),
            "review" => Some(Scope::Review),
            _ => None,
        }
    }
}

/// The caller behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// A token limited to one account never reads another.
    pub account_id: Option<String>,
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} lacks the {} scope",
                self.name,
                scope.as_str()
            )))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("an active token named {0:?} already exists; revoke it first")]
    NameTaken(String),
    #[error("no active token named {0:?}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A verified token: who it is, when that was read, and whether a re-read is under way.
struct Cached {
    principal: Principal,
    fetched: Instant,
    refreshing: bool,
}

type Cache = HashMap<[u8; 32], Cached>;

#[derive(Clone)]
pub struct TokenStore {
    pool: PgPool,
    ttl: Duration,
    cache: Arc<Mutex<Cache>>,
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenStore {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Default::default(),
        }
    }

    /// Creates a token and returns it in clear text: the only time it is ever visible.
    pub async fn create(
        &self,
        name: &str,
        scopes: &[Scope],
        account_id: Option<&str>,
    ) -> Result<String, TokenError> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("mlt_{}", hex::encode(raw));
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let result = sqlx::query(
            "INSERT INTO api_tokens (name, token_sha256, scopes, account_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(&hash_token(&token)[..])
        .bind(&scopes)
        .bind(account_id)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(token),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(TokenError::NameTaken(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(TokenError::NotFound(name.to_owned()));
        }
        self.cache.lock().expect("poisoned").clear();
        Ok(())
    }

    /// Resolves an `Authorization` header value to the principal behind it.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::Unauthorized(
                "authorization: missing; send Authorization: Bearer <token>".into(),
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("authorization: expected a Bearer token".into())
            })?;
        let digest = hash_token(token);
        {
            // A fresh entry answers at once. A stale one (up to twice the TTL) still answers,
            // while one background re-read refreshes it: a busy gateway never waits on
            // PostgreSQL when its entry ages, and never sends a herd of identical queries.
            let mut cache = self.cache.lock().expect("poisoned");
            if let Some(c) = cache.get_mut(&digest) {
                let age = c.fetched.elapsed();
                if age < self.ttl {
                    return Ok(c.principal.clone());
                }
                if age < self.ttl * 2 {
                    if !c.refreshing {
                        c.refreshing = true;
                        let store = self.clone();
                        tokio::spawn(async move {
                            let fresh = store.lookup(&digest).await;
                            let mut cache = store.cache.lock().expect("poisoned");
                            match fresh {
                                Ok(Some(p)) => {
                                    cache.insert(
                                        digest,
                                        Cached {
                                            principal: p,
                                            fetched: Instant::now(),
                                            refreshing: false,
                                        },
                                    );
                                }
                                // Revoked: the next request asks PostgreSQL and gets 401.
                                Ok(None) => {
                                    cache.remove(&digest);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "token refresh failed");
                                    if let Some(c) = cache.get_mut(&digest) {
                                        c.refreshing = false;
                                    }
                                }
                            }
                        });
                    }
                    return Ok(c.principal.clone());
                }
            }
        }
        let principal = self
            .lookup(&digest)
            .await
            .map_err(|e| ApiError::Unavailable {
                reason: format!("token store unavailable: {e}"),
                retry_after_secs: 1,
            })?
            .ok_or_else(|| {
                ApiError::Unauthorized("authorization: token is unknown or revoked".into())
            })?;
        if !self.ttl.is_zero() {
            self.cache.lock().expect("poisoned").insert(
                digest,
                Cached {
                    principal: principal.clone(),
                    fetched: Instant::now(),
                    refreshing: false,
                },
            );
        }
        Ok(principal)
    }

    async fn lookup(&self, digest: &[u8; 32]) -> Result<Option<Principal>, sqlx::Error> {
        let row: Option<(String, Vec<String>, Option<String>)> = sqlx::query_as(
            "SELECT name, scopes, account_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&digest[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(name, scopes, account_id)| Principal {
            name,
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            account_id,
        }))
    }
}
