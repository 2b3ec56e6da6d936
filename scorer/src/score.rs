//! From facts to scores, and from scores to the signals they raise.
//!
//! Every score is computed for every account, whatever its plan, and stored (a person may
//! look). Which signals an account can raise is the rule's plan scope (`ScorerConfig::scope`):
//! a signal of a kind its plan is outside is not raised, and [`Scores::notes`] says so. An
//! account outside `scorer.abuse.plans` is never suspected (so never flagged).
//!
//! `escalation` is raised on its own, whatever the deal score, once per account and calendar
//! month, when any of the brief's auto-escalation thresholds holds; `deal_ready` carries the
//! same tags.

use chrono::{DateTime, Utc};
use meterline_schemas::keys::Grain;
use meterline_schemas::limits::{QuotaConfig, TiersConfig};
use meterline_schemas::Plan;
use meterline_schemas::SignalKind;
use serde::Serialize;
use serde_json::json;

use crate::config::ScorerConfig;
use crate::facts::{AccountFacts, FingerprintMatch, KeyMinute};
use crate::rules::abuse::{
    abuse_score, fleet_keys, input_diversity, ip_churn, is_suspected, median_session_gap,
    multi_accounts, shared_keys,
};
use crate::rules::deal::deal_readiness;
use crate::rules::gates::{
    escalation_tags, plugin_triggers, sustained_run, PluginTrigger, RateRun,
};
use crate::rules::power::power_user;
use crate::rules::pql::{pql, weekly_growth};
use crate::rules::proximity::{proximity, LimitProximity};
use crate::rules::{Reason, Score};

/// The inputs the scores were computed from, for a person checking them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    pub monthly_tokens: u64,
    pub regions: Vec<String>,
    pub seats: Option<u64>,
    pub users_30d: u64,
    pub team_size: u64,
    pub company_size: Option<u64>,
    pub age_hours: Option<f64>,
    pub sessions_today: u64,
    pub median_session_gap_secs: Option<f64>,
    pub input_diversity: Option<f64>,
    pub providers_7d: u64,
    pub clouds_7d: u64,
    pub pii_requests_7d: u64,
    pub gate_hits_30d: u64,
    pub weekly_growth: Option<f64>,
    pub email_domain: Option<String>,
    pub email_domain_public: bool,
    pub domain_accounts: u64,
    pub requests_30d: u64,
    pub spend_30d_micros: u64,
    /// The 30-day spend at which an account on this plan is in the top share.
    pub plan_spend_top_micros: Option<u64>,
    pub upgrade_views_30d: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub account_id: String,
    pub scored_at: DateTime<Utc>,
    pub plan: Plan,
    pub deal_readiness: Score,
    pub pql: Score,
    pub abuse: Score,
    pub abuse_suspected: bool,
    pub power_user: Option<Reason>,
    pub limits: Vec<LimitProximity>,
    pub plugin_triggers: Vec<PluginTrigger>,
    /// Plugins desired: triggered now or before.
    pub plugins_desired: Vec<String>,
    pub rate_limit_sustained: Option<RateRun>,
    pub shared_keys: Vec<KeyMinute>,
    pub multi_accounts: Vec<FingerprintMatch>,
    /// Auto-escalation tags.
    pub tags: Vec<String>,
    pub inputs: Inputs,
    /// What the rules deliberately did not count or raise, and why: a public email domain, a
    /// signal outside its plan scope, a key used by a fleet.
    pub notes: Vec<String>,
}

pub fn score(
    f: &AccountFacts,
    quota: &QuotaConfig,
    tiers: &TiersConfig,
    c: &ScorerConfig,
) -> Scores {
    let limits = proximity(f, quota, tiers, c);
    let triggers = plugin_triggers(f, tiers, c);
    let mut desired = f.plugins_desired_before.clone();
    desired.extend(triggers.iter().map(|t| t.plugin.clone()));
    let deal = deal_readiness(f, desired.len() as u64, &c.deal);
    let max_ratio = limits
        .iter()
        .filter_map(|l| l.status.ratio.map(|r| (r, l.status.name.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let pql_score = pql(f, max_ratio, &c.pql);
    let abuse = abuse_score(f, &c.abuse);
    let power = power_user(f, tiers, c, &abuse);
    let mut notes = Vec::new();
    // Power users are upgrade targets, never abusers; and only watched plans are suspected.
    let abuse_in_scope = c.watches(SignalKind::AbuseSuspected, f.plan);
    let abuse_suspected = abuse_in_scope && power.is_none() && is_suspected(&abuse, &c.abuse);
    if is_suspected(&abuse, &c.abuse) && !abuse_suspected {
        notes.push(match &power {
            Some(p) => format!(
                "abuse score {} (≥ {}) but a power user ({}): not suspected",
                abuse.value, c.abuse.suspected_at, p.rule
            ),
            None => format!(
                "abuse score {} (≥ {}) but {} is not in scorer.abuse.plans: not suspected",
                abuse.value, c.abuse.suspected_at, f.plan
            ),
        });
    }
    if let Some(d) = f.email_domain.as_deref().filter(|_| f.email_domain_public) {
        notes.push(format!(
            "{d} is a public email domain: not rolled up, no email_domain points"
        ));
    }
    for k in fleet_keys(f, &c.abuse) {
        notes.push(format!(
            "API key {} used from {} client IPs within the minute of {}, but {} over 24 hours \
             (churn {:.1} < {}): a fleet, not key sharing",
            k.api_key_id,
            k.distinct_ips,
            k.minute,
            k.ips_24h,
            ip_churn(&k),
            c.abuse.key_sharing_churn_at_least
        ));
    }
    let tier = tiers.get(f.plan);
    let rpm_limit = crate::rules::proximity::profile(f).requests_per_minute(tier);
    let mut scores = Scores {
        account_id: f.account_id.clone(),
        scored_at: f.now,
        plan: f.plan,
        deal_readiness: deal,
        pql: pql_score,
        abuse,
        abuse_suspected,
        power_user: power,
        limits,
        plugin_triggers: triggers,
        plugins_desired: desired.into_iter().collect(),
        rate_limit_sustained: sustained_run(f, rpm_limit, c),
        shared_keys: shared_keys(f, &c.abuse),
        multi_accounts: multi_accounts(f, &c.abuse),
        tags: escalation_tags(f, c),
        inputs: Inputs {
            monthly_tokens: f.month_raw_tokens,
            regions: f.month_regions.iter().cloned().collect(),
            seats: f.seats,
            users_30d: f.users_30d,
            team_size: f.team_size(),
            company_size: f.company_size,
            age_hours: f.age_hours().map(|h| (h * 100.0).round() / 100.0),
            sessions_today: f.sessions_today.len() as u64,
            median_session_gap_secs: median_session_gap(f),
            input_diversity: input_diversity(f).map(|d| (d * 1000.0).round() / 1000.0),
            providers_7d: f.providers_7d,
            clouds_7d: f.clouds_7d,
            pii_requests_7d: f.pii_requests_7d,
            gate_hits_30d: f.gate_hits_30d,
            weekly_growth: weekly_growth(f).map(|g| (g * 1000.0).round() / 1000.0),
            email_domain: f.email_domain.clone(),
            email_domain_public: f.email_domain_public,
            domain_accounts: f.domain_accounts,
            requests_30d: f.requests_30d(),
            spend_30d_micros: f.spend_30d_micros(),
            plan_spend_top_micros: f.plan_spend_top_micros,
            upgrade_views_30d: f.upgrade_views_30d,
        },
        notes,
    };
    // Signals the plan scope holds back, noted once per kind.
    let mut held_back: Vec<SignalKind> = Vec::new();
    for g in all_signals(&scores, c) {
        if !c.watches(g.kind, f.plan) && !held_back.contains(&g.kind) {
            held_back.push(g.kind);
        }
    }
    for kind in held_back {
        let key = c.scope(kind).map_or("", |(key, _)| key);
        scores
            .notes
            .push(format!("{kind} not raised: {} is not in {key}", f.plan));
    }
    scores
}

/// A signal for the notifier: raised once per (account, kind, episode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub kind: SignalKind,
    pub account_id: String,
    pub episode: String,
    pub plan: Plan,
    pub raised_at: DateTime<Utc>,
    pub deal_readiness: u32,
    pub pql: u32,
    pub abuse: u32,
    pub reasons: Vec<String>,
    pub evidence: serde_json::Value,
    /// For episodes that last (rate limiting): when the condition was last seen.
    pub last_seen: Option<DateTime<Utc>>,
}

impl Signal {
    pub fn dedup_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.account_id,
            self.kind.as_str(),
            self.episode
        )
    }
}

fn reasons(s: &Score) -> Vec<String> {
    s.reasons
        .iter()
        .map(|r| format!("{} (+{}): {}", r.rule, r.points, r.detail))
        .collect()
}

/// The signals the scores raise now, for the plans each kind watches. Deduplication by episode
/// happens where they are stored.
pub fn signals(s: &Scores, c: &ScorerConfig) -> Vec<Signal> {
    let mut out = all_signals(s, c);
    out.retain(|g| c.watches(g.kind, g.plan));
    out
}

/// Every signal the scores would raise, whatever the plan scope.
fn all_signals(s: &Scores, c: &ScorerConfig) -> Vec<Signal> {
    let month = Grain::Month.stamp(Grain::Month.window_start(s.scored_at));
    let day = Grain::Day.stamp(Grain::Day.window_start(s.scored_at));
    let mut out = Vec::new();
    let mut raise = |kind, episode: String, reasons: Vec<String>, evidence, last_seen| {
        out.push(Signal {
            kind,
            account_id: s.account_id.clone(),
            episode,
            plan: s.plan,
            raised_at: s.scored_at,
            deal_readiness: s.deal_readiness.value,
            pql: s.pql.value,
            abuse: s.abuse.value,
            reasons,
            evidence,
            last_seen,
        })
    };
    if s.deal_readiness.value > c.deal.ready_above {
        let mut r = reasons(&s.deal_readiness);
        r.extend(s.tags.iter().map(|t| format!("escalation: {t}")));
        // One episode per month and score: a score that changes raises again, and the notifier
        // decides whether that is worth a second alert (it is when the score rose by 15).
        raise(
            SignalKind::DealReady,
            format!("{month}:{}", s.deal_readiness.value),
            r,
            json!({"inputs": s.inputs, "tags": s.tags}),
            None,
        );
    }
    if !s.tags.is_empty() {
        // Whatever the deal score: one episode per account and calendar month.
        raise(
            SignalKind::Escalation,
            month.clone(),
            s.tags.iter().map(|t| format!("escalation: {t}")).collect(),
            json!({"inputs": s.inputs, "tags": s.tags}),
            None,
        );
    }
    if s.pql.value >= c.pql.qualified_at {
        raise(
            SignalKind::Pql,
            month.clone(),
            reasons(&s.pql),
            json!({"inputs": s.inputs}),
            None,
        );
    }
    for l in &s.limits {
        let Some(stage) = l.status.stage.filter(|st| *st >= c.limit_signal_stage) else {
            continue;
        };
        let window = match l.status.window {
            meterline_schemas::limits::LimitWindow::Day => day.clone(),
            _ => month.clone(),
        };
        raise(
            SignalKind::LimitStage,
            format!("{}:{stage}:{window}", l.status.name),
            vec![format!(
                "{} at {stage} % ({} of {})",
                l.status.name,
                l.status.used.unwrap_or(0.0),
                l.status.limit
            )],
            json!({"limit": l}),
            None,
        );
    }
    if let Some(r) = &s.rate_limit_sustained {
        raise(
            SignalKind::RateLimitSustained,
            Grain::Minute.stamp(r.start),
            vec![format!(
                "over the per-minute limit for {} minutes since {} (peak {} requests/minute)",
                r.minutes_over, r.start, r.peak_rpm
            )],
            json!({"run": r}),
            Some(r.last_over),
        );
    }
    for t in &s.plugin_triggers {
        raise(
            SignalKind::PluginGate,
            t.plugin.clone(),
            vec![format!("{}: {}", t.trigger, t.evidence)],
            json!({"plugin": t.plugin, "trigger": t.trigger, "message": t.message, "plan": t.plan}),
            None,
        );
    }
    if let Some(p) = &s.power_user {
        raise(
            SignalKind::PowerUser,
            month.clone(),
            vec![format!("{}: {}", p.rule, p.detail)],
            json!({"inputs": s.inputs}),
            None,
        );
    }
    if s.abuse_suspected {
        raise(
            SignalKind::AbuseSuspected,
            day.clone(),
            reasons(&s.abuse),
            json!({"inputs": s.inputs}),
            None,
        );
    }
    for k in &s.shared_keys {
        raise(
            SignalKind::KeySharing,
            format!("{}:{day}", k.api_key_id),
            vec![format!(
                "API key {} used from {} client IPs within the minute of {}, {} over 24 hours (churn {:.1}), {} devices",
                k.api_key_id,
                k.distinct_ips,
                k.minute,
                k.ips_24h,
                ip_churn(k),
                k.devices_24h
            )],
            json!({"key": k}),
            None,
        );
    }
    for m in &s.multi_accounts {
        let mut pair = [s.account_id.clone(), m.other_account.clone()];
        pair.sort();
        raise(
            SignalKind::MultiAccount,
            pair.join("+"),
            vec![format!(
                "matches account {} on {}",
                m.other_account,
                m.signals.join(" and ")
            )],
            json!({"match": m}),
            None,
        );
    }
    out
}

#[cfg(test)]
mod tests;
