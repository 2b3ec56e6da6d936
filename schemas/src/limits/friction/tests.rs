//! The messages at each stage, tier and limit kind, across month ends (all UTC). Every
//! expected text is written out by hand: the numbers, the limit's name and the reset times
//! are the ground truth, not computed by the code under test.

use chrono::TimeZone;

use super::*;
use crate::limits::{
    decide, AccountProfile, DecisionKind, LimitMetric, LimitName, QuotaRequest, UsageSnapshot,
};
use crate::review::ReviewConfig;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

const UP_PRO: &str = "https://meterline.example/upgrade?plan=pro";
const UP_ENT: &str = "https://meterline.example/upgrade?plan=enterprise";

struct Row {
    plan: Plan,
    limit: &'static str,
    /// An override of the limit (the tier's when `None`).
    limit_value: Option<f64>,
    used: f64,
    /// Whether the request names a (known) session.
    session: bool,
    model: &'static str,
    now: DateTime<Utc>,
    kind: DecisionKind,
    stage_name: Option<&'static str>,
    grace: bool,
    message: String,
}

fn row(plan: Plan, limit: &'static str, used: f64, now: DateTime<Utc>) -> Row {
    Row {
        plan,
        limit,
        limit_value: None,
        used,
        session: false,
        model: "gpt-4o-mini",
        now,
        kind: DecisionKind::Allow,
        stage_name: None,
        grace: false,
        message: String::new(),
    }
}

impl Row {
    fn limit(mut self, v: f64) -> Self {
        self.limit_value = Some(v);
        self
    }
    fn in_session(mut self) -> Self {
        self.session = true;
        self
    }
    fn model(mut self, m: &'static str) -> Self {
        self.model = m;
        self
    }
    fn expect(mut self, kind: DecisionKind, stage: Option<&'static str>, msg: &str) -> Self {
        self.kind = kind;
        self.stage_name = stage;
        self.message = msg.to_owned();
        self
    }
    fn graced(mut self) -> Self {
        self.grace = true;
        self
    }
}

fn run(quota: &QuotaConfig, tiers: &TiersConfig, r: &Row) -> Decision {
    let friction = Friction::new(quota, tiers).expect("valid configuration");
    let name = LimitName::parse(r.limit).unwrap();
    let mut overrides = BTreeMap::new();
    if let Some(v) = r.limit_value {
        overrides.insert(r.limit.to_owned(), v);
    }
    let profile = AccountProfile {
        plan: r.plan,
        overrides,
        review: None,
    };
    let usage = UsageSnapshot {
        used: [(name, r.used)].into(),
        // A named session is already counted: the request opens no new one.
        session_known_today: r.session,
        session_known_this_month: r.session,
        ..Default::default()
    };
    let request = QuotaRequest {
        model: r.model.into(),
        estimated_input_tokens: 0,
        estimated_output_tokens: 0,
        session_id: r.session.then(|| "s-1".to_owned()),
    };
    let mut d = decide(
        quota,
        &ReviewConfig::default(),
        tiers.get(r.plan),
        &profile,
        &usage,
        &request,
        r.now,
    );
    friction.annotate(&mut d, r.now);
    d
}

fn check_rows(quota: &QuotaConfig, tiers: &TiersConfig, rows: Vec<Row>) {
    for r in rows {
        let label = format!("{} {} at {} on {}", r.plan, r.limit, r.used, r.now);
        let d = run(quota, tiers, &r);
        assert_eq!(d.decision, r.kind, "{label}: {d:?}");
        assert_eq!(d.stage_name.as_deref(), r.stage_name, "{label}");
        assert_eq!(d.grace.is_some(), r.grace, "{label}: {:?}", d.grace);
        let want = (!r.message.is_empty()).then_some(r.message.as_str());
        assert_eq!(d.message.as_deref(), want, "{label}");
    }
}

#[test]
fn every_stage_tier_and_limit_kind_says_the_limit_the_usage_and_the_reset() {
    use DecisionKind::*;
    use Plan::*;
    let nov = at(2026, 11, 22, 20, 48, 0);
    let jan31 = at(2027, 1, 31, 23, 59, 0);
    let feb28_leap = at(2028, 2, 28, 12, 0, 0);
    let feb28 = at(2027, 2, 28, 23, 30, 0);
    let feb29 = at(2028, 2, 29, 18, 0, 0);
    let dec31 = at(2026, 12, 31, 23, 59, 30);
    let midnight = at(2026, 11, 15, 0, 0, 0);
    let rows = vec![
        // Free, daily requests (5,000; grace 15 %: served up to 5,750), 22 Nov 20:48 UTC.
        row(Free, "day_requests", 3_499.0, nov).expect(Allow, None, ""),
        row(Free, "day_requests", 3_600.0, nov).expect(
            Allow,
            Some("indicator"),
            "You have used 3,600 of your 5,000 daily requests (72 %). Your allowance resets at 00:00 UTC (in 3 h 12 min).",
        ),
        row(Free, "day_requests", 4_300.0, nov).expect(
            Allow,
            Some("nudge"),
            &format!("Running low: 4,300 of your 5,000 daily requests used, 700 left. Your allowance resets at 00:00 UTC (in 3 h 12 min). Pro gives you more: {UP_PRO}"),
        ),
        row(Free, "day_requests", 4_800.0, nov).expect(
            Allow,
            Some("upgrade_prompt"),
            &format!("Almost out: 200 of your 5,000 daily requests left (96 % used). Your allowance resets at 00:00 UTC (in 3 h 12 min). Upgrade to Pro now to keep going without interruption: {UP_PRO}"),
        ),
        row(Free, "day_requests", 5_100.0, nov)
            .expect(
                Allow,
                Some("cutoff"),
                &format!("You have used all 5,000 of your daily requests on the Free plan. Your allowance resets at 00:00 UTC (in 3 h 12 min). Upgrade to Pro to continue right away: {UP_PRO}"),
            )
            .graced(),
        row(Free, "day_requests", 5_850.0, nov).expect(
            LimitReached,
            Some("cutoff"),
            &format!("You have used all 5,000 of your daily requests on the Free plan. Your allowance resets at 00:00 UTC (in 3 h 12 min). Upgrade to Pro to continue right away: {UP_PRO}"),
        ),
        // A day limit at 31 Jan 23:59 resets on 1 Feb, a minute away.
        row(Free, "day_requests", 3_500.0, jan31).expect(
            Allow,
            Some("indicator"),
            "You have used 3,500 of your 5,000 daily requests (70 %). Your allowance resets at 00:00 UTC (in 1 min).",
        ),
        // At midnight, a whole day away.
        row(Free, "day_requests", 3_500.0, midnight).expect(
            Allow,
            Some("indicator"),
            "You have used 3,500 of your 5,000 daily requests (70 %). Your allowance resets at 00:00 UTC (in 1 day).",
        ),
        // Free, monthly sessions (300), read in a known session (this request opens none).
        row(Free, "month_sessions", 255.0, jan31).expect(
            Allow,
            Some("nudge"),
            &format!("Running low: 255 of your 300 monthly sessions used, 45 left. Your allowance resets on 1 February (in 1 min). Pro gives you more: {UP_PRO}"),
        ),
        row(Free, "month_sessions", 300.0, dec31).in_session().expect(
            Allow,
            Some("cutoff"),
            &format!("You have used all 300 of your monthly sessions on the Free plan. Your allowance resets on 1 January (in 1 min). Upgrade to Pro to continue right away: {UP_PRO}"),
        ),
        // Free, per-session tokens (50,000): sessions end rather than reset.
        row(Free, "session_weighted_tokens", 36_000.0, nov).in_session().expect(
            Allow,
            Some("indicator"),
            "You have used 36,000 of your 50,000 per-session tokens (72 %). Your allowance resets when a new session starts.",
        ),
        // Free, daily tokens (250,000) on 28 Feb of a leap year: the day resets on the 29th.
        row(Free, "day_weighted_tokens", 240_000.0, feb28_leap).expect(
            Allow,
            Some("upgrade_prompt"),
            &format!("Almost out: 10,000 of your 250,000 daily tokens left (96 % used). Your allowance resets at 00:00 UTC (in 12 h). Upgrade to Pro now to keep going without interruption: {UP_PRO}"),
        ),
        // Spent, on a model the fallback can replace: degraded, not cut off.
        row(Free, "day_weighted_tokens", 250_000.0, feb28_leap).model("claude-3-haiku").expect(
            Degrade,
            None,
            &format!("You have used all 250,000 of your daily tokens, so gpt-4o-mini answers instead of claude-3-haiku for now. Your allowance resets at 00:00 UTC (in 12 h). Upgrade to Pro to keep using claude-3-haiku: {UP_PRO}"),
        ),
        // Spent, already on the fallback: served from grace up to 287,500, then cut off.
        row(Free, "day_weighted_tokens", 260_000.0, feb28_leap)
            .expect(
                Allow,
                Some("cutoff"),
                &format!("You have used all 250,000 of your daily tokens on the Free plan. Your allowance resets at 00:00 UTC (in 12 h). Upgrade to Pro to continue right away: {UP_PRO}"),
            )
            .graced(),
        row(Free, "day_weighted_tokens", 287_500.0, feb28_leap).expect(
            LimitReached,
            Some("cutoff"),
            &format!("You have used all 250,000 of your daily tokens on the Free plan. Your allowance resets at 00:00 UTC (in 12 h). Upgrade to Pro to continue right away: {UP_PRO}"),
        ),
        // Free, monthly tokens (2,000,000) on 29 Feb 2028 18:00: the month ends in 6 h.
        row(Free, "month_weighted_tokens", 1_700_000.0, feb29).expect(
            Allow,
            Some("nudge"),
            &format!("Running low: 1,700,000 of your 2,000,000 monthly tokens used, 300,000 left. Your allowance resets on 1 March (in 6 h). Pro gives you more: {UP_PRO}"),
        ),
        // Free, monthly spend ($5.00) on 28 Feb 12:00 of a leap year: 1 March is 36 h away.
        row(Free, "month_cost_usd", 3.55, feb28_leap).expect(
            Allow,
            Some("indicator"),
            "You have used $3.55 of your $5.00 monthly spend (71 %). Your allowance resets on 1 March (in 2 days).",
        ),
        row(Free, "month_cost_usd", 4.8, feb28).expect(
            Allow,
            Some("upgrade_prompt"),
            &format!("Almost out: $0.20 of your $5.00 monthly spend left (96 % used). Your allowance resets on 1 March (in 30 min). Upgrade to Pro now to keep going without interruption: {UP_PRO}"),
        ),
        // Pro: no grace by default; the plan above is Enterprise.
        row(Pro, "day_requests", 200_000.0, nov).expect(
            LimitReached,
            Some("cutoff"),
            &format!("You have used all 200,000 of your daily requests on the Pro plan. Your allowance resets at 00:00 UTC (in 3 h 12 min). Upgrade to Enterprise to continue right away: {UP_ENT}"),
        ),
        row(Pro, "month_weighted_tokens", 71_000_000.0, nov).expect(
            Allow,
            Some("indicator"),
            "You have used 71,000,000 of your 100,000,000 monthly tokens (71 %). Your allowance resets on 1 December (in 8 days).",
        ),
        row(Pro, "month_cost_usd", 430.0, dec31).expect(
            Allow,
            Some("nudge"),
            &format!("Running low: $430.00 of your $500.00 monthly spend used, $70.00 left. Your allowance resets on 1 January (in 1 min). Enterprise gives you more: {UP_ENT}"),
        ),
        // Enterprise with limits set on the account: no plan above, so no upgrade sentence.
        row(Enterprise, "month_sessions", 48.0, jan31).limit(50.0).expect(
            Allow,
            Some("upgrade_prompt"),
            "Almost out: 2 of your 50 monthly sessions left (96 % used). Your allowance resets on 1 February (in 1 min).",
        ),
        row(Enterprise, "day_requests", 1_000_000.0, feb29).limit(1_000_000.0).expect(
            LimitReached,
            Some("cutoff"),
            "You have used all 1,000,000 of your daily requests on the Enterprise plan. Your allowance resets at 00:00 UTC (in 6 h).",
        ),
        row(Enterprise, "session_cost_usd", 1_300.25, nov).limit(1_500.0).in_session().expect(
            Allow,
            Some("nudge"),
            "Running low: $1,300.25 of your $1,500.00 per-session spend used, $199.75 left. Your allowance resets when a new session starts.",
        ),
    ];
    check_rows(&QuotaConfig::default(), &TiersConfig::default(), rows);
}

#[test]
fn degradations_the_rate_and_steering_have_their_own_messages() {
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let nov = at(2026, 11, 22, 20, 48, 0);
    let friction = Friction::new(&q, &t).unwrap();
    let free = AccountProfile::default();
    let request = |model: &str| QuotaRequest {
        model: model.into(),
        estimated_input_tokens: 0,
        estimated_output_tokens: 0,
        session_id: None,
    };
    let decide_now = |tier: &crate::limits::TierConfig, usage: &UsageSnapshot, model: &str| {
        let mut d = decide(
            &q,
            &ReviewConfig::default(),
            tier,
            &free,
            usage,
            &request(model),
            nov,
        );
        friction.annotate(&mut d, nov);
        d
    };
    // A model the plan does not include.
    let d = decide_now(&t.free, &UsageSnapshot::default(), "gpt-4o");
    assert_eq!(d.decision, DecisionKind::Degrade);
    assert_eq!(
        d.message.as_deref(),
        Some(format!("gpt-4o is not included in the Free plan, so gpt-4o-mini answered instead. Upgrade to Pro to use it: {UP_PRO}").as_str())
    );
    assert_eq!(d.stage_name, None);
    // The per-minute rate (soft).
    let busy = UsageSnapshot {
        requests_this_minute: 90.0,
        requests_last_minute: 100.0,
        minute_elapsed: 0.5,
        ..Default::default()
    };
    let d = decide_now(&t.free, &busy, "gpt-4o-mini");
    assert_eq!(d.decision, DecisionKind::Allow);
    assert_eq!(
        d.message.as_deref(),
        Some(format!("You are sending 140 requests a minute, more than the 100 of the Free plan. They still go through for now. Pro allows more: {UP_PRO}").as_str())
    );
    // Steering, when the tier turns it on: from 95 % of a budget, the fallback answers.
    let mut steering = t.free.clone();
    steering.budget_steer = true;
    let near = UsageSnapshot {
        used: [(
            LimitName::parse("month_weighted_tokens").unwrap(),
            1_900_000.0,
        )]
        .into(),
        ..Default::default()
    };
    let d = decide_now(&steering, &near, "claude-3-haiku");
    assert_eq!(d.decision, DecisionKind::Degrade);
    assert_eq!(d.model, "gpt-4o-mini");
    assert_eq!(
        d.degraded.as_ref().unwrap().reason,
        DegradeReason::BudgetNear
    );
    assert_eq!(
        d.message.as_deref(),
        Some(format!("You have used 95 % of your monthly tokens, so gpt-4o-mini answers instead of claude-3-haiku to make the rest last. Your allowance resets on 1 December (in 8 days). Upgrade to Pro to keep using claude-3-haiku: {UP_PRO}").as_str())
    );
    // Off by default: the same usage is an upgrade prompt on the requested model.
    let d = decide_now(&t.free, &near, "claude-3-haiku");
    assert_eq!(
        (d.decision, d.model.as_str(), d.stage_name.as_deref()),
        (
            DecisionKind::Allow,
            "claude-3-haiku",
            Some("upgrade_prompt")
        )
    );
    // Steering at 94.9 % does not start yet.
    let under = UsageSnapshot {
        used: [(
            LimitName::parse("month_weighted_tokens").unwrap(),
            1_898_000.0,
        )]
        .into(),
        ..Default::default()
    };
    assert_eq!(
        decide_now(&steering, &under, "claude-3-haiku").decision,
        DecisionKind::Allow
    );
}

#[test]
fn a_tier_overrides_a_stage_text_and_the_others_keep_the_defaults() {
    let q = QuotaConfig::default();
    let mut t = TiersConfig::default();
    t.pro.messages.stages.insert(
        "95".into(),
        "{{ plan }}: {{ percent }} % of {{ limit }} ({{ used }}/{{ limit_value }}); {{ resets_in }} to go. Talk to sales: {{ upgrade_url }}".into(),
    );
    let nov = at(2026, 11, 22, 20, 48, 0);
    let rows = vec![
        row(Plan::Pro, "day_requests", 192_000.0, nov).expect(
            DecisionKind::Allow,
            Some("upgrade_prompt"),
            &format!("Pro: 96 % of daily requests (192,000/200,000); 3 h 12 min to go. Talk to sales: {UP_ENT}"),
        ),
        row(Plan::Free, "day_requests", 4_800.0, nov).expect(
            DecisionKind::Allow,
            Some("upgrade_prompt"),
            &format!("Almost out: 200 of your 5,000 daily requests left (96 % used). Your allowance resets at 00:00 UTC (in 3 h 12 min). Upgrade to Pro now to keep going without interruption: {UP_PRO}"),
        ),
    ];
    check_rows(&q, &t, rows);
}

#[test]
fn grace_borders_counts_and_sessions() {
    use DecisionKind::*;
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let nov = at(2026, 11, 22, 20, 48, 0);
    // (limit, used, new session?, decision, grace?) on free: 5,000 requests a day and 300
    // sessions a month, 15 % grace: requests 5,001 to 5,750 and sessions 301 to 345 are
    // served from grace.
    let cases: [(&str, f64, bool, DecisionKind, bool); 8] = [
        ("day_requests", 4_999.0, false, Allow, false),
        ("day_requests", 5_000.0, false, Allow, true),
        ("day_requests", 5_749.0, false, Allow, true),
        ("day_requests", 5_750.0, false, LimitReached, false),
        ("month_sessions", 299.0, true, Allow, false),
        ("month_sessions", 300.0, true, Allow, true),
        ("month_sessions", 344.0, true, Allow, true),
        ("month_sessions", 345.0, true, LimitReached, false),
    ];
    let friction = Friction::new(&q, &t).unwrap();
    for (limit, used, new_session, kind, grace) in cases {
        let usage = UsageSnapshot {
            used: [(LimitName::parse(limit).unwrap(), used)].into(),
            ..Default::default()
        };
        let request = QuotaRequest {
            model: "gpt-4o-mini".into(),
            estimated_input_tokens: 0,
            estimated_output_tokens: 0,
            session_id: new_session.then(|| "new".to_owned()),
        };
        let mut d = decide(
            &q,
            &ReviewConfig::default(),
            &t.free,
            &AccountProfile::default(),
            &usage,
            &request,
            nov,
        );
        friction.annotate(&mut d, nov);
        let label = format!("{limit} at {used}");
        assert_eq!(d.decision, kind, "{label}");
        assert_eq!(d.grace.is_some(), grace, "{label}");
        if let Some(g) = &d.grace {
            assert_eq!(g.limit, limit, "{label}");
            assert_eq!(g.used, used, "{label}");
            assert_eq!(g.grace_percent, 15.0);
            let cap = if limit == "day_requests" {
                5_750.0
            } else {
                345.0
            };
            assert_eq!(g.served_up_to, cap, "{label}");
            // The gateway sees the grace; the person sees the 100 % message.
            let w = d.warning.as_ref().unwrap();
            assert_eq!((w.limit.as_str(), w.stage), (limit, 100), "{label}");
            assert_eq!(d.stage_name.as_deref(), Some("cutoff"), "{label}");
        }
    }
    // A count in grace while a budget is spent: degraded to the fallback, and still served
    // from the count's grace (the gateway is told; the grace use is recorded).
    let both = UsageSnapshot {
        used: [
            (LimitName::parse("day_requests").unwrap(), 5_100.0),
            (LimitName::parse("day_weighted_tokens").unwrap(), 250_000.0),
        ]
        .into(),
        ..Default::default()
    };
    let haiku = QuotaRequest {
        model: "claude-3-haiku".into(),
        estimated_input_tokens: 0,
        estimated_output_tokens: 0,
        session_id: None,
    };
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &AccountProfile::default(),
        &both,
        &haiku,
        nov,
    );
    assert_eq!(d.decision, Degrade);
    assert_eq!(d.degraded.unwrap().reason, DegradeReason::BudgetSpent);
    assert_eq!(d.grace.unwrap().limit, "day_requests");
    // Grace 0 is allowed: the cutoff comes at the limit.
    let mut t0 = t.clone();
    t0.free.grace_percent = 0.0;
    t0.validate(&q).unwrap();
    let usage = UsageSnapshot {
        used: [(LimitName::parse("day_requests").unwrap(), 5_000.0)].into(),
        ..Default::default()
    };
    let request = QuotaRequest {
        model: "gpt-4o-mini".into(),
        estimated_input_tokens: 0,
        estimated_output_tokens: 0,
        session_id: None,
    };
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t0.free,
        &AccountProfile::default(),
        &usage,
        &request,
        nov,
    );
    assert_eq!(d.decision, LimitReached);
    // A suspected account gets no grace, whatever its tier says.
    let suspected = AccountProfile {
        review: Some(crate::review::ReviewState::Suspected),
        ..AccountProfile::default()
    };
    let restricted_cap = UsageSnapshot {
        // 1,250 is the suspected limit (a quarter of 5,000).
        used: [(LimitName::parse("day_requests").unwrap(), 1_250.0)].into(),
        ..Default::default()
    };
    let d = decide(
        &q,
        &ReviewConfig::default(),
        &t.free,
        &suspected,
        &restricted_cap,
        &request,
        nov,
    );
    assert_eq!(d.decision, LimitReached);
    assert!(d.grace.is_none());
}

#[test]
fn bad_templates_and_friction_keys_are_named() {
    let q = QuotaConfig::default();
    let t = TiersConfig::default();
    let key = |q: &QuotaConfig, t: &TiersConfig| t.validate(q).unwrap_err().key;

    let mut q1 = q.clone();
    q1.messages.budget_spent = "You spent {{ spent }}".into();
    let e = t.validate(&q1).unwrap_err();
    assert_eq!(e.key, "quota.messages.budget_spent");
    assert!(e.reason.contains("does not render"), "{e}");

    let mut q2 = q.clone();
    q2.messages
        .stages
        .insert("85".into(), "{% if used %}unclosed".into());
    let e = t.validate(&q2).unwrap_err();
    assert_eq!(e.key, "quota.messages.stages.85");
    assert!(e.reason.contains("does not parse"), "{e}");

    // A stage without a built-in text needs one, and a name.
    let mut q3 = q.clone();
    q3.stages = vec![50, 70, 85, 95, 100];
    assert_eq!(key(&q3, &t), "quota.stage_names.50");
    q3.stage_names.insert("50".into(), "early".into());
    assert_eq!(key(&q3, &t), "quota.messages.stages.50");
    q3.messages
        .stages
        .insert("50".into(), "Half of your {{ limit }} used.".into());
    t.validate(&q3).unwrap();

    let mut t1 = t.clone();
    t1.pro
        .messages
        .stages
        .insert("90".into(), "{{ limit }}".into());
    assert_eq!(key(&q, &t1), "tiers.pro.messages.stages.90");

    let mut t2 = t.clone();
    t2.free.messages.rate_limit = Some("{{ rpm }}".into());
    assert_eq!(key(&q, &t2), "tiers.free.messages.rate_limit");

    for bad in [-1.0, 100.5, f64::NAN] {
        let mut t3 = t.clone();
        t3.free.grace_percent = bad;
        assert_eq!(key(&q, &t3), "tiers.free.grace_percent", "{bad}");
    }
    let mut t4 = t.clone();
    t4.enterprise.budget_steer_stage = 0;
    assert_eq!(key(&q, &t4), "tiers.enterprise.budget_steer_stage");
}

#[test]
fn words_for_people() {
    use words::*;
    assert_eq!(grouped(0), "0");
    assert_eq!(grouped(999), "999");
    assert_eq!(grouped(1_000), "1,000");
    assert_eq!(grouped(1_234_567), "1,234,567");
    assert_eq!(amount(Some(LimitMetric::CostUsd), 0.004), "$0.00");
    assert_eq!(amount(Some(LimitMetric::CostUsd), 1_234.5), "$1,234.50");
    assert_eq!(amount(Some(LimitMetric::WeightedTokens), 2_499.6), "2,500");
    assert_eq!(percent(699.0, 1_000.0), 69);
    assert_eq!(percent(700.0, 1_000.0), 70);
    assert_eq!(percent(999.0, 1_000.0), 99);
    assert_eq!(percent(5.0, 0.0), 0);
    let now = at(2026, 11, 22, 20, 48, 0);
    for (then, want) in [
        (at(2026, 11, 22, 20, 48, 1), "1 min"),
        (at(2026, 11, 22, 20, 48, 0), "1 min"),
        (at(2026, 11, 22, 21, 47, 0), "59 min"),
        (at(2026, 11, 22, 21, 48, 0), "1 h"),
        (at(2026, 11, 23, 0, 0, 0), "3 h 12 min"),
        (at(2026, 11, 23, 20, 47, 0), "23 h 59 min"),
        (at(2026, 11, 24, 8, 47, 0), "1 day"),
        (at(2026, 11, 24, 8, 48, 0), "2 days"),
    ] {
        assert_eq!(relative(now, then), want, "{then}");
    }
    assert_eq!(limit_label("session_requests"), "per-session requests");
    assert_eq!(limit_label("day_sessions"), "daily sessions");
    assert_eq!(limit_label("requests_per_minute"), "requests per minute");
}
