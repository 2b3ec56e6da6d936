//! From facts to scores, and from scores to the signals they raise.

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
    abuse_score, input_diversity, is_suspected, median_session_gap, multi_accounts, shared_keys,
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
    pub domain_accounts: u64,
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
}

pub fn score(
    f: &AccountFacts,
    quota: &QuotaConfig,
    tiers: &TiersConfig,
    c: &ScorerConfig,
) -> Scores {
    let limits = proximity(f, quota, tiers, c);
    let triggers = plugin_triggers(f, c);
    let mut desired = f.plugins_desired_before.clone();
    desired.extend(triggers.iter().map(|t| t.plugin.clone()));
    let deal = deal_readiness(f, desired.len() as u64, &c.deal);
    let max_ratio = limits
        .iter()
        .filter_map(|l| l.status.ratio.map(|r| (r, l.status.name.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let pql_score = pql(f, max_ratio, &c.pql);
    let abuse = abuse_score(f, &c.abuse);
    let power = power_user(f, tiers, c);
    // Power users are upgrade targets, never abusers.
    let abuse_suspected = power.is_none() && is_suspected(&abuse, &c.abuse);
    let tier = tiers.get(f.plan);
    let rpm_limit = crate::rules::proximity::profile(f).requests_per_minute(tier);
    Scores {
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
            domain_accounts: f.domain_accounts,
        },
    }
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

/// The signals the scores raise now. Deduplication by episode happens where they are stored.
pub fn signals(s: &Scores, c: &ScorerConfig) -> Vec<Signal> {
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
            json!({"plugin": t.plugin, "trigger": t.trigger, "message": t.message}),
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
                "API key {} used from {} client IPs within the minute of {}",
                k.api_key_id, k.distinct_ips, k.minute
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
mod tests {
    use super::*;
    use crate::facts::SessionSpan;
    use chrono::{Duration, TimeZone};

    #[test]
    fn a_power_user_is_never_suspected_of_abuse() {
        let c = ScorerConfig::default();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let mut f = AccountFacts::empty("a", now);
        // New (30) and bursty (25): 55, suspected...
        f.signed_up_at = Some(now - Duration::minutes(30));
        f.sessions_today = (0..21)
            .map(|i| SessionSpan {
                session_id: format!("s{i}"),
                start: now - Duration::hours(2) + Duration::minutes(i),
                end: now - Duration::hours(2) + Duration::minutes(i + 30),
            })
            .collect();
        f.prompts_today = 100;
        f.distinct_prompts_today = 90;
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert_eq!(s.abuse.value, 55);
        assert!(s.abuse_suspected);
        assert!(signals(&s, &c)
            .iter()
            .any(|g| g.kind == SignalKind::AbuseSuspected));
        // ...unless its long, diverse sessions make it a power user.
        f.median_session_secs = Some(300.0);
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert_eq!(s.abuse.value, 55);
        assert!(s.power_user.is_some());
        assert!(!s.abuse_suspected);
        let kinds: Vec<_> = signals(&s, &c).iter().map(|g| g.kind).collect();
        assert!(kinds.contains(&SignalKind::PowerUser));
        assert!(!kinds.contains(&SignalKind::AbuseSuspected));
    }

    #[test]
    fn deal_ready_only_above_70() {
        let c = ScorerConfig::default();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let mut f = AccountFacts::empty("a", now);
        // 30 + 20 + 15 = 65; then + 10 = 75.
        f.month_raw_tokens = 60_000_000;
        f.month_regions = ["a", "b", "c"].map(String::from).into();
        f.seats = Some(21);
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert_eq!(s.deal_readiness.value, 65);
        assert!(!signals(&s, &c)
            .iter()
            .any(|g| g.kind == SignalKind::DealReady));
        f.company_size = Some(101);
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert_eq!(s.deal_readiness.value, 75);
        let deal: Vec<_> = signals(&s, &c)
            .into_iter()
            .filter(|g| g.kind == SignalKind::DealReady)
            .collect();
        assert_eq!(deal.len(), 1);
        assert_eq!(deal[0].dedup_key(), "a:deal_ready:202611:75");
    }
}
