use std::collections::BTreeSet;

use chrono::{Duration as ChronoDuration, DurationRound, TimeZone, Utc};

use crate::*;

#[test]
fn the_population_is_deterministic_and_has_every_behaviour() {
    let a = population(42, 2_000, "t");
    let b = population(42, 2_000, "t");
    assert_eq!(
        a.iter().map(|x| (&x.id, x.behaviour)).collect::<Vec<_>>(),
        b.iter().map(|x| (&x.id, x.behaviour)).collect::<Vec<_>>()
    );
    let counts = behaviour_counts(&a.iter().map(SimAccount::truth).collect::<Vec<_>>());
    assert_eq!(counts.len(), Behaviour::MIX.len());
    assert!(counts.values().all(|n| *n >= 2));
    assert_eq!(counts[&Behaviour::MultiAccount] % 2, 0);
    // The mix, within a couple of percent.
    let steady = counts[&Behaviour::Steady] as f64 / a.len() as f64;
    assert!((steady - 0.44).abs() < 0.03, "{steady}");
    let c = population(43, 2_000, "t");
    assert_ne!(
        a.iter().map(|x| x.behaviour).collect::<Vec<_>>(),
        c.iter().map(|x| x.behaviour).collect::<Vec<_>>()
    );
}

#[test]
fn days_are_deterministic_and_stay_in_their_window() {
    let people = population(7, 100, "t");
    let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap());
    for a in &people {
        for d in 0..=30 {
            let x = day_events(a, "t", &clock, 30, d);
            let y = day_events(a, "t", &clock, 30, d);
            assert_eq!(x.usage.len(), y.usage.len());
            for (e, f) in x.usage.iter().zip(&y.usage) {
                assert_eq!(
                    (e.occurred_at, e.input_tokens, &e.prompt_hash),
                    (f.occurred_at, f.input_tokens, &f.prompt_hash)
                );
                assert!(e.occurred_at <= clock.now, "{:?} {e:?}", a.behaviour);
                assert!(clock.now - e.occurred_at < ChronoDuration::days(35));
            }
            for e in &x.accounts {
                assert!(
                    e.occurred_at <= clock.now
                        && clock.now - e.occurred_at < ChronoDuration::days(35)
                );
            }
        }
    }
}

#[test]
fn a_shared_key_burst_fits_in_one_clock_minute() {
    let people = population(3, 100, "t");
    let a = people
        .iter()
        .find(|a| a.behaviour == Behaviour::SharedKey)
        .unwrap();
    for second in [0, 37, 55, 59] {
        let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 3, second).unwrap());
        let today = day_events(a, "t", &clock, 30, 0);
        let minutes: BTreeSet<_> = today
            .usage
            .iter()
            .map(|e| {
                e.occurred_at
                    .duration_trunc(ChronoDuration::minutes(1))
                    .unwrap()
            })
            .collect();
        let ips: BTreeSet<_> = today.usage.iter().map(|e| e.client_ip.clone()).collect();
        assert_eq!((minutes.len(), ips.len()), (1, 6), "at second {second}");
    }
}

#[test]
fn the_enterprise_account_is_deal_ready_by_the_brief() {
    let people = population(1, 100, "t");
    let a = people
        .iter()
        .find(|a| a.behaviour == Behaviour::EnterpriseReady)
        .unwrap();
    let clock = Clock::at(Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap());
    let today = day_events(a, "t", &clock, 30, 0);
    let month_tokens: u64 = today
        .usage
        .iter()
        .filter(|e| e.occurred_at >= clock.month)
        .map(|e| e.input_tokens + e.output_tokens)
        .sum();
    assert!(month_tokens > 50_000_000);
    let regions: BTreeSet<&str> = today.usage.iter().map(|e| e.region.as_str()).collect();
    assert_eq!(regions.len(), 3);
    let clouds: BTreeSet<&str> = today.usage.iter().map(|e| e.cloud.as_str()).collect();
    assert_eq!(clouds.len(), 3);
    let users: BTreeSet<_> = today.usage.iter().map(|e| e.user_id.clone()).collect();
    assert!(users.len() > 20);
    let signup = day_events(a, "t", &clock, 30, 30);
    assert_eq!(signup.accounts[0].company_size, Some(500));
}

#[test]
fn precision_and_recall_per_kind() {
    let t = |a: &str, b: Behaviour| TruthLine {
        account_id: a.into(),
        behaviour: b,
        expected: b.expected().iter().map(|k| k.as_str().to_owned()).collect(),
        cluster: None,
    };
    let truth = vec![
        t("a", Behaviour::Abuser),
        t("b", Behaviour::Abuser),
        t("p", Behaviour::PowerUser),
        t("s", Behaviour::Steady),
    ];
    let raised: BTreeSet<(String, String)> = [
        ("a", "abuse_suspected"),
        ("s", "abuse_suspected"),
        ("p", "power_user"),
    ]
    .map(|(a, k)| (a.to_owned(), k.to_owned()))
    .into();
    let r = score_signals(&truth, &raised, 0.95, 0.95);
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
    assert!(!r.passed);
    let deal = r.kinds.iter().find(|k| k.kind == "deal_ready").unwrap();
    assert_eq!(
        (deal.precision, deal.recall),
        (1.0, 1.0),
        "nothing expected, nothing raised"
    );
    let mut raised2 = raised.clone();
    raised2.insert(("b".into(), "abuse_suspected".into()));
    raised2.remove(&("s".to_owned(), "abuse_suspected".to_owned()));
    raised2.insert(("p".into(), "abuse_suspected".into()));
    let r = score_signals(&truth, &raised2, 0.6, 0.95);
    assert_eq!(r.power_users_flagged, vec!["p".to_owned()]);
    assert!(
        !r.passed,
        "a power user flagged as an abuser fails the check"
    );
}
