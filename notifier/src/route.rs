//! Which destinations a signal goes to, and whether a cooldown holds it back. Pure functions:
//! the outbox applies them inside the transaction that records the notification.
//!
//! Routing is by signal kind (`notifier.routes`), then by the account:
//!
//! * **Plan scope** (defence in depth: the scorer also stops raising these). A signal that
//!   sells something (every kind but trust-and-safety) goes out only when there is a higher
//!   plan to offer ([`crate::offer`]): an Enterprise account is never prospected: no deal
//!   alert, no new HubSpot deal, no upgrade notice.
//! * **Existing customers' growth.** A `deal_ready` or `escalation` signal for an account on
//!   one of `notifier.expansion_plans` (Enterprise by default) goes to
//!   `notifier.expansion_route` (`slack:account_management`) instead of its routes.
//! * **Outreach** (seed 002). A `pql`, `limit_stage` or `allowance_reset` signal reaches the
//!   account holder (its `notice` and `email` destinations) only for accounts on `outreach.plans` (free by
//!   default), and a `limit_stage` one only at `outreach.limit_min_stage` (85 %) or above: a
//!   free account crossing the PQL threshold or reaching 85 % of a limit is told, and on the
//!   1st of a month one that hit a limit the month before hears that its allowance reset.
//! * **Sales assist.** A `limit_stage` signal reaches people (its `slack:` and `hubspot`
//!   destinations) at `sales_assist.min_stage` or above, for accounts with more than
//!   `sales_assist.seats_over` seats or on one of `sales_assist.plans`.
//!
//! The two rules apply to a signal's destinations separately, so a 25-seat free team at 95 %
//! gets its notice and reaches `#sales-assist`.
//!
//! **Email** goes to the account holder: an account with no contact email, or one that
//!   unsubscribed, gets its email recorded as skipped ([`email_skip`]), never sent.

use chrono::{DateTime, Duration, Utc};

use meterline_schemas::limits::TiersConfig;
use meterline_schemas::{AccountSignal, Plan, SignalKind};

use crate::config::{NotifierConfig, OUTREACH_KINDS, SALES_KINDS, TRUST_AND_SAFETY_KINDS};
use crate::offer::{self, NoOffer};

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Slack(String),
    HubSpot,
    Notice,
    /// The account holder's contact email ([`crate::email`]).
    Email,
}

impl Destination {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hubspot" => Some(Self::HubSpot),
            "notice" => Some(Self::Notice),
            "email" => Some(Self::Email),
            other => other
                .strip_prefix("slack:")
                .map(|c| Self::Slack(c.to_owned())),
        }
    }

    /// Whether the account holder reads it (as opposed to people at the vendor).
    pub fn is_for_account_holder(&self) -> bool {
        match self {
            Self::Notice | Self::Email => true,
            Self::Slack(_) | Self::HubSpot => false,
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Slack(c) => format!("slack:{c}"),
            Self::HubSpot => "hubspot".into(),
            Self::Notice => "notice".into(),
            Self::Email => "email".into(),
        }
    }
}

/// What the router knows about the account beyond the signal (its `accounts` row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountInfo {
    /// The account's current plan; the signal's plan when the account has no row.
    pub plan: Option<String>,
    pub seats: Option<i64>,
    pub email_domain: Option<String>,
    pub company_size: Option<i64>,
    /// Whether the account has a contact email (the address itself stays in PostgreSQL until
    /// an email is sent).
    pub has_contact_email: bool,
    /// When the account holder unsubscribed from email, if they did.
    pub email_unsubscribed_at: Option<DateTime<Utc>>,
}

/// Why an email to `account` is not sent, if it is not: no contact email, or unsubscribed.
pub fn email_skip(account: &AccountInfo) -> Option<String> {
    if let Some(at) = account.email_unsubscribed_at {
        return Some(format!(
            "email skipped: the account holder unsubscribed at {}",
            at.to_rfc3339()
        ));
    }
    (!account.has_contact_email).then(|| {
        "email skipped: the account has no contact email (signup or profile_updated contact_email)"
            .to_owned()
    })
}

impl AccountInfo {
    /// The plan to aim at: the account's current plan (it may have changed since the signal
    /// was raised), else the signal's, else free.
    pub fn plan(&self, signal: &AccountSignal) -> Plan {
        [self.plan.as_deref(), Some(signal.plan.as_str())]
            .into_iter()
            .flatten()
            .find_map(|p| Plan::parse("plan", p).ok())
            .unwrap_or(Plan::Free)
    }
}

/// Where a signal goes and what it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The account's plan.
    pub plan: Plan,
    /// The plan its messages offer; `None` for trust-and-safety signals and for an existing
    /// customer with nothing higher to buy.
    pub offer: Option<Plan>,
    /// An existing customer's growth, sent to `notifier.expansion_route`.
    pub expansion: bool,
    pub destinations: Vec<Destination>,
    /// Why a rule (plan scope, sales assist) sent the signal nowhere.
    pub skipped: Option<String>,
}

/// Routes `signal` for an account on the plan `account` says.
pub fn route(
    c: &NotifierConfig,
    tiers: &TiersConfig,
    signal: &AccountSignal,
    account: &AccountInfo,
) -> Route {
    let plan = account.plan(signal);
    let mut r = Route {
        plan,
        offer: None,
        expansion: false,
        destinations: Vec::new(),
        skipped: None,
    };
    let parse = |ds: &[String]| -> Vec<Destination> {
        ds.iter().filter_map(|d| Destination::parse(d)).collect()
    };
    if TRUST_AND_SAFETY_KINDS.contains(&signal.kind) {
        r.destinations = c
            .routes
            .get(&signal.kind)
            .map(|d| parse(d))
            .unwrap_or_default();
        return r;
    }
    let offered = offer::plan_offered(tiers, signal.kind, plan, &signal.evidence());
    r.offer = offered.as_ref().ok().copied();
    if SALES_KINDS.contains(&signal.kind) && c.is_expansion_plan(plan) {
        r.expansion = true;
        r.destinations = parse(&c.expansion_route);
        if r.destinations.is_empty() {
            r.skipped = Some(format!(
                "an existing {plan} customer's growth, and notifier.expansion_route is empty"
            ));
        }
        return r;
    }
    if let Err(NoOffer(why)) = offered {
        r.skipped = Some(format!("plan scope: {why}"));
        return r;
    }
    let Some(routes) = c.routes.get(&signal.kind) else {
        return r;
    };
    let (holder, people): (Vec<Destination>, Vec<Destination>) = parse(routes)
        .into_iter()
        .partition(Destination::is_for_account_holder);
    let mut skipped = Vec::new();
    // Read from the evidence once; only `limit_stage` has one.
    let stage = (signal.kind == SignalKind::LimitStage)
        .then(|| signal.limit_stage())
        .flatten();
    let holder_ok = !OUTREACH_KINDS.contains(&signal.kind) || {
        let rule = &c.outreach;
        let on_plan = rule.plans.iter().any(|p| p == plan.as_str());
        let staged = signal.kind != SignalKind::LimitStage
            || stage.is_some_and(|s| s >= rule.limit_min_stage);
        on_plan && staged
    };
    if !holder.is_empty() && !holder_ok {
        skipped.push("outreach: below the stage or not on its plans");
    }
    let people_ok = signal.kind != SignalKind::LimitStage || {
        let rule = &c.sales_assist;
        let staged = stage.is_some_and(|s| s >= rule.min_stage);
        let big = account
            .seats
            .is_some_and(|s| s > 0 && s as u64 > rule.seats_over);
        let on_plan = rule.plans.iter().any(|p| p == plan.as_str());
        staged && (big || on_plan)
    };
    if !people.is_empty() && !people_ok {
        skipped.push("sales assist: below the stage, too few seats, not on its plans");
    }
    if holder_ok {
        r.destinations.extend(holder);
    }
    if people_ok {
        r.destinations.extend(people);
    }
    if r.destinations.is_empty() && !skipped.is_empty() {
        r.skipped = Some(skipped.join("; "));
    }
    r
}

/// The destinations of `signal` (see [`route`]).
pub fn destinations(
    c: &NotifierConfig,
    tiers: &TiersConfig,
    signal: &AccountSignal,
    account: &AccountInfo,
) -> Vec<Destination> {
    route(c, tiers, signal, account).destinations
}

/// The cooldown a notification belongs to, and how long it lasts.
#[derive(Debug, Clone, PartialEq)]
pub struct Cooldown {
    /// Notifications of one account, destination and class share one cooldown.
    pub class: String,
    pub period: Duration,
    /// A deal alert inside the period still goes out when the score rose this much.
    pub rescore_points: Option<i32>,
}

pub fn cooldown(c: &NotifierConfig, kind: SignalKind, destination: &Destination) -> Cooldown {
    match (destination, kind) {
        // One notice per account per period, whatever suggested it.
        (Destination::Notice, _) => Cooldown {
            class: "notice".into(),
            period: Duration::days(i64::from(c.notice_cooldown_days)),
            rescore_points: None,
        },
        // Likewise one email.
        (Destination::Email, _) => Cooldown {
            class: "email".into(),
            period: Duration::days(i64::from(c.email_cooldown_days)),
            rescore_points: None,
        },
        (_, SignalKind::Escalation) => Cooldown {
            class: kind.as_str().into(),
            period: Duration::days(i64::from(c.escalation_cooldown_days)),
            rescore_points: None,
        },
        (_, SignalKind::DealReady) => Cooldown {
            class: kind.as_str().into(),
            period: Duration::days(i64::from(c.deal_cooldown_days)),
            rescore_points: Some(c.deal_rescore_points as i32),
        },
        (_, kind) => Cooldown {
            class: kind.as_str().into(),
            period: Duration::hours(i64::from(c.alert_cooldown_hours)),
            rescore_points: None,
        },
    }
}

/// The last notification in a cooldown class: when (event time) and at what score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Previous {
    pub at: DateTime<Utc>,
    pub score: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Send,
    Hold(String),
}

/// Whether a notification at `at` with `score` may go out after `previous`.
pub fn verdict(
    cooldown: &Cooldown,
    previous: Option<Previous>,
    at: DateTime<Utc>,
    score: i32,
) -> Verdict {
    let Some(p) = previous else {
        return Verdict::Send;
    };
    if at >= p.at + cooldown.period {
        return Verdict::Send;
    }
    if let Some(points) = cooldown.rescore_points {
        if points > 0 && score >= p.score + points {
            return Verdict::Send;
        }
    }
    Verdict::Hold(format!(
        "cooldown {}: the last one was at {} (score {}), {} before this one",
        cooldown.class,
        p.at.to_rfc3339(),
        p.score,
        humanize(at - p.at)
    ))
}

fn humanize(d: Duration) -> String {
    if d.num_days() >= 1 {
        format!("{} days", d.num_days())
    } else if d.num_hours() >= 1 {
        format!("{} hours", d.num_hours())
    } else {
        format!("{} seconds", d.num_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn signal(kind: SignalKind, plan: &str, episode: &str) -> AccountSignal {
        AccountSignal {
            signal_id: format!("a:{kind}:{episode}"),
            kind,
            account_id: "a".into(),
            episode: episode.into(),
            raised_at: 0,
            plan: plan.into(),
            deal_readiness: 75,
            pql: 0,
            abuse: 0,
            reasons: vec![],
            evidence: "{}".into(),
        }
    }

    #[test]
    fn routes_follow_the_brief() {
        let c = NotifierConfig::default();
        let t = TiersConfig::default();
        let none = AccountInfo::default();
        assert_eq!(
            destinations(
                &c,
                &t,
                &signal(SignalKind::DealReady, "free", "202611:75"),
                &none
            ),
            vec![
                Destination::Slack("enterprise_inbound".into()),
                Destination::HubSpot
            ]
        );
        for kind in [
            SignalKind::RateLimitSustained,
            SignalKind::PluginGate,
            SignalKind::PowerUser,
        ] {
            assert_eq!(
                destinations(&c, &t, &signal(kind, "free", "x"), &none),
                vec![Destination::Notice]
            );
        }
        for kind in [
            SignalKind::AbuseSuspected,
            SignalKind::KeySharing,
            SignalKind::MultiAccount,
        ] {
            assert_eq!(
                destinations(&c, &t, &signal(kind, "free", "x"), &none),
                vec![Destination::Slack("trust_and_safety".into())]
            );
        }
        assert_eq!(
            destinations(&c, &t, &signal(SignalKind::Pql, "free", "202612"), &none),
            vec![Destination::Notice, Destination::Email]
        );
        assert_eq!(
            destinations(
                &c,
                &t,
                &signal(SignalKind::AllowanceReset, "free", "202612"),
                &none
            ),
            vec![Destination::Notice]
        );
        assert_eq!(
            destinations(
                &c,
                &t,
                &signal(SignalKind::Escalation, "free", "202611"),
                &none
            ),
            vec![Destination::Slack("enterprise_inbound".into())]
        );
    }

    /// Plan × kind: Enterprise is never prospected; its growth goes to account management.
    #[test]
    fn enterprise_is_never_prospected_and_its_growth_goes_to_the_expansion_channel() {
        let c = NotifierConfig::default();
        let t = TiersConfig::default();
        let inbound = || Destination::Slack("enterprise_inbound".into());
        let expansion = || vec![Destination::Slack("account_management".into())];
        let cases: Vec<(SignalKind, &str, Vec<Destination>, bool)> = vec![
            // (kind, plan, destinations, expansion)
            (
                SignalKind::DealReady,
                "free",
                vec![inbound(), Destination::HubSpot],
                false,
            ),
            (
                SignalKind::DealReady,
                "pro",
                vec![inbound(), Destination::HubSpot],
                false,
            ),
            (SignalKind::DealReady, "enterprise", expansion(), true),
            (SignalKind::Escalation, "free", vec![inbound()], false),
            (SignalKind::Escalation, "pro", vec![inbound()], false),
            (SignalKind::Escalation, "enterprise", expansion(), true),
            (
                SignalKind::PluginGate,
                "free",
                vec![Destination::Notice],
                false,
            ),
            (
                SignalKind::PluginGate,
                "pro",
                vec![Destination::Notice],
                false,
            ),
            (SignalKind::PluginGate, "enterprise", vec![], false),
            (SignalKind::PowerUser, "enterprise", vec![], false),
            (SignalKind::RateLimitSustained, "enterprise", vec![], false),
            (
                SignalKind::KeySharing,
                "enterprise",
                vec![Destination::Slack("trust_and_safety".into())],
                false,
            ),
        ];
        for (kind, plan, want, expanded) in cases {
            let mut s = signal(kind, "free", "x");
            s.evidence = r#"{"plugin": "guardrails"}"#.into();
            // The account's current plan decides, whatever the signal says.
            let account = AccountInfo {
                plan: Some(plan.into()),
                ..Default::default()
            };
            let r = route(&c, &t, &s, &account);
            assert_eq!(r.destinations, want, "{kind} on {plan}");
            assert_eq!(r.expansion, expanded, "{kind} on {plan}");
            if want.is_empty() {
                assert!(
                    r.skipped.unwrap().starts_with("plan scope:"),
                    "{kind} on {plan}"
                );
            }
        }
        // Configurable: pro customers' growth to account management too, and no expansion
        // route at all still never prospects Enterprise.
        let mut c = NotifierConfig {
            expansion_plans: vec!["pro".into(), "enterprise".into()],
            ..Default::default()
        };
        let pro = AccountInfo {
            plan: Some("pro".into()),
            ..Default::default()
        };
        let r = route(&c, &t, &signal(SignalKind::DealReady, "pro", "x"), &pro);
        assert_eq!(
            (r.destinations, r.offer),
            (expansion(), Some(Plan::Enterprise))
        );
        c.expansion_plans.clear();
        let ent = AccountInfo {
            plan: Some("enterprise".into()),
            ..Default::default()
        };
        let r = route(
            &c,
            &t,
            &signal(SignalKind::DealReady, "enterprise", "x"),
            &ent,
        );
        assert!(r.destinations.is_empty() && !r.expansion);
    }

    #[test]
    fn limit_stages_reach_the_holder_at_85_on_free_and_sales_assist_at_85_for_pro_or_teams_over_20_seats(
    ) {
        let c = NotifierConfig::default();
        let t = TiersConfig::default();
        let notice = || Destination::Notice;
        let email = || Destination::Email;
        let sales = || Destination::Slack("sales_assist".into());
        // (plan, seats, stage, destinations): one unit each side of 85 % and of 20 seats.
        let cases: Vec<(&str, i64, u32, Vec<Destination>)> = vec![
            ("free", 1, 70, vec![]),
            ("free", 1, 84, vec![]),
            ("free", 1, 85, vec![notice(), email()]),
            ("free", 1, 100, vec![notice(), email()]),
            ("free", 20, 95, vec![notice(), email()]),
            ("free", 21, 95, vec![notice(), email(), sales()]),
            ("free", 21, 84, vec![]),
            ("pro", 1, 84, vec![]),
            ("pro", 1, 85, vec![sales()]),
            ("pro", 30, 100, vec![sales()]),
            // An Enterprise account has nothing higher to buy: no notice, no sales assist.
            ("enterprise", 50, 100, vec![]),
        ];
        for (plan, seats, stage, want) in cases {
            let s = signal(
                SignalKind::LimitStage,
                plan,
                &format!("month_requests:{stage}:202611"),
            );
            let account = AccountInfo {
                plan: Some(plan.into()),
                seats: Some(seats),
                ..Default::default()
            };
            let r = route(&c, &t, &s, &account);
            assert_eq!(r.destinations, want, "{plan}, {seats} seats, {stage} %");
            assert_eq!(
                r.skipped.is_some(),
                want.is_empty(),
                "{plan}, {seats} seats, {stage} %: {:?}",
                r.skipped
            );
        }
        // Configurable: outreach to pro accounts too, from 95 %.
        let c = NotifierConfig {
            outreach: crate::config::OutreachRule {
                plans: vec!["free".into(), "pro".into()],
                limit_min_stage: 95,
            },
            ..Default::default()
        };
        let pro = AccountInfo {
            plan: Some("pro".into()),
            ..Default::default()
        };
        let at = |stage: u32| {
            signal(
                SignalKind::LimitStage,
                "pro",
                &format!("day_requests:{stage}:20261130"),
            )
        };
        assert_eq!(destinations(&c, &t, &at(94), &pro), vec![sales()]);
        assert_eq!(
            destinations(&c, &t, &at(95), &pro),
            vec![notice(), email(), sales()]
        );
    }

    /// PQL (notice and email) and the monthly reset (notice) reach free account holders only (by
    /// default).
    #[test]
    fn pql_and_allowance_reset_notices_go_to_outreach_plans() {
        let c = NotifierConfig::default();
        let t = TiersConfig::default();
        for (kind, free) in [
            (
                SignalKind::Pql,
                vec![Destination::Notice, Destination::Email],
            ),
            (SignalKind::AllowanceReset, vec![Destination::Notice]),
        ] {
            for (plan, want) in [("free", free), ("pro", vec![]), ("enterprise", vec![])] {
                let account = AccountInfo {
                    plan: Some(plan.into()),
                    ..Default::default()
                };
                let r = route(&c, &t, &signal(kind, plan, "202612"), &account);
                assert_eq!(r.destinations, want, "{kind} on {plan}");
                assert_eq!(r.skipped.is_some(), want.is_empty(), "{kind} on {plan}");
            }
        }
    }

    #[test]
    fn deal_alerts_cool_down_for_30_days_unless_the_score_rises_by_15() {
        let c = NotifierConfig::default();
        let cd = cooldown(
            &c,
            SignalKind::DealReady,
            &Destination::Slack("enterprise_inbound".into()),
        );
        let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let prev = Some(Previous { at: t0, score: 75 });
        assert_eq!(verdict(&cd, None, t0, 75), Verdict::Send);
        assert!(matches!(
            verdict(&cd, prev, t0 + Duration::days(29), 85),
            Verdict::Hold(_)
        ));
        assert_eq!(
            verdict(&cd, prev, t0 + Duration::days(29), 90),
            Verdict::Send
        );
        assert_eq!(
            verdict(&cd, prev, t0 + Duration::days(30), 75),
            Verdict::Send
        );
        // A replay of an older signal is inside the period too.
        assert!(matches!(verdict(&cd, prev, t0, 75), Verdict::Hold(_)));
    }

    #[test]
    fn one_escalation_per_account_per_cooldown_whatever_the_score() {
        let c = NotifierConfig::default();
        let cd = cooldown(
            &c,
            SignalKind::Escalation,
            &Destination::Slack("enterprise_inbound".into()),
        );
        assert_eq!(cd.period, Duration::days(30));
        let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let prev = Some(Previous { at: t0, score: 40 });
        assert_eq!(verdict(&cd, None, t0, 10), Verdict::Send);
        assert!(matches!(
            verdict(&cd, prev, t0 + Duration::days(29), 100),
            Verdict::Hold(_)
        ));
        assert_eq!(
            verdict(&cd, prev, t0 + Duration::days(30), 0),
            Verdict::Send
        );
    }

    #[test]
    fn email_routes_parse_have_their_own_cooldown_and_skip_without_an_address() {
        assert_eq!(Destination::parse("email"), Some(Destination::Email));
        assert_eq!(Destination::Email.as_string(), "email");
        let mut c = NotifierConfig {
            email_cooldown_days: 3,
            ..Default::default()
        };
        c.routes
            .insert(SignalKind::Pql, vec!["notice".into(), "email".into()]);
        let t = TiersConfig::default();
        assert_eq!(
            destinations(
                &c,
                &t,
                &signal(SignalKind::Pql, "free", "x"),
                &AccountInfo::default()
            ),
            vec![Destination::Notice, Destination::Email]
        );
        let a = cooldown(&c, SignalKind::Pql, &Destination::Email);
        assert_eq!(a, cooldown(&c, SignalKind::LimitStage, &Destination::Email));
        assert_eq!((a.class.as_str(), a.period), ("email", Duration::days(3)));
        let at = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        // (has a contact email, unsubscribed at, why skipped)
        type Case<'a> = (bool, Option<DateTime<Utc>>, Option<&'a str>);
        let cases: [Case; 4] = [
            (true, None, None),
            (
                false,
                None,
                Some("email skipped: the account has no contact email"),
            ),
            (
                true,
                Some(at),
                Some("email skipped: the account holder unsubscribed at 2026-11-01T00:00:00+00:00"),
            ),
            (
                false,
                Some(at),
                Some("email skipped: the account holder unsubscribed"),
            ),
        ];
        for (has, unsubscribed, want) in cases {
            let got = email_skip(&AccountInfo {
                has_contact_email: has,
                email_unsubscribed_at: unsubscribed,
                ..Default::default()
            });
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.starts_with(w), "{g}"),
                (g, w) => panic!("{has} {unsubscribed:?}: {g:?} vs {w:?}"),
            }
        }
    }

    #[test]
    fn one_notice_per_7_days_whatever_suggested_it() {
        let c = NotifierConfig::default();
        let a = cooldown(&c, SignalKind::PowerUser, &Destination::Notice);
        let b = cooldown(&c, SignalKind::PluginGate, &Destination::Notice);
        assert_eq!(a, b);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let prev = Some(Previous { at: t0, score: 0 });
        assert!(matches!(
            verdict(&a, prev, t0 + Duration::days(1), 100),
            Verdict::Hold(_)
        ));
        assert!(matches!(
            verdict(&a, prev, t0 + Duration::days(7) - Duration::seconds(1), 0),
            Verdict::Hold(_)
        ));
        assert_eq!(verdict(&a, prev, t0 + Duration::days(7), 0), Verdict::Send);
    }
}
