//! `meterline experiments report NAME`: an experiment's limit-health metrics per variant,
//! read from ClickHouse's `cohort_metrics` view (the same figures the growth team gets in SQL),
//! with a 95 % interval for every rate and a two-proportion test of each variant against the
//! control on limit-hit → conversion, the metric the brief says decides a limit test.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use meterline_aggregator::experiments::store::Experiment;
use serde::{Deserialize, Serialize};

use crate::stats::{two_proportion, Rate, ZTest};

/// The read window the brief asks for before a limit test is read.
pub const MIN_READ_DAYS: f64 = 60.0;
/// Below this many accounts a variant's intervals are too wide to act on.
pub const MIN_VARIANT_ACCOUNTS: u64 = 100;

#[derive(Debug, Clone, Row, Deserialize)]
struct MetricsRow {
    variant: String,
    is_control: u8,
    accounts: u64,
    hit_accounts: u64,
    hit_converted: u64,
    hit_churned: u64,
    no_hit_converted: u64,
    median_hours_to_limit: f64,
    free_cost_usd_per_account: f64,
}

#[derive(Debug, Clone, Row, Deserialize)]
struct ConversionDaysRow {
    variant: String,
    accounts: u64,
    days: Vec<f64>,
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantReport {
    pub variant: String,
    pub control: bool,
    pub accounts: u64,
    /// Accounts that ever hit a limit (the last stage) on the experiment's plan.
    pub limit_hit_rate: Rate,
    /// Of those, the ones that moved to a higher plan after their first hit.
    pub hit_conversion_rate: Rate,
    /// Of those, the ones that churned after their first hit.
    pub hit_churn_rate: Rate,
    /// Conversion among the accounts that never hit a limit.
    pub no_hit_conversion_rate: Rate,
    /// From signup to the first hit, in hours; `None` when nobody hit.
    pub median_hours_to_limit: Option<f64>,
    /// What the accounts' usage cost while they were on the experiment's plan, per account.
    pub free_cost_usd_per_account: f64,
    /// Hit → conversion against the control (absent for the control itself).
    pub hit_conversion_vs_control: Option<ZTest>,
}

/// Cumulative conversion by days since signup, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversionCurve {
    pub variant: String,
    pub accounts: u64,
    /// Share converted within `d` days of signup, for d = 0, 1, 2, …
    pub by_day: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub experiment: String,
    pub plan: String,
    pub starts_at: DateTime<Utc>,
    pub read_until: DateTime<Utc>,
    pub read_window_days: f64,
    pub warnings: Vec<String>,
    pub variants: Vec<VariantReport>,
    pub conversion_curves: Vec<ConversionCurve>,
}

/// Reads the experiment's figures from ClickHouse.
pub async fn build(
    ch: &clickhouse::Client,
    experiment: &Experiment,
    now: DateTime<Utc>,
) -> Result<Report, clickhouse::error::Error> {
    let name = &experiment.spec.name;
    let rows: Vec<MetricsRow> = ch
        .query(
            "SELECT variant, is_control, accounts, hit_accounts, hit_converted, hit_churned, no_hit_converted,
                    median_hours_to_limit, free_cost_usd_per_account
               FROM cohort_metrics WHERE experiment = ? ORDER BY is_control DESC, variant",
        )
        .bind(name)
        .fetch_all()
        .await?;
    let days: Vec<ConversionDaysRow> = ch
        .query(
            "SELECT variant, count() AS accounts,
                    groupArrayIf(toFloat64(converted_at - signed_up_at) / 86400, converted = 1 AND converted_at >= signed_up_at) AS days
               FROM experiment_accounts WHERE experiment = ? GROUP BY variant ORDER BY variant",
        )
        .bind(name)
        .fetch_all()
        .await?;
    let read_until = experiment
        .spec
        .ends_at
        .map_or(now, |end| end.min(now))
        .max(experiment.spec.starts_at);
    let read_window_days = (read_until - experiment.spec.starts_at).num_seconds() as f64 / 86_400.0;
    Ok(assemble(
        experiment,
        rows,
        days,
        read_until,
        read_window_days,
    ))
}

fn assemble(
    experiment: &Experiment,
    rows: Vec<MetricsRow>,
    days: Vec<ConversionDaysRow>,
    read_until: DateTime<Utc>,
    read_window_days: f64,
) -> Report {
    let mut variants: Vec<VariantReport> = rows
        .iter()
        .map(|r| VariantReport {
            variant: r.variant.clone(),
            control: r.is_control == 1,
            accounts: r.accounts,
            limit_hit_rate: Rate::new(r.hit_accounts, r.accounts),
            hit_conversion_rate: Rate::new(r.hit_converted, r.hit_accounts),
            hit_churn_rate: Rate::new(r.hit_churned, r.hit_accounts),
            no_hit_conversion_rate: Rate::new(r.no_hit_converted, r.accounts - r.hit_accounts),
            median_hours_to_limit: r
                .median_hours_to_limit
                .is_finite()
                .then_some(r.median_hours_to_limit),
            free_cost_usd_per_account: r.free_cost_usd_per_account,
            hit_conversion_vs_control: None,
        })
        .collect();
    // Variants nobody has landed in yet still get a row.
    for v in &experiment.spec.variants {
        if !variants.iter().any(|r| r.variant == v.name) {
            variants.push(VariantReport {
                variant: v.name.clone(),
                control: v.control,
                accounts: 0,
                limit_hit_rate: Rate::new(0, 0),
                hit_conversion_rate: Rate::new(0, 0),
                hit_churn_rate: Rate::new(0, 0),
                no_hit_conversion_rate: Rate::new(0, 0),
                median_hours_to_limit: None,
                free_cost_usd_per_account: 0.0,
                hit_conversion_vs_control: None,
            });
        }
    }
    variants.sort_by(|a, b| b.control.cmp(&a.control).then(a.variant.cmp(&b.variant)));
    if let Some(control) = variants
        .iter()
        .find(|v| v.control)
        .map(|v| v.hit_conversion_rate)
    {
        for v in variants.iter_mut().filter(|v| !v.control) {
            v.hit_conversion_vs_control = two_proportion(v.hit_conversion_rate, control);
        }
    }
    let mut warnings = Vec::new();
    if read_window_days < MIN_READ_DAYS {
        warnings.push(format!(
            "the read window is {read_window_days:.1} days, shorter than {MIN_READ_DAYS:.0}: limit-hit → conversion plays out over weeks to months, so this reads signup behaviour, not expansion"
        ));
    }
    for v in &variants {
        if v.accounts < MIN_VARIANT_ACCOUNTS {
            warnings.push(format!(
                "variant `{}` has {} accounts, fewer than {MIN_VARIANT_ACCOUNTS}: its intervals are too wide to act on",
                v.variant, v.accounts
            ));
        }
    }
    let horizon = read_window_days.ceil().clamp(1.0, 120.0) as usize;
    let conversion_curves = variants
        .iter()
        .map(|v| {
            let row = days.iter().find(|d| d.variant == v.variant);
            let accounts = row.map_or(0, |r| r.accounts);
            let by_day = (0..=horizon)
                .map(|d| {
                    let converted =
                        row.map_or(0, |r| r.days.iter().filter(|x| **x <= d as f64).count());
                    if accounts == 0 {
                        0.0
                    } else {
                        converted as f64 / accounts as f64
                    }
                })
                .collect();
            ConversionCurve {
                variant: v.variant.clone(),
                accounts,
                by_day,
            }
        })
        .collect();
    Report {
        experiment: experiment.spec.name.clone(),
        plan: experiment.spec.plan.clone(),
        starts_at: experiment.spec.starts_at,
        read_until,
        read_window_days,
        warnings,
        variants,
        conversion_curves,
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}", x * 100.0))
}

fn rate_cells(r: &Rate) -> (String, String, String) {
    let value = r
        .value
        .map_or_else(|| "-".into(), |v| format!("{:.1} %", v * 100.0));
    let ci = match (r.ci95_low, r.ci95_high) {
        (Some(lo), Some(hi)) => format!("[{}, {}] %", pct(Some(lo)), pct(Some(hi))),
        _ => "-".into(),
    };
    (value, ci, format!("{}/{}", r.successes, r.trials))
}

impl Report {
    /// What the conversion chart spans: the most days since signup a curve reaches (at least
    /// 1), and the highest share converted on any curve (0 when none converted). The console's
    /// chart and `--chart`'s picture are both scaled by it.
    pub fn curve_extent(&self) -> (usize, f64) {
        let days = self
            .conversion_curves
            .iter()
            .map(|c| c.by_day.len().saturating_sub(1))
            .max()
            .unwrap_or(1)
            .max(1);
        let highest = self
            .conversion_curves
            .iter()
            .flat_map(|c| c.by_day.iter().copied())
            .fold(0.0_f64, f64::max);
        (days, highest)
    }

    /// The text report: warnings first, then a table per variant.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "experiment {} (plan {}): {} to {}, a read window of {:.1} days",
            self.experiment,
            self.plan,
            self.starts_at.format("%Y-%m-%d %H:%M UTC"),
            self.read_until.format("%Y-%m-%d %H:%M UTC"),
            self.read_window_days
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for v in &self.variants {
            let _ = writeln!(
                out,
                "\nvariant {}{}: {} accounts",
                v.variant,
                if v.control { " (control)" } else { "" },
                v.accounts
            );
            let _ = writeln!(
                out,
                "  {:<32} {:>9}  {:<18} {:>9}",
                "metric", "value", "95 % CI", "n"
            );
            let rates = [
                ("limit-hit rate", &v.limit_hit_rate),
                ("limit-hit → conversion", &v.hit_conversion_rate),
                ("limit-hit → churn", &v.hit_churn_rate),
                ("conversion, never hit a limit", &v.no_hit_conversion_rate),
            ];
            for (label, r) in rates {
                let (value, ci, n) = rate_cells(r);
                let _ = writeln!(out, "  {label:<32} {value:>9}  {ci:<18} {n:>9}");
            }
            let median = v
                .median_hours_to_limit
                .map_or_else(|| "-".into(), |h| format!("{h:.1} h"));
            let _ = writeln!(out, "  {:<32} {median:>9}", "median time-to-limit");
            let _ = writeln!(
                out,
                "  {:<32} {:>9}",
                "free-tier cost per account",
                format!("${:.4}", v.free_cost_usd_per_account)
            );
            if let Some(t) = &v.hit_conversion_vs_control {
                let _ = writeln!(
                    out,
                    "  hit → conversion vs control: {:+.1} points, z = {:.3}, p = {:.4} (two-proportion test){}",
                    t.difference * 100.0,
                    t.z,
                    t.p_value,
                    if t.p_value < 0.05 { ", significant at 5 %" } else { ", not significant at 5 %" }
                );
            } else if !v.control {
                let _ = writeln!(
                    out,
                    "  hit → conversion vs control: not testable yet (no hits, or no variance)"
                );
            }
        }
        out
    }

    /// One row per variant and metric.
    pub fn csv(&self) -> String {
        let mut out =
            String::from("variant,control,metric,value,ci95_low,ci95_high,successes,trials\n");
        let num = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x}"));
        for v in &self.variants {
            let mut row = |metric: &str, value: Option<f64>, r: Option<&Rate>| {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{}",
                    v.variant,
                    v.control,
                    metric,
                    num(value),
                    num(r.and_then(|r| r.ci95_low)),
                    num(r.and_then(|r| r.ci95_high)),
                    r.map_or_else(String::new, |r| r.successes.to_string()),
                    r.map_or_else(String::new, |r| r.trials.to_string()),
                );
            };
            row("accounts", Some(v.accounts as f64), None);
            row(
                "limit_hit_rate",
                v.limit_hit_rate.value,
                Some(&v.limit_hit_rate),
            );
            row(
                "hit_conversion_rate",
                v.hit_conversion_rate.value,
                Some(&v.hit_conversion_rate),
            );
            row(
                "hit_churn_rate",
                v.hit_churn_rate.value,
                Some(&v.hit_churn_rate),
            );
            row(
                "no_hit_conversion_rate",
                v.no_hit_conversion_rate.value,
                Some(&v.no_hit_conversion_rate),
            );
            row("median_hours_to_limit", v.median_hours_to_limit, None);
            row(
                "free_cost_usd_per_account",
                Some(v.free_cost_usd_per_account),
                None,
            );
            if let Some(t) = &v.hit_conversion_vs_control {
                row(
                    "hit_conversion_vs_control_difference",
                    Some(t.difference),
                    None,
                );
                row("hit_conversion_vs_control_z", Some(t.z), None);
                row("hit_conversion_vs_control_p_value", Some(t.p_value), None);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterline_aggregator::experiments::{ExperimentSpec, VariantSpec};

    fn experiment(starts_at: DateTime<Utc>) -> Experiment {
        Experiment {
            spec: ExperimentSpec {
                name: "q4".into(),
                description: String::new(),
                plan: "free".into(),
                starts_at,
                ends_at: None,
                variants: ["control", "generous", "empty"]
                    .iter()
                    .map(|n| VariantSpec {
                        name: (*n).into(),
                        weight: 1,
                        control: *n == "control",
                        limits: Default::default(),
                    })
                    .collect(),
            },
            stopped_at: None,
            created_at: starts_at,
            assigned: Default::default(),
        }
    }

    fn row(variant: &str, control: bool, accounts: u64, hit: u64, conv: u64) -> MetricsRow {
        MetricsRow {
            variant: variant.into(),
            is_control: u8::from(control),
            accounts,
            hit_accounts: hit,
            hit_converted: conv,
            hit_churned: 1,
            no_hit_converted: 2,
            median_hours_to_limit: if hit > 0 { 3.5 } else { f64::NAN },
            free_cost_usd_per_account: 0.25,
        }
    }

    #[test]
    fn variants_are_tested_against_the_control_and_short_reads_warn() {
        let start = Utc::now() - chrono::Duration::days(10);
        let rows = vec![
            row("generous", false, 100, 60, 9),
            row("control", true, 100, 40, 4),
        ];
        let days = vec![ConversionDaysRow {
            variant: "control".into(),
            accounts: 100,
            days: vec![0.5, 2.0, 2.0, 9.5],
        }];
        let r = assemble(&experiment(start), rows, days, Utc::now(), 10.0);
        assert_eq!(
            r.variants
                .iter()
                .map(|v| v.variant.as_str())
                .collect::<Vec<_>>(),
            ["control", "empty", "generous"]
        );
        let generous = &r.variants[2];
        assert_eq!(generous.no_hit_conversion_rate.trials, 40);
        let t = generous.hit_conversion_vs_control.unwrap();
        assert!((t.difference - 0.05).abs() < 1e-12);
        assert!(r.variants[0].hit_conversion_vs_control.is_none());
        assert_eq!(r.variants[1].median_hours_to_limit, None);
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("10.0 days"));
        assert!(r.warnings[1].contains("`empty` has 0 accounts"));
        let curve = &r.conversion_curves[0];
        assert_eq!(curve.by_day.len(), 11);
        assert_eq!(curve.by_day[0], 0.0);
        assert_eq!(curve.by_day[1], 0.01);
        assert_eq!(curve.by_day[2], 0.03);
        assert_eq!(curve.by_day[10], 0.04);
        assert_eq!(r.curve_extent(), (10, 0.04));
        let no_curves = Report {
            conversion_curves: Vec::new(),
            ..r.clone()
        };
        assert_eq!(no_curves.curve_extent(), (1, 0.0));
        let csv = r.csv();
        assert!(csv.contains("generous,false,limit_hit_rate,0.6,"), "{csv}");
        assert!(
            csv.contains("generous,false,hit_conversion_vs_control_z,"),
            "{csv}"
        );
        let text = r.text();
        assert!(
            text.contains("variant control (control): 100 accounts"),
            "{text}"
        );
        assert!(text.contains("60/100"), "{text}");
    }
}
