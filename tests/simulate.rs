//! `meterline simulate --check` on CI's smaller population (every behaviour twice, every edge
//! pair, 7 days), on the real servers with every component running: the scorer raises the
//! signals the ground truth predicts (precision and recall at least 0.95 for every checked
//! kind), no paying account is denied, no Enterprise account is prospected, no notice names a
//! plan the account already has, and the demo summary reports what happened.
//!
//! This is issue 19's bar for the merged work (plan scope, fleet/crowd key sharing, the
//! escalation signal, power users with a minimum volume, public domains): the scorer of
//! aad0566 alone does not meet it.

mod common;

use std::time::Duration;

use common::*;
use meterline::services::Components;
use meterline_schemas::Plan;
use meterline_sim::{self as simulate, Behaviour, Options, CHECKED};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_population_meets_the_check_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = isolated_config(&unique_suffix());
    config.notifier.data_dir = dir.path().join("notifications").display().to_string();
    config.notifier.group_id = format!("{}-notifier", config.aggregator.group_id);
    config.scorer.interval_ms = 200;
    let mut app = spawn_with(config.clone(), Components::all()).await;
    let options = Options {
        seed: 7,
        accounts: 120,
        days: 7,
        url: app.url(""),
        token: None,
        truth: dir.path().join("truth.jsonl"),
        check: true,
        min_precision: 0.95,
        min_recall: 0.95,
        summary: true,
        old_history: simulate::OLD_ACCOUNT_EVENTS_ACCEPTED,
        settle_timeout: Duration::from_secs(240),
        progress: false,
    };
    let env = meterline::cmd::simulate::env(&config).await.unwrap();
    let outcome = simulate::run(&env, &options)
        .await
        .expect("simulation runs");
    assert!(!outcome.interrupted);
    assert_eq!(outcome.dropped, 0);
    assert_eq!(outcome.rejected, 0, "every generated event is valid");
    assert_eq!(outcome.sent, outcome.usage_events + outcome.account_events);

    let truth = simulate::read_truth(&options.truth).unwrap();
    assert_eq!(truth.len(), outcome.accounts);
    let counts = simulate::behaviour_counts(&truth);
    for b in [
        Behaviour::ProCi,
        Behaviour::Enterprise,
        Behaviour::ProFleet,
        Behaviour::LightIdle,
        Behaviour::Campus,
    ] {
        assert!(counts[&b] >= 2, "{b:?}");
    }
    assert!(truth.iter().any(|t| t.plan == Plan::Enterprise));

    let check = outcome.check.as_ref().expect("checked");
    let table = check.table();
    for kind in CHECKED {
        let k = check
            .kinds
            .iter()
            .find(|k| k.kind == kind.as_str())
            .unwrap();
        assert!(
            k.expected >= 2,
            "{kind}: the population exercises it\n{table}"
        );
        assert!(k.precision >= 0.95 && k.recall >= 0.95, "{kind}\n{table}");
    }
    assert!(check.power_users_flagged.is_empty(), "{table}");
    assert!(check.policy.paying_denied.is_empty(), "{table}");
    assert!(check.policy.enterprise_prospected.is_empty(), "{table}");
    assert!(check.policy.notices_naming_held_plan.is_empty(), "{table}");
    assert!(check.passed, "{table}");
    // The JSON report holds the same findings.
    let file = outcome.check_file.as_ref().expect("a JSON report");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(json["passed"], serde_json::json!(true));
    assert_eq!(
        json["kinds"].as_array().unwrap().len(),
        check.kinds.len(),
        "{json}"
    );

    let summary = outcome.summary.as_ref().unwrap();
    for needle in [
        "accounts scored: ",
        "top deal-ready accounts (",
        "Slack messages: ",
        "HubSpot deals: ",
        "dashboard notices queued: ",
        "accounts in the abuse review queue: ",
        "paying accounts denied",
        "Enterprise accounts prospected",
        "notices naming a plan already held",
        "usage_day_totals",
    ] {
        assert!(summary.contains(needle), "{needle} missing from\n{summary}");
    }
    app.stop().await;
}
