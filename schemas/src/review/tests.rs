use super::*;
use chrono::{Duration, TimeZone};

#[test]
fn enforcement_by_state_and_plan() {
    use Enforcement::*;
    use ReviewState::*;
    // (state, plan, enforcement): the table of the module documentation, every cell.
    let cases: Vec<(Option<ReviewState>, Plan, Enforcement)> = vec![
        (None, Plan::Free, Normal),
        (None, Plan::Pro, Normal),
        (None, Plan::Enterprise, Normal),
        (Some(Suspected), Plan::Free, Restricted),
        (Some(Suspected), Plan::Pro, Normal),
        (Some(Suspected), Plan::Enterprise, Normal),
        (Some(AutoDenied), Plan::Free, Deny(DENY_HIGH_CONFIDENCE)),
        (Some(AutoDenied), Plan::Pro, Normal),
        (Some(AutoDenied), Plan::Enterprise, Normal),
        (Some(Confirmed), Plan::Free, Deny(DENY_CONFIRMED)),
        (Some(Confirmed), Plan::Pro, Deny(DENY_CONFIRMED)),
        (Some(Confirmed), Plan::Enterprise, Deny(DENY_CONFIRMED)),
        (Some(Cleared), Plan::Free, Normal),
        (Some(Cleared), Plan::Pro, Normal),
        (Some(Cleared), Plan::Enterprise, Normal),
    ];
    for (state, plan, want) in cases {
        assert_eq!(enforcement(state, plan), want, "{state:?} on {plan}");
    }
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn assessment(score: u32, suspected: bool) -> Assessment {
    Assessment {
        plan: Plan::Free,
        score,
        suspected,
        age_hours: Some(48.0),
        at: at(),
        last_suspected_at: None,
    }
}

#[test]
fn the_scorers_moves() {
    let c = ReviewConfig::default();
    let rec = |state, score| ReviewRecord {
        state,
        score,
        seq: 3,
    };
    let hours_ago = |h| Some(at() - Duration::hours(h));
    use ReviewAction::*;
    use ReviewState::*;
    type Case = (&'static str, ReviewRecord, Assessment, Option<ReviewAction>);
    let cases: Vec<Case> = vec![
        (
            "not suspected, not in review",
            rec(None, None),
            assessment(20, false),
            None,
        ),
        (
            "first suspicion",
            rec(None, None),
            assessment(70, true),
            Some(Suspect),
        ),
        (
            "suspected again: already queued",
            rec(Some(Suspected), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(1),
                ..assessment(70, true)
            },
            None,
        ),
        (
            "brand-new free account above the rule's score",
            rec(None, None),
            Assessment {
                age_hours: Some(0.5),
                ..assessment(85, true)
            },
            Some(AutoDeny),
        ),
        (
            "a suspicion that becomes a high-confidence case",
            rec(Some(Suspected), Some(55)),
            Assessment {
                age_hours: Some(1.0),
                last_suspected_at: hours_ago(0),
                ..assessment(80, true)
            },
            Some(AutoDeny),
        ),
        (
            "brand new but under the rule's score",
            rec(None, None),
            Assessment {
                age_hours: Some(0.5),
                ..assessment(79, true)
            },
            Some(Suspect),
        ),
        (
            "rule's score but two hours old",
            rec(None, None),
            Assessment {
                age_hours: Some(2.0),
                ..assessment(95, true)
            },
            Some(Suspect),
        ),
        (
            "never a paying account by rule",
            rec(None, None),
            Assessment {
                plan: Plan::Pro,
                age_hours: Some(0.1),
                ..assessment(100, true)
            },
            Some(Suspect),
        ),
        (
            "cleared, same episode, same traffic",
            rec(Some(Cleared), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(3),
                ..assessment(70, true)
            },
            None,
        ),
        (
            "cleared, same episode, risen by less than the margin",
            rec(Some(Cleared), Some(55)),
            Assessment {
                last_suspected_at: hours_ago(3),
                ..assessment(74, true)
            },
            None,
        ),
        (
            "cleared, same episode, risen by the margin",
            rec(Some(Cleared), Some(55)),
            Assessment {
                last_suspected_at: hours_ago(3),
                ..assessment(75, true)
            },
            Some(Suspect),
        ),
        (
            "cleared, suspected yesterday: the episode goes on",
            rec(Some(Cleared), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(30),
                ..assessment(70, true)
            },
            None,
        ),
        (
            "cleared, a whole quiet day since: a new episode",
            rec(Some(Cleared), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(50),
                ..assessment(70, true)
            },
            Some(Suspect),
        ),
        (
            "suspected, quiet today after suspicion yesterday: stays",
            rec(Some(Suspected), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(20),
                ..assessment(20, false)
            },
            None,
        ),
        (
            "suspected, a whole quiet day: expires",
            rec(Some(Suspected), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(50),
                ..assessment(20, false)
            },
            Some(Expire),
        ),
        (
            "denied by rule: a person decides",
            rec(Some(AutoDenied), Some(85)),
            Assessment {
                last_suspected_at: hours_ago(80),
                ..assessment(20, false)
            },
            None,
        ),
        (
            "confirmed: a person decided",
            rec(Some(Confirmed), Some(70)),
            Assessment {
                last_suspected_at: hours_ago(80),
                ..assessment(95, true)
            },
            None,
        ),
    ];
    for (label, record, assessment, want) in cases {
        assert_eq!(c.next_action(&record, &assessment), want, "{label}");
    }
    // The rule can be switched off.
    let off = ReviewConfig {
        auto_deny: false,
        ..ReviewConfig::default()
    };
    assert_eq!(
        off.next_action(
            &ReviewRecord::default(),
            &Assessment {
                age_hours: Some(0.5),
                ..assessment(100, true)
            }
        ),
        Some(Suspect)
    );
}

#[test]
fn a_restricted_tier_is_stricter_and_serves_the_fallback() {
    let c = ReviewConfig::default();
    let free = crate::limits::TiersConfig::default().free;
    let t = c.restrict(&free);
    assert_eq!(t.limits["day_requests"], 1_250.0);
    assert_eq!(t.limits["month_sessions"], 75.0);
    assert_eq!(t.limits["month_weighted_tokens"], 500_000.0);
    assert_eq!(t.limits["month_cost_usd"], 1.25);
    assert_eq!(t.requests_per_minute, 25.0);
    assert_eq!(t.allowed_models, vec!["gpt-4o-mini".to_owned()]);
    // Counts round down; unlimited stays unlimited.
    assert_eq!(c.scale("day_requests", 3.0), 0.0);
    assert_eq!(c.scale("day_requests", -1.0), -1.0);
    let own_model = ReviewConfig {
        suspected_model: "llama-3-8b".into(),
        ..c
    };
    let t = own_model.restrict(&free);
    assert_eq!(t.fallback_model, "llama-3-8b");
    assert_eq!(t.allowed_models, vec!["llama-3-8b".to_owned()]);
}

#[test]
fn validation_names_the_key() {
    let cases: Vec<(ReviewConfig, &str)> = vec![
        (
            ReviewConfig {
                suspected_limit_factor: 0.0,
                ..Default::default()
            },
            "review.suspected_limit_factor",
        ),
        (
            ReviewConfig {
                suspected_limit_factor: 1.5,
                ..Default::default()
            },
            "review.suspected_limit_factor",
        ),
        (
            ReviewConfig {
                rescore_margin: 0,
                ..Default::default()
            },
            "review.rescore_margin",
        ),
        (
            ReviewConfig {
                episode_quiet_days: 0,
                ..Default::default()
            },
            "review.episode_quiet_days",
        ),
        (
            ReviewConfig {
                auto_deny_max_age_hours: -1.0,
                ..Default::default()
            },
            "review.auto_deny_max_age_hours",
        ),
        (
            ReviewConfig {
                auto_deny_min_score: 101,
                ..Default::default()
            },
            "review.auto_deny_min_score",
        ),
    ];
    for (c, key) in cases {
        assert_eq!(c.validate().unwrap_err().key, key);
    }
    assert!(ReviewConfig::default().validate().is_ok());
}

#[test]
fn scorer_event_ids_are_stable_uuids() {
    let a = scorer_event_id("acct", AccountEventType::ReviewSuspected, 0);
    assert_eq!(
        a,
        scorer_event_id("acct", AccountEventType::ReviewSuspected, 0)
    );
    assert!(uuid::Uuid::parse_str(&a).is_ok());
    assert_ne!(
        a,
        scorer_event_id("acct", AccountEventType::ReviewSuspected, 1)
    );
    assert_ne!(
        a,
        scorer_event_id("acct", AccountEventType::ReviewAutoDenied, 0)
    );
}
