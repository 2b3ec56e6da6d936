//! `[console]`: where the console is reached from outside and how its sessions behave.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The console's address as people open it, without a trailing slash: Slack deal alerts
    /// and HubSpot deals link to `{base_url}/accounts/{id}`. An `https://` address also makes
    /// the session cookie `Secure`.
    pub base_url: String,
    /// Mark the session cookie `Secure` even when the request did not come over TLS (set it
    /// behind a TLS-terminating proxy that sends no `X-Forwarded-Proto`).
    pub secure_cookies: bool,
    /// How long a session lasts after sign-in, in minutes.
    pub session_ttl_minutes: u32,
    /// Rows per page in the lists.
    pub page_size: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/console".into(),
            secure_cookies: false,
            session_ttl_minutes: 480,
            page_size: 50,
        }
    }
}

impl ConsoleConfig {
    /// The account page's address, as messages link to it.
    pub fn account_url(&self, account_id: &str) -> String {
        format!(
            "{}/accounts/{}",
            self.base_url.trim_end_matches('/'),
            percent_encode(account_id)
        )
    }

    /// Checks what types do not: a usable base URL and a session that lasts. The error is
    /// the key and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err((
                "console.base_url",
                format!("{:?} is not an http:// or https:// address", self.base_url),
            ));
        }
        if self.session_ttl_minutes == 0 {
            return Err(("console.session_ttl_minutes", "must be at least 1".into()));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err((
                "console.page_size",
                format!("{} is not between 1 and 1000", self.page_size),
            ));
        }
        Ok(())
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a path segment.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_links_encode_the_id() {
        let c = ConsoleConfig {
            base_url: "https://console.example.com/console/".into(),
            ..Default::default()
        };
        assert_eq!(
            c.account_url("acct 1/<x>"),
            "https://console.example.com/console/accounts/acct%201%2F%3Cx%3E"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = ConsoleConfig {
            base_url: "console.example.com".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "console.base_url");
        let c = ConsoleConfig {
            session_ttl_minutes: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "console.session_ttl_minutes");
    }
}
