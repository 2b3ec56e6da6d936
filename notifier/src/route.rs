//! Which destinations a signal goes to, and whether a cooldown holds it back. Pure functions:
//! the outbox applies them inside the transaction that records the notification.

use chrono::{DateTime, Duration, Utc};

use meterline_schemas::{AccountSignal, SignalKind};

use crate::config::NotifierConfig;

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Slack(String),
    HubSpot,
    Notice,
}

impl Destination {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hubspot" => Some(Self::HubSpot),
            "notice" => Some(Self::Notice),
            other => other
                .strip_prefix("slack:")
                .map(|c| Self::Slack(c.to_owned())),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Slack(c) => format!("slack:{c}"),
            Self::HubSpot => "hubspot".into(),
            Self::Notice => "notice".into(),
        }
    }
}

/// What the router knows about the account beyond the signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountInfo {
    pub seats: Option<i64>,
    pub email_domain: Option<String>,
    pub company_size: Option<i64>,
}

/// The destinations of `signal`, from `notifier.routes`, with the sales_assist rule applied to
/// `limit_stage` signals.
pub fn destinations(
    c: &NotifierConfig,
    signal: &AccountSignal,
    account: &AccountInfo,
) -> Vec<Destination> {
    let Some(routes) = c.routes.get(&signal.kind) else {
        return Vec::new();
    };
    if signal.kind == SignalKind::LimitStage {
        let rule = &c.sales_assist;
        let staged = signal.limit_stage().is_some_and(|s| s >= rule.min_stage);
        let big = account
            .seats
            .is_some_and(|s| s > 0 && s as u64 > rule.seats_over);
        let on_plan = rule.plans.iter().any(|p| p == &signal.plan);
        if !(staged && (big || on_plan)) {
            return Vec::new();
        }
    }
    routes
        .iter()
        .filter_map(|d| Destination::parse(d))
        .collect()
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
        let none = AccountInfo::default();
        assert_eq!(
            destinations(
                &c,
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
                destinations(&c, &signal(kind, "free", "x"), &none),
                vec![Destination::Notice]
            );
        }
        for kind in [
            SignalKind::AbuseSuspected,
            SignalKind::KeySharing,
            SignalKind::MultiAccount,
        ] {
            assert_eq!(
                destinations(&c, &signal(kind, "free", "x"), &none),
                vec![Destination::Slack("trust_and_safety".into())]
            );
        }
        assert!(destinations(&c, &signal(SignalKind::Pql, "free", "x"), &none).is_empty());
    }

    #[test]
    fn limit_stages_reach_sales_assist_at_85_for_pro_or_more_than_20_seats() {
        let c = NotifierConfig::default();
        let seats = |n| AccountInfo {
            seats: Some(n),
            ..Default::default()
        };
        let sales = vec![Destination::Slack("sales_assist".into())];
        let s = |plan, stage| {
            signal(
                SignalKind::LimitStage,
                plan,
                &format!("month_requests:{stage}:202611"),
            )
        };
        assert_eq!(destinations(&c, &s("pro", 85), &seats(1)), sales);
        assert!(destinations(&c, &s("pro", 70), &seats(1)).is_empty());
        assert!(destinations(&c, &s("free", 95), &seats(20)).is_empty());
        assert_eq!(destinations(&c, &s("free", 95), &seats(21)), sales);
        assert!(destinations(&c, &s("free", 100), &AccountInfo::default()).is_empty());
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
