//! What a notification says: Slack Block Kit messages, talking points built from the trigger,
//! dashboard notice text and HubSpot deal fields. Pure functions of the signal, the account,
//! the 30-day usage summary and the configuration, rendered once when the notification is
//! queued, so every retry sends the same message.

use meterline_schemas::public_domains::PublicDomains;
use meterline_schemas::{AccountSignal, Plan, SignalKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{NotifierConfig, Offer};
use crate::route::AccountInfo;

/// Whom a message is aimed at and what it offers, as routing decided ([`crate::route`]).
#[derive(Debug, Clone, Copy)]
pub struct Aim<'a> {
    /// The account's plan.
    pub plan: Plan,
    /// The plan offered and its offer; `None` when there is nothing to sell (trust and
    /// safety, or an existing customer on the top plan).
    pub offer: Option<(Plan, &'a Offer)>,
    /// An existing customer's growth, for account management rather than a new deal.
    pub expansion: bool,
}

impl<'a> Aim<'a> {
    /// The aim for an account on `plan` offered `offered` (from `c.offers`).
    pub fn new(c: &'a NotifierConfig, plan: Plan, offered: Option<Plan>, expansion: bool) -> Self {
        Self {
            plan,
            offer: offered.and_then(|p| c.offers.get(p).map(|o| (p, o))),
            expansion,
        }
    }

    fn offer(&self) -> Option<&'a Offer> {
        self.offer.map(|(_, o)| o)
    }
}

/// An account's last 30 days from ClickHouse (`usage_day`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    pub requests: u64,
    pub tokens: u64,
    pub models: u64,
    pub regions: u64,
    /// Tokens in the last 7 days and in the 7 before them.
    pub tokens_last_7d: u64,
    pub tokens_prior_7d: u64,
}

impl UsageSummary {
    /// Week-over-week change of tokens, as a fraction (0.35 = +35 %).
    pub fn trend(&self) -> Option<f64> {
        (self.tokens_prior_7d > 0)
            .then(|| self.tokens_last_7d as f64 / self.tokens_prior_7d as f64 - 1.0)
    }

    pub fn trend_text(&self) -> String {
        match self.trend() {
            Some(t) => format!("{:+.0} % week over week", t * 100.0),
            None if self.tokens_last_7d > 0 => "new this week".into(),
            None => "no usage in the last two weeks".into(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} requests · {} tokens · {} models · {} regions · {}",
            count(self.requests),
            count(self.tokens),
            self.models,
            self.regions,
            self.trend_text()
        )
    }
}

/// 61234567 → "61.2M"; 12345 → "12.3k"; 999 → "999".
pub fn count(n: u64) -> String {
    let f = n as f64;
    if n >= 1_000_000_000 {
        format!("{:.1}B", f / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", f / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// Slack mrkdwn treats `&`, `<` and `>` as control characters; text from events is escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn title(kind: SignalKind) -> &'static str {
    match kind {
        SignalKind::DealReady => "Deal ready",
        SignalKind::LimitStage => "Approaching a limit",
        SignalKind::AbuseSuspected => "Abuse suspected",
        SignalKind::KeySharing => "API key shared",
        SignalKind::MultiAccount => "Multiple accounts",
        SignalKind::RateLimitSustained => "Rate limited",
        SignalKind::PluginGate => "Gated plugin wanted",
        SignalKind::PowerUser => "Power user",
        SignalKind::Pql => "Product-qualified lead",
        SignalKind::Escalation => "Escalation",
        SignalKind::AllowanceReset => "Allowance reset",
    }
}

fn is_trust_and_safety(kind: SignalKind) -> bool {
    crate::config::TRUST_AND_SAFETY_KINDS.contains(&kind)
}

/// Two or three talking points from what triggered the signal, strongest first.
pub fn talking_points(
    signal: &AccountSignal,
    account: &AccountInfo,
    usage: &UsageSummary,
    offer: Option<&Offer>,
) -> Vec<String> {
    // What the offered plan does about it; nothing when there is nothing to sell.
    let sell = |f: &dyn Fn(&Offer) -> String| offer.map(f).unwrap_or_default();
    let e = signal.evidence();
    let inputs = e.get("inputs").cloned().unwrap_or(Value::Null);
    let monthly_tokens = inputs
        .get("monthly_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let regions: Vec<String> = inputs
        .get("regions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let team = inputs.get("team_size").and_then(Value::as_u64).unwrap_or(0);
    let company = account
        .company_size
        .map(|c| c as u64)
        .or_else(|| inputs.get("company_size").and_then(Value::as_u64))
        .unwrap_or(0);
    let mut points = Vec::new();
    match signal.kind {
        SignalKind::LimitStage => {
            if let Some(limit) = e.get("limit") {
                let name = limit
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("a limit");
                let used = limit.get("used").and_then(Value::as_f64).unwrap_or(0.0);
                let max = limit.get("limit").and_then(Value::as_f64).unwrap_or(0.0);
                let stage = signal.limit_stage().unwrap_or(0);
                let mut p = format!(
                    "At {stage} % of {name} ({} of {})",
                    count(used as u64),
                    count(max as u64)
                );
                if let Some(r) = limit.get("resets_at").and_then(Value::as_str) {
                    p.push_str(&format!(", which resets {r}"));
                }
                p.push_str(&sell(&|o| format!(": {} lifts it to {}", o.name, o.lifts)));
                p.push('.');
                points.push(p);
            }
            if let Some(seats) = account.seats.filter(|s| *s > 0) {
                points.push(format!(
                    "{seats} seats on the {} plan: a team this size usually needs headroom before the limit stops it.",
                    signal.plan
                ));
            }
        }
        _ => {
            if regions.len() >= 3 && monthly_tokens > 50_000_000 {
                points.push(format!(
                    "Running across {} regions with {}+ monthly tokens{}.",
                    regions.len(),
                    count(monthly_tokens),
                    sell(&|o| format!(": {} includes multi-cloud routing", o.name))
                ));
            } else if regions.len() >= 3 {
                points.push(format!(
                    "Deployed in {} regions ({}){}.",
                    regions.len(),
                    regions.join(", "),
                    sell(&|o| format!(": {} includes multi-cloud routing", o.name))
                ));
            } else if monthly_tokens > 50_000_000 {
                points.push(format!(
                    "{} tokens this month{}.",
                    count(monthly_tokens),
                    sell(&|o| format!(
                        ": committed {} pricing costs less than pay-as-you-go at this volume",
                        o.name
                    ))
                ));
            }
            if let Some(r) = signal.reasons.iter().find(|r| r.starts_with("plugins")) {
                let detail = r.split_once(": ").map(|(_, d)| d).unwrap_or(r);
                points.push(format!(
                    "They have hit gated plugins ({detail}){}.",
                    sell(&|o| format!(": {} includes them", o.name))
                ));
            }
            if team > 20 {
                points.push(format!(
                    "{team} people use the account{}.",
                    sell(&|o| format!(": SSO, roles and audit logs come with {}", o.name))
                ));
            } else if company > 100 {
                points.push(format!(
                    "A {company}-person company: a 15-minute architecture review is a natural next step."
                ));
            }
        }
    }
    if let Some(t) = usage.trend().filter(|t| *t >= 0.2) {
        points.push(format!("Usage is up {:.0} % week over week.", t * 100.0));
    }
    points.truncate(3);
    points
}

/// The auto-escalation tags a signal carries: the evidence's `tags`, else its reasons of the
/// form `escalation: <tag>`.
pub fn escalation_tags(signal: &AccountSignal) -> Vec<String> {
    let from_evidence: Vec<String> = signal
        .evidence()
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !from_evidence.is_empty() {
        return from_evidence;
    }
    signal
        .reasons
        .iter()
        .filter_map(|r| r.strip_prefix("escalation: ").map(String::from))
        .collect()
}

/// The Block Kit message for a Slack alert: `text` (the notification fallback) and `blocks`.
/// An existing customer's growth (`aim.expansion`) is headed "Customer growth" and says it is
/// for account management; an escalation lists its tags; the recommended plan and the talking
/// points' pitch appear only when there is something to sell.
pub fn slack_message(
    signal: &AccountSignal,
    account: &AccountInfo,
    usage: &UsageSummary,
    aim: &Aim<'_>,
) -> Value {
    let kind = signal.kind;
    let account_id = escape(&signal.account_id);
    let plan = aim.plan.as_str();
    let (score_name, score) = match kind {
        k if is_trust_and_safety(k) => ("Abuse score", signal.abuse),
        SignalKind::Pql => ("PQL score", signal.pql),
        _ => ("Deal readiness", signal.deal_readiness),
    };
    let title = if aim.expansion {
        format!("Customer growth ({})", title(kind).to_lowercase())
    } else {
        title(kind).to_owned()
    };
    let header = format!("{title}: {}", signal.account_id);
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Account*\n{account_id}")}),
        json!({"type": "mrkdwn", "text": format!("*Plan*\n{plan}")}),
        json!({"type": "mrkdwn", "text": format!("*{score_name}*\n{score}/100")}),
    ];
    if let Some(d) = &account.email_domain {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Domain*\n{}", escape(d))}));
    }
    if let Some(s) = account.seats {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Seats*\n{s}")}));
    }
    let offer = aim.offer();
    if let (false, Some(o)) = (is_trust_and_safety(kind), offer) {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Recommended*\n{}: {}", escape(&o.name), escape(&o.price))}));
    }
    let tags = escalation_tags(signal);
    let reasons: Vec<String> = signal
        .reasons
        .iter()
        .filter(|r| !r.starts_with("escalation: "))
        .take(8)
        .map(|r| format!("• {}", escape(r)))
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&header, 150)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !reasons.is_empty() || tags.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Why*\n{}", if reasons.is_empty() { "• (no reasons given)".to_owned() } else { reasons.join("\n") }), 3000)}}));
    }
    if !tags.is_empty() {
        let lines: Vec<String> = tags.iter().map(|t| format!("• `{}`", escape(t))).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Escalation tags*\n{}", lines.join("\n")), 3000)}}));
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Last 30 days*\n{}", usage.line())}}));
    if !is_trust_and_safety(kind) {
        let points = talking_points(signal, account, usage, offer);
        if !points.is_empty() {
            let text: Vec<String> = points.iter().map(|p| format!("• {}", escape(p))).collect();
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Talking points*\n{}", text.join("\n")), 3000)}}));
        }
    }
    let mut context = format!(
        "signal `{}` · raised {}",
        escape(&signal.signal_id),
        signal.raised_at().format("%Y-%m-%d %H:%M UTC")
    );
    if aim.expansion {
        context = format!(
            "An existing {plan} customer: for account management, not a new deal · {context}"
        );
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    json!({
        "text": format!("{title} — {account_id} ({plan}), {score_name} {score}"),
        "blocks": blocks,
    })
}

/// The account's page in the web console: `{base}/accounts/{id}`, the id percent-encoded.
pub fn console_link(base: &str, account_id: &str) -> String {
    let mut id = String::with_capacity(account_id.len());
    for b in account_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            id.push(b as char);
        } else {
            id.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}/accounts/{id}", base.trim_end_matches('/'))
}

/// Adds an "Open in console" button linking to `url` to a Slack message, before its context
/// line.
pub fn add_console_button(message: &mut Value, url: &str) {
    if let Some(blocks) = message["blocks"].as_array_mut() {
        let at = blocks.len().saturating_sub(1);
        blocks.insert(
            at,
            json!({"type": "actions", "elements": [{"type": "button", "action_id": "open_console",
                "text": {"type": "plain_text", "text": "Open in console"}, "url": url}]}),
        );
    }
}

/// Adds the console link to a deal's description.
pub fn add_console_line(deal: &mut DealRequest, url: &str) {
    deal.description.push_str(&format!("Console: {url}\n"));
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A dashboard notice, as `GET /v1/accounts/{id}/notice` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeText {
    pub message: String,
    pub upgrade_url: String,
    /// The plan that lifts the limit.
    pub plan: String,
}

/// The trigger in its own words, for a message's `{detail}`: the evidence's `message` (a plugin
/// gate's), else the signal's first reason.
pub fn trigger_detail(signal: &AccountSignal, evidence: &Value) -> String {
    evidence
        .get("message")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| signal.reasons.first().cloned())
        .unwrap_or_default()
}

/// The `{detail}` of a notice and an email for `signal`: the limit in words with the numbers and
/// the reset time for the outreach kinds (`message::outreach`), the trigger's own words for the
/// others.
pub fn detail(signal: &AccountSignal) -> String {
    let e = signal.evidence();
    match signal.kind {
        SignalKind::LimitStage => outreach::limit_stage_detail(&e),
        SignalKind::AllowanceReset => outreach::allowance_reset_detail(&e),
        _ => trigger_detail(signal, &e),
    }
}

/// The notice for `signal`, offering `offer` (the plan `plan`).
pub fn notice(c: &NotifierConfig, signal: &AccountSignal, plan: Plan, offer: &Offer) -> NoticeText {
    let template = match signal.kind {
        SignalKind::PluginGate => &c.notices.plugin_gate,
        SignalKind::PowerUser => &c.notices.power_user,
        SignalKind::Pql => &c.notices.pql,
        SignalKind::LimitStage => &c.notices.limit_stage,
        SignalKind::AllowanceReset => &c.notices.allowance_reset,
        _ => &c.notices.rate_limit_sustained,
    };
    let detail = detail(signal);
    NoticeText {
        message: template
            .replace("{plan}", &offer.name)
            .replace("{price}", &offer.price)
            .replace("{lifts}", &offer.lifts)
            .replace("{detail}", &detail)
            .trim()
            .to_owned(),
        upgrade_url: offer.upgrade_url.clone(),
        plan: plan.as_str().to_owned(),
    }
}

/// What the HubSpot sync needs, rendered when the notification is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DealRequest {
    pub account_id: String,
    /// The company's email domain: the deal's company is found or created by it. `None` for
    /// an account with no domain or a public one.
    pub email_domain: Option<String>,
    pub deal_name: String,
    pub score: i32,
    pub description: String,
    /// Why the deal has no company, when it is deliberate: the account's email domain is
    /// public (`gmail.com`), so no company is searched for, created or associated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_company: Option<String>,
}

/// The deal for `signal`, selling `offer`. A public email domain gets no company: the deal is
/// made without one and says why.
pub fn deal_request(
    signal: &AccountSignal,
    account: &AccountInfo,
    usage: &UsageSummary,
    plan: Plan,
    offer: &Offer,
    public: &PublicDomains,
) -> DealRequest {
    let company = public.company_domain(account.email_domain.as_deref());
    let no_company = match &account.email_domain {
        Some(d) if company.is_none() => Some(format!(
            "no HubSpot company: {d} is a public email domain (accounts.public_domains), so the deal has no company association"
        )),
        _ => None,
    };
    let points = talking_points(signal, account, usage, Some(offer));
    let mut description = format!(
        "Deal readiness {}/100 on the {plan} plan. Recommended: {} ({}).\nLast 30 days: {}.\n",
        signal.deal_readiness,
        offer.name,
        offer.price,
        usage.line()
    );
    for r in &signal.reasons {
        description.push_str(&format!("- {r}\n"));
    }
    for p in points {
        description.push_str(&format!("> {p}\n"));
    }
    if let Some(why) = &no_company {
        description.push_str(&format!("Note: {why}.\n"));
    }
    let deal_name = match company {
        Some(d) => format!("{d} — {} ({})", offer.name, signal.account_id),
        None => format!("{} — {}", signal.account_id, offer.name),
    };
    DealRequest {
        account_id: signal.account_id.clone(),
        email_domain: company.map(String::from),
        deal_name,
        score: signal.deal_readiness,
        description,
        no_company,
    }
}

pub mod outreach;

#[cfg(test)]
mod tests;
