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
    f.daily = vec![crate::facts::DayUsage {
        day: now,
        requests: 1_000,
        ..Default::default()
    }];
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

/// An account that would raise every kind of signal, on the given plan.
fn everything(plan: Plan) -> AccountFacts {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    let mut f = AccountFacts::empty("a", now);
    f.plan = plan;
    // Deal readiness 100 and every escalation tag but the request rate.
    f.month_raw_tokens = 60_000_000;
    f.month_regions = ["a", "b", "c"].map(String::from).into();
    f.seats = Some(30);
    f.company_size = Some(500);
    f.providers_7d = 4;
    f.pii_requests_7d = 10;
    f.clouds_7d = 2;
    // PQL: gate hits 25, growth 20, domain 15 = 60.
    f.gate_hits_30d = 10;
    f.email_domain = Some("acme.io".into());
    f.domain_accounts = 3;
    f.daily = (0..30)
        .map(|i| crate::facts::DayUsage {
            day: now - Duration::days(29 - i),
            requests: if i >= 23 { 100 } else { 50 },
            ..Default::default()
        })
        .collect();
    // Volume, but no power-user rule (a power user is never suspected; see below).
    // Abuse: new account (30) and templated input (20) = 50.
    f.signed_up_at = Some(now - Duration::minutes(30));
    f.prompts_today = 100;
    f.distinct_prompts_today = 1;
    // A crowd on one key, and a multi-account match.
    f.shared_keys = vec![KeyMinute {
        api_key_id: "k".into(),
        minute: now,
        distinct_ips: 6,
        ips_24h: 30,
        ..KeyMinute::default()
    }];
    f.fingerprint_matches = vec![FingerprintMatch {
        other_account: "b".into(),
        signals: vec!["signup_ip_hash".into(), "device_id".into()],
    }];
    // Over the per-minute limit for 3 minutes.
    f.minutes = (0..5)
        .map(|i| (now - Duration::minutes(4 - i), 1_000_000))
        .collect();
    f
}

/// Which kinds each plan raises by default, for an account that would raise them all.
#[test]
fn each_plan_raises_only_the_kinds_that_watch_it() {
    use SignalKind::*;
    let c = ScorerConfig::default();
    let mut tiers = TiersConfig::default();
    // Give every plan a per-minute limit so rate limiting can apply to each.
    for t in [&mut tiers.free, &mut tiers.pro, &mut tiers.enterprise] {
        t.requests_per_minute = 100.0;
    }
    let sales = [DealReady, Pql, Escalation, PluginGate, RateLimitSustained];
    let cases: [(Plan, &[SignalKind]); 3] = [
        (
            Plan::Free,
            &[
                DealReady,
                Pql,
                Escalation,
                PluginGate,
                RateLimitSustained,
                AbuseSuspected,
                KeySharing,
                MultiAccount,
            ],
        ),
        (Plan::Pro, &sales),
        (Plan::Enterprise, &[]),
    ];
    for (plan, want) in cases {
        let f = everything(plan);
        let s = score(&f, &QuotaConfig::default(), &tiers, &c);
        let mut got: Vec<&str> = signals(&s, &c)
            .into_iter()
            .map(|g| g.kind.as_str())
            .filter(|k| *k != LimitStage.as_str())
            .collect();
        got.sort();
        got.dedup();
        let mut want: Vec<&str> = want.iter().map(|k| k.as_str()).collect();
        want.sort();
        assert_eq!(got, want, "{plan}");
        // The scores are there for a person either way (Enterprise has every plugin, so
        // none is desired: 75 rather than 100).
        assert!(s.deal_readiness.value > 70, "{plan}");
        assert_eq!(s.pql.value, 60, "{plan}");
        assert_eq!(s.abuse.value, 50, "{plan}");
        // Suspected only where watched; everything held back is noted.
        assert_eq!(s.abuse_suspected, plan == Plan::Free, "{plan}");
        for kind in [DealReady, Pql, Escalation, RateLimitSustained, KeySharing] {
            let noted = s
                .notes
                .iter()
                .any(|n| n.starts_with(&format!("{kind} not raised: {plan} is not in scorer.")));
            assert_eq!(
                noted,
                !want.contains(&kind.as_str()),
                "{plan} {kind}: {:?}",
                s.notes
            );
        }
    }
}

/// Power users on free and pro; computed (and stored) for Enterprise too.
#[test]
fn power_users_are_raised_for_free_and_pro_only() {
    let c = ScorerConfig::default();
    for (plan, raised) in [
        (Plan::Free, true),
        (Plan::Pro, true),
        (Plan::Enterprise, false),
    ] {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let mut f = AccountFacts::empty("a", now);
        f.plan = plan;
        f.daily = vec![crate::facts::DayUsage {
            day: now,
            requests: 1_000,
            ..Default::default()
        }];
        f.upgrade_views_30d = 2;
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert!(s.power_user.is_some(), "{plan}: computed whatever the plan");
        let kinds: Vec<_> = signals(&s, &c).into_iter().map(|g| g.kind).collect();
        assert_eq!(kinds.contains(&SignalKind::PowerUser), raised, "{plan}");
    }
}

/// Escalation is raised whatever the deal score, once a month; deal_ready carries the tags.
#[test]
fn escalation_is_raised_on_its_own() {
    let c = ScorerConfig::default();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    // (tokens this month, regions, escalation?, deal_ready?)
    let cases = [
        (50_000_000u64, 2usize, false, false),
        (50_000_001, 0, true, false),
        (0, 3, true, false),
        (60_000_000, 3, true, false),
    ];
    for (tokens, regions, escalation, deal) in cases {
        let mut f = AccountFacts::empty("a", now);
        f.month_raw_tokens = tokens;
        f.month_regions = (0..regions).map(|i| format!("r{i}")).collect();
        let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
        assert!(s.deal_readiness.value <= 70);
        let sigs = signals(&s, &c);
        let esc: Vec<_> = sigs
            .iter()
            .filter(|g| g.kind == SignalKind::Escalation)
            .collect();
        assert_eq!(esc.len(), usize::from(escalation), "{tokens} {regions}");
        if let Some(e) = esc.first() {
            assert_eq!(e.dedup_key(), "a:escalation:202611");
            assert_eq!(e.reasons.len(), s.tags.len());
            assert_eq!(e.evidence["tags"], json!(s.tags));
        }
        assert_eq!(
            sigs.iter().any(|g| g.kind == SignalKind::DealReady),
            deal,
            "{tokens} {regions}"
        );
    }
    // A deal-ready account gets both, and the deal carries the tags.
    let mut f = everything(Plan::Free);
    f.signed_up_at = None;
    let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
    let sigs = signals(&s, &c);
    let deal = sigs
        .iter()
        .find(|g| g.kind == SignalKind::DealReady)
        .unwrap();
    assert!(deal.reasons.iter().any(|r| r.starts_with("escalation: ")));
    assert!(sigs.iter().any(|g| g.kind == SignalKind::Escalation));
}

/// A public email domain: no points and a note saying why.
#[test]
fn a_public_domain_is_noted() {
    let c = ScorerConfig::default();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    let mut f = AccountFacts::empty("a", now);
    f.email_domain = Some("gmail.com".into());
    f.email_domain_public = true;
    let s = score(&f, &QuotaConfig::default(), &TiersConfig::default(), &c);
    assert_eq!(s.pql.value, 0);
    assert!(s.inputs.email_domain_public);
    assert_eq!(
        s.notes,
        vec!["gmail.com is a public email domain: not rolled up, no email_domain points"]
    );
}
