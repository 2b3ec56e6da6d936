//! The simulated population: who the accounts are, in what shares, and how they relate to each
//! other (shared email domains, a campus NAT, multi-account clusters). What each one sends is
//! in [`crate::traffic`]; what the rules should make of it is computed from those events in
//! [`crate::truth`](mod@crate::truth), never decided here.
//!
//! # The mix, and why
//!
//! A free tier worth measuring is mostly ordinary: people trying the product a few times a day,
//! on webmail addresses, with weekday rhythms. The behaviours that rules target are a few
//! percent each, and they sit next to confounders that look like them:
//!
//! | behaviour | ‰ | what it is | what it confounds |
//! |---|---|---|---|
//! | `steady` | 325 | free, a few requests on working days, two short sessions today | the baseline (and the session-length median) |
//! | `light_idle` | 85 | free, 1–3 requests a day, today's sessions stay open for hours | power users by session length alone |
//! | `campus` | 60 | free, groups of 6 unrelated people signing up from one NAT IP | multi-accounts on the signup IP |
//! | `trajectory`, `collision`, `churner`, `converter` | 45, 15, 30, 25 | free accounts growing into their limits, hitting them on day one, leaving, or buying Pro | limit proximity and lifecycle |
//! | `pii_sender` | 25 | free, PII in 6 requests today | the guardrails gate |
//! | `enterprise_ready` | 8 | free team: 60M tokens, 3 regions, 3 clouds and providers, 25 users, company of 500 | deal readiness and escalation, the true case |
//! | `power_user` | 20 | heavy (≥ 1,000 requests in 30 days), long diverse sessions today; a third of them on Pro | praise for light users |
//! | `upgrade_browser` | 10 | heavy, visited the upgrade page twice | power users without long sessions |
//! | `big_spender` | 8 | free, ≥ 1,000 requests of large prompts: the top of the plan's spend | power users by spend |
//! | `abuser` | 35 | free, signed up half an hour ago, machine-speed sessions, one prompt | the true case of abuse |
//! | `free_ci` | 5 | an old free account whose CI runs 40 sessions a day seconds apart with one fixture prompt | the free twin of the paying CI (still suspected) |
//! | `crowd_key` | 22 | a free key used by a crowd: many unrelated addresses that come and go | key sharing, the true case |
//! | `free_fleet` | 7 | a free account's 6 servers on one key, one network, all day | key sharing (a fleet is not a crowd) |
//! | `multi_account` | 40 | pairs sharing signup IP and device | the true case of multi-accounting |
//! | `pro_steady` | 105 | long-standing Pro customers (history from last year), 3–10 seats | everything that forgets the plan |
//! | `pro_ci` | 25 | Pro with a CI pipeline (40 sessions a day seconds apart, one fixture prompt) | abuse on paying accounts (denied!) |
//! | `pro_fleet` | 30 | Pro backends: 8 pods on one key, one network | key sharing on paying accounts |
//! | `pro_growing` | 10 | Pro with 60M tokens, 3 regions, 30 seats | Pro is offered Enterprise, and only that |
//! | `enterprise` | 55 | long-standing Enterprise customers, half of them heavy (60M tokens, 3 regions, PII) | prospecting customers, offering what they have |
//! | `enterprise_ci` | 10 | Enterprise with CI pipelines and server fleets | abuse and key sharing on Enterprise |
//!
//! About 76 % of the accounts start the month free and 24 % are existing customers (27 % pay at
//! the end, with the converters and the Pro power users): a gateway's active base holds its
//! customers next to the free tier's active minority, which is much larger than its customer
//! count but mostly idle. CI pipelines are a minority of accounts (4 %) but, at 40 sessions a
//! day, a large share of today's sessions: they pull the population's median session length
//! down, as they do in production. 60 % of free
//! signups use a public email domain (`gmail.com`, `outlook.com`, … from
//! [`meterline_schemas::public_domains`]), as self-serve signups do; the rest share company
//! domains in groups of 1 to 3, and a campus group its university's domain. Every account gets a
//! working-hours offset (its time zone), quieter weekends, and noise: an occasional extra
//! session, a stray model, a request with PII.
//!
//! On top of the mix come the [`Edge`] pairs: for every threshold of every checked rule, one
//! account one unit under and one one unit over (two pairs of accounts for the multi-account
//! match), whatever the population's size.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, TimeZone, Utc};
use meterline_schemas::public_domains::DEFAULT_PUBLIC_DOMAINS;
use meterline_schemas::Plan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Whether ingest takes account events of any age. Until it does (another change of issue 19),
/// long-standing customers' signups and plan changes are dated 34 and 33 days ago instead of
/// last year and months ago; `meterline simulate --old-history true` flips it per run, and this
/// default is the switch to flip once ingest accepts them.
pub const OLD_ACCOUNT_EVENTS_ACCEPTED: bool = true;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Steady,
    LightIdle,
    Campus,
    Trajectory,
    Collision,
    Churner,
    Converter,
    PiiSender,
    EnterpriseReady,
    PowerUser,
    UpgradeBrowser,
    BigSpender,
    Abuser,
    FreeCi,
    CrowdKey,
    FreeFleet,
    MultiAccount,
    ProSteady,
    ProCi,
    ProFleet,
    ProGrowing,
    Enterprise,
    EnterpriseCi,
    /// One side of an [`Edge`] pair.
    Edge,
}

impl Behaviour {
    /// Share of the population, in per mille (the module docs say why).
    pub const MIX: [(Behaviour, u32); 23] = [
        (Behaviour::Steady, 325),
        (Behaviour::LightIdle, 85),
        (Behaviour::Campus, 60),
        (Behaviour::Trajectory, 45),
        (Behaviour::Collision, 15),
        (Behaviour::Churner, 30),
        (Behaviour::Converter, 25),
        (Behaviour::PiiSender, 25),
        (Behaviour::EnterpriseReady, 8),
        (Behaviour::PowerUser, 20),
        (Behaviour::UpgradeBrowser, 10),
        (Behaviour::BigSpender, 8),
        (Behaviour::Abuser, 35),
        (Behaviour::FreeCi, 5),
        (Behaviour::CrowdKey, 22),
        (Behaviour::FreeFleet, 7),
        (Behaviour::MultiAccount, 40),
        (Behaviour::ProSteady, 105),
        (Behaviour::ProCi, 25),
        (Behaviour::ProFleet, 30),
        (Behaviour::ProGrowing, 10),
        (Behaviour::Enterprise, 55),
        (Behaviour::EnterpriseCi, 10),
    ];

    /// Long-standing customers, brought in through their account history.
    pub fn existing_customer(self) -> bool {
        matches!(
            self,
            Behaviour::ProSteady
                | Behaviour::ProCi
                | Behaviour::ProFleet
                | Behaviour::ProGrowing
                | Behaviour::Enterprise
                | Behaviour::EnterpriseCi
        )
    }
}

/// A threshold of a checked rule, with an account on each side of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// Deal readiness 70 (company of 100) / 80 (company of 101); 50M+1 tokens, 2 plugins,
    /// 21 seats. (The brief's weights are multiples of 5: 71 cannot happen.)
    DealCompany,
    /// 50,000,000 / 50,000,001 tokens this month (deal readiness 50 / 80, escalation no / yes).
    DealTokens,
    /// 20 / 21 seats (deal readiness 65 / 80).
    DealTeam,
    /// 1 / 2 plugins desired (1 / 2 clouds with 3 providers; deal readiness 55 / 80).
    DealPlugins,
    /// 2 / 3 regions this month (escalation).
    Regions,
    /// 5,000 / 5,001 requests a minute for 3 minutes (escalation).
    EscalationRpm,
    /// 5,001 requests a minute for 2 / 3 minutes (escalation).
    EscalationMinutes,
    /// Signed up 2 h 05 / 1 h 50 ago, templated input (abuse 20 / 50). Not one second: the
    /// scorer judges age when it scores, a minute or more after the events.
    AbuseAge,
    /// 21 sessions today, median gap 3 s / 2 s (abuse 25 / 50; the store keeps whole seconds).
    AbuseGap,
    /// 20 / 21 sessions today 2 s apart (abuse 25 / 50).
    AbuseSessions,
    /// A new account's input diversity 0.15 / 0.14 (abuse 30 / 50).
    AbuseDiversity,
    /// A crowd on one free key: 4 / 5 distinct IPs in one minute.
    KeyIps,
    /// 8 IPs a minute on one free key: a fleet (one network, the same 8 all day) / a crowd.
    KeyFleetCrowd,
    /// Two accounts matching on 1 (signup IP) / 2 (signup IP and browser) fingerprints.
    MultiFingerprint,
    /// 999 / 1,000 requests in 30 days, with 2 upgrade-page visits (power user).
    PowerVolume,
    /// 1 / 2 upgrade-page visits in 30 days, with 1,500 requests (power user).
    PowerViews,
    /// PII in 4 / 5 requests in 7 days (guardrails gate).
    PiiGate,
    /// 2 / 3 providers in 7 days (audit logger gate).
    ProvidersGate,
    /// 1 / 2 clouds in 7 days (multi-cloud router gate).
    CloudsGate,
}

impl Edge {
    pub const ALL: [Edge; 19] = [
        Edge::DealCompany,
        Edge::DealTokens,
        Edge::DealTeam,
        Edge::DealPlugins,
        Edge::Regions,
        Edge::EscalationRpm,
        Edge::EscalationMinutes,
        Edge::AbuseAge,
        Edge::AbuseGap,
        Edge::AbuseSessions,
        Edge::AbuseDiversity,
        Edge::KeyIps,
        Edge::KeyFleetCrowd,
        Edge::MultiFingerprint,
        Edge::PowerVolume,
        Edge::PowerViews,
        Edge::PiiGate,
        Edge::ProvidersGate,
        Edge::CloudsGate,
    ];

    /// Accounts on each side (a multi-account match takes two).
    pub fn members(self) -> usize {
        if self == Edge::MultiFingerprint {
            2
        } else {
            1
        }
    }
}

/// One side of an edge pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeSide {
    pub edge: Edge,
    /// One unit over the threshold (else one unit under).
    pub over: bool,
    /// Which member of the side (multi-account pairs).
    pub member: usize,
}

impl EdgeSide {
    pub fn label(&self) -> String {
        let edge = serde_json::to_value(self.edge)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        format!("{edge}:{}", if self.over { "over" } else { "under" })
    }
}

#[derive(Debug, Clone)]
pub struct SimAccount {
    pub index: usize,
    pub id: String,
    pub behaviour: Behaviour,
    pub edge: Option<EdgeSide>,
    /// The plan at the end of the simulation.
    pub plan: Plan,
    /// The multi-account cluster, for the accounts in one.
    pub cluster: Option<usize>,
    /// The campus NAT group, for the accounts in one.
    pub campus: Option<usize>,
    pub email_domain: String,
    /// Hours the account's working day is shifted by (its time zone).
    pub tz_shift: i64,
    pub(crate) seed: u64,
}

/// The population: every behaviour at least twice (multi-accounts in pairs, campus groups of
/// 6), the rest by the mix, then every edge pair; deterministic from `seed`, `n` and `tag`.
pub fn population(seed: u64, n: usize, tag: &str) -> Vec<SimAccount> {
    let mut rng = StdRng::seed_from_u64(seed);
    let edges: usize = Edge::ALL.iter().map(|e| 2 * e.members()).sum();
    let mut kinds: Vec<Behaviour> = Behaviour::MIX.iter().flat_map(|(b, _)| [*b, *b]).collect();
    let total: u32 = Behaviour::MIX.iter().map(|(_, w)| w).sum();
    while kinds.len() + edges < n {
        let mut pick = rng.random_range(0..total);
        for (b, w) in Behaviour::MIX {
            if pick < w {
                kinds.push(b);
                break;
            }
            pick -= w;
        }
    }
    // Multi-accounts come in pairs, campus groups in sixes.
    while kinds
        .iter()
        .filter(|b| **b == Behaviour::MultiAccount)
        .count()
        % 2
        == 1
    {
        kinds.push(Behaviour::MultiAccount);
    }
    while kinds.iter().filter(|b| **b == Behaviour::Campus).count() % 6 != 0 {
        kinds.push(Behaviour::Campus);
    }
    kinds.sort();
    let mut people: Vec<(Behaviour, Option<EdgeSide>)> =
        kinds.into_iter().map(|b| (b, None)).collect();
    for edge in Edge::ALL {
        for over in [false, true] {
            for member in 0..edge.members() {
                people.push((Behaviour::Edge, Some(EdgeSide { edge, over, member })));
            }
        }
    }
    let (mut in_cluster, mut in_campus, mut company, mut company_left) = (0usize, 0usize, 0, 0);
    people
        .into_iter()
        .enumerate()
        .map(|(index, (behaviour, edge))| {
            let cluster = (behaviour == Behaviour::MultiAccount).then(|| {
                in_cluster += 1;
                (in_cluster - 1) / 2
            });
            let campus = (behaviour == Behaviour::Campus).then(|| {
                in_campus += 1;
                (in_campus - 1) / 6
            });
            let plan = match behaviour {
                Behaviour::ProSteady
                | Behaviour::ProCi
                | Behaviour::ProFleet
                | Behaviour::ProGrowing
                | Behaviour::Converter => Plan::Pro,
                Behaviour::Enterprise | Behaviour::EnterpriseCi => Plan::Enterprise,
                Behaviour::PowerUser if rng.random_range(0..3) == 0 => Plan::Pro,
                _ => Plan::Free,
            };
            let public = plan == Plan::Free && edge.is_none() && rng.random_range(0..10) < 6;
            let email_domain = if let Some(g) = campus {
                if g % 2 == 0 {
                    format!("uni-{tag}-{g}.example")
                } else {
                    DEFAULT_PUBLIC_DOMAINS[rng.random_range(0..DEFAULT_PUBLIC_DOMAINS.len())]
                        .to_owned()
                }
            } else if public {
                // Webmail is dominated by a few names: half of them gmail.com.
                if rng.random_range(0..2) == 0 {
                    "gmail.com".to_owned()
                } else {
                    DEFAULT_PUBLIC_DOMAINS[rng.random_range(0..DEFAULT_PUBLIC_DOMAINS.len())]
                        .to_owned()
                }
            } else if edge.is_some() {
                format!("edge-{tag}-{index}.example")
            } else {
                // Company domains in groups of 1 to 3 (consecutive accounts of one behaviour).
                if company_left == 0 {
                    company += 1;
                    company_left = rng.random_range(1..=3);
                }
                company_left -= 1;
                format!("co{company}-{tag}.example")
            };
            SimAccount {
                index,
                id: format!("sim-{tag}-{index:05}"),
                behaviour,
                edge,
                plan,
                cluster,
                campus,
                email_domain,
                tz_shift: rng.random_range(-3..=3),
                seed: seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }
        })
        .collect()
}

/// The clock a simulation runs against.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: DateTime<Utc>,
    pub today: DateTime<Utc>,
    pub month: DateTime<Utc>,
}

impl Clock {
    pub fn at(now: DateTime<Utc>) -> Self {
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc();
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("first of the month");
        Self { now, today, month }
    }

    pub(crate) fn day(&self, days_ago: u32) -> DateTime<Utc> {
        self.today - ChronoDuration::days(i64::from(days_ago))
    }

    /// `minutes` before now, but not before today began: "today" activity stays today.
    pub(crate) fn recent(&self, minutes: i64) -> DateTime<Utc> {
        (self.now - ChronoDuration::minutes(minutes)).max(self.today)
    }

    /// The start of this month's heavy traffic: the later of the month's start and 6 days ago
    /// (so it also counts in the 7-day windows).
    pub(crate) fn month_span_start(&self) -> DateTime<Utc> {
        self.month.max(self.day(6))
    }
}
