//! Sending an email through SMTP with lettre (async, tokio; rustls for STARTTLS and SMTPS).
//!
//! The message: `From`, optional `Reply-To`, `To`, `Subject`, a `Message-ID` made from the
//! notification id (a retry sends the same id, so a receiver can tell), `List-Unsubscribe` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), and a
//! `multipart/alternative` body with the text part first and the HTML part last, each
//! quoted-printable (any line length, any character).
//!
//! An SMTP answer decides whether to try again: 4xx is transient (greylisting, a full queue),
//! 5xx permanent (no such mailbox, rejected as spam); a connection that fails or times out is
//! transient. The server's words go to the outbox's `last_error` with the recipient's address
//! replaced by `<recipient>`: servers like to quote it, and it is personal data.

use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use meterline_schemas::ContactEmail;

use super::render::EmailMessage;
use super::{EmailConfig, TlsMode};
use crate::deliver::{Delivered, SendError};

/// Parses a mailbox (`Name <address>` or an address); the error names `key`.
pub fn mailbox(key: &str, s: &str) -> Result<Mailbox, String> {
    s.parse::<Mailbox>()
        .map_err(|e| format!("{key}: {s:?} is not a mailbox (`Name <address>` or an address): {e}"))
}

const LIST_UNSUBSCRIBE: &str = "List-Unsubscribe";
const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe-Post";

#[derive(Clone)]
pub struct Mailer {
    /// `None`: no SMTP server configured; the worker uses the local sink.
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
}

impl Mailer {
    /// The mailer `c` describes (validated: the mailboxes parse).
    pub fn new(c: &EmailConfig) -> Result<Self, String> {
        let from = mailbox("notifier.email.from", &c.from)?;
        let reply_to = (!c.reply_to.is_empty())
            .then(|| mailbox("notifier.email.reply_to", &c.reply_to))
            .transpose()?;
        let transport = if c.smtp_configured() {
            let s = &c.smtp;
            let tls = || {
                TlsParameters::new(s.host.clone())
                    .map_err(|e| format!("notifier.email.smtp.tls: {e}"))
            };
            let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
                .port(s.port)
                .timeout(Some(Duration::from_millis(s.timeout_ms)))
                .tls(match s.tls {
                    TlsMode::Starttls => Tls::Required(tls()?),
                    TlsMode::Tls => Tls::Wrapper(tls()?),
                    TlsMode::None => Tls::None,
                });
            if !s.username.is_empty() {
                b = b.credentials(Credentials::new(
                    s.username.clone(),
                    s.password.expose().to_owned(),
                ));
            }
            Some(b.build())
        } else {
            None
        };
        Ok(Self {
            transport,
            from,
            reply_to,
        })
    }

    pub fn configured(&self) -> bool {
        self.transport.is_some()
    }

    /// The message for notification `id` to `to`.
    pub fn message(
        &self,
        id: i64,
        to: &ContactEmail,
        m: &EmailMessage,
    ) -> Result<Message, SendError> {
        let to: Mailbox = to.expose().parse().map_err(|_| {
            SendError::Permanent("email: the contact email is not a mailbox".into())
        })?;
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!(
                "<meterline-notification-{id}@{}>",
                self.from.email.domain()
            )))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE),
                m.list_unsubscribe.clone(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE_POST),
                "List-Unsubscribe=One-Click".into(),
            ));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        let part = |kind: ContentType, body: &str| {
            SinglePart::builder().header(kind).body(
                Body::new_with_encoding(body.to_owned(), ContentTransferEncoding::QuotedPrintable)
                    .expect("quoted-printable encodes anything"),
            )
        };
        b.multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, &m.text))
                .singlepart(part(ContentType::TEXT_HTML, &m.html)),
        )
        .map_err(|e| SendError::Permanent(format!("email: building the message: {e}")))
    }

    /// Sends notification `id` to `to`. `Delivered` is `smtp:<host>`.
    pub async fn send(
        &self,
        id: i64,
        to: &ContactEmail,
        m: &EmailMessage,
    ) -> Result<Delivered, SendError> {
        let Some(transport) = &self.transport else {
            return Err(SendError::Permanent(
                "email: no SMTP server configured".into(),
            ));
        };
        let message = self.message(id, to, m)?;
        match transport.send(message).await {
            Ok(response) => Ok(format!(
                "smtp:{}",
                response.first_line().unwrap_or("accepted")
            )),
            Err(e) => Err(classify(&e, to)),
        }
    }
}

/// 5xx: permanent; 4xx, connection failures and timeouts: transient. The recipient's address
/// never appears in the detail.
fn classify(e: &lettre::transport::smtp::Error, to: &ContactEmail) -> SendError {
    let detail = redact(&format!("smtp: {e}"), to);
    if e.is_permanent() {
        SendError::Permanent(detail)
    } else {
        SendError::Transient(detail)
    }
}

fn redact(text: &str, to: &ContactEmail) -> String {
    let address = to.expose();
    text.replace(address, "<recipient>")
        .replace(&address.to_ascii_lowercase(), "<recipient>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipient_never_reaches_an_error() {
        let to = ContactEmail::parse("contact_email", "Ana.B@example.com").unwrap();
        assert_eq!(
            redact(
                "smtp: permanent error (550): 5.1.1 <Ana.B@example.com>: unknown; ana.b@example.com",
                &to
            ),
            "smtp: permanent error (550): 5.1.1 <<recipient>>: unknown; <recipient>"
        );
    }

    #[test]
    fn mailboxes_are_checked_naming_the_key() {
        assert!(mailbox("notifier.email.from", "Meterline <billing@example.com>").is_ok());
        let e = mailbox("notifier.email.from", "billing at example").unwrap_err();
        assert!(
            e.starts_with("notifier.email.from: \"billing at example\" is not a mailbox"),
            "{e}"
        );
    }
}
