//! Redis: the hot state the read path and the scorer read. The key layout itself is a contract
//! and lives in `meterline_schemas::keys`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or, for TLS, `rediss://`.
    pub url: String,
    /// Prepended to every key we own, so several deployments (or tests) can share a server.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "ml:".into(),
        }
    }
}
