//! Properties over arbitrary inputs: every score stays within 0–100, and deal readiness never
//! goes down when one of its inputs goes up.

use chrono::{Duration, TimeZone, Utc};
use meterline_scorer::config::ScorerConfig;
use meterline_scorer::facts::{AccountFacts, SessionSpan};
use meterline_scorer::rules::abuse::abuse_score;
use meterline_scorer::rules::deal::deal_readiness;
use meterline_scorer::rules::pql::pql;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct DealInputs {
    tokens: u64,
    regions: usize,
    plugins: u64,
    seats: Option<u64>,
    users: u64,
    company: Option<u64>,
}

fn deal_inputs() -> impl Strategy<Value = DealInputs> {
    (
        0u64..200_000_000,
        0usize..8,
        0u64..6,
        proptest::option::of(0u64..100),
        0u64..100,
        proptest::option::of(0u64..10_000),
    )
        .prop_map(
            |(tokens, regions, plugins, seats, users, company)| DealInputs {
                tokens,
                regions,
                plugins,
                seats,
                users,
                company,
            },
        )
}

fn deal_score(i: &DealInputs) -> u32 {
    let mut f = AccountFacts::empty("a", Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap());
    f.month_raw_tokens = i.tokens;
    f.month_regions = (0..i.regions).map(|r| format!("r{r}")).collect();
    f.seats = i.seats;
    f.users_30d = i.users;
    f.company_size = i.company;
    deal_readiness(&f, i.plugins, &ScorerConfig::default().deal).value
}

proptest! {
    #[test]
    fn deal_readiness_is_within_0_100_and_monotone(i in deal_inputs(), bump in 0usize..6, by in 1u64..100_000_000) {
        let before = deal_score(&i);
        prop_assert!(before <= 100);
        let mut j = i.clone();
        match bump {
            0 => j.tokens = j.tokens.saturating_add(by),
            1 => j.regions += (by % 5) as usize + 1,
            2 => j.plugins += by % 5 + 1,
            3 => j.seats = Some(j.seats.unwrap_or(0) + by % 50 + 1),
            4 => j.users += by % 50 + 1,
            _ => j.company = Some(j.company.unwrap_or(0) + by % 5_000 + 1),
        }
        let after = deal_score(&j);
        prop_assert!(after <= 100);
        prop_assert!(after >= before, "{i:?} -> {j:?}: {before} -> {after}");
    }

    #[test]
    fn abuse_and_pql_are_within_0_100(
        age_min in proptest::option::of(0i64..10_000),
        sessions in 0usize..60,
        gap_ms in 0i64..600_000,
        prompts in 0u64..1_000,
        distinct_share in 0.0f64..1.0,
        ratio in proptest::option::of(0.0f64..5.0),
        gate_hits in 0u64..50,
        domain in 1u64..20,
    ) {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let mut f = AccountFacts::empty("a", now);
        f.signed_up_at = age_min.map(|m| now - Duration::minutes(m));
        f.sessions_today = (0..sessions)
            .map(|i| SessionSpan {
                session_id: format!("s{i}"),
                start: now - Duration::hours(5) + Duration::milliseconds(i as i64 * gap_ms),
                end: now,
            })
            .collect();
        f.prompts_today = prompts;
        f.distinct_prompts_today = (prompts as f64 * distinct_share) as u64;
        f.gate_hits_30d = gate_hits;
        f.domain_accounts = domain;
        let c = ScorerConfig::default();
        prop_assert!(abuse_score(&f, &c.abuse).value <= 100);
        prop_assert!(pql(&f, ratio.map(|r| (r, "x")), &c.pql).value <= 100);
    }
}
