//! `meterline simulate --check` on a small population, on the real servers with every
//! component running: the scorer raises exactly the signals the ground truth predicts
//! (precision and recall at least 0.95 for the checked kinds, no power user taken for an
//! abuser), and the demo summary reports what happened.

mod common;

use std::time::Duration;

use common::*;
use meterline::services::Components;
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
        settle_timeout: Duration::from_secs(180),
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
    assert!(counts[&Behaviour::EnterpriseReady] >= 2 && counts[&Behaviour::Abuser] >= 2);

    let check = outcome.check.as_ref().expect("checked");
    let table = check.table(0.95, 0.95);
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
    assert!(check.passed, "{table}");

    let summary = outcome.summary.as_ref().unwrap();
    for needle in [
        "accounts scored: ",
        "top deal-ready accounts (",
        "Slack messages: ",
        "HubSpot deals: ",
        "dashboard notices queued: ",
        "accounts flagged for abuse",
        "usage_day_totals",
    ] {
        assert!(summary.contains(needle), "{needle} missing from\n{summary}");
    }
    let deal_ready = check.kinds.iter().find(|k| k.kind == "deal_ready").unwrap();
    assert!(
        summary.contains(&format!(
            "HubSpot deals: {} (to the local sink",
            deal_ready.expected
        )),
        "one local-sink deal per deal-ready account\n{summary}"
    );
    app.stop().await;
}
