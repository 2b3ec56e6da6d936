use std::collections::BTreeSet;

use chrono::{DateTime, Duration as D, DurationRound, TimeZone, Utc};
use meterline_schemas::{Plan, SignalKind};

use crate::*;

fn scenario(now: DateTime<Utc>, days: u32) -> Scenario {
    Scenario {
        tag: "t".into(),
        clock: Clock::at(now),
        days,
        old_history: false,
    }
}

/// A Wednesday afternoon mid-month, and the second day of a month (this month is short).
fn clocks() -> [DateTime<Utc>; 2] {
    [
        Utc.with_ymd_and_hms(2026, 11, 18, 15, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 2, 14, 30, 0).unwrap(),
    ]
}

fn expects(t: &TruthLine, k: SignalKind) -> bool {
    t.expected.iter().any(|e| e == k.as_str())
}

#[test]
fn the_population_is_deterministic_and_has_every_behaviour_and_edge() {
    let a = population(42, 2_000, "t");
    let b = population(42, 2_000, "t");
    assert_eq!(
        a.iter()
            .map(|x| (&x.id, x.behaviour, x.edge, x.plan, &x.email_domain))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|x| (&x.id, x.behaviour, x.edge, x.plan, &x.email_domain))
            .collect::<Vec<_>>()
    );
    assert!(a.len() >= 2_000);
    let count = |b: Behaviour| a.iter().filter(|x| x.behaviour == b).count();
    for (b, _) in Behaviour::MIX {
        assert!(count(b) >= 2, "{b:?}");
    }
    assert_eq!(count(Behaviour::MultiAccount) % 2, 0);
    assert_eq!(count(Behaviour::Campus) % 6, 0);
    for edge in Edge::ALL {
        for over in [false, true] {
            let n = a
                .iter()
                .filter(|x| x.edge.is_some_and(|e| e.edge == edge && e.over == over))
                .count();
            assert_eq!(n, edge.members(), "{edge:?} over={over}");
        }
    }
    // The mix, within a couple of percent.
    let steady = count(Behaviour::Steady) as f64 / a.len() as f64;
    assert!((steady - 0.325).abs() < 0.03, "{steady}");
    let paying = a.iter().filter(|x| x.plan > Plan::Free).count() as f64 / a.len() as f64;
    assert!((paying - 0.27).abs() < 0.03, "{paying}");
    // Public domains: most free signups outside the edges and campuses.
    let free: Vec<_> = a
        .iter()
        .filter(|x| x.plan == Plan::Free && x.edge.is_none() && x.campus.is_none())
        .collect();
    let public = meterline_schemas::public_domains::PublicDomains::from_list(
        meterline_schemas::public_domains::DEFAULT_PUBLIC_DOMAINS,
    );
    let share = free
        .iter()
        .filter(|x| public.is_public(&x.email_domain))
        .count() as f64
        / free.len() as f64;
    assert!((share - 0.6).abs() < 0.05, "{share}");
    let c = population(43, 2_000, "t");
    assert_ne!(
        a.iter().map(|x| x.behaviour).collect::<Vec<_>>(),
        c.iter().map(|x| x.behaviour).collect::<Vec<_>>()
    );
    assert!(population(1, 10, "t").len() == minimum_accounts());
}

#[test]
fn days_are_deterministic_and_stay_in_their_window() {
    let people = population(7, 150, "t");
    for now in clocks() {
        for days in [30, 7] {
            let s = scenario(now, days);
            for a in &people {
                for d in 0..=days {
                    let x = day_events(a, &s, d);
                    let y = day_events(a, &s, d);
                    assert_eq!(x.usage.len(), y.usage.len());
                    for (e, f) in x.usage.iter().zip(&y.usage) {
                        assert_eq!(
                            (e.occurred_at, e.input_tokens, &e.prompt_hash, &e.client_ip),
                            (f.occurred_at, f.input_tokens, &f.prompt_hash, &f.client_ip)
                        );
                        assert!(e.occurred_at <= now, "{:?} {e:?}", a.behaviour);
                        assert!(now - e.occurred_at < D::days(35));
                    }
                    for e in &x.accounts {
                        assert!(
                            e.occurred_at <= now && now - e.occurred_at < D::days(35),
                            "{:?} {e:?}",
                            a.behaviour
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn long_standing_customers_bring_their_history_when_ingest_takes_it() {
    let people = population(7, 150, "t");
    let now = clocks()[0];
    let a = people
        .iter()
        .find(|a| a.behaviour == Behaviour::Enterprise)
        .unwrap();
    for (old, signup_age, change_age) in [(false, 34, 33), (true, 400, 120)] {
        let s = Scenario {
            old_history: old,
            ..scenario(now, 30)
        };
        let first = day_events(a, &s, 30);
        let kinds: Vec<(&str, Option<&str>, i64)> = first
            .accounts
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.plan.as_deref(),
                    (now - e.occurred_at).num_days(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("signup", Some("free"), signup_age),
                ("plan_changed", Some("enterprise"), change_age)
            ]
        );
    }
}

#[test]
fn a_crowd_burst_fits_in_one_clock_minute() {
    let people = population(3, 150, "t");
    let a = people
        .iter()
        .find(|a| a.behaviour == Behaviour::CrowdKey)
        .unwrap();
    for second in [0, 37, 55, 59] {
        let now = Utc.with_ymd_and_hms(2026, 11, 18, 15, 3, second).unwrap();
        let today = day_events(a, &scenario(now, 30), 0);
        let hour_ago = now - D::hours(1);
        let minutes: BTreeSet<_> = today
            .usage
            .iter()
            .filter(|e| e.occurred_at >= hour_ago)
            .map(|e| e.occurred_at.duration_trunc(D::minutes(1)).unwrap())
            .collect();
        let ips: BTreeSet<_> = today
            .usage
            .iter()
            .filter(|e| e.occurred_at >= hour_ago)
            .map(|e| e.client_ip.clone())
            .collect();
        assert_eq!((minutes.len(), ips.len()), (1, 6), "at second {second}");
    }
}

/// For every edge pair: the kinds that differ between its sides (expected only over), the
/// fact that carries the unit, and nothing else differing.
#[test]
fn the_ground_truth_at_each_edge_pair() {
    type Fact = fn(&Facts) -> String;
    let cases: Vec<(Edge, &[SignalKind], Fact, [&str; 2])> = vec![
        (
            Edge::DealCompany,
            &[SignalKind::DealReady],
            |f| format!("{} {:?}", f.deal_score, f.company_size),
            ["70 Some(100)", "80 Some(101)"],
        ),
        (
            Edge::DealTokens,
            &[SignalKind::DealReady, SignalKind::Escalation],
            |f| format!("{} {}", f.deal_score, f.month_tokens),
            ["50 50000000", "80 50000001"],
        ),
        (
            Edge::DealTeam,
            &[SignalKind::DealReady],
            |f| format!("{} {}", f.deal_score, f.team_size),
            ["65 20", "80 21"],
        ),
        (
            Edge::DealPlugins,
            &[SignalKind::DealReady],
            |f| format!("{} {}", f.deal_score, f.plugins_desired.len()),
            ["55 1", "80 2"],
        ),
        (
            Edge::Regions,
            &[SignalKind::Escalation],
            |f| f.regions.to_string(),
            ["2", "3"],
        ),
        (
            Edge::EscalationRpm,
            &[SignalKind::Escalation],
            |f| f.escalation.join(","),
            ["", "sustained_rate"],
        ),
        (
            Edge::EscalationMinutes,
            &[SignalKind::Escalation],
            |f| f.escalation.join(","),
            ["", "sustained_rate"],
        ),
        (
            Edge::AbuseAge,
            &[SignalKind::AbuseSuspected],
            |f| f.abuse_score.to_string(),
            ["20", "50"],
        ),
        (
            Edge::AbuseGap,
            &[SignalKind::AbuseSuspected],
            |f| format!("{} {:?}", f.abuse_score, f.median_session_gap_secs),
            ["25 Some(3.0)", "50 Some(2.0)"],
        ),
        (
            Edge::AbuseSessions,
            &[SignalKind::AbuseSuspected],
            |f| format!("{} {}", f.abuse_score, f.sessions_today),
            ["25 20", "50 21"],
        ),
        (
            Edge::AbuseDiversity,
            &[SignalKind::AbuseSuspected],
            |f| format!("{} {:?}", f.abuse_score, f.input_diversity),
            ["30 Some(0.15)", "50 Some(0.14)"],
        ),
        (
            Edge::KeyIps,
            &[SignalKind::KeySharing],
            |f| format!("{:?}", f.key.map(|k| (k.minute_ips, k.crowd))),
            ["Some((4, true))", "Some((5, true))"],
        ),
        (
            Edge::KeyFleetCrowd,
            &[SignalKind::KeySharing],
            |f| format!("{:?}", f.key.map(|k| (k.minute_ips, k.networks, k.crowd))),
            ["Some((8, 1, false))", "Some((8, 8, true))"],
        ),
        (
            Edge::MultiFingerprint,
            &[SignalKind::MultiAccount],
            |f| f.fingerprint_matches.to_string(),
            ["0", "1"],
        ),
        (
            Edge::PowerVolume,
            &[SignalKind::PowerUser],
            |f| format!("{} {:?}", f.requests_30d, f.power_user),
            ["999 None", "1000 Some(\"upgrade_page_views\")"],
        ),
        (
            Edge::PowerViews,
            &[SignalKind::PowerUser],
            |f| format!("{} {:?}", f.upgrade_views_30d, f.power_user),
            ["1 None", "2 Some(\"upgrade_page_views\")"],
        ),
        (
            Edge::PiiGate,
            &[SignalKind::PluginGate],
            |f| f.plugins_desired.join(","),
            ["", "guardrails"],
        ),
        (
            Edge::ProvidersGate,
            &[SignalKind::PluginGate],
            |f| f.plugins_desired.join(","),
            ["", "audit_logger"],
        ),
        (
            Edge::CloudsGate,
            &[SignalKind::PluginGate],
            |f| f.plugins_desired.join(","),
            ["", "multi_cloud_router"],
        ),
    ];
    assert_eq!(cases.len(), Edge::ALL.len(), "every edge has its case");
    for now in clocks() {
        for days in [30, 7] {
            let s = scenario(now, days);
            let people = population(11, 120, "t");
            let truth = crate::truth::truth(&people, &s);
            for (edge, differ, fact, want) in &cases {
                let side = |over: bool| -> Vec<&TruthLine> {
                    people
                        .iter()
                        .zip(&truth)
                        .filter(|(a, _)| a.edge.is_some_and(|e| e.edge == *edge && e.over == over))
                        .map(|(_, t)| t)
                        .collect()
                };
                for (under, over) in side(false).into_iter().zip(side(true)) {
                    let at = format!("{edge:?} at {now}, {days} days");
                    assert_eq!(
                        [fact(&under.facts), fact(&over.facts)],
                        want.map(String::from),
                        "{at}"
                    );
                    for k in *differ {
                        assert!(!expects(under, *k), "{at}: under raises {k}\n{under:?}");
                        assert!(expects(over, *k), "{at}: over misses {k}\n{over:?}");
                    }
                    let rest = |t: &TruthLine| -> Vec<String> {
                        t.expected
                            .iter()
                            .filter(|k| differ.iter().all(|d| d.as_str() != k.as_str()))
                            .cloned()
                            .collect()
                    };
                    assert_eq!(rest(under), rest(over), "{at}: only the unit differs");
                }
            }
        }
    }
}

/// The confounders against their true twins: what each behaviour must and must not raise.
#[test]
fn confounders_and_their_twins() {
    use SignalKind::*;
    let cases: Vec<(Behaviour, &[SignalKind], &[SignalKind])> = vec![
        (Behaviour::FreeCi, &[AbuseSuspected], &[PowerUser]),
        (Behaviour::ProCi, &[], &[AbuseSuspected, KeySharing]),
        (Behaviour::EnterpriseCi, &[], &SignalKind::ALL),
        (Behaviour::CrowdKey, &[KeySharing], &[AbuseSuspected]),
        (Behaviour::FreeFleet, &[], &[KeySharing]),
        (Behaviour::ProFleet, &[], &[KeySharing, AbuseSuspected]),
        (Behaviour::Enterprise, &[], &SignalKind::ALL),
        (
            Behaviour::EnterpriseReady,
            &[DealReady, Escalation, PluginGate],
            &[AbuseSuspected],
        ),
        (
            Behaviour::ProGrowing,
            &[DealReady, Escalation],
            &[AbuseSuspected],
        ),
        (Behaviour::LightIdle, &[], &[PowerUser, AbuseSuspected]),
        (Behaviour::PowerUser, &[PowerUser], &[AbuseSuspected]),
        (Behaviour::UpgradeBrowser, &[PowerUser], &[AbuseSuspected]),
        (Behaviour::Abuser, &[AbuseSuspected], &[PowerUser]),
        (Behaviour::MultiAccount, &[MultiAccount], &[]),
        (Behaviour::Campus, &[], &[MultiAccount]),
        (Behaviour::PiiSender, &[PluginGate], &[]),
        (
            Behaviour::ProSteady,
            &[],
            &[AbuseSuspected, DealReady, Escalation],
        ),
        (
            Behaviour::Steady,
            &[],
            &[AbuseSuspected, PowerUser, KeySharing, MultiAccount],
        ),
    ];
    for now in clocks() {
        for (days, n) in [(30, 600), (7, 150)] {
            let people = population(5, n, "t");
            let truth = crate::truth::truth(&people, &scenario(now, days));
            for (b, must, never) in &cases {
                let lines: Vec<&TruthLine> = truth.iter().filter(|t| t.behaviour == *b).collect();
                assert!(lines.len() >= 2, "{b:?}");
                for t in lines {
                    for k in *must {
                        assert!(
                            expects(t, *k),
                            "{b:?} at {now}, {days} days: {k} expected\n{t:?}"
                        );
                    }
                    for k in *never {
                        assert!(
                            !expects(t, *k),
                            "{b:?} at {now}, {days} days: {k} not expected\n{t:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_big_spenders_are_power_users_by_spend_in_a_full_population() {
    let people = population(42, 2_000, "t");
    let truth = crate::truth::truth(&people, &scenario(clocks()[0], 30));
    let spenders: Vec<&TruthLine> = truth
        .iter()
        .filter(|t| t.behaviour == Behaviour::BigSpender)
        .collect();
    assert!(spenders.len() >= 2);
    for t in spenders {
        assert_eq!(t.facts.power_user.as_deref(), Some("top_spend"), "{t:?}");
    }
}

fn line(id: &str, plan: Plan, lowest: Plan, expected: &[SignalKind]) -> TruthLine {
    let facts = Facts {
        requests_30d: 0,
        spend_30d_micros: 0,
        spend_rank: None,
        month_tokens: 0,
        regions: 0,
        plugins_desired: vec![],
        team_size: 0,
        company_size: None,
        deal_score: 0,
        escalation: vec![],
        abuse_score: 0,
        sessions_today: 0,
        median_session_gap_secs: None,
        median_session_secs: None,
        input_diversity: None,
        upgrade_views_30d: 0,
        power_user: expected
            .contains(&SignalKind::PowerUser)
            .then(|| "upgrade_page_views".to_owned()),
        key: None,
        fingerprint_matches: 0,
        public_domain: false,
    };
    TruthLine {
        account_id: id.into(),
        behaviour: Behaviour::Steady,
        edge: None,
        plan,
        lowest_plan: lowest,
        expected: expected.iter().map(|k| k.as_str().to_owned()).collect(),
        cluster: None,
        facts,
    }
}

#[test]
fn precision_and_recall_per_kind() {
    let truth = vec![
        line("a", Plan::Free, Plan::Free, &[SignalKind::AbuseSuspected]),
        line("b", Plan::Free, Plan::Free, &[SignalKind::AbuseSuspected]),
        line("p", Plan::Free, Plan::Free, &[SignalKind::PowerUser]),
        line("s", Plan::Free, Plan::Free, &[]),
    ];
    let raised: BTreeSet<(String, String)> = [
        ("a", "abuse_suspected"),
        ("s", "abuse_suspected"),
        ("p", "power_user"),
        ("s", "limit_stage"),
    ]
    .map(|(a, k)| (a.to_owned(), k.to_owned()))
    .into();
    let r = score_signals(&truth, &raised, PolicyFindings::default(), 0.95, 0.95);
    let abuse = r
        .kinds
        .iter()
        .find(|k| k.kind == "abuse_suspected")
        .unwrap();
    assert_eq!(
        (abuse.expected, abuse.raised, abuse.true_positives),
        (2, 2, 1)
    );
    assert_eq!((abuse.precision, abuse.recall), (0.5, 0.5));
    assert_eq!(
        (abuse.missed.clone(), abuse.unexpected.clone()),
        (vec!["b".into()], vec!["s".into()])
    );
    assert_eq!(abuse.errors_by_behaviour["steady"], [1, 1]);
    assert!(!r.passed);
    let deal = r.kinds.iter().find(|k| k.kind == "deal_ready").unwrap();
    assert_eq!(
        (deal.precision, deal.recall),
        (1.0, 1.0),
        "nothing expected, nothing raised"
    );
    let stage = r.kinds.iter().find(|k| k.kind == "limit_stage").unwrap();
    assert!(!stage.checked);
    let table = r.table();
    assert!(
        table.contains("(not predicted by the ground truth)"),
        "{table}"
    );
    assert!(
        table.contains("  abuse_suspected: missed: steady 1; raised unexpectedly: steady 1\n"),
        "{table}"
    );
    let mut raised2 = raised.clone();
    raised2.insert(("b".into(), "abuse_suspected".into()));
    raised2.remove(&("s".to_owned(), "abuse_suspected".to_owned()));
    let clean = score_signals(&truth, &raised2, PolicyFindings::default(), 0.95, 0.95);
    assert!(clean.passed, "{}", clean.table());
    raised2.insert(("p".into(), "abuse_suspected".into()));
    let r = score_signals(&truth, &raised2, PolicyFindings::default(), 0.6, 0.95);
    assert_eq!(r.power_users_flagged, vec!["p".to_owned()]);
    assert!(
        !r.passed,
        "a power user flagged as an abuser fails the check"
    );
}

#[test]
fn the_policy_findings_fail_the_check_and_name_the_accounts() {
    let truth = vec![
        line("ent", Plan::Enterprise, Plan::Enterprise, &[]),
        line("pro", Plan::Pro, Plan::Pro, &[]),
        line("conv", Plan::Pro, Plan::Free, &[]),
        line("free", Plan::Free, Plan::Free, &[]),
    ];
    let prospected: BTreeSet<String> = ["ent", "pro", "free"].map(String::from).into();
    let notices = vec![
        // An Enterprise customer offered what it has.
        (
            "ent".into(),
            "enterprise".into(),
            "Audit Logger: Enterprise includes it.".into(),
        ),
        // A Pro customer told about Pro.
        (
            "pro".into(),
            "enterprise".into(),
            "Pro includes it, with more.".into(),
        ),
        // A converter offered Pro while it was free: fine.
        (
            "conv".into(),
            "pro".into(),
            "Pro gives you 1,000 requests/minute.".into(),
        ),
        // A free account offered Enterprise: fine ("Product" is not a plan).
        (
            "free".into(),
            "enterprise".into(),
            "Product tip: Enterprise includes it.".into(),
        ),
    ];
    let p = policy_from_rows(&truth, &prospected, &notices, vec!["pro".into()]);
    assert_eq!(p.enterprise_prospected, vec!["ent".to_owned()]);
    assert_eq!(
        p.notices_naming_held_plan,
        vec!["ent".to_owned(), "pro".to_owned()]
    );
    assert_eq!(p.paying_denied, vec!["pro".to_owned()]);
    let r = score_signals(&truth, &BTreeSet::new(), p, 0.95, 0.95);
    assert!(!r.passed);
    let table = r.table();
    let row = |what: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(what)).unwrap();
        line[what.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("paying accounts denied"), ["1", "pro"], "{table}");
    assert_eq!(
        row("Enterprise accounts prospected"),
        ["1", "ent"],
        "{table}"
    );
    assert_eq!(
        row("notices naming a plan already held"),
        ["2", "ent,", "pro"],
        "{table}"
    );
    assert_eq!(row("power users suspected of abuse"), ["0"], "{table}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["policy"]["notices_naming_held_plan"],
        serde_json::json!(["ent", "pro"])
    );
    assert!(
        score_signals(
            &truth,
            &BTreeSet::new(),
            PolicyFindings::default(),
            0.95,
            0.95
        )
        .passed
    );
}

#[test]
fn the_lowest_plan_counts_only_the_simulated_days() {
    let people = population(7, 150, "t");
    for (days, old) in [(30, false), (7, false), (30, true)] {
        let s = Scenario {
            old_history: old,
            ..scenario(clocks()[0], days)
        };
        let truth = crate::truth::truth(&people, &s);
        for t in &truth {
            let want = match t.behaviour {
                // Free until the middle of the simulated days.
                Behaviour::Converter => (Plan::Pro, Plan::Free),
                Behaviour::Enterprise | Behaviour::EnterpriseCi => {
                    (Plan::Enterprise, Plan::Enterprise)
                }
                Behaviour::ProSteady | Behaviour::ProCi | Behaviour::ProFleet => {
                    (Plan::Pro, Plan::Pro)
                }
                Behaviour::Steady | Behaviour::Abuser => (Plan::Free, Plan::Free),
                _ => continue,
            };
            assert_eq!(
                (t.plan, t.lowest_plan),
                want,
                "{:?}, {days} days",
                t.behaviour
            );
        }
    }
}

#[test]
fn the_rate_run_needs_consecutive_minutes() {
    let mut o = Observed::default();
    let m = |i: i64| 1_700_000_000 - 1_700_000_000 % 60 + 60 * i;
    for (i, n) in [(0, 5_001), (1, 5_001), (3, 5_001), (4, 5_001), (5, 5_000)] {
        o.minute_requests.insert(m(i), n);
    }
    assert_eq!(o.minutes_over_rate(&RULES), 2);
    o.minute_requests.insert(m(2), 5_001);
    assert_eq!(o.minutes_over_rate(&RULES), 5);
}
