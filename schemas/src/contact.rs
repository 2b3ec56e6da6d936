//! Contact email addresses and the one-click unsubscribe links that go with them.
//!
//! An account's contact email comes from its `signup` and `profile_updated` account events.
//! It is personal data, handled like this (see also [`crate::privacy`]):
//!
//! * it is held in a [`ContactEmail`], whose `Debug` and `Display` never show the address, so a
//!   `tracing` field or an error message cannot carry it by accident; only
//!   [`ContactEmail::expose`] gives it, for the SMTP envelope;
//! * it is stored in PostgreSQL (`accounts.contact_email`, and the event's payload in
//!   `account_events`), where the notifier reads it when it sends;
//! * it is never written to ClickHouse (the analytics store keeps no address), never into the
//!   notifier's outbox or its local sink.
//!
//! Every email carries a one-click unsubscribe link. The link names the account and an
//! [`UnsubscribeKey::token`]: HMAC-SHA256 of the account id under a key from configuration
//! (`privacy.unsubscribe_key`). Ingest checks it in constant time ([`UnsubscribeKey::verify`]),
//! so the link needs no API token and nobody can unsubscribe an account whose link they were
//! not sent.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::FieldError;

/// The longest address SMTP carries (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// A validated contact email address. Its `Debug` and `Display` print `<redacted email>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContactEmail(String);

impl ContactEmail {
    /// Parses `raw` (surrounding whitespace ignored) as an `addr-spec` (`name@domain`, no
    /// display name); the error names `field` and never repeats the address.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if s.len() > MAX_EMAIL_LEN {
            return Err(FieldError::new(
                field,
                format!("longer than {MAX_EMAIL_LEN} characters"),
            ));
        }
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal();
        let parsed = email_address::EmailAddress::parse_with_options(s, options).map_err(|e| {
            FieldError::new(field, format!("not an email address (name@domain): {e}"))
        })?;
        // A domain with no dot (`a@localhost`) cannot be reached from outside.
        if !parsed.domain().contains('.') || parsed.domain().ends_with('.') {
            return Err(FieldError::new(
                field,
                "not an email address (name@domain): the domain has no dot",
            ));
        }
        // The domain is case-insensitive; the local part is the mailbox owner's to interpret.
        Ok(Self(format!(
            "{}@{}",
            parsed.local_part(),
            parsed.domain().to_ascii_lowercase()
        )))
    }

    /// The address itself: for the SMTP envelope and the `To` header, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ContactEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted email>")
    }
}

impl fmt::Display for ContactEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted email>")
    }
}

/// Signs and checks one-click unsubscribe tokens. `Debug` never shows the key.
#[derive(Clone)]
pub struct UnsubscribeKey {
    key: Vec<u8>,
}

impl fmt::Debug for UnsubscribeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsubscribeKey(<redacted>)")
    }
}

/// What the MAC covers before the account id, so a token is good for nothing else the same
/// key might one day sign.
const CONTEXT: &[u8] = b"meterline-unsubscribe-v1:";

impl UnsubscribeKey {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: key.as_ref().to_vec(),
        }
    }

    fn mac(&self, account_id: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(CONTEXT);
        mac.update(account_id.as_bytes());
        mac
    }

    /// The account's token: 64 hex characters (the whole HMAC-SHA256).
    pub fn token(&self, account_id: &str) -> String {
        hex::encode(self.mac(account_id).finalize().into_bytes())
    }

    /// Whether `token` is the account's, compared in constant time.
    pub fn verify(&self, account_id: &str, token: &str) -> bool {
        let Ok(bytes) = hex::decode(token) else {
            return false;
        };
        self.mac(account_id).verify_slice(&bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_never_printed() {
        type Case<'a> = (&'a str, Result<&'a str, &'a str>);
        let cases: [Case; 9] = [
            ("ana@example.com", Ok("ana@example.com")),
            (
                "  ana.b+tag@mail.example.co.uk ",
                Ok("ana.b+tag@mail.example.co.uk"),
            ),
            ("", Err("contact_email: must not be empty")),
            (
                "ana",
                Err("contact_email: not an email address (name@domain)"),
            ),
            (
                "ana@",
                Err("contact_email: not an email address (name@domain)"),
            ),
            (
                "@example.com",
                Err("contact_email: not an email address (name@domain)"),
            ),
            (
                "Ana <ana@example.com>",
                Err("contact_email: not an email address (name@domain)"),
            ),
            (
                "ana@localhost",
                Err("contact_email: not an email address (name@domain): the domain has no dot"),
            ),
            (
                "ana@exa\r\nmple.com",
                Err("contact_email: not an email address (name@domain)"),
            ),
        ];
        for (raw, want) in cases {
            let got = ContactEmail::parse("contact_email", raw);
            match (want, got) {
                (Ok(w), Ok(e)) => assert_eq!(e.expose(), w, "{raw:?}"),
                (Err(w), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(w), "{raw:?}: {e}");
                    if !raw.trim().is_empty() {
                        assert!(
                            !e.contains(raw.trim()),
                            "the error repeats the address: {e}"
                        );
                    }
                }
                (w, g) => panic!("{raw:?}: wanted {w:?}, got {g:?}"),
            }
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(
            ContactEmail::parse("contact_email", &long)
                .unwrap_err()
                .to_string(),
            "contact_email: longer than 254 characters"
        );
        let e = ContactEmail::parse("contact_email", "ana@example.com").unwrap();
        assert_eq!(format!("{e:?} {e}"), "<redacted email> <redacted email>");
        assert_eq!(format!("{:?}", Some(&e)), "Some(<redacted email>)");
        // Serialised as the address itself (Avro, PostgreSQL's JSON payload).
        assert_eq!(serde_json::to_value(&e).unwrap(), "ana@example.com");
    }

    #[test]
    fn tokens_are_keyed_per_account_and_checked() {
        let k = UnsubscribeKey::new("k1");
        let t = k.token("acct-1");
        assert_eq!(t.len(), 64);
        assert!(k.verify("acct-1", &t));
        assert!(!k.verify("acct-2", &t), "another account");
        assert!(
            !UnsubscribeKey::new("k2").verify("acct-1", &t),
            "another key"
        );
        assert!(!k.verify("acct-1", &t[..62]), "truncated");
        assert!(!k.verify("acct-1", "zz"), "not hex");
        assert!(!k.verify("acct-1", ""));
        assert_eq!(t, k.token("acct-1"), "stable");
        assert_eq!(format!("{k:?}"), "UnsubscribeKey(<redacted>)");
    }
}
