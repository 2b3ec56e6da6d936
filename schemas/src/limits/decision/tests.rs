use super::*;
use crate::limits::TiersConfig;
use crate::review::ReviewState;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap()
}

fn request(model: &str, input: u64) -> QuotaRequest {
    QuotaRequest {
        model: model.into(),
        estimated_input_tokens: input,
        estimated_output_tokens: 0,
        session_id: None,
    }
}

fn usage(pairs: &[(&str, f64)]) -> UsageSnapshot {
    UsageSnapshot {
        used: pairs
            .iter()
            .map(|(k, v)| (LimitName::parse(k).unwrap(), *v))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn stages_at_the_boundaries() {
    let s = [70, 85, 95, 100];
    assert_eq!(stage_of(&s, 0.6999), None);
    assert_eq!(stage_of(&s, 0.7), Some(70));
    assert_eq!(stage_of(&s, 0.85), Some(85));
    assert_eq!(stage_of(&s, 0.9499), Some(85));
    assert_eq!(stage_of(&s, 1.0), Some(100));
    assert_eq!(stage_of(&s, 3.0), Some(100));
}

#[test]
fn rules_in_order_of_severity() {
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let free = AccountProfile::default();
    // Under every stage: plain allow.
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[]),
        &request("gpt-4o-mini", 10),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Allow);
    assert!(d.warning.is_none());
    // A count used up, past free's 15 % grace buffer: limit_reached with the plan above.
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("day_requests", 5_750.0)]),
        &request("gpt-4o-mini", 10),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::LimitReached);
    let r = d.limit_reached.unwrap();
    assert_eq!(r.notice.limit, "day_requests");
    assert_eq!(r.upgrade.unwrap().plan, Plan::Pro);
    // A budget spent: degrade to the fallback...
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("month_weighted_tokens", 2_000_000.0)]),
        &request("claude-3-haiku", 10),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Degrade);
    assert_eq!(d.model, "gpt-4o-mini");
    // ...unless the request already asks for it: then the budget's grace buffer (15 % on
    // free) serves it, and past the buffer the limit is reached.
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("month_weighted_tokens", 2_000_000.0)]),
        &request("gpt-4o-mini", 10),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Allow);
    assert_eq!(d.grace.unwrap().served_up_to, 2_300_000.0);
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("month_weighted_tokens", 2_299_995.0)]),
        &request("gpt-4o-mini", 10),
        now(),
    );
    // 2,299,995 + 10 × 0.5 = 2,300,000 fits; one more token would not.
    assert_eq!(d.decision, DecisionKind::Allow);
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("month_weighted_tokens", 2_299_995.0)]),
        &request("gpt-4o-mini", 11),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::LimitReached);
    // The estimate counts: 1,000 left, a request for 1,001 weighted tokens does not fit.
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("day_weighted_tokens", 249_000.0)]),
        &request("llama-3-70b", 1_001),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Degrade);
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &free,
        &usage(&[("day_weighted_tokens", 249_000.0)]),
        &request("llama-3-70b", 1_000),
        now(),
    );
    // llama-3-70b is not a free model: degraded for that reason instead.
    assert_eq!(d.degraded.unwrap().reason, DegradeReason::ModelNotAllowed);
    // Confirmed abuse beats everything.
    let confirmed = AccountProfile {
        review: Some(ReviewState::Confirmed),
        ..AccountProfile::default()
    };
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &confirmed,
        &usage(&[("day_requests", 5_000.0)]),
        &request("gpt-4o-mini", 1),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Deny);
    assert_eq!(d.reason.as_deref(), Some("abuse_confirmed"));
}

/// Review state × plan → decision, for one ordinary request (a model every tier allows,
/// usage well inside every limit), and for the same request a suspected account's stricter
/// limits refuse.
#[test]
fn review_state_and_plan_decide() {
    use DecisionKind::*;
    use ReviewState::*;
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let r = ReviewConfig::default();
    // claude-3-haiku is allowed on every tier; free's fallback is gpt-4o-mini.
    let ask = request("claude-3-haiku", 100);
    // 2,000 requests today: 40 % of free's 5,000, past the suspected 1,250.
    let busy = usage(&[("day_requests", 2_000.0)]);
    // (state, plan, decision, served model, reason) for a quiet account; then for a busy one.
    type Row = (
        Option<ReviewState>,
        Plan,
        (DecisionKind, &'static str, Option<&'static str>),
        (DecisionKind, Option<&'static str>),
    );
    let haiku = "claude-3-haiku";
    let mini = "gpt-4o-mini";
    let suspected = Some("abuse_suspected");
    let rows: Vec<Row> = vec![
        (None, Plan::Free, (Allow, haiku, None), (Allow, None)),
        (None, Plan::Pro, (Allow, haiku, None), (Allow, None)),
        (None, Plan::Enterprise, (Allow, haiku, None), (Allow, None)),
        (
            Some(Suspected),
            Plan::Free,
            (Degrade, mini, suspected),
            (LimitReached, suspected),
        ),
        (
            Some(Suspected),
            Plan::Pro,
            (Allow, haiku, None),
            (Allow, None),
        ),
        (
            Some(Suspected),
            Plan::Enterprise,
            (Allow, haiku, None),
            (Allow, None),
        ),
        (
            Some(AutoDenied),
            Plan::Free,
            (Deny, haiku, Some("abuse_high_confidence")),
            (Deny, Some("abuse_high_confidence")),
        ),
        (
            Some(AutoDenied),
            Plan::Pro,
            (Allow, haiku, None),
            (Allow, None),
        ),
        (
            Some(AutoDenied),
            Plan::Enterprise,
            (Allow, haiku, None),
            (Allow, None),
        ),
        (
            Some(Confirmed),
            Plan::Free,
            (Deny, haiku, Some("abuse_confirmed")),
            (Deny, Some("abuse_confirmed")),
        ),
        (
            Some(Confirmed),
            Plan::Pro,
            (Deny, haiku, Some("abuse_confirmed")),
            (Deny, Some("abuse_confirmed")),
        ),
        (
            Some(Confirmed),
            Plan::Enterprise,
            (Deny, haiku, Some("abuse_confirmed")),
            (Deny, Some("abuse_confirmed")),
        ),
        (
            Some(Cleared),
            Plan::Free,
            (Allow, haiku, None),
            (Allow, None),
        ),
        (
            Some(Cleared),
            Plan::Pro,
            (Allow, haiku, None),
            (Allow, None),
        ),
    ];
    for (state, plan, (kind, model, reason), (busy_kind, busy_reason)) in rows {
        let profile = AccountProfile {
            plan,
            review: state,
            ..AccountProfile::default()
        };
        let tier = t.get(plan);
        let d = decide(&q, &r, tier, &profile, &usage(&[]), &ask, now());
        let label = format!("{state:?} on {plan}");
        assert_eq!(
            (d.decision, d.model.as_str(), d.reason.as_deref()),
            (kind, model, reason),
            "{label}"
        );
        if kind == Degrade {
            assert_eq!(
                d.degraded.unwrap().reason,
                DegradeReason::AbuseSuspected,
                "{label}"
            );
        }
        let d = decide(&q, &r, tier, &profile, &busy, &ask, now());
        assert_eq!(
            (d.decision, d.reason.as_deref()),
            (busy_kind, busy_reason),
            "{label}, 2,000 requests today"
        );
        if busy_kind == LimitReached {
            let n = d.limit_reached.unwrap().notice;
            assert_eq!((n.limit.as_str(), n.limit_value), ("day_requests", 1_250.0));
        }
    }
    // A suspected account's overrides are scaled too.
    let profile = AccountProfile {
        review: Some(Suspected),
        overrides: [("day_requests".to_owned(), 10_000.0)].into(),
        ..AccountProfile::default()
    };
    let d = decide(&q, &r, &t.free, &profile, &busy, &request(mini, 1), now());
    assert_eq!(d.decision, Allow, "2,000 of 2,500");
    assert_eq!(d.reason.as_deref(), suspected);
}

#[test]
fn the_rate_limit_is_soft() {
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let u = UsageSnapshot {
        requests_this_minute: 90.0,
        requests_last_minute: 100.0,
        minute_elapsed: 0.5,
        ..Default::default()
    };
    assert_eq!(u.rolling_rpm(), 140.0);
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &AccountProfile::default(),
        &u,
        &request("gpt-4o-mini", 1),
        now(),
    );
    assert_eq!(d.decision, DecisionKind::Allow);
    assert!(d.rate.over);
    assert_eq!(d.warning.unwrap().limit, RATE_LIMIT_NAME);
}

#[test]
fn overrides_replace_tier_limits() {
    let t = TiersConfig::default();
    let p = AccountProfile {
        overrides: [("month_weighted_tokens".to_owned(), 3_000_000.0)].into(),
        ..AccountProfile::default()
    };
    let limits: BTreeMap<_, _> = p.limits(&t.free).into_iter().collect();
    assert_eq!(
        limits[&LimitName::parse("month_weighted_tokens").unwrap()],
        3_000_000.0
    );
}
