//! An email's words: the kind's templates (`notifier.email.templates`) rendered with
//! minijinja. The subject and the text part are plain text; the HTML part's template is named
//! `*.html`, so every `{{ value }}` in it is HTML-escaped (a trigger's words or a configured
//! price cannot inject markup). Unknown variables are an error (strict mode), found when the
//! configuration is checked, not when a message is rendered.
//!
//! Rendered once, when the notification is queued, like every other message: a retry sends
//! the same email.

use std::collections::BTreeMap;

use meterline_schemas::{AccountSignal, SignalKind};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EmailConfig, EmailTemplate};
use crate::config::Offer;

/// What the outbox holds for an email: everything but the recipient, which is personal data
/// and read from `accounts` when sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailMessage {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The one-click unsubscribe link (in both bodies and the header).
    pub unsubscribe_url: String,
    /// The `List-Unsubscribe` header's value.
    pub list_unsubscribe: String,
}

/// The values a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct Values {
    pub plan: String,
    pub price: String,
    pub lifts: String,
    pub upgrade_url: String,
    pub detail: String,
    pub limit: String,
    pub stage: String,
    pub account_id: String,
    pub unsubscribe_url: String,
}

impl Values {
    /// The values for `signal`, offering `offer`.
    pub fn new(signal: &AccountSignal, offer: &Offer, unsubscribe_url: String) -> Self {
        let (limit, stage) = match signal.kind {
            SignalKind::LimitStage => (
                crate::message::outreach::limit_words(
                    signal
                        .evidence()
                        .pointer("/limit/name")
                        .and_then(Value::as_str)
                        .or_else(|| signal.episode.split(':').next())
                        .unwrap_or_default(),
                ),
                signal
                    .limit_stage()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ),
            _ => (String::new(), String::new()),
        };
        Self {
            plan: offer.name.clone(),
            price: offer.price.clone(),
            lifts: offer.lifts.clone(),
            upgrade_url: offer.upgrade_url.clone(),
            detail: crate::message::detail(signal),
            limit,
            stage,
            account_id: signal.account_id.clone(),
            unsubscribe_url,
        }
    }

    fn sample() -> Self {
        Self {
            plan: "Pro".into(),
            price: "$49 per seat per month".into(),
            lifts: "1,000 requests/minute".into(),
            upgrade_url: "https://app.example.com/upgrade".into(),
            detail: "over the limit".into(),
            limit: "monthly requests".into(),
            stage: "85".into(),
            account_id: "acct-1".into(),
            unsubscribe_url: "https://meterline.example.com/v1/email/unsubscribe/acct-1/00".into(),
        }
    }
}

fn environment(kind: SignalKind, t: &EmailTemplate) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    for (part, source) in [
        ("subject", &t.subject),
        ("text", &t.text),
        ("html", &t.html),
    ] {
        let key = format!("notifier.email.templates.{kind}.{part}");
        if source.trim().is_empty() {
            return Err(format!("{key}: must not be empty"));
        }
        env.add_template_owned(template_name(part), source.clone())
            .map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(env)
}

/// The HTML part's name ends in `.html`: minijinja escapes its values.
fn template_name(part: &str) -> &'static str {
    match part {
        "subject" => "subject.txt",
        "text" => "text.txt",
        _ => "body.html",
    }
}

fn render_with(
    kind: SignalKind,
    env: &Environment<'_>,
    values: &Values,
) -> Result<(String, String, String), String> {
    let part = |part: &str| {
        env.get_template(template_name(part))
            .and_then(|t| t.render(values))
            .map_err(|e| format!("notifier.email.templates.{kind}.{part}: {e}"))
    };
    let subject = part("subject")?;
    // A header is one line.
    let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok((subject, part("text")?, part("html")?))
}

/// Checks that `t` compiles and renders with sample values (no unknown variable).
pub fn check(kind: SignalKind, t: &EmailTemplate) -> Result<(), String> {
    let env = environment(kind, t)?;
    render_with(kind, &env, &Values::sample()).map(|_| ())
}

/// The unsubscribe link of `account_id` with `token`.
pub fn unsubscribe_url(c: &EmailConfig, account_id: &str, token: &str) -> String {
    format!(
        "{}/v1/email/unsubscribe/{account_id}/{token}",
        c.public_base_url.trim_end_matches('/')
    )
}

/// The `List-Unsubscribe` header's value: the https link, after a `mailto:` when one is set.
pub fn list_unsubscribe(c: &EmailConfig, account_id: &str, url: &str) -> String {
    if c.unsubscribe_mailto.is_empty() {
        format!("<{url}>")
    } else {
        // Account ids are letters, digits and `_.:-`: nothing to escape in a mailto subject.
        format!(
            "<mailto:{}?subject=unsubscribe%20{account_id}>, <{url}>",
            c.unsubscribe_mailto
        )
    }
}

/// Renders the email of `signal`'s kind. `Err` names the template key (a kind without a
/// template; validation makes this unreachable for routed kinds).
pub fn render(
    c: &EmailConfig,
    signal: &AccountSignal,
    offer: &Offer,
    token: &str,
) -> Result<EmailMessage, String> {
    let kind = signal.kind;
    let t = c.templates.get(&kind).ok_or_else(|| {
        format!("notifier.email.templates.{kind}: {kind} is routed to email and has no template")
    })?;
    let url = unsubscribe_url(c, &signal.account_id, token);
    let values = Values::new(signal, offer, url.clone());
    let (subject, text, html) = render_with(kind, &environment(kind, t)?, &values)?;
    Ok(EmailMessage {
        subject,
        text,
        html,
        list_unsubscribe: list_unsubscribe(c, &signal.account_id, &url),
        unsubscribe_url: url,
    })
}

const FOOTER_TEXT: &str = "\n--\nYou get this email because you signed up for the free plan.\nUnsubscribe with one click: {{ unsubscribe_url }}\n";
const FOOTER_HTML: &str = "<hr>\n<p style=\"font-size:12px;color:#666\">You get this email because you signed up for the free plan. <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> with one click.</p>\n</body>\n</html>\n";
const HEAD_HTML: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<body>\n";

fn template(subject: &str, lines: &[&str], cta: &str) -> EmailTemplate {
    let mut text = String::from("Hello,\n\n");
    let mut html = String::from(HEAD_HTML);
    html.push_str("<p>Hello,</p>\n");
    for l in lines {
        text.push_str(l);
        text.push_str("\n\n");
        html.push_str(&format!("<p>{l}</p>\n"));
    }
    text.push_str(&format!("{cta}: {{{{ upgrade_url }}}}\n"));
    text.push_str(FOOTER_TEXT);
    html.push_str(&format!(
        "<p><a href=\"{{{{ upgrade_url }}}}\">{cta}</a></p>\n"
    ));
    html.push_str(FOOTER_HTML);
    EmailTemplate {
        subject: subject.into(),
        text,
        html,
    }
}

/// The templates shipped: the lifecycle emails of the limit-approach journey.
pub fn default_templates() -> BTreeMap<SignalKind, EmailTemplate> {
    [
        (
            SignalKind::Pql,
            template(
                "Your team is ready for {{ plan }}",
                &[
                    "Your team is getting a lot out of the free plan, and it is close to what the free plan holds.",
                    "{{ plan }} gives you {{ lifts }} ({{ price }}).",
                ],
                "Upgrade to {{ plan }}",
            ),
        ),
        (
            SignalKind::LimitStage,
            template(
                "You have used {{ stage }}% of your {{ limit }} limit",
                &[
                    "{{ detail }}",
                    "{{ plan }} lifts it: {{ lifts }} ({{ price }}).",
                ],
                "Upgrade to {{ plan }}",
            ),
        ),
        (
            SignalKind::RateLimitSustained,
            template(
                "You're growing fast: room to scale with {{ plan }}",
                &[
                    "Your team has been over its request limit for minutes at a time.",
                    "{{ plan }} gives you {{ lifts }} ({{ price }}).",
                ],
                "Upgrade to {{ plan }}",
            ),
        ),
        (
            SignalKind::PluginGate,
            template(
                "{{ plan }} includes the plugin you tried",
                &["{{ detail }}", "{{ plan }} includes it, with {{ lifts }} ({{ price }})."],
                "Upgrade to {{ plan }}",
            ),
        ),
        (
            SignalKind::PowerUser,
            template(
                "You're one of our most active teams",
                &["{{ plan }} gives you {{ lifts }} ({{ price }})."],
                "Upgrade to {{ plan }}",
            ),
        ),
    ]
    .into_iter()
    .collect()
}
