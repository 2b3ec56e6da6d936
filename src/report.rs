//! Text for people: `meterline scores ACCOUNT` and `meterline notifications list`.

use std::fmt::Write;

use meterline_scorer::rules::Score;
use meterline_scorer::score::Scores;

fn section(out: &mut String, name: &str, s: &Score) {
    let _ = writeln!(out, "{name}: {}/100", s.value);
    if s.reasons.is_empty() {
        let _ = writeln!(out, "  (no rule fired)");
    }
    for r in &s.reasons {
        let _ = writeln!(out, "  +{:<3} {}: {}", r.points, r.rule, r.detail);
    }
}

pub fn scores_text(s: &Scores) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "account {} ({} plan), scored {}",
        s.account_id,
        s.plan.as_str(),
        s.scored_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    section(&mut out, "deal readiness", &s.deal_readiness);
    section(&mut out, "PQL", &s.pql);
    section(&mut out, "abuse", &s.abuse);
    if s.abuse_suspected {
        let _ = writeln!(out, "  => suspected abuse");
    }
    if let Some(p) = &s.power_user {
        let _ = writeln!(out, "power user: {}", p.detail);
    }
    let _ = writeln!(out, "limits:");
    for l in &s.limits {
        let st = &l.status;
        let _ = write!(
            out,
            "  {:<24} {:>14} of {:<14}",
            st.name,
            st.used.map_or("-".into(), |u| format!("{u:.0}")),
            if st.limit < 0.0 {
                "unlimited".into()
            } else {
                format!("{:.0}", st.limit)
            }
        );
        if let Some(stage) = st.stage {
            let _ = write!(out, " stage {stage} %");
        }
        if let Some(shape) = l.shape {
            let _ = write!(out, " ({shape:?})");
        }
        if let Some(h) = l.hours_to_limit {
            let _ = write!(out, " ~{h:.0} h to the limit");
        }
        let _ = writeln!(out);
    }
    for t in &s.plugin_triggers {
        let _ = writeln!(
            out,
            "plugin desired: {} ({}): {}",
            t.plugin, t.trigger, t.evidence
        );
    }
    if let Some(r) = &s.rate_limit_sustained {
        let _ = writeln!(
            out,
            "rate limit: over for {} minutes since {} (peak {}/min)",
            r.minutes_over, r.start, r.peak_rpm
        );
    }
    for k in &s.shared_keys {
        let _ = writeln!(
            out,
            "shared key: {} from {} IPs at {}",
            k.api_key_id, k.distinct_ips, k.minute
        );
    }
    for m in &s.multi_accounts {
        let _ = writeln!(
            out,
            "multi-account: matches {} on {}",
            m.other_account,
            m.signals.join(", ")
        );
    }
    for t in &s.tags {
        let _ = writeln!(out, "escalation: {t}");
    }
    out
}

/// The outbox as a table: one line per notification, its last error under it.
pub fn notifications_table(rows: &[meterline_notifier::outbox::Listed]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no notifications\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<11} {:<28} {:<22} {:<24} {:>3}  created",
        "id", "status", "destination", "kind", "account", "try"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>6}  {:<11} {:<28} {:<22} {:<24} {:>3}  {}",
            r.id,
            r.status,
            r.destination,
            r.kind,
            r.account_id,
            r.attempts,
            r.created_at.format("%Y-%m-%d %H:%M:%S")
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "        last error: {e}");
        }
        if let Some(to) = &r.delivered_to {
            let _ = writeln!(out, "        delivered to: {to}");
        }
    }
    out
}

/// The demo's closing summary: what the simulated month did to the pipeline.
pub async fn demo_summary(
    config: &crate::Config,
    pool: &sqlx::PgPool,
    outcome: &crate::simulate::Outcome,
    options: &crate::simulate::Options,
) -> anyhow::Result<String> {
    let like = format!("sim-{}-%", outcome.tag);
    // Give the notifier a moment to finish what the last signals queued.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(15) {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM notifications WHERE account_id LIKE $1 AND status IN ('pending', 'sending')",
        )
        .bind(&like)
        .fetch_one(pool)
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
            .fetch_one(pool)
            .await?;
    let _ = writeln!(out, "accounts scored: {scored}");

    let top: Vec<(String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT account_id, deal_readiness, scores -> 'deal_readiness' -> 'reasons' FROM account_scores \
         WHERE account_id LIKE $1 AND deal_readiness > $2 ORDER BY deal_readiness DESC, account_id LIMIT 10",
    )
    .bind(&like)
    .bind(config.scorer.deal.ready_above as i32)
    .fetch_all(pool)
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
    .fetch_all(pool)
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
            format!("to the local sink {}", config.notifier.data_dir)
        }
    };
    let slack_configured = config
        .notifier
        .slack
        .webhooks
        .values()
        .any(|w| !w.is_empty());
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
        local(!config.notifier.hubspot.token.is_empty())
    );
    let (notices,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM dashboard_notices WHERE account_id LIKE $1")
            .bind(&like)
            .fetch_one(pool)
            .await?;
    let _ = writeln!(out, "dashboard notices queued: {notices}");
    let flagged: Vec<(String,)> = sqlx::query_as(
        "SELECT account_id FROM accounts WHERE account_id LIKE $1 AND abuse_flagged_at IS NOT NULL ORDER BY account_id",
    )
    .bind(&like)
    .fetch_all(pool)
    .await?;
    let names: Vec<&str> = flagged.iter().take(5).map(|(a,)| a.as_str()).collect();
    let _ = writeln!(
        out,
        "accounts flagged for abuse (quota checks answer deny): {}{}{}",
        flagged.len(),
        if names.is_empty() { "" } else { ", e.g. " },
        names.join(", ")
    );
    if let Some(check) = &outcome.check {
        let _ = writeln!(out, "\nsignals against the ground truth:");
        out.push_str(&check.table(options.min_precision, options.min_recall));
    }
    let db = &config.clickhouse.database;
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
