//! Client and signup IPs are personal data. They are hashed with HMAC-SHA256 under a key from
//! configuration, so the same IP always gives the same hash (distinct counts, key-sharing and
//! multi-account checks still work) but nobody without the key can test a guess.
//!
//! Contact email addresses are personal data too, but they are needed in clear to send email:
//! [`crate::contact`] keeps them in PostgreSQL only (never in ClickHouse, the outbox or a log
//! line) behind a type that never prints them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;

use crate::FieldError;

#[derive(Clone)]
pub struct IpHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for IpHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpHasher(<redacted>)")
    }
}

impl IpHasher {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: key.as_ref().to_vec(),
        }
    }

    /// Parses `raw` as an IPv4 or IPv6 address and returns its keyed hash (32 hex characters:
    /// the first 128 bits of the MAC, plenty to keep distinct IPs apart).
    pub fn hash_ip(&self, field: &str, raw: &str) -> Result<String, FieldError> {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| FieldError::new(field, "not an IPv4 or IPv6 address"))?;
        // Canonical text form, so that `::ffff:1.2.3.4` style spellings of one v6 address agree.
        let canonical = ip.to_string();
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(canonical.as_bytes());
        Ok(hex::encode(&mac.finalize().into_bytes()[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_keyed_stable_and_never_the_ip() {
        let a = IpHasher::new("k1");
        let b = IpHasher::new("k2");
        let h1 = a.hash_ip("client_ip", "203.0.113.7").unwrap();
        assert_eq!(h1, a.hash_ip("client_ip", "203.0.113.7").unwrap());
        assert_ne!(h1, b.hash_ip("client_ip", "203.0.113.7").unwrap());
        assert_ne!(h1, a.hash_ip("client_ip", "203.0.113.8").unwrap());
        assert!(!h1.contains("203"));
        assert_eq!(h1.len(), 32);
        assert_eq!(
            a.hash_ip("2001:DB8::1", "2001:DB8::1").ok(),
            a.hash_ip("x", "2001:db8:0::1").ok()
        );
        assert_eq!(
            a.hash_ip("client_ip", "999.1.1.1").unwrap_err().to_string(),
            "client_ip: not an IPv4 or IPv6 address"
        );
    }
}
