//! `[notifier]`: routing, cooldowns, retry policy and the outside services. The defaults route
//! as the domain brief does and send nothing outside: with no Slack webhook and no HubSpot token
//! configured, every message goes to the local sink (one file per message). The email
//! channel's settings are [`crate::email::EmailConfig`] (`[notifier.email]`).

use std::collections::BTreeMap;
use std::fmt;

use meterline_schemas::{Plan, SignalKind};
use serde::{Deserialize, Serialize};

/// A credential: a Slack webhook path or a HubSpot token. Its `Debug` and `Display` never show
/// the value, so it cannot reach a log line by accident.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Incoming webhooks are `base_url` + a channel's webhook path.
    pub base_url: String,
    /// Channel name → incoming-webhook path (`/services/T…/B…/…`), one webhook per channel.
    /// An empty path sends that channel's messages to the local sink.
    pub webhooks: BTreeMap<String, Secret>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            base_url: "https://hooks.slack.com".into(),
            webhooks: [
                ENTERPRISE_INBOUND,
                SALES_ASSIST,
                TRUST_AND_SAFETY,
                ACCOUNT_MANAGEMENT,
            ]
            .into_iter()
            .map(|c| (c.to_owned(), Secret::default()))
            .collect(),
        }
    }
}

pub const ENTERPRISE_INBOUND: &str = "enterprise_inbound";
pub const SALES_ASSIST: &str = "sales_assist";
pub const TRUST_AND_SAFETY: &str = "trust_and_safety";
/// Existing customers' growth (the expansion route's default channel).
pub const ACCOUNT_MANAGEMENT: &str = "account_management";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSpotConfig {
    pub base_url: String,
    /// A private app's access token (bearer). Empty: deals go to the local sink.
    pub token: Secret,
    /// Internal ids of the pipeline and stage new deals are created in.
    pub pipeline: String,
    pub deal_stage: String,
    /// The deal amount for a new deal (HubSpot takes it as a string).
    pub deal_amount: String,
    /// The custom deal property holding our account id; it finds the account's deal again.
    /// Create it in HubSpot as a single-line text property with unique values.
    pub account_id_property: String,
    /// The custom deal property holding the deal readiness score.
    pub score_property: String,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.hubapi.com".into(),
            token: Secret::default(),
            pipeline: "default".into(),
            deal_stage: "appointmentscheduled".into(),
            deal_amount: "24000".into(),
            account_id_property: "meterline_account_id".into(),
            score_property: "meterline_deal_readiness".into(),
        }
    }
}

/// A plan we recommend, as the messages quote it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Offer {
    pub name: String,
    pub price: String,
    pub upgrade_url: String,
    /// What the plan lifts, for the notice: "1,000 requests/minute".
    pub lifts: String,
}

/// The plans an offer can name (never free: every account already has it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Offers {
    pub pro: Offer,
    pub enterprise: Offer,
}

impl Offers {
    /// The offer for `plan`; `None` for free, which is never sold.
    pub fn get(&self, plan: Plan) -> Option<&Offer> {
        match plan {
            Plan::Free => None,
            Plan::Pro => Some(&self.pro),
            Plan::Enterprise => Some(&self.enterprise),
        }
    }
}

impl Default for Offers {
    fn default() -> Self {
        Self {
            pro: Offer {
                name: "Pro".into(),
                price: "$49 per seat per month".into(),
                upgrade_url: "https://app.example.com/billing/upgrade?plan=pro".into(),
                lifts: "1,000 requests/minute and 15 models".into(),
            },
            enterprise: Offer {
                name: "Enterprise".into(),
                price: "from $2,000 per month (annual)".into(),
                upgrade_url: "https://app.example.com/billing/upgrade?plan=enterprise".into(),
                lifts: "unlimited requests, every model, multi-cloud routing and 7-year audit retention"
                    .into(),
            },
        }
    }
}

/// Dashboard notice messages by signal kind. `{plan}`, `{price}` and `{lifts}` are replaced by
/// the recommended offer's name, price and what it lifts; `{detail}` by the trigger's own words.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoticeMessages {
    pub rate_limit_sustained: String,
    pub plugin_gate: String,
    pub power_user: String,
    /// A free account crossing the PQL threshold.
    pub pql: String,
    /// A limit approaching its end: `{detail}` says which, how much is used and when it resets.
    pub limit_stage: String,
    /// The month's allowance is back after a month with a limit hit: `{detail}` names it.
    pub allowance_reset: String,
}

impl Default for NoticeMessages {
    fn default() -> Self {
        Self {
            rate_limit_sustained: "You're growing fast! Your team has been over its request limit for minutes at a time. Upgrading to {plan} ({lifts}; {price}) gives you room to scale.".into(),
            plugin_gate: "{detail} {plan} includes it, with {lifts} ({price}).".into(),
            power_user: "You're one of our most active teams. {plan} gives you {lifts} ({price}).".into(),
            pql: "Your team is getting real work done on the free tier. {plan} gives you {lifts} ({price}), so nothing slows you down.".into(),
            limit_stage: "{detail} Upgrade to {plan} for {lifts} ({price}) before the limit stops your requests.".into(),
            allowance_reset: "Your allowance has reset. {detail} {plan} gives you {lifts} ({price}), so it doesn't happen again.".into(),
        }
    }
}

/// When a `pql`, `limit_stage` or `allowance_reset` signal reaches the account holder (its
/// `notice` destinations): seed 002's outreach to accounts approaching a limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutreachRule {
    /// Only accounts on these plans are told (free: the brief's lifecycle outreach).
    pub plans: Vec<String>,
    /// A `limit_stage` signal reaches the account holder at this stage (percent) or above.
    pub limit_min_stage: u32,
}

impl Default for OutreachRule {
    fn default() -> Self {
        Self {
            plans: vec!["free".into()],
            limit_min_stage: 85,
        }
    }
}

/// When a `limit_stage` signal goes to sales_assist.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesAssistRule {
    /// The lowest limit stage (percent) that is sent.
    pub min_stage: u32,
    /// Sent when the account has more seats than this...
    pub seats_over: u64,
    /// ...or is on one of these plans.
    pub plans: Vec<String>,
}

impl Default for SalesAssistRule {
    fn default() -> Self {
        Self {
            min_stage: 85,
            seats_over: 20,
            plans: vec!["pro".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// The consumer group reading `account-signals`.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted notifier with the same id
    /// takes its partitions back at once, instead of waiting for the broker to expire the dead
    /// member (tansu never does). Each notifier running at the same time needs its own id;
    /// empty turns static membership off.
    pub instance_id: String,
    /// The local sink: one JSON file per message that had no outside service configured.
    pub data_dir: String,
    /// Signal kind → destinations: `slack:<channel>`, `hubspot`, `notice` or `email`. A key
    /// that is not a signal kind fails when the configuration is read.
    pub routes: BTreeMap<SignalKind, Vec<String>>,
    /// When `pql`, `limit_stage` and `allowance_reset` reach the account holder.
    pub outreach: OutreachRule,
    /// When `limit_stage` reaches people (`slack:` and `hubspot` destinations).
    pub sales_assist: SalesAssistRule,
    /// A deal alert (Slack and HubSpot) goes out at most once per account in this many days...
    pub deal_cooldown_days: u32,
    /// ...unless the deal readiness score rose by at least this much since the last one.
    pub deal_rescore_points: u32,
    /// At most one new dashboard notice per account in this many days.
    pub notice_cooldown_days: u32,
    /// At most one email per account in this many days, whatever suggested it.
    pub email_cooldown_days: u32,
    /// Other Slack alerts: at most one per account and signal kind in this many hours.
    pub alert_cooldown_hours: u32,
    /// An escalation alert goes out at most once per account in this many days, whatever its
    /// deal score (the scorer raises one episode per account per calendar month).
    pub escalation_cooldown_days: u32,
    /// Plans whose accounts are existing customers to grow, not prospects: their `deal_ready`
    /// and `escalation` signals go to `expansion_route` instead of their routes (no
    /// `#enterprise-inbound` alert, no new HubSpot deal). Accounts on a plan with nothing
    /// higher to sell are never prospected whatever this says.
    pub expansion_plans: Vec<String>,
    /// Where an existing customer's growth goes: `slack:<channel>` destinations (never
    /// `hubspot` or `notice`); empty drops it.
    pub expansion_route: Vec<String>,
    /// Sending attempts before a notification goes to the dead-letter state.
    pub max_attempts: u32,
    /// Exponential backoff between attempts: d = base × 2^(attempt-1), capped at
    /// `backoff_max_ms`, then "equal jitter": a random delay in `[d/2, d)`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// One HTTP request's timeout.
    pub request_timeout_ms: u64,
    /// How long a claimed notification may stay mid-send before another worker decides its
    /// sender died.
    pub lease_ms: u64,
    /// How often the outbox is polled when nothing wakes the worker.
    pub poll_interval_ms: u64,
    pub slack: SlackConfig,
    pub hubspot: HubSpotConfig,
    pub offers: Offers,
    pub notices: NoticeMessages,
    /// The email channel: SMTP server, sender, templates, unsubscribe links.
    pub email: crate::email::EmailConfig,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        let route = |kind: SignalKind, to: &[&str]| {
            (kind, to.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        };
        Self {
            group_id: "meterline-notifier".into(),
            instance_id: "notifier-0".into(),
            data_dir: ".local/notifications".into(),
            routes: [
                route(
                    SignalKind::DealReady,
                    &["slack:enterprise_inbound", "hubspot"],
                ),
                route(
                    SignalKind::LimitStage,
                    &["notice", "email", "slack:sales_assist"],
                ),
                route(SignalKind::RateLimitSustained, &["notice"]),
                route(SignalKind::PluginGate, &["notice"]),
                route(SignalKind::PowerUser, &["notice"]),
                route(SignalKind::AbuseSuspected, &["slack:trust_and_safety"]),
                route(SignalKind::KeySharing, &["slack:trust_and_safety"]),
                route(SignalKind::MultiAccount, &["slack:trust_and_safety"]),
                route(SignalKind::Pql, &["notice", "email"]),
                route(SignalKind::Escalation, &["slack:enterprise_inbound"]),
                route(SignalKind::AllowanceReset, &["notice"]),
            ]
            .into_iter()
            .collect(),
            outreach: OutreachRule::default(),
            sales_assist: SalesAssistRule::default(),
            deal_cooldown_days: 30,
            deal_rescore_points: 15,
            notice_cooldown_days: 7,
            email_cooldown_days: 7,
            alert_cooldown_hours: 24,
            escalation_cooldown_days: 30,
            expansion_plans: vec!["enterprise".into()],
            expansion_route: vec![format!("slack:{ACCOUNT_MANAGEMENT}")],
            max_attempts: 8,
            backoff_base_ms: 1_000,
            backoff_max_ms: 600_000,
            request_timeout_ms: 10_000,
            lease_ms: 60_000,
            poll_interval_ms: 1_000,
            slack: SlackConfig::default(),
            hubspot: HubSpotConfig::default(),
            offers: Offers::default(),
            notices: NoticeMessages::default(),
            email: crate::email::EmailConfig::default(),
        }
    }
}

/// Trust-and-safety signals: never a sales lead, never an upgrade suggestion.
pub const TRUST_AND_SAFETY_KINDS: [SignalKind; 3] = [
    SignalKind::AbuseSuspected,
    SignalKind::KeySharing,
    SignalKind::MultiAccount,
];

/// Sales signals: a person at the vendor follows them up. They are routed to people (Slack,
/// HubSpot), never shown to the account holder as a notice.
pub const SALES_KINDS: [SignalKind; 2] = [SignalKind::DealReady, SignalKind::Escalation];

/// Outreach signals: what the account holder is told about (a notice), under
/// `notifier.outreach`, besides any people they are routed to.
pub const OUTREACH_KINDS: [SignalKind; 3] = [
    SignalKind::Pql,
    SignalKind::LimitStage,
    SignalKind::AllowanceReset,
];

impl NotifierConfig {
    /// Checks the routes, the expansion route and the cooldowns. Each error names the key and
    /// says why. (Keys that are not signal kinds never get this far: they fail to deserialize.)
    pub fn validate(&self) -> Result<(), String> {
        for (kind, destinations) in &self.routes {
            let key = format!("notifier.routes.{kind}");
            for d in destinations {
                match d.as_str() {
                    "hubspot" | "notice" | "email" if TRUST_AND_SAFETY_KINDS.contains(kind) => {
                        return Err(format!(
                            "{key}: {kind} is a trust-and-safety signal; it never goes to {d}"
                        ))
                    }
                    "notice" if *kind == SignalKind::Escalation => {
                        return Err(format!(
                            "{key}: escalation is a sales signal for people (slack:<channel> or hubspot); it never goes to notice"
                        ))
                    }
                    "email" if SALES_KINDS.contains(kind) => {
                        return Err(format!(
                            "{key}: {kind} is a sales signal for people (slack:<channel> or hubspot); it never goes to email"
                        ))
                    }
                    "hubspot" | "notice" | "email" => {}
                    other => self.check_slack(&key, other)?,
                }
            }
        }
        for plan in &self.expansion_plans {
            Plan::parse("notifier.expansion_plans", plan).map_err(|e| e.to_string())?;
        }
        for plan in &self.outreach.plans {
            Plan::parse("notifier.outreach.plans", plan).map_err(|e| e.to_string())?;
        }
        for d in &self.expansion_route {
            let key = "notifier.expansion_route";
            match d.as_str() {
                "hubspot" | "notice" | "email" => {
                    return Err(format!(
                        "{key}: an existing customer's growth goes to people (slack:<channel>), never to {d}: that would prospect a customer"
                    ))
                }
                other => self.check_slack(key, other)?,
            }
        }
        if self.escalation_cooldown_days == 0 {
            return Err(
                "notifier.escalation_cooldown_days: must be at least 1 (one escalation alert per account per this many days)"
                    .into(),
            );
        }
        if self.max_attempts == 0 {
            return Err("notifier.max_attempts: must be at least 1".into());
        }
        if self.email_cooldown_days == 0 {
            return Err(
                "notifier.email_cooldown_days: must be at least 1 (one email per account per this many days)"
                    .into(),
            );
        }
        let emailed: Vec<SignalKind> = self
            .routes
            .iter()
            .filter(|(_, ds)| ds.iter().any(|d| d == "email"))
            .map(|(k, _)| *k)
            .collect();
        self.email.validate(&emailed)?;
        Ok(())
    }

    /// `destination` must be `slack:<channel>` with the channel in `notifier.slack.webhooks`.
    fn check_slack(&self, key: &str, destination: &str) -> Result<(), String> {
        match destination.strip_prefix("slack:") {
            Some(channel) if self.slack.webhooks.contains_key(channel) => Ok(()),
            Some(channel) => Err(format!(
                "{key}: Slack channel {channel:?} has no entry in notifier.slack.webhooks (add one; an empty path uses the local sink)"
            )),
            None => Err(format!(
                "{key}: {destination:?} is not a destination (slack:<channel>, hubspot, notice or email)"
            )),
        }
    }

    /// Whether accounts on `plan` are existing customers whose growth goes to
    /// `expansion_route`.
    pub fn is_expansion_plan(&self, plan: Plan) -> bool {
        self.expansion_plans.iter().any(|p| p == plan.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_route_as_the_brief_does() {
        let c = NotifierConfig::default();
        c.validate().unwrap();
        assert_eq!(
            c.routes[&SignalKind::DealReady],
            vec!["slack:enterprise_inbound", "hubspot"]
        );
        for kind in TRUST_AND_SAFETY_KINDS {
            assert_eq!(c.routes[&kind], vec!["slack:trust_and_safety"]);
        }
        assert_eq!(
            c.routes[&SignalKind::Escalation],
            vec!["slack:enterprise_inbound"]
        );
        assert_eq!(c.expansion_plans, vec!["enterprise"]);
        assert_eq!(c.expansion_route, vec!["slack:account_management"]);
        assert_eq!(c.escalation_cooldown_days, 30);
        assert!(c.is_expansion_plan(Plan::Enterprise) && !c.is_expansion_plan(Plan::Pro));
    }

    /// Each bad value is refused with the key that holds it and the reason.
    #[test]
    fn scope_settings_are_validated_naming_the_key() {
        type Change = fn(&mut NotifierConfig);
        let cases: [(&str, Change, &str); 6] = [
            (
                "escalation as a notice",
                |c| {
                    c.routes
                        .insert(SignalKind::Escalation, vec!["notice".into()]);
                },
                "notifier.routes.escalation: escalation is a sales signal for people",
            ),
            (
                "an unknown expansion plan",
                |c| c.expansion_plans = vec!["gold".into()],
                "notifier.expansion_plans: \"gold\" is not one of free, pro, enterprise",
            ),
            (
                "expansion to hubspot",
                |c| c.expansion_route = vec!["hubspot".into()],
                "notifier.expansion_route: an existing customer's growth goes to people",
            ),
            (
                "expansion to a notice",
                |c| c.expansion_route = vec!["notice".into()],
                "never to notice",
            ),
            (
                "expansion to an unknown channel",
                |c| c.expansion_route = vec!["slack:csm".into()],
                "notifier.expansion_route: Slack channel \"csm\" has no entry in notifier.slack.webhooks",
            ),
            (
                "no escalation cooldown",
                |c| c.escalation_cooldown_days = 0,
                "notifier.escalation_cooldown_days: must be at least 1",
            ),
        ];
        for (case, change, want) in cases {
            let mut c = NotifierConfig::default();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{case}: {e}");
        }
        // Escalation may go to HubSpot too: it is a sales kind, not trust and safety.
        let mut c = NotifierConfig::default();
        c.routes.insert(
            SignalKind::Escalation,
            vec!["slack:enterprise_inbound".into(), "hubspot".into()],
        );
        c.expansion_route.clear();
        c.validate().unwrap();
    }

    #[test]
    fn trust_and_safety_never_goes_to_hubspot_or_notices() {
        let mut c = NotifierConfig::default();
        c.routes
            .insert(SignalKind::KeySharing, vec!["hubspot".into()]);
        let e = c.validate().unwrap_err();
        assert!(e.starts_with("notifier.routes.key_sharing:"), "{e}");
        assert!(e.contains("never goes to hubspot"), "{e}");
        c.routes
            .insert(SignalKind::KeySharing, vec!["notice".into()]);
        assert!(c.validate().unwrap_err().contains("never goes to notice"));
    }

    #[test]
    fn unknown_kinds_channels_and_destinations_are_named() {
        let e = serde_json::from_value::<NotifierConfig>(serde_json::json!({
            "routes": {"deal": ["notice"]}
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"deal\" is not a signal kind (one of deal_ready, "),
            "{e}"
        );
        // Every kind reads back as it is written.
        let c = NotifierConfig::default();
        let back: NotifierConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back.routes, c.routes);
        assert_eq!(back.routes.len(), SignalKind::ALL.len());
        let mut c = NotifierConfig::default();
        c.routes
            .insert(SignalKind::Pql, vec!["slack:growth".into()]);
        assert!(c
            .validate()
            .unwrap_err()
            .contains("\"growth\" has no entry"));
        let mut c = NotifierConfig::default();
        c.routes.insert(SignalKind::Pql, vec!["sms".into()]);
        assert!(c
            .validate()
            .unwrap_err()
            .contains("\"sms\" is not a destination (slack:<channel>, hubspot, notice or email)"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("/services/T1/B2/very-secret");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(format!("{s}"), "\"<redacted>\"");
        let mut c = NotifierConfig::default();
        c.hubspot.token = Secret::new("pat-na1-secret");
        assert!(!format!("{c:?}").contains("pat-na1-secret"));
    }
}
