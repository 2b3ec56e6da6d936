//! What each simulated account sends on a given day: its usage and account events.
//!
//! Every account's day is a pure function of its seed and the day, so the ground truth
//! ([`crate::truth`](mod@crate::truth)) folds exactly the events that are posted. Behaviours that the scorer
//! judges on "today", "the last hour" or "the last 30 minutes" (sessions, key sharing, request
//! rates, new accounts) happen shortly before `now`; a value that must stay under a threshold
//! never passes it on the way (templated prompts come after the distinct ones, counts only
//! grow), because the scorer may score an account while its events are still arriving.

use chrono::{DateTime, Datelike, Duration as D, Utc, Weekday};
use meterline_client::{AccountEvent, UsageEvent};
use meterline_schemas::Plan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::population::*;

/// Events of one account on one day (`days_ago` = 0 is today, up to now).
pub struct DayEvents {
    pub accounts: Vec<AccountEvent>,
    pub usage: Vec<UsageEvent>,
}

/// What a run's traffic depends on besides the account.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub tag: String,
    pub clock: Clock,
    /// Days of event time before today.
    pub days: u32,
    /// Date long-standing customers' history from last year (needs an ingest that takes
    /// account events of any age); otherwise 34 and 33 days ago.
    pub old_history: bool,
}

mod gen;
use gen::*;

/// What `a` does `days_ago` days ago (0: today, up to `s.clock.now`).
pub fn day_events(a: &SimAccount, s: &Scenario, days_ago: u32) -> DayEvents {
    let mut g = Gen {
        a,
        s,
        rng: StdRng::seed_from_u64(
            a.seed ^ u64::from(days_ago).wrapping_mul(0xA24B_AED4_963E_E407),
        ),
        out: DayEvents {
            accounts: vec![],
            usage: vec![],
        },
        prompt: u64::from(days_ago) * 100_000,
    };
    let c = s.clock;
    let days = s.days;
    let first = days_ago == days;
    let day = c.day(days_ago);
    let long_ago = c.now - D::days(i64::from(days) + 1);
    // Volume-driven behaviours send the same total whatever the number of days.
    let per_day = |total: u32| total.div_ceil(days.max(1));
    if first && a.behaviour.existing_customer() {
        let (seats, company) = match a.behaviour {
            Behaviour::ProGrowing => (30, 300),
            Behaviour::Enterprise | Behaviour::EnterpriseCi => (50, 2_000),
            _ => (g.rng.random_range(3..=10), g.rng.random_range(10..=80)),
        };
        g.history(seats, company);
    }
    match a.behaviour {
        Behaviour::Steady | Behaviour::PiiSender | Behaviour::Campus => {
            if first {
                let e = g.signup(long_ago, Plan::Free);
                if let Some(group) = a.campus {
                    // Unrelated people behind one campus NAT: same signup address, their own
                    // devices and browsers.
                    e.signup_ip = Some(format!("100.{}.{}.1", 64 + tag_hash(&s.tag) % 64, group));
                }
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000, true);
            } else {
                g.sessions_today();
                if a.behaviour == Behaviour::PiiSender {
                    for i in 0..6 {
                        let e = g.usage(c.recent(20) + D::seconds(i), 500, 100);
                        e.pii_detected = true;
                    }
                }
            }
            if let Some(group) = a.campus {
                let ip = format!("100.{}.{}.1", 64 + tag_hash(&s.tag) % 64, group);
                for e in &mut g.out.usage {
                    e.client_ip = Some(ip.clone());
                }
            }
        }
        Behaviour::LightIdle => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(1..=3);
                g.workday(day, n, 200..1_500, true);
            } else {
                // Two sessions left open for hours: a question now and then.
                for (sid, start, step) in [("idle0", 240, 60), ("idle1", 200, 50)] {
                    let t0 = c.recent(start);
                    for i in 0..3 {
                        let e = g.usage(t0 + D::minutes(i * step), 900, 400);
                        e.session_id = Some(sid.into());
                    }
                }
            }
        }
        Behaviour::Trajectory => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                // Daily volume grows steadily towards the month's allowance.
                let daily = 20_000 + 3_000 * u64::from(days - days_ago);
                for i in 0..10 {
                    g.usage(day + D::hours(10) + D::minutes(i), daily / 10, 0);
                }
            } else {
                g.sessions_today();
            }
        }
        Behaviour::Collision => {
            // Signed up this morning and already near the day's budget.
            if days_ago == 0 {
                g.signup((c.now - D::hours(10)).max(c.today), Plan::Free);
                for i in 0..10 {
                    g.usage(c.recent(30) + D::seconds(i * 20), 9_000, 0);
                }
            }
        }
        Behaviour::Churner => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago == 10.min(days) {
                g.account(day + D::hours(8), "churned");
            }
            if days_ago > 10 {
                let n = g.rng.random_range(3..=8);
                g.workday(day, n, 200..1_500, true);
            }
        }
        Behaviour::Converter => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago == days / 2 {
                g.account(day + D::hours(12), "upgrade_page_viewed");
                g.account(day + D::hours(12) + D::minutes(5), "plan_changed")
                    .plan = Some("pro".into());
            }
            if days_ago > 0 {
                let n = if days_ago < days / 2 { 20 } else { 8 };
                g.workday(day, n, 500..3_000, true);
            } else {
                g.sessions_today();
            }
        }
        Behaviour::EnterpriseReady => {
            if first {
                let e = g.signup(long_ago, Plan::Free);
                e.company_size = Some(500);
                e.seats = Some(5);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(5..=15);
                g.workday(day, n, 500..3_000, true);
            } else {
                // This month: 60M tokens from 25 people, three regions on three clouds, three
                // providers.
                g.heavy_month(60_000_000, 500, (3, 3, 3), 25);
            }
        }
        Behaviour::PowerUser | Behaviour::UpgradeBrowser | Behaviour::BigSpender => {
            if first && a.plan == Plan::Free {
                g.signup(long_ago, Plan::Free);
            } else if first {
                let seats = g.rng.random_range(3..=10);
                g.history(seats, 40);
            }
            let (total, tokens) = match a.behaviour {
                // Above every other free account's spend (the deal-ready and escalation ones
                // included), under the 50M monthly tokens that would escalate.
                Behaviour::BigSpender => (2_000, 20_000..24_000),
                _ => (1_400, 500..3_000),
            };
            if days_ago > 0 {
                let n = per_day(total);
                // Every day, weekends included: the volume is what makes them heavy.
                for _ in 0..n {
                    let at = g.work_time(day);
                    let input = g.rng.random_range(tokens.clone());
                    g.usage(at, input, input / 10);
                }
            } else if a.behaviour == Behaviour::PowerUser {
                // Three long sessions today with varied prompts.
                let start = c.recent(45);
                for s in 0..3i64 {
                    for i in 0..9i64 {
                        let e = g.usage(start + D::seconds(s * 30 + i * 60), 1_000, 300);
                        e.session_id = Some(format!("s{s}"));
                    }
                }
            } else if a.behaviour == Behaviour::UpgradeBrowser {
                g.sessions_today();
            } else {
                // Big spenders call the API from their backend: no sessions.
                for i in 0..10 {
                    g.usage(c.recent(30) + D::seconds(i * 20), 20_000, 2_000);
                }
            }
            if a.behaviour == Behaviour::UpgradeBrowser
                && (days_ago == 3.min(days) || days_ago == 1.min(days))
            {
                g.account(day + D::hours(15), "upgrade_page_viewed");
            }
        }
        Behaviour::Abuser => {
            if days_ago == 0 {
                // Signed up half an hour ago; eight sessions a second apart, one prompt.
                g.signup(c.recent(30), Plan::Free);
                let start = c.recent(20);
                for i in 0..16i64 {
                    let e = g.usage(start + D::seconds(i / 2), 400, 100);
                    e.session_id = Some(format!("s{}", i / 2));
                    e.prompt_hash = Some("same-prompt".into());
                }
            }
        }
        Behaviour::FreeCi | Behaviour::ProCi | Behaviour::EnterpriseCi => {
            if first && a.behaviour == Behaviour::FreeCi {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=6);
                g.workday(day, n, 500..3_000, true);
                if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
                    let at = g.work_time(day);
                    g.ci(at, 10, 2, 2);
                }
            } else {
                g.sessions_today();
                let start = c.recent(50);
                g.ci(start, 40, 2, 3);
            }
            if a.behaviour == Behaviour::EnterpriseCi {
                g.fleet(day, days_ago, 8);
            }
        }
        Behaviour::CrowdKey => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000, true);
            } else {
                g.crowd(30, 6);
            }
        }
        Behaviour::FreeFleet | Behaviour::ProFleet => {
            if first && a.behaviour == Behaviour::FreeFleet {
                g.signup(long_ago, Plan::Free);
            }
            let pods = if a.behaviour == Behaviour::ProFleet {
                8
            } else {
                6
            };
            g.fleet(day, days_ago, pods);
        }
        Behaviour::MultiAccount => {
            let cluster = a.cluster.unwrap_or(0);
            if days_ago == 5.min(days) {
                let tag = s.tag.clone();
                let e = g.signup(day + D::hours(14), Plan::Free);
                // The cluster shares its signup IP and device; each browser differs.
                e.signup_ip = Some(format!(
                    "100.{}.{}.{}",
                    tag_hash(&tag) % 64,
                    cluster / 250,
                    cluster % 250 + 1
                ));
                e.device_id = Some(format!("dev-{tag}-cluster-{cluster}"));
            }
            if days_ago < 5 && days_ago > 0 {
                g.workday(day, 3, 200..1_000, true);
            }
        }
        Behaviour::ProSteady => {
            if days_ago > 0 {
                let n = g.rng.random_range(6..=15);
                g.workday(day, n, 1_000..8_000, true);
            } else {
                g.sessions_today();
            }
        }
        Behaviour::ProGrowing => {
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000, true);
            } else {
                g.heavy_month(60_000_000, 500, (3, 2, 2), 30);
            }
        }
        Behaviour::Enterprise => {
            let heavy = a.index % 2 == 0;
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000, true);
            } else if heavy {
                g.heavy_month(60_000_000, 500, (3, 3, 3), 40);
                for i in 0..6 {
                    let e = g.usage(c.recent(20) + D::seconds(i), 500, 100);
                    e.pii_detected = true;
                }
            } else {
                g.sessions_today();
            }
        }
        Behaviour::Edge => {
            if let Some(edge) = a.edge {
                edge_day(&mut g, edge, days_ago, long_ago);
            }
        }
    }
    g.out
}

/// The edge pairs' days: everything equal on both sides but the one unit.
fn edge_day(g: &mut Gen<'_>, e: EdgeSide, days_ago: u32, long_ago: DateTime<Utc>) {
    let c = g.s.clock;
    let days = g.s.days;
    let first = days_ago == days;
    let day = c.day(days_ago);
    let over = e.over;
    let new_account = matches!(e.edge, Edge::AbuseAge | Edge::AbuseDiversity);
    if first && !new_account {
        let tag = g.s.tag.clone();
        let (seats, company) = match e.edge {
            Edge::DealCompany => (21, if over { 101 } else { 100 }),
            Edge::DealTeam => (if over { 21 } else { 20 }, 101),
            Edge::DealTokens | Edge::DealPlugins => (21, 101),
            _ => (1, 5),
        };
        let pair = u8::from(over);
        let ev = g.signup(long_ago, Plan::Free);
        ev.seats = Some(seats);
        ev.company_size = Some(company);
        if e.edge == Edge::MultiFingerprint {
            // Both members of a side share the signup address; over, the browser too.
            ev.signup_ip = Some(format!("100.127.{}.{pair}", tag_hash(&tag)));
            if over {
                ev.browser_signature = Some(format!("br-{tag}-edge-pair"));
            }
        }
    }
    // Light background on past days, none this month for the token counts, none for volumes
    // that must be exact.
    let exact = matches!(e.edge, Edge::PowerVolume | Edge::PowerViews)
        || (e.edge == Edge::DealTokens && day >= c.month);
    let background = !new_account && days_ago > 0 && !exact;
    if background {
        let n = g.rng.random_range(2..=4);
        g.workday(day, n, 200..1_000, false);
    }
    match e.edge {
        Edge::DealCompany | Edge::DealTeam | Edge::DealTokens | Edge::DealPlugins => {
            if days_ago == 0 {
                let tokens = if e.edge == Edge::DealTokens && !over {
                    50_000_000
                } else {
                    50_000_001
                };
                let clouds = if e.edge == Edge::DealPlugins && !over {
                    1
                } else {
                    2
                };
                g.heavy_month(tokens, 500, (1, clouds, 3), 0);
            }
        }
        Edge::Regions => {
            if days_ago == 0 {
                g.heavy_month(60_000, 30, (if over { 3 } else { 2 }, 1, 1), 0);
            }
        }
        Edge::EscalationRpm => {
            if days_ago == 0 {
                g.rate_burst(if over { 5_001 } else { 5_000 }, 3);
            }
        }
        Edge::EscalationMinutes => {
            if days_ago == 0 {
                g.rate_burst(5_001, if over { 3 } else { 2 });
            }
        }
        Edge::AbuseAge => {
            if days_ago == 0 {
                let age = if over {
                    D::minutes(110)
                } else {
                    D::minutes(125)
                };
                g.signup(c.now - age, Plan::Free);
                // Ten sessions a minute apart, 100 requests, 10 distinct prompts (distinct ones
                // first).
                let start = c.recent(40);
                for i in 0..100i64 {
                    let ev = g.usage(start + D::seconds((i / 10) * 60 + (i % 10) * 5), 500, 100);
                    ev.session_id = Some(format!("s{}", i / 10));
                    ev.prompt_hash = Some(format!("t-{}", i.min(9)));
                }
            }
        }
        Edge::AbuseGap => {
            if days_ago == 0 {
                g.quick_sessions(21, if over { 2 } else { 3 });
            }
        }
        Edge::AbuseSessions => {
            if days_ago == 0 {
                g.quick_sessions(if over { 21 } else { 20 }, 2);
            }
        }
        Edge::AbuseDiversity => {
            if days_ago == 0 {
                g.signup(c.recent(30), Plan::Free);
                let distinct = if over { 14 } else { 15 };
                let start = c.recent(25);
                for i in 0..100i64 {
                    let ev = g.usage(start + D::seconds((i / 20) * 300 + (i % 20) * 10), 500, 100);
                    ev.session_id = Some(format!("s{}", i / 20));
                    ev.prompt_hash = Some(format!("d-{}", i.min(distinct - 1)));
                }
            }
        }
        Edge::KeyIps => {
            if days_ago == 0 {
                g.crowd(30, if over { 5 } else { 4 });
            }
        }
        Edge::KeyFleetCrowd => {
            if over {
                if days_ago == 0 {
                    g.crowd(40, 8);
                }
            } else {
                g.fleet(day, days_ago, 8);
            }
        }
        Edge::MultiFingerprint => {}
        Edge::PowerVolume | Edge::PowerViews => {
            let (total, views) = match e.edge {
                Edge::PowerVolume => (if over { 1_000 } else { 999 }, 2),
                _ => (1_500, if over { 2 } else { 1 }),
            };
            g.exact_volume(days, days_ago, total, 10);
            if (views >= 1 && days_ago == 2.min(days)) || (views >= 2 && days_ago == 1.min(days)) {
                g.account(day + D::hours(16), "upgrade_page_viewed");
            }
        }
        Edge::PiiGate => {
            if days_ago == 0 {
                for i in 0..(if over { 5 } else { 4 }) {
                    g.usage(c.recent(20) + D::seconds(i), 500, 100).pii_detected = true;
                }
            }
        }
        Edge::ProvidersGate => {
            if days_ago == 0 {
                g.heavy_month(30_000, 30, (1, 1, if over { 3 } else { 2 }), 0);
            }
        }
        Edge::CloudsGate => {
            if days_ago == 0 {
                g.heavy_month(30_000, 30, (1, if over { 2 } else { 1 }, 1), 0);
            }
        }
    }
}
