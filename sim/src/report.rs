//! The demo's closing summary: what the simulated month did to the pipeline, as text.

use std::fmt::Write;

use crate::run::{Options, Outcome};
use crate::Env;

/// The demo's closing summary: what the simulated month did to the pipeline.
pub async fn demo_summary(
    env: &Env,
    outcome: &Outcome,
    options: &Options,
) -> anyhow::Result<String> {
    let like = format!("sim-{}-%", outcome.tag);
    // Give the notifier a moment to finish what the last signals queued.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(15) {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM notifications WHERE account_id LIKE $1 AND status IN ('pending', 'sending')",
        )
        .bind(&like)
        .fetch_one(&env.pool)
        .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let mut out = String::new();
    let secs = outcome.elapsed.as_secs_f64().max(0.001);
    let _ = writeln!(out, "\n=== Meterline demo: a simulated month ===");
    let _ = writeln!(
        out,
        "run {}: {} accounts, {} days of traffic (seed {}), ground truth in {}",
        outcome.tag,
        outcome.accounts,
        options.days,
        options.seed,
        options.truth.display()
    );
    let _ = writeln!(
        out,
        "events: {} usage + {} account events posted with the gateway client in {:.1} s ({:.0} events/s); {} accepted, {} rejected, {} dropped",
        outcome.usage_events,
        outcome.account_events,
        secs,
        (outcome.usage_events + outcome.account_events) as f64 / secs,
        outcome.sent,
        outcome.rejected,
        outcome.dropped
    );
    let (scored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM account_scores WHERE account_id LIKE $1")
            .bind(&like)
            .fetch_one(&env.pool)
            .await?;
    let _ = writeln!(out, "accounts scored: {scored}");

    let top: Vec<(String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT account_id, deal_readiness, scores -> 'deal_readiness' -> 'reasons' FROM account_scores \
         WHERE account_id LIKE $1 AND deal_readiness > $2 ORDER BY deal_readiness DESC, account_id LIMIT 10",
    )
    .bind(&like)
    .bind(env.scorer.deal.ready_above as i32)
    .fetch_all(&env.pool)
    .await?;
    let _ = writeln!(out, "\ntop deal-ready accounts ({}):", top.len());
    for (account, score, reasons) in &top {
        let why: Vec<String> = reasons
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{} +{}", r["rule"].as_str().unwrap_or("?"), r["points"]))
            .collect();
        let _ = writeln!(out, "  {account:<28} {score:>3}  {}", why.join(", "));
    }

    let sent: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT destination, status, count(*) FROM notifications WHERE account_id LIKE $1 \
         GROUP BY destination, status ORDER BY destination, status",
    )
    .bind(&like)
    .fetch_all(&env.pool)
    .await?;
    let count = |pred: &dyn Fn(&str) -> bool| -> i64 {
        sent.iter()
            .filter(|(d, s, _)| pred(d) && s == "sent")
            .map(|(_, _, n)| n)
            .sum()
    };
    let local = |configured: bool| {
        if configured {
            "sent".to_owned()
        } else {
            format!("to the local sink {}", env.notifier.data_dir)
        }
    };
    let slack_configured = env.notifier.slack.webhooks.values().any(|w| !w.is_empty());
    let _ = writeln!(
        out,
        "\nSlack messages: {} ({})",
        count(&|d| d.starts_with("slack:")),
        local(slack_configured)
    );
    for (d, s, n) in sent.iter().filter(|(d, _, _)| d.starts_with("slack:")) {
        let _ = writeln!(out, "  {d:<28} {s:<11} {n}");
    }
    let _ = writeln!(
        out,
        "HubSpot deals: {} ({})",
        count(&|d| d == "hubspot"),
        local(!env.notifier.hubspot.token.is_empty())
    );
    let (notices,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM dashboard_notices WHERE account_id LIKE $1")
            .bind(&like)
            .fetch_one(&env.pool)
            .await?;
    let _ = writeln!(out, "dashboard notices queued: {notices}");
    // The review queue: suspected accounts wait for a person (stricter limits meanwhile);
    // auto_denied and confirmed ones are denied.
    let in_review: Vec<(String, String)> = sqlx::query_as(
        "SELECT review_state, account_id FROM accounts \
         WHERE account_id LIKE $1 AND review_state IS NOT NULL ORDER BY review_state, account_id",
    )
    .bind(&like)
    .fetch_all(&env.pool)
    .await?;
    let mut by_state: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (state, account) in &in_review {
        by_state
            .entry(state.as_str())
            .or_default()
            .push(account.as_str());
    }
    let summary: Vec<String> = by_state
        .iter()
        .map(|(state, accounts)| {
            format!(
                "{} {state} (e.g. {})",
                accounts.len(),
                accounts
                    .iter()
                    .take(3)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "accounts in the abuse review queue: {}{}",
        in_review.len(),
        if summary.is_empty() {
            String::new()
        } else {
            format!(": {}", summary.join("; "))
        }
    );
    if let Some(check) = &outcome.check {
        let _ = writeln!(out, "\nsignals against the ground truth:");
        out.push_str(&check.table());
        if let Some(path) = &outcome.check_file {
            let _ = writeln!(
                out,
                "(every miss and false alarm, by behaviour: {})",
                path.display()
            );
        }
    }
    let db = &env.clickhouse.database;
    let _ = writeln!(
        out,
        "\nfor the growth team (clickhouse-client --database {db} --query \"…\", or the HTTP port):"
    );
    let _ = writeln!(
        out,
        "  -- daily usage of this run\n  SELECT toDate(window_start) AS day, sum(requests) AS requests, sum(input_tokens + output_tokens) AS tokens, uniqExact(account_id) AS accounts FROM usage_day_totals WHERE account_id LIKE '{like}' GROUP BY day ORDER BY day"
    );
    let _ = writeln!(
        out,
        "  -- the heaviest accounts this month, with their regions\n  SELECT account_id, sum(input_tokens + output_tokens) AS tokens, uniqExactMerge(regions) AS regions FROM usage_month WHERE account_id LIKE '{like}' GROUP BY account_id ORDER BY tokens DESC LIMIT 10"
    );
    let _ = writeln!(
        out,
        "  -- lifecycle: signups, upgrades, churn\n  SELECT type, plan, count() AS events FROM account_events WHERE account_id LIKE '{like}' GROUP BY type, plan ORDER BY events DESC"
    );
    Ok(out)
}
