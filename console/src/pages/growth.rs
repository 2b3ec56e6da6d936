//! Growth: the limit experiments and their report.
//!
//! * `GET /console/experiments`: every experiment (`meterline experiments list`'s store);
//! * `GET /console/experiments/{name}`: its report, built by
//!   `meterline_growth::cohort_report::build` (what `meterline experiments report` prints):
//!   each variant's rates with 95 % intervals, the two-proportion test against the control on
//!   limit-hit → conversion, the warnings about the read, and the cumulative conversion chart,
//!   drawn as inline SVG ([`curves`]);
//! * `GET /console/growth[?plan=]`: the growth report of seed 000 (`meterline report growth`,
//!   `meterline_growth::report`): the tier waterfall, the notice funnel, the deal score's lead
//!   time, time to close, cost to serve, limit hit → conversion and grace use, over all time,
//!   for events starting on `plan` when given. It is shown as the command prints it. Building
//!   it reads the whole history (seconds with 100,000 accounts), so it is kept for
//!   [`GROWTH_REPORT_TTL`] per plan filter, and one request builds it while the others wait.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use meterline_aggregator::experiments::store;
use meterline_aggregator::experiments::ExperimentError;
use meterline_growth::cohort_report::{self, Report};
use meterline_growth::stats::Rate;
use minijinja::context;
use serde::Serialize;

use super::{when, when_opt};
use crate::chart::PALETTE;
use crate::error::{ConsoleError, Result};
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

fn experiment_error(e: ExperimentError) -> ConsoleError {
    match e {
        ExperimentError::NotFound(_) => ConsoleError::NotFound(format!("experiment: {e}")),
        other => ConsoleError::Unavailable(other.to_string()),
    }
}

/// `GET /console/experiments`.
pub async fn list(State(state): State<ConsoleState>, session: Session) -> Result<Page> {
    let experiments = store::list(&state.pool).await.map_err(experiment_error)?;
    let rows: Vec<_> = experiments
        .into_iter()
        .map(|e| {
            let assigned: i64 = e.assigned.values().sum();
            context! {
                name => e.spec.name,
                description => e.spec.description,
                plan => e.spec.plan,
                starts_at => when(e.spec.starts_at),
                ends_at => when_opt(e.spec.ends_at),
                stopped_at => when_opt(e.stopped_at),
                variants => e.spec.variants.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
                assigned,
            }
        })
        .collect();
    render(
        "experiments.html",
        context! { session, title => "Experiments", rows },
    )
}

/// A rate as the report shows it: `12.3 % (9.8–15.1 %)`, or `-` with no trials.
pub fn rate(r: &Rate) -> String {
    match (r.value, r.ci95_low, r.ci95_high) {
        (Some(v), Some(lo), Some(hi)) => format!(
            "{:.1} % ({:.1}–{:.1} %) of {}",
            v * 100.0,
            lo * 100.0,
            hi * 100.0,
            r.trials
        ),
        _ => "- (no accounts)".into(),
    }
}

#[derive(Debug, Serialize)]
pub struct Curve {
    pub variant: String,
    pub accounts: u64,
    pub color: &'static str,
    /// SVG polyline points.
    pub points: String,
}

#[derive(Debug, Serialize)]
pub struct CurvesChart {
    pub width: f64,
    pub height: f64,
    pub days: usize,
    pub max_label: String,
    pub curves: Vec<Curve>,
}

/// Cumulative conversion by days since signup, one line per variant, scaled to the highest.
pub fn curves(report: &Report) -> CurvesChart {
    let (width, height, left, top, plot_h) = (720.0, 300.0, 60.0, 20.0, 240.0);
    let (days, highest) = report.curve_extent();
    let max = highest.max(0.01);
    let plot_w = width - left - 20.0;
    let curves = report
        .conversion_curves
        .iter()
        .enumerate()
        .map(|(i, c)| Curve {
            variant: c.variant.clone(),
            accounts: c.accounts,
            color: PALETTE[i % PALETTE.len()],
            points: c
                .by_day
                .iter()
                .enumerate()
                .map(|(d, v)| {
                    format!(
                        "{:.1},{:.1}",
                        left + d as f64 / days as f64 * plot_w,
                        top + plot_h - v / max * plot_h
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    CurvesChart {
        width,
        height,
        days,
        max_label: format!("{:.1} %", max * 100.0),
        curves,
    }
}

/// `GET /console/experiments/{name}`.
pub async fn report(
    State(state): State<ConsoleState>,
    session: Session,
    Path(name): Path<String>,
) -> Result<Page> {
    let experiment = store::get(&state.pool, &name)
        .await
        .map_err(experiment_error)?;
    let report = cohort_report::build(&state.clickhouse, &experiment, Utc::now()).await?;
    let variants: Vec<_> = report
        .variants
        .iter()
        .map(|v| {
            context! {
                variant => v.variant,
                control => v.control,
                accounts => v.accounts,
                limit_hit_rate => rate(&v.limit_hit_rate),
                hit_conversion_rate => rate(&v.hit_conversion_rate),
                hit_churn_rate => rate(&v.hit_churn_rate),
                no_hit_conversion_rate => rate(&v.no_hit_conversion_rate),
                median_hours_to_limit => v.median_hours_to_limit.map(|h| format!("{h:.1}")),
                cost => format!("{:.4}", v.free_cost_usd_per_account),
                test => v.hit_conversion_vs_control.as_ref().map(|t| format!(
                    "difference {:+.1} points, z = {:.2}, p = {:.3}", t.difference * 100.0, t.z, t.p_value
                )),
            }
        })
        .collect();
    render(
        "experiment.html",
        context! {
            session,
            title => format!("Experiment {}", experiment.spec.name),
            e => context! {
                name => experiment.spec.name,
                description => experiment.spec.description,
                plan => experiment.spec.plan,
                starts_at => when(report.starts_at),
                read_until => when(report.read_until),
                read_window_days => format!("{:.1}", report.read_window_days),
            },
            warnings => report.warnings,
            variants,
            chart => curves(&report),
        },
    )
}

/// How long a built growth report is shown before it is built again.
pub const GROWTH_REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Built growth reports by plan filter: when, and the text.
pub type GrowthCache = std::sync::Arc<
    tokio::sync::Mutex<
        std::collections::HashMap<
            Option<&'static str>,
            (std::time::Instant, DateTime<Utc>, String),
        >,
    >,
>;

#[derive(Debug, serde::Deserialize)]
pub struct GrowthQuery {
    pub plan: Option<String>,
}

/// `GET /console/growth`.
pub async fn growth_report(
    State(state): State<ConsoleState>,
    session: Session,
    axum::extract::Query(q): axum::extract::Query<GrowthQuery>,
) -> Result<Page> {
    let plan = q
        .plan
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| {
            meterline_growth::report::args::parse_plan(p)
                .map_err(|e| ConsoleError::BadRequest(format!("plan: {e}")))
        })
        .transpose()?;
    let filters = meterline_growth::report::args::Filters::new(None, None, plan)
        .map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
    let key = plan.map(|p| p.as_str());
    // Held while building: a second request waits for this build rather than start its own.
    let mut cache = state.growth_cache.lock().await;
    let (built_at, text) = match cache.get(&key) {
        Some((at, built_at, text)) if at.elapsed() < GROWTH_REPORT_TTL => (*built_at, text.clone()),
        _ => {
            let now = Utc::now();
            let text = meterline_growth::report::build(&state.clickhouse, &filters, now)
                .await?
                .text();
            cache.insert(key, (std::time::Instant::now(), now, text.clone()));
            (now, text)
        }
    };
    drop(cache);
    render(
        "growth.html",
        context! {
            session,
            title => "Growth report",
            plan => key,
            built_at => when(built_at),
            text,
        },
    )
}
