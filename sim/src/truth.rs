//! The ground truth: what the shared rule definitions say each simulated account should raise,
//! computed from the very events the simulation posts, and independently of the scorer's code
//! (nothing here calls `meterline-scorer`; a rule that changes there does not change here).
//!
//! [`RULES`] holds every parameter in one place. Where the scorer's own evidence is still being
//! chosen (the key-sharing fleet/crowd test above all), these are the values to align it with,
//! or to align with it.
//!
//! The rules, as issue 19 shares them between the scorer, the notifier and this file:
//!
//! * **Plan scope.** `abuse_suspected`, `key_sharing` and `multi_account` watch free accounts
//!   only; `deal_ready`, `escalation`, `plugin_gate` and `power_user` watch the plans that have
//!   a higher plan to sell (free and pro). Enterprise gets none of them. The plan is the one the
//!   account holds at the end of the simulation.
//! * **Abuse.** New account (< 2 h) 30, median gap between today's session starts < 3 s 25,
//!   more than 20 sessions today 25, input diversity today < 0.15 20; suspected at 50, unless
//!   the account is a power user.
//! * **Deal readiness.** > 50M raw tokens this month 30, > 2 regions this month 20, ≥ 2 plugins
//!   desired 25 (a plugin is desired when its gate fires: ≥ 3 providers, ≥ 5 PII requests,
//!   ≥ 2 clouds in 7 days), team (seats or users in 30 days) > 20 15, company > 100 10; ready
//!   above 70.
//! * **Escalation.** More than 5,000 requests a minute for 3 consecutive minutes (of the last
//!   30), more than 50M raw tokens this month, or 3+ regions this month.
//! * **Power user.** At least 1,000 requests in the last 30 days, and any of: the monthly limit
//!   hit in each of the last 3 months (never simulated: usage events older than 35 days are
//!   refused), today's median session at least 3× the population's median with input diversity
//!   ≥ 0.15, 2+ `upgrade_page_viewed` events in 30 days, 30-day spend in the top 5 % of the
//!   active accounts on the same plan while the abuse score is under the suspected threshold.
//! * **Key sharing.** A key seen from ≥ 5 distinct client IPs within one minute of the last hour,
//!   when the addresses are a crowd, not a fleet: that minute's addresses span at least 3
//!   networks (/24) and the key's distinct addresses today are at least 3 times that minute's
//!   count (they come and go; the scorer's `scorer.abuse.key_sharing_churn_at_least`, over 24
//!   hours). A fleet's addresses are one network, the same all day. The scorer cannot see
//!   networks (client IPs are hashed whole), so it decides on the churn alone; every crowd and
//!   fleet this population makes is told apart by both.
//! * **Multi-account.** Another account matching on at least 2 of signup IP, device id and
//!   browser signature.
//!
//! Populations are the simulated accounts only. In a shared database, the scorer's medians and
//! spend ranks also see other runs' accounts of the same day; the check is exact in a fresh
//! database (as in `tests/simulate.rs`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as D, DurationRound, Utc};
use meterline_client::{AccountEvent, UsageEvent};
use meterline_schemas::{Plan, SignalKind};
use serde::{Deserialize, Serialize};

use crate::population::*;
use crate::traffic::*;

mod rules;
pub use rules::{Rules, CHECKED, RULES};

/// What one account did, folded from its events, over the windows the rules read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every plan the account was put on, with when.
    pub plans: Vec<(DateTime<Utc>, Plan)>,
    pub signed_up_at: Option<DateTime<Utc>>,
    pub seats: Option<u64>,
    pub company_size: Option<u64>,
    pub email_domain: Option<String>,
    pub fingerprint: [Option<String>; 3],
    pub requests_30d: u64,
    pub spend_30d_micros: u64,
    pub month_tokens: u64,
    pub month_regions: BTreeSet<String>,
    pub providers_7d: BTreeSet<String>,
    pub clouds_7d: BTreeSet<String>,
    pub pii_7d: u64,
    pub users_30d: BTreeSet<String>,
    pub upgrade_views_30d: u64,
    /// Session id → (first, last) event second, today.
    pub sessions_today: BTreeMap<String, (i64, i64)>,
    pub prompts_today: u64,
    pub distinct_prompts_today: BTreeSet<String>,
    /// Requests per clock minute, the last 30 minutes.
    pub minute_requests: BTreeMap<i64, u64>,
    /// (key, minute) → client IPs, the last hour.
    pub key_minutes: BTreeMap<(String, i64), BTreeSet<String>>,
    /// key → client IPs, today.
    pub key_day_ips: BTreeMap<String, BTreeSet<String>>,
}

/// The windows, from the clock the events were made with.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// The first simulated day.
    pub start: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub today: DateTime<Utc>,
    pub month: DateTime<Utc>,
    pub from7: DateTime<Utc>,
    pub from30: DateTime<Utc>,
    pub hour_ago: DateTime<Utc>,
    pub minutes_from: DateTime<Utc>,
}

impl Windows {
    pub fn of(c: &Clock, days: u32) -> Self {
        Self {
            start: c.day(days),
            now: c.now,
            today: c.today,
            month: c.month,
            from7: c.today - D::days(6),
            from30: c.today - D::days(29),
            hour_ago: c.now - D::hours(1),
            minutes_from: c.now.duration_trunc(D::minutes(1)).expect("minute") - D::minutes(29),
        }
    }
}

impl Observed {
    pub fn account_event(&mut self, e: &AccountEvent, w: &Windows) {
        let plan = e.plan.as_deref().and_then(|p| Plan::parse("plan", p).ok());
        match e.kind.as_str() {
            "signup" => {
                self.signed_up_at = Some(e.occurred_at);
                self.seats = e.seats.or(self.seats);
                self.company_size = e.company_size.or(self.company_size);
                self.email_domain = e.email_domain.clone();
                self.fingerprint = [
                    e.signup_ip.clone(),
                    e.device_id.clone(),
                    e.browser_signature.clone(),
                ];
                self.plans.push((e.occurred_at, plan.unwrap_or(Plan::Free)));
            }
            "plan_changed" => {
                if let Some(p) = plan {
                    self.plans.push((e.occurred_at, p));
                }
            }
            "upgrade_page_viewed" if e.occurred_at >= w.from30 => self.upgrade_views_30d += 1,
            _ => {}
        }
    }

    pub fn usage_event(&mut self, e: &UsageEvent, w: &Windows) {
        let t = e.occurred_at;
        let tokens = e.input_tokens + e.output_tokens;
        if t >= w.from30 {
            self.requests_30d += 1;
            self.spend_30d_micros += e.cost_micros.unwrap_or(0);
            if let Some(u) = &e.user_id {
                self.users_30d.insert(u.clone());
            }
        }
        if t >= w.month {
            self.month_tokens += tokens;
            self.month_regions.insert(e.region.clone());
        }
        if t >= w.from7 {
            self.providers_7d.insert(e.provider.clone());
            self.clouds_7d.insert(e.cloud.clone());
            self.pii_7d += u64::from(e.pii_detected);
        }
        if t >= w.today {
            if let Some(s) = &e.session_id {
                let sec = t.timestamp();
                let span = self.sessions_today.entry(s.clone()).or_insert((sec, sec));
                span.0 = span.0.min(sec);
                span.1 = span.1.max(sec);
            }
            if let Some(p) = &e.prompt_hash {
                self.prompts_today += 1;
                self.distinct_prompts_today.insert(p.clone());
            }
            if let Some(ip) = &e.client_ip {
                self.key_day_ips
                    .entry(e.api_key_id.clone())
                    .or_default()
                    .insert(ip.clone());
            }
        }
        let minute = t.duration_trunc(D::minutes(1)).expect("minute");
        if minute >= w.minutes_from {
            *self.minute_requests.entry(minute.timestamp()).or_default() += 1;
        }
        if t >= w.hour_ago {
            if let Some(ip) = &e.client_ip {
                self.key_minutes
                    .entry((e.api_key_id.clone(), minute.timestamp()))
                    .or_default()
                    .insert(ip.clone());
            }
        }
    }

    /// The account's plan at the end (free when it never signed up).
    pub fn final_plan(&self) -> Plan {
        let mut v = self.plans.clone();
        v.sort_by_key(|(t, _)| *t);
        v.last().map_or(Plan::Free, |(_, p)| *p)
    }

    /// The lowest plan held at any time since `start` (the first simulated day): a converter
    /// may have been offered Pro while it was free; a customer since last year never was.
    pub fn lowest_plan_since(&self, start: DateTime<Utc>) -> Plan {
        let mut v = self.plans.clone();
        v.sort_by_key(|(t, _)| *t);
        v.iter()
            .enumerate()
            .filter(|(i, _)| v.get(i + 1).is_none_or(|(next, _)| *next > start))
            .map(|(_, (_, p))| *p)
            .min()
            .unwrap_or(Plan::Free)
    }

    pub fn age_hours(&self, now: DateTime<Utc>) -> Option<f64> {
        self.signed_up_at
            .map(|s| (now - s).num_seconds() as f64 / 3600.0)
    }

    pub fn median_session_gap(&self) -> Option<f64> {
        let mut starts: Vec<i64> = self.sessions_today.values().map(|s| s.0).collect();
        starts.sort_unstable();
        let mut gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        median(&mut gaps)
    }

    pub fn median_session_secs(&self) -> Option<f64> {
        let mut l: Vec<f64> = self
            .sessions_today
            .values()
            .map(|s| (s.1 - s.0) as f64)
            .collect();
        median(&mut l)
    }

    pub fn input_diversity(&self) -> Option<f64> {
        (self.prompts_today > 0)
            .then(|| self.distinct_prompts_today.len() as f64 / self.prompts_today as f64)
    }

    /// Plugins whose gate fires.
    pub fn plugins_desired(&self, r: &Rules) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.providers_7d.len() >= r.providers_7d_at_least {
            v.push("audit_logger");
        }
        if self.pii_7d >= r.pii_requests_7d_at_least {
            v.push("guardrails");
        }
        if self.clouds_7d.len() >= r.clouds_7d_at_least {
            v.push("multi_cloud_router");
        }
        v
    }

    pub fn abuse_score(&self, now: DateTime<Utc>, r: &Rules) -> u32 {
        let mut s = 0;
        if self.age_hours(now).is_some_and(|h| h < r.new_account_hours) {
            s += r.new_account_points;
        }
        if self
            .median_session_gap()
            .is_some_and(|g| g < r.machine_gap_secs)
        {
            s += r.machine_speed_points;
        }
        if self.sessions_today.len() > r.sessions_today_over {
            s += r.sessions_today_points;
        }
        if self
            .input_diversity()
            .is_some_and(|d| d < r.input_diversity_under)
        {
            s += r.low_diversity_points;
        }
        s.min(100)
    }

    pub fn team_size(&self) -> u64 {
        self.seats.unwrap_or(0).max(self.users_30d.len() as u64)
    }

    pub fn deal_score(&self, r: &Rules) -> u32 {
        let mut s = 0;
        if self.month_tokens > r.monthly_tokens_over {
            s += r.monthly_tokens_points;
        }
        if self.month_regions.len() > r.regions_over {
            s += r.regions_points;
        }
        if self.plugins_desired(r).len() >= r.plugins_desired_at_least {
            s += r.plugins_desired_points;
        }
        if self.team_size() > r.team_size_over {
            s += r.team_size_points;
        }
        if self.company_size.is_some_and(|c| c > r.company_size_over) {
            s += r.company_size_points;
        }
        s.min(100)
    }

    /// The longest run of consecutive minutes over the escalation rate, in the last 30.
    pub fn minutes_over_rate(&self, r: &Rules) -> usize {
        let (mut best, mut run, mut last) = (0, 0, None::<i64>);
        for (m, n) in &self.minute_requests {
            if *n > r.escalation_rpm_over {
                run = if last == Some(m - 60) { run + 1 } else { 1 };
                last = Some(*m);
                best = best.max(run);
            }
        }
        best
    }

    pub fn escalation(&self, r: &Rules) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.minutes_over_rate(r) >= r.escalation_sustained_minutes {
            v.push("sustained_rate");
        }
        if self.month_tokens > r.escalation_monthly_tokens_over {
            v.push("monthly_tokens");
        }
        if self.month_regions.len() >= r.escalation_regions_at_least {
            v.push("regions");
        }
        v
    }

    /// The busiest minute of any key in the last hour, and whether its addresses are a crowd.
    pub fn key_minute(&self, r: &Rules) -> Option<KeyEvidence> {
        self.key_minutes
            .iter()
            .map(|((key, _), ips)| {
                let networks: BTreeSet<&str> = ips
                    .iter()
                    .map(|ip| ip.rsplit_once('.').map_or(ip.as_str(), |(n, _)| n))
                    .collect();
                let day_ips = self.key_day_ips.get(key).map_or(0, BTreeSet::len);
                KeyEvidence {
                    minute_ips: ips.len(),
                    networks: networks.len(),
                    day_ips,
                    crowd: networks.len() >= r.crowd_min_networks
                        && day_ips as f64 >= r.crowd_day_to_minute_ratio * ips.len() as f64,
                }
            })
            .max_by_key(|k| {
                (
                    k.crowd && k.minute_ips >= r.key_sharing_ips_per_minute,
                    k.minute_ips,
                )
            })
    }
}

/// One key's busiest minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvidence {
    pub minute_ips: usize,
    pub networks: usize,
    pub day_ips: usize,
    pub crowd: bool,
}

/// The median of `v` (which it sorts), or `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The numbers each expectation was decided on, for a person reading the truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub requests_30d: u64,
    pub spend_30d_micros: u64,
    pub spend_rank: Option<usize>,
    pub month_tokens: u64,
    pub regions: usize,
    pub plugins_desired: Vec<String>,
    pub team_size: u64,
    pub company_size: Option<u64>,
    pub deal_score: u32,
    pub escalation: Vec<String>,
    pub abuse_score: u32,
    pub sessions_today: usize,
    pub median_session_gap_secs: Option<f64>,
    pub median_session_secs: Option<f64>,
    pub input_diversity: Option<f64>,
    pub upgrade_views_30d: u64,
    pub power_user: Option<String>,
    pub key: Option<KeyEvidence>,
    pub fingerprint_matches: usize,
    pub public_domain: bool,
}

/// One simulated account; a line of the ground-truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    pub account_id: String,
    pub behaviour: Behaviour,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// The plan at the end.
    pub plan: Plan,
    /// The lowest plan held during the simulated days.
    pub lowest_plan: Plan,
    pub expected: Vec<String>,
    /// The multi-account cluster, for the accounts in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
    pub facts: Facts,
}

/// Folds every event of `people` over the scenario's days.
pub fn observe(people: &[SimAccount], s: &Scenario) -> Vec<Observed> {
    let w = Windows::of(&s.clock, s.days);
    people
        .iter()
        .map(|a| {
            let mut o = Observed::default();
            for days_ago in (0..=s.days).rev() {
                let d = day_events(a, s, days_ago);
                for e in &d.accounts {
                    o.account_event(e, &w);
                }
                for e in &d.usage {
                    o.usage_event(e, &w);
                }
            }
            o
        })
        .collect()
}

/// The ground truth of a population from what it did.
pub fn ground_truth(
    people: &[SimAccount],
    observed: &[Observed],
    w: &Windows,
    r: &Rules,
) -> Vec<TruthLine> {
    let now = w.now;
    let public = meterline_schemas::public_domains::PublicDomains::from_list(
        meterline_schemas::public_domains::DEFAULT_PUBLIC_DOMAINS,
    );
    // The population's median session length today.
    let mut lengths: Vec<f64> = observed
        .iter()
        .flat_map(|o| o.sessions_today.values().map(|s| (s.1 - s.0) as f64))
        .collect();
    let population_median = median(&mut lengths).filter(|m| *m > 0.0);
    // Spend ranks per plan among the active accounts: how many spend more.
    let rank = |i: usize| -> (usize, usize) {
        let o = &observed[i];
        let peers = observed
            .iter()
            .filter(|p| p.requests_30d > 0 && p.final_plan() == o.final_plan());
        let (mut more, mut n) = (0, 0);
        for p in peers {
            n += 1;
            more += usize::from(p.spend_30d_micros > o.spend_30d_micros);
        }
        (more, n)
    };
    // Fingerprint matches.
    let matches = |i: usize| -> usize {
        let me = &observed[i].fingerprint;
        observed
            .iter()
            .enumerate()
            .filter(|(j, o)| {
                *j != i
                    && me
                        .iter()
                        .zip(&o.fingerprint)
                        .filter(|(a, b)| a.is_some() && a == b)
                        .count()
                        >= r.multi_account_matches
            })
            .count()
    };
    people
        .iter()
        .zip(observed)
        .enumerate()
        .map(|(i, (a, o))| {
            let plan = o.final_plan();
            let sells = plan < Plan::Enterprise;
            let free = plan == Plan::Free;
            let abuse = o.abuse_score(now, r);
            let deal = o.deal_score(r);
            let escalation = o.escalation(r);
            let plugins = o.plugins_desired(r);
            let (more, peers) = rank(i);
            let active = o.requests_30d > 0;
            let top_spender = active && (more as f64) < r.power_top_spend_share * peers as f64;
            let diversity = o.input_diversity();
            let own_sessions = o.median_session_secs();
            let power = (o.requests_30d >= r.power_min_requests_30d)
                .then(|| {
                    if let (Some(own), Some(pop)) = (own_sessions, population_median) {
                        if own >= r.power_session_ratio_at_least * pop
                            && diversity.is_some_and(|d| d >= r.input_diversity_under)
                        {
                            return Some("long_sessions");
                        }
                    }
                    if o.upgrade_views_30d >= r.power_upgrade_views_30d {
                        return Some("upgrade_page_views");
                    }
                    if top_spender && abuse < r.suspected_at {
                        return Some("top_spend");
                    }
                    None
                })
                .flatten();
            let key = o.key_minute(r);
            let sharing =
                key.is_some_and(|k| k.minute_ips >= r.key_sharing_ips_per_minute && k.crowd);
            let fingerprint_matches = matches(i);
            let mut expected = Vec::new();
            let mut expect = |k: SignalKind, when: bool| {
                if when {
                    expected.push(k.as_str().to_owned());
                }
            };
            expect(SignalKind::DealReady, sells && deal > r.deal_ready_above);
            expect(SignalKind::Escalation, sells && !escalation.is_empty());
            expect(SignalKind::PluginGate, sells && !plugins.is_empty());
            expect(SignalKind::PowerUser, sells && power.is_some());
            expect(
                SignalKind::AbuseSuspected,
                free && abuse >= r.suspected_at && power.is_none(),
            );
            expect(SignalKind::KeySharing, free && sharing);
            expect(SignalKind::MultiAccount, free && fingerprint_matches > 0);
            TruthLine {
                account_id: a.id.clone(),
                behaviour: a.behaviour,
                edge: a.edge.map(|e| e.label()),
                plan,
                lowest_plan: o.lowest_plan_since(w.start),
                expected,
                cluster: a.cluster,
                facts: Facts {
                    requests_30d: o.requests_30d,
                    spend_30d_micros: o.spend_30d_micros,
                    spend_rank: active.then_some(more),
                    month_tokens: o.month_tokens,
                    regions: o.month_regions.len(),
                    plugins_desired: plugins.iter().map(|p| (*p).to_owned()).collect(),
                    team_size: o.team_size(),
                    company_size: o.company_size,
                    deal_score: deal,
                    escalation: escalation.iter().map(|t| (*t).to_owned()).collect(),
                    abuse_score: abuse,
                    sessions_today: o.sessions_today.len(),
                    median_session_gap_secs: o.median_session_gap(),
                    median_session_secs: own_sessions,
                    input_diversity: diversity.map(|d| (d * 1000.0).round() / 1000.0),
                    upgrade_views_30d: o.upgrade_views_30d,
                    power_user: power.map(String::from),
                    key,
                    fingerprint_matches,
                    public_domain: o
                        .email_domain
                        .as_deref()
                        .is_some_and(|d| public.is_public(d)),
                },
            }
        })
        .collect()
}

/// The population's ground truth, from its events: [`observe`] then [`ground_truth`].
pub fn truth(people: &[SimAccount], s: &Scenario) -> Vec<TruthLine> {
    ground_truth(
        people,
        &observe(people, s),
        &Windows::of(&s.clock, s.days),
        &RULES,
    )
}
