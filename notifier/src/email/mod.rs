//! The email channel: the account holder's own inbox, for the lifecycle messages of the
//! limit-approach journey ("you are close to your limit; here is the plan that lifts it").
//!
//! A route to `email` (`notifier.routes`) goes through the same outbox as Slack and HubSpot:
//!
//! 1. **Intake** ([`crate::intake`]): routing reads the account's row, which says whether it
//!    has a contact email (`accounts.contact_email`, from `signup` and `profile_updated`
//!    account events) and whether it unsubscribed (`accounts.email_unsubscribed_at`). With no
//!    address, or unsubscribed, the notification is recorded as `skipped` with the reason in
//!    its `detail`, and nothing is sent. Otherwise the message is rendered now ([`render`]):
//!    subject, text and HTML from the kind's templates (`notifier.email.templates`) with the
//!    offer's plan, price and upgrade link, and the account's unsubscribe link. The address
//!    is *not* in the outbox row: it is personal data, read again when sending.
//! 2. **Cooldown**: at most one email per account in `notifier.email_cooldown_days`, whatever
//!    suggested it (its own class, `email`), like dashboard notices.
//! 3. **Worker** ([`crate::worker`]): reads the address and the unsubscribe mark again (an
//!    unsubscribe that arrived meanwhile still wins: `skipped`), then sends through SMTP
//!    ([`smtp`]) or, when `notifier.email.smtp.host` is empty (the default), writes the
//!    rendered message to the local sink without the address. SMTP 4xx answers and
//!    connection failures are retried with the outbox's backoff; 5xx answers are permanent
//!    and dead-letter at once.
//!
//! Every email is `multipart/alternative` with a text and an HTML part, a `List-Unsubscribe`
//! header (the https link, and a `mailto:` when `notifier.email.unsubscribe_mailto` is set)
//! with `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), and the same link in
//! both bodies. The link is ingest's `/v1/email/unsubscribe/{account}/{token}` under
//! `notifier.email.public_base_url`, signed with `privacy.unsubscribe_key`
//! ([`meterline_schemas::contact`]).
//!
//! Trust-and-safety signals and sales signals (`deal_ready`, `escalation`) never go to email:
//! the first are not the account holder's business, the second are for people at the vendor.

pub mod render;
pub mod smtp;

use std::collections::BTreeMap;

use meterline_schemas::SignalKind;
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain SMTP, upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption: only for a relay on the same host or network (port 25, a test server).
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The SMTP server. Empty (the default): emails go to the local sink.
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Credentials for SMTP AUTH; both empty: no authentication.
    pub username: String,
    pub password: Secret,
    /// One SMTP conversation's timeout.
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            tls: TlsMode::Starttls,
            username: String::new(),
            password: Secret::default(),
            timeout_ms: 30_000,
        }
    }
}

/// One kind's email. `subject` and `text` are plain text; `html` is HTML whose `{{ … }}`
/// values are escaped. Each may use `plan`, `price`, `lifts`, `upgrade_url` (the offer),
/// `detail` (the trigger in its own words), `limit` and `stage` (a `limit_stage` signal's limit
/// and percent, else empty), `account_id` and `unsubscribe_url`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp: SmtpConfig,
    /// The `From` mailbox: `Name <address>` or an address.
    pub from: String,
    /// The `Reply-To` mailbox; empty: none.
    pub reply_to: String,
    /// Where account holders reach ingest: the unsubscribe links start with it.
    pub public_base_url: String,
    /// An address for `mailto:` unsubscribes in the `List-Unsubscribe` header (the subject
    /// names the account); empty: the https link only.
    pub unsubscribe_mailto: String,
    /// Signal kind → its email. A kind routed to `email` needs one.
    pub templates: BTreeMap<SignalKind, EmailTemplate>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp: SmtpConfig::default(),
            from: "Meterline <no-reply@example.com>".into(),
            reply_to: String::new(),
            public_base_url: "http://127.0.0.1:8080".into(),
            unsubscribe_mailto: String::new(),
            templates: render::default_templates(),
        }
    }
}

impl EmailConfig {
    /// Whether emails are sent through SMTP (else they go to the local sink).
    pub fn smtp_configured(&self) -> bool {
        !self.smtp.host.is_empty()
    }

    /// Checks the mailboxes, the base URL and every template (each compiles and renders with
    /// sample values); each error names the key.
    pub fn validate(&self, routed: &[SignalKind]) -> Result<(), String> {
        smtp::mailbox("notifier.email.from", &self.from)?;
        if !self.reply_to.is_empty() {
            smtp::mailbox("notifier.email.reply_to", &self.reply_to)?;
        }
        if !self.unsubscribe_mailto.is_empty() {
            smtp::mailbox(
                "notifier.email.unsubscribe_mailto",
                &self.unsubscribe_mailto,
            )?;
        }
        let base = &self.public_base_url;
        if !(base.starts_with("https://") || base.starts_with("http://"))
            || base.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "notifier.email.public_base_url: {base:?} is not an http(s) URL (the unsubscribe links start with it)"
            ));
        }
        if (self.smtp.username.is_empty()) != (self.smtp.password.is_empty()) {
            return Err(
                "notifier.email.smtp.username: give both username and password, or neither".into(),
            );
        }
        for kind in routed {
            if !self.templates.contains_key(kind) {
                return Err(format!(
                    "notifier.email.templates.{kind}: {kind} is routed to email and has no template (subject, text, html)"
                ));
            }
        }
        for (kind, t) in &self.templates {
            render::check(*kind, t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
