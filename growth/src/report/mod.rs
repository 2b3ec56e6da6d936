//! `meterline report growth`: seed 000's results, read from ClickHouse.
//!
//! Every figure comes from one of the per-row views in
//! `migrations/clickhouse/0012_growth_report.sql` (one row per account, notice, move or grace
//! episode; docs/analytics.md documents them). A ClickHouse 18.16 view takes no parameters, so
//! this module applies the period and the starting plan ([`Filters`]) and counts. The
//! definitions, in short (docs/analytics.md has them in full):
//!
//! * **Tier waterfall**: the upward plan steps of the `conversions` view whose time is in the
//!   period, per path. An account that went free → pro → enterprise counts once in free → pro
//!   and once in pro → enterprise, and not in free → enterprise, which counts only direct jumps
//!   (seed 000's "984 to Pro, 122 of them on to Enterprise, +84 direct"). A path's rate is the
//!   accounts that took it over the accounts that were on its starting plan at some time in the
//!   period (`plan_spells`).
//! * **Free → paid**: accounts that left free for pro or enterprise in the period (each once)
//!   over the accounts on free in the period.
//! * **Notice funnel**, per kind: notices first shown in the period; of those, clicked; of
//!   those, the account moved to a higher plan within 14 × 24 h of the first showing
//!   (inclusive). Also the upgrades whether or not the notice was clicked.
//! * **Score lead time**: accounts whose first move to Enterprise is in the period; the days
//!   from the first deal readiness score above 70 (at or before the move) to the move; the
//!   share of the movers caught 30 or more days early (seed 000 reports 73 %).
//! * **Time to close**: days from the first request to the first move from free to a paid plan.
//! * **Cost to serve**: usage cost on a plan per active account (requests on that plan in the
//!   month) per month, usage in the period.
//! * **Limit hit → conversion**: accounts whose first hit (100 %) on a plan is in the period,
//!   and the share that later moved from that plan to a higher one.
//! * **Grace use**: episodes (account, limit, window) whose first use is in the period, their
//!   accounts, and the accounts that later moved to a higher plan.
//!
//! The period filters the *starting* event (the conversion, the showing, the hit); what follows
//! it is counted whenever it happened.

pub mod args;
pub mod chart;
pub mod figures;
pub mod render;

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::Deserialize;

use crate::stats::Rate;
pub use args::{Filters, GrowthArgs, ReportAction};
pub use figures::*;

/// The plan paths of the waterfall, in the chart's and the table's order.
pub const PATHS: [(&str, &str); 3] = [
    ("free", "pro"),
    ("free", "enterprise"),
    ("pro", "enterprise"),
];

/// The notice funnel's window after the first showing, in days (inclusive).
pub const UPGRADE_WINDOW_DAYS: u32 = 14;
/// Caught "early": at least this many days between the first deal_ready and the move.
pub const EARLY_DAYS: f64 = 30.0;

#[derive(Row, Deserialize)]
struct StepRow {
    from_plan: String,
    to_plan: String,
    conversions: u64,
    accounts: u64,
}

#[derive(Row, Deserialize)]
struct PlanCountRow {
    plan: String,
    accounts: u64,
}

#[derive(Row, Deserialize)]
struct NoticeRow {
    notice_kind: String,
    shown: u64,
    clicked: u64,
    clicked_upgraded: u64,
    upgraded: u64,
}

#[derive(Row, Deserialize)]
struct LeadRow {
    moved: u64,
    ready: u64,
    early: u64,
    lead_days_list: Vec<f64>,
}

#[derive(Row, Deserialize)]
struct CloseRow {
    closes: u64,
    with_usage: u64,
    close_days_list: Vec<f64>,
}

#[derive(Row, Deserialize)]
struct CostRow {
    plan: String,
    month: u32,
    active: u64,
    cost_micros: u64,
}

#[derive(Row, Deserialize)]
struct HitRow {
    plan: String,
    hitters: u64,
    converted: u64,
}

#[derive(Row, Deserialize)]
struct GraceRow {
    plan: String,
    limit_name: String,
    episodes: u64,
    accounts: u64,
    converted: u64,
}

#[derive(Row, Deserialize)]
struct MonthRow {
    month: u32,
    from_plan: String,
    to_plan: String,
    conversions: u64,
}

/// The period condition on `column`, bound with [`Filters::bounds`].
fn period(column: &str) -> String {
    format!("{column} >= toDateTime(?) AND {column} < toDateTime(?)")
}

/// Mean and median (the mean of the middle two for an even count).
pub fn mean_median(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (Some(v.iter().sum::<f64>() / n as f64), Some(median))
}

/// Progress on stderr while the queries run, shown only on a terminal.
fn progress(steps: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:20}] {pos}/{len} {msg} ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(150));
    bar
}

/// Reads every figure from ClickHouse.
pub async fn build(
    ch: &clickhouse::Client,
    filters: &Filters,
    now: DateTime<Utc>,
) -> Result<GrowthReport, clickhouse::error::Error> {
    let (since, until) = filters.bounds();
    let plan = filters.plan_str();
    let bar = progress(9);
    let step = |msg: &'static str| {
        bar.set_message(msg);
        bar.inc(1);
    };

    bar.set_message("tier waterfall");
    let steps: Vec<StepRow> = ch
        .query(&format!(
            "SELECT from_plan, to_plan, count() AS conversions, uniqExact(account_id) AS accounts
               FROM conversions WHERE {} AND (? = '' OR from_plan = ?)
              GROUP BY from_plan, to_plan",
            period("converted_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    step("accounts per plan");
    let on_plan: Vec<PlanCountRow> = ch
        .query(
            "SELECT plan, uniqExact(account_id) AS accounts FROM plan_spells
              WHERE left_at >= toDateTime(?) AND entered_at < toDateTime(?) GROUP BY plan",
        )
        .bind(since)
        .bind(until)
        .fetch_all()
        .await?;
    let base = |p: &str| {
        on_plan
            .iter()
            .find(|r| r.plan == p)
            .map_or(0, |r| r.accounts)
    };
    let waterfall = PATHS
        .iter()
        .filter(|(from, _)| filters.includes(from))
        .map(|(from, to)| {
            let row = steps
                .iter()
                .find(|r| r.from_plan == *from && r.to_plan == *to);
            PathFigures {
                from_plan: (*from).into(),
                to_plan: (*to).into(),
                conversions: row.map_or(0, |r| r.conversions),
                rate: Rate::new(row.map_or(0, |r| r.accounts), base(from)),
            }
        })
        .collect();

    step("free → paid");
    let free_to_paid = if filters.includes("free") {
        let paid: u64 = ch
            .query(&format!(
                "SELECT uniqExact(account_id) FROM conversions WHERE from_plan = 'free' AND {}",
                period("converted_at")
            ))
            .bind(since)
            .bind(until)
            .fetch_one()
            .await?;
        Some(Rate::new(paid, base("free")))
    } else {
        None
    };

    step("notice funnel");
    let notices: Vec<NoticeRow> = ch
        .query(&format!(
            "SELECT if(kind = '', '(unknown)', kind) AS notice_kind, count() AS shown, sum(clicked) AS clicked,
                    sum(clicked_upgraded_14d) AS clicked_upgraded, sum(upgraded_14d) AS upgraded
               FROM notice_funnel WHERE {} AND (? = '' OR plan = ?)
              GROUP BY notice_kind ORDER BY notice_kind",
            period("first_shown_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    let notice_funnel = notices
        .into_iter()
        .map(|r| NoticeKindFigures {
            kind: r.notice_kind,
            shown: r.shown,
            clicked: Rate::new(r.clicked, r.shown),
            clicked_upgraded: Rate::new(r.clicked_upgraded, r.clicked),
            upgraded: Rate::new(r.upgraded, r.shown),
        })
        .collect();

    step("score lead time");
    let lead: LeadRow = ch
        .query(&format!(
            "SELECT count() AS moved, sum(deal_ready) AS ready,
                    countIf(deal_ready = 1 AND lead_days >= {EARLY_DAYS}) AS early,
                    groupArrayIf(lead_days, deal_ready = 1) AS lead_days_list
               FROM enterprise_lead_times WHERE {} AND (? = '' OR from_plan = ?)",
            period("moved_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_one()
        .await?;
    let (mean_days, median_days) = mean_median(&lead.lead_days_list);
    let lead_time = LeadTimeFigures {
        moved: lead.moved,
        deal_ready: Rate::new(lead.ready, lead.moved),
        caught_30d: Rate::new(lead.early, lead.moved),
        mean_days,
        median_days,
    };

    step("time to close");
    let time_to_close = if filters.includes("free") {
        let c: CloseRow = ch
            .query(&format!(
                "SELECT count() AS closes, sum(used) AS with_usage, groupArrayIf(days, used = 1) AS close_days_list
                   FROM paid_closes WHERE {}",
                period("closed_at")
            ))
            .bind(since)
            .bind(until)
            .fetch_one()
            .await?;
        let (mean_days, median_days) = mean_median(&c.close_days_list);
        Some(CloseFigures {
            closes: c.closes,
            with_usage: c.with_usage,
            mean_days,
            median_days,
        })
    } else {
        None
    };

    step("cost to serve");
    let costs: Vec<CostRow> = ch
        .query(&format!(
            "SELECT plan, toYYYYMM(window_start) AS month, uniqExactIf(account_id, requests > 0) AS active,
                    sum(cost_micros) AS cost_micros
               FROM plan_usage_hourly WHERE {} AND plan != '' AND (? = '' OR plan = ?)
              GROUP BY plan, month ORDER BY plan, month",
            period("window_start")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    let cost_to_serve = ["free", "pro", "enterprise"]
        .iter()
        .filter(|p| filters.includes(p))
        .map(|p| {
            let months: Vec<CostMonth> = costs
                .iter()
                .filter(|r| r.plan == *p)
                .map(|r| CostMonth {
                    month: r.month,
                    active_accounts: r.active,
                    cost_usd: r.cost_micros as f64 / 1e6,
                })
                .collect();
            let account_months: u64 = months.iter().map(|m| m.active_accounts).sum();
            let micros: u64 = costs
                .iter()
                .filter(|r| r.plan == *p)
                .map(|r| r.cost_micros)
                .sum();
            let cost_usd = micros as f64 / 1e6;
            CostFigures {
                plan: (*p).into(),
                account_months,
                cost_usd,
                per_account_month_usd: (account_months > 0)
                    .then(|| cost_usd / account_months as f64),
                months,
            }
        })
        .collect();

    step("limit hit → conversion");
    let hits: Vec<HitRow> = ch
        .query(&format!(
            "SELECT plan, count() AS hitters, sum(converted) AS converted
               FROM limit_hit_outcomes WHERE {} AND (? = '' OR plan = ?)
              GROUP BY plan ORDER BY indexOf(['free', 'pro', 'enterprise'], plan), plan",
            period("first_hit_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    let limit_hit_conversion = hits
        .into_iter()
        .map(|r| LimitHitFigures {
            plan: r.plan,
            converted: Rate::new(r.converted, r.hitters),
        })
        .collect();

    step("grace use");
    let grace: Vec<GraceRow> = ch
        .query(&format!(
            "SELECT plan, limit_name, count() AS episodes, uniqExact(account_id) AS accounts,
                    uniqExactIf(account_id, converted = 1) AS converted
               FROM grace_episodes WHERE {} AND (? = '' OR plan = ?)
              GROUP BY plan, limit_name ORDER BY indexOf(['free', 'pro', 'enterprise'], plan), plan, limit_name",
            period("first_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    let grace = grace
        .into_iter()
        .map(|r| GraceFigures {
            plan: r.plan,
            limit_name: r.limit_name,
            episodes: r.episodes,
            converted: Rate::new(r.converted, r.accounts),
        })
        .collect();

    step("conversions by month");
    let by_month: Vec<MonthRow> = ch
        .query(&format!(
            "SELECT toYYYYMM(converted_at) AS month, from_plan, to_plan, count() AS conversions
               FROM conversions WHERE {} AND (? = '' OR from_plan = ?)
              GROUP BY month, from_plan, to_plan ORDER BY month",
            period("converted_at")
        ))
        .bind(since)
        .bind(until)
        .bind(plan)
        .bind(plan)
        .fetch_all()
        .await?;
    let (months, monthly) = cumulative_by_month(filters, &by_month);
    bar.finish_and_clear();

    Ok(GrowthReport {
        period: filters.describe(),
        generated_at: now,
        waterfall,
        free_to_paid,
        notice_funnel,
        lead_time,
        time_to_close,
        cost_to_serve,
        limit_hit_conversion,
        grace,
        months,
        monthly,
    })
}

/// `meterline report growth`: checks the flags, reads the figures, prints the table and writes
/// the CSV and the chart when asked.
pub async fn run(ch: &clickhouse::Client, args: &GrowthArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let filters = Filters::from_args(args)?;
    let report = build(ch, &filters, Utc::now())
        .await
        .context("reading the growth views from ClickHouse (has `meterline migrate` run?)")?;
    print!("{}", report.text());
    if let Some(path) = &args.csv {
        std::fs::write(path, report.csv())
            .with_context(|| format!("--csv: writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::draw(&report, path).with_context(|| format!("--chart {}", path.display()))?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}

/// Every month from the first to the last with a conversion, and per path the running total.
fn cumulative_by_month(filters: &Filters, rows: &[MonthRow]) -> (Vec<u32>, Vec<MonthlyPath>) {
    let months = match (
        rows.iter().map(|r| r.month).min(),
        rows.iter().map(|r| r.month).max(),
    ) {
        (Some(first), Some(last)) => {
            let mut out = vec![first];
            let mut m = first;
            while m < last {
                m = if m % 100 == 12 { m + 89 } else { m + 1 };
                out.push(m);
            }
            out
        }
        _ => Vec::new(),
    };
    let monthly = PATHS
        .iter()
        .filter(|(from, _)| filters.includes(from))
        .map(|(from, to)| {
            let mut total = 0;
            let cumulative = months
                .iter()
                .map(|m| {
                    total += rows
                        .iter()
                        .filter(|r| r.month == *m && r.from_plan == *from && r.to_plan == *to)
                        .map(|r| r.conversions)
                        .sum::<u64>();
                    total
                })
                .collect();
            MonthlyPath {
                from_plan: (*from).into(),
                to_plan: (*to).into(),
                cumulative,
            }
        })
        .collect();
    (months, monthly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_run_across_the_year_end_and_totals_accumulate() {
        let row = |month, from: &str, to: &str, conversions| MonthRow {
            month,
            from_plan: from.into(),
            to_plan: to.into(),
            conversions,
        };
        let rows = [
            row(202611, "free", "pro", 2),
            row(202702, "free", "pro", 1),
            row(202701, "pro", "enterprise", 3),
        ];
        let all = Filters::new(None, None, None).unwrap();
        let (months, paths) = cumulative_by_month(&all, &rows);
        assert_eq!(months, [202611, 202612, 202701, 202702]);
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[0].cumulative, [2, 2, 2, 3]);
        assert_eq!(paths[1].cumulative, [0, 0, 0, 0]);
        assert_eq!(paths[2].cumulative, [0, 0, 3, 3]);
        let pro = Filters::new(None, None, Some(meterline_schemas::Plan::Pro)).unwrap();
        let (_, paths) = cumulative_by_month(&pro, &rows);
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].from_plan, "pro");
    }

    #[test]
    fn medians_of_even_counts_are_the_mean_of_the_middle_two() {
        assert_eq!(mean_median(&[]), (None, None));
        assert_eq!(mean_median(&[3.0, 1.0, 2.0]), (Some(2.0), Some(2.0)));
        assert_eq!(mean_median(&[4.0, 1.0, 2.0, 10.0]), (Some(4.25), Some(3.0)));
    }
}
