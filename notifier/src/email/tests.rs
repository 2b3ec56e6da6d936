use meterline_schemas::{AccountSignal, ContactEmail, SignalKind};

use super::render::{self, EmailMessage};
use super::smtp::Mailer;
use super::*;
use crate::config::{NotifierConfig, Offers};

fn signal(kind: SignalKind, episode: &str, evidence: &str) -> AccountSignal {
    AccountSignal {
        signal_id: format!("acct-7:{kind}:{episode}"),
        kind,
        account_id: "acct-7".into(),
        episode: episode.into(),
        raised_at: 0,
        plan: "free".into(),
        deal_readiness: 0,
        pql: 60,
        abuse: 0,
        reasons: vec!["the first reason".into()],
        evidence: evidence.into(),
    }
}

/// The shipped templates render exactly these words, with the offer and the link filled in.
#[test]
fn the_default_limit_stage_email_reads_as_written() {
    let c = EmailConfig {
        public_base_url: "https://meterline.example.com/".into(),
        ..Default::default()
    };
    let offer = Offers::default().pro;
    let s = signal(
        SignalKind::LimitStage,
        "month_requests:85:202611",
        r#"{"limit": {"name": "month_requests", "used": 85123.0, "limit": 100000.0,
            "resets_at": "2026-12-01T00:00:00Z"}}"#,
    );
    let m = render::render(&c, &s, &offer, "ab12").unwrap();
    let url = "https://meterline.example.com/v1/email/unsubscribe/acct-7/ab12";
    assert_eq!(
        m,
        EmailMessage {
            subject: "You have used 85% of your monthly requests limit".into(),
            text: format!(
                "Hello,\n\nYou've used 85 % of your monthly requests (85,123 of 100,000); \
                 it resets at 00:00 UTC on 1 December.\n\n\
                 Pro lifts it: 1,000 requests/minute and 15 models ($49 per seat per month).\n\n\
                 Upgrade to Pro: https://app.example.com/billing/upgrade?plan=pro\n\n--\n\
                 You get this email because you signed up for the free plan.\n\
                 Unsubscribe with one click: {url}\n"
            ),
            html: "<!DOCTYPE html>\n<html lang=\"en\">\n<body>\n<p>Hello,</p>\n\
                 <p>You&#x27;ve used 85 % of your monthly requests (85,123 of 100,000); \
                 it resets at 00:00 UTC on 1 December.</p>\n\
                 <p>Pro lifts it: 1,000 requests&#x2f;minute and 15 models ($49 per seat per month).</p>\n\
                 <p><a href=\"https:&#x2f;&#x2f;app.example.com&#x2f;billing&#x2f;upgrade?plan=pro\">Upgrade to Pro</a></p>\n\
                 <hr>\n<p style=\"font-size:12px;color:#666\">You get this email because you signed up for the free plan. \
                 <a href=\"https:&#x2f;&#x2f;meterline.example.com&#x2f;v1&#x2f;email&#x2f;unsubscribe&#x2f;acct-7&#x2f;ab12\">Unsubscribe</a> with one click.</p>\n\
                 </body>\n</html>\n"
                .into(),
            unsubscribe_url: url.into(),
            list_unsubscribe: format!("<{url}>"),
        }
    );
}

/// A trigger's words and configured values are escaped in the HTML part, and kept as they
/// are in the text part and the subject.
#[test]
fn html_values_are_escaped_and_text_values_are_not() {
    let mut c = EmailConfig {
        unsubscribe_mailto: "unsubscribe@example.com".into(),
        ..Default::default()
    };
    c.templates.insert(
        SignalKind::PluginGate,
        EmailTemplate {
            subject: "{{ plan }}:\n {{ detail }}".into(),
            text: "{{ detail }}".into(),
            html: "<p>{{ detail }}</p>".into(),
        },
    );
    let offer = Offers::default().pro;
    let s = signal(
        SignalKind::PluginGate,
        "x",
        r#"{"message": "<script>alert(1)</script> & \"guardrails\""}"#,
    );
    let m = render::render(&c, &s, &offer, "t").unwrap();
    assert_eq!(m.subject, "Pro: <script>alert(1)</script> & \"guardrails\"");
    assert_eq!(m.text, "<script>alert(1)</script> & \"guardrails\"");
    assert_eq!(
        m.html,
        "<p>&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; &quot;guardrails&quot;</p>"
    );
    assert_eq!(
        m.list_unsubscribe,
        "<mailto:unsubscribe@example.com?subject=unsubscribe%20acct-7>, <http://127.0.0.1:8080/v1/email/unsubscribe/acct-7/t>"
    );
}

/// Each bad setting is refused naming its key.
#[test]
fn email_settings_are_validated_naming_the_key() {
    type Change = fn(&mut NotifierConfig);
    let cases: [(&str, Change, &str); 9] = [
        (
            "trust and safety to email",
            |c| {
                c.routes.insert(SignalKind::KeySharing, vec!["email".into()]);
            },
            "notifier.routes.key_sharing: key_sharing is a trust-and-safety signal; it never goes to email",
        ),
        (
            "a sales signal to email",
            |c| {
                c.routes.insert(SignalKind::DealReady, vec!["email".into()]);
            },
            "notifier.routes.deal_ready: deal_ready is a sales signal for people",
        ),
        (
            "expansion to email",
            |c| c.expansion_route = vec!["email".into()],
            "notifier.expansion_route: an existing customer's growth goes to people",
        ),
        (
            "routed with no template",
            |c| {
                c.email.templates.remove(&SignalKind::Pql);
                c.routes.insert(SignalKind::Pql, vec!["email".into()]);
            },
            "notifier.email.templates.pql: pql is routed to email and has no template",
        ),
        (
            "an unknown variable",
            |c| {
                c.email
                    .templates
                    .get_mut(&SignalKind::Pql)
                    .unwrap()
                    .subject = "{{ plna }}".into()
            },
            "notifier.email.templates.pql.subject: ",
        ),
        (
            "a template that does not parse",
            |c| c.email.templates.get_mut(&SignalKind::Pql).unwrap().html = "{% if %}".into(),
            "notifier.email.templates.pql.html: ",
        ),
        (
            "a bad from",
            |c| c.email.from = "nobody".into(),
            "notifier.email.from: \"nobody\" is not a mailbox",
        ),
        (
            "a base URL that is not one",
            |c| c.email.public_base_url = "meterline.example.com".into(),
            "notifier.email.public_base_url: \"meterline.example.com\" is not an http(s) URL",
        ),
        (
            "a user with no password",
            |c| c.email.smtp.username = "mailer".into(),
            "notifier.email.smtp.username: give both username and password, or neither",
        ),
    ];
    for (case, change, want) in cases {
        let mut c = NotifierConfig::default();
        change(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.starts_with(want), "{case}: {e}");
    }
    // The defaults are valid, and a suggestion kind may go to email.
    let mut c = NotifierConfig::default();
    c.routes
        .insert(SignalKind::Pql, vec!["notice".into(), "email".into()]);
    c.validate().unwrap();
}

#[test]
fn tls_modes_read_as_written_and_the_password_never_prints() {
    let s: SmtpConfig = serde_json::from_value(serde_json::json!({
        "host": "smtp.example.com", "port": 465, "tls": "tls",
        "username": "mailer", "password": "hunter2"
    }))
    .unwrap();
    assert_eq!(s.tls, TlsMode::Tls);
    assert!(!format!("{s:?}").contains("hunter2"));
    for (text, mode) in [
        ("starttls", TlsMode::Starttls),
        ("tls", TlsMode::Tls),
        ("none", TlsMode::None),
    ] {
        assert_eq!(
            serde_json::from_value::<TlsMode>(text.into()).unwrap(),
            mode
        );
    }
    let e = serde_json::from_value::<TlsMode>("ssl".into()).unwrap_err();
    assert!(e.to_string().contains("unknown variant `ssl`"), "{e}");
}

/// The built message: its headers and both parts (the exact bytes on the wire are checked
/// against a real SMTP conversation in tests/email.rs).
#[test]
fn the_message_has_both_parts_and_the_unsubscribe_headers() {
    let c = EmailConfig {
        reply_to: "Support <support@example.com>".into(),
        ..Default::default()
    };
    let mailer = Mailer::new(&c).unwrap();
    assert!(!mailer.configured());
    let offer = Offers::default().pro;
    let m = render::render(&c, &signal(SignalKind::Pql, "x", "{}"), &offer, "t").unwrap();
    let to = ContactEmail::parse("contact_email", "ana@example.com").unwrap();
    let raw = String::from_utf8(mailer.message(42, &to, &m).unwrap().formatted()).unwrap();
    for header in [
        "From: Meterline <no-reply@example.com>\r\n",
        "Reply-To: Support <support@example.com>\r\n",
        "To: ana@example.com\r\n",
        "Subject: Your team is ready for Pro\r\n",
        "Message-ID: <meterline-notification-42@example.com>\r\n",
        "List-Unsubscribe: <http://127.0.0.1:8080/v1/email/unsubscribe/acct-7/t>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "Content-Type: multipart/alternative;",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
    ] {
        assert!(raw.contains(header), "{header:?} missing from\n{raw}");
    }
    assert!(
        raw.find("text/plain").unwrap() < raw.find("text/html").unwrap(),
        "the text part comes first"
    );
}
