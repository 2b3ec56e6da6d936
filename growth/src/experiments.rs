//! `meterline experiments …`: define, inspect, edit, stop and report limit A/B experiments.
//! The rules live in `meterline_aggregator::experiments`; this is the command line on top.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use meterline_aggregator::experiments::store::{self, limits_text, Experiment};
use meterline_aggregator::experiments::{ExperimentSpec, VariantSpec};

use meterline_schemas::limits::TiersConfig;
use sqlx::PgPool;

use crate::cohort_report;

/// What the experiments commands need: the experiment store, the history and the tiers (a
/// variant's limits are checked against them).
pub struct ExperimentsContext {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub tiers: TiersConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentAction {
    /// Define an experiment, from a TOML file (--file) or from flags. Only accounts that sign
    /// up on its plan at or after --starts-at take part.
    Create {
        /// A TOML definition (see docs/analytics.md); the other flags are then not used.
        #[arg(long, conflicts_with_all = ["name", "starts_at", "variants"])]
        file: Option<PathBuf>,
        name: Option<String>,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z.
        #[arg(long)]
        starts_at: Option<DateTime<Utc>>,
        #[arg(long)]
        ends_at: Option<DateTime<Utc>>,
        #[arg(long, default_value = "free")]
        plan: String,
        #[arg(long, default_value = "")]
        description: String,
        /// NAME:WEIGHT[:LIMIT=VALUE,…], e.g. `generous:50:month_weighted_tokens=3000000`.
        /// Repeat for each variant.
        #[arg(long = "variant", value_name = "VARIANT")]
        variants: Vec<String>,
        /// Which variant is the control.
        #[arg(long, default_value = "control")]
        control: String,
    },
    /// List experiments with their state and assignments.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one experiment: its variants, their limits and how many accounts each has.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set limits in one variant, for future signups and the accounts already in it. Refused
    /// if any assigned account's limit would go down.
    Edit {
        name: String,
        #[arg(long)]
        variant: String,
        /// LIMIT=VALUE (repeatable); -1 is unlimited.
        #[arg(long = "set", value_name = "LIMIT=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Stop assigning new signups. Assigned accounts keep their limits; --revert-limits gives
    /// them the plan's defaults back, and is refused where a default is lower.
    Stop {
        name: String,
        #[arg(long)]
        revert_limits: bool,
    },
    /// Every metric per variant with 95 % intervals, and each variant against the control on
    /// limit-hit → conversion.
    Report {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also draw cumulative conversion by days since signup to this PNG file.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
}

/// Parses `NAME:WEIGHT[:LIMIT=VALUE,…]`.
pub fn parse_variant(text: &str, control: &str) -> Result<VariantSpec> {
    let mut parts = text.splitn(3, ':');
    let name = parts.next().unwrap_or_default().trim().to_owned();
    let weight: u32 = parts
        .next()
        .with_context(|| format!("--variant {text}: expected NAME:WEIGHT[:LIMIT=VALUE,…]"))?
        .trim()
        .parse()
        .with_context(|| format!("--variant {text}: the weight is not a whole number"))?;
    let limits = match parts.next() {
        Some(list) if !list.trim().is_empty() => {
            let pairs: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
            store::parse_settings(&pairs).with_context(|| format!("--variant {text}"))?
        }
        _ => BTreeMap::new(),
    };
    Ok(VariantSpec {
        control: name == control,
        name,
        weight,
        limits,
    })
}

fn summary_table(experiments: &[Experiment], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:<24} {:<6} {:<10} {:<20} {:<20} {:>8}  variants\n",
        "name", "plan", "state", "starts", "ends", "accounts"
    );
    for e in experiments {
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<10} {:<20} {:<20} {:>8}  {}",
            e.spec.name,
            e.spec.plan,
            e.state(now),
            e.spec.starts_at.format("%Y-%m-%d %H:%M"),
            e.spec
                .ends_at
                .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            e.assigned.values().sum::<i64>(),
            e.spec
                .variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

fn detail(e: &Experiment, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "experiment {} ({}), plan {}\nstarts {}, ends {}{}\n",
        e.spec.name,
        e.state(now),
        e.spec.plan,
        e.spec.starts_at.to_rfc3339(),
        e.spec
            .ends_at
            .map_or_else(|| "never".into(), |t| t.to_rfc3339()),
        e.stopped_at
            .map_or_else(String::new, |t| format!(", stopped {}", t.to_rfc3339()))
    );
    if !e.spec.description.is_empty() {
        let _ = writeln!(out, "{}", e.spec.description);
    }
    let total: u32 = e.spec.variants.iter().map(|v| v.weight).sum();
    let _ = writeln!(
        out,
        "\n{:<20} {:>7} {:>9}  limits",
        "variant", "share", "accounts"
    );
    for v in &e.spec.variants {
        let _ = writeln!(
            out,
            "{:<20} {:>6.1}% {:>9}  {}",
            format!("{}{}", v.name, if v.control { " (control)" } else { "" }),
            f64::from(v.weight) * 100.0 / f64::from(total.max(1)),
            e.assigned.get(&v.name).copied().unwrap_or(0),
            limits_text(&v.limits)
        );
    }
    out
}

pub async fn run(ctx: &ExperimentsContext, action: ExperimentAction) -> Result<()> {
    let pool = &ctx.pool;
    let now = Utc::now();
    match action {
        ExperimentAction::Create {
            file,
            name,
            starts_at,
            ends_at,
            plan,
            description,
            variants,
            control,
        } => {
            let spec = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    ExperimentSpec::from_toml(&text)
                        .with_context(|| format!("in {}", path.display()))?
                }
                None => {
                    let Some(name) = name else {
                        bail!("NAME: give the experiment a name, or use --file");
                    };
                    let Some(starts_at) = starts_at else {
                        bail!("--starts-at: required (RFC 3339, e.g. 2026-12-01T00:00:00Z)");
                    };
                    let variants = variants
                        .iter()
                        .map(|v| parse_variant(v, &control))
                        .collect::<Result<Vec<_>>>()?;
                    ExperimentSpec {
                        name,
                        description,
                        plan,
                        starts_at,
                        ends_at,
                        variants,
                    }
                }
            };
            store::create(pool, &spec).await?;
            if spec.starts_at < now {
                eprintln!(
                    "note: the start is in the past; accounts that already signed up are not assigned (new cohorts only)"
                );
            }
            let created = store::get(pool, &spec.name).await?;
            print!("{}", detail(&created, now));
        }
        ExperimentAction::List { json } => {
            let all = store::list(pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", summary_table(&all, now));
            }
        }
        ExperimentAction::Show { name, json } => {
            let e = store::get(pool, &name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", detail(&e, now));
            }
        }
        ExperimentAction::Edit { name, variant, set } => {
            let limits = store::parse_settings(&set)?;
            let updated = store::edit_variant(pool, &name, &variant, &limits, &ctx.tiers).await?;
            println!(
                "variant {variant} of {name} now sets {}; {updated} assigned account(s) updated",
                limits_text(&limits)
            );
        }
        ExperimentAction::Stop {
            name,
            revert_limits,
        } => {
            let stopped = store::stop(pool, &name, revert_limits, &ctx.tiers).await?;
            if revert_limits {
                println!(
                    "{name} stopped; {} limit override(s) of its {} account(s) removed, the plan's defaults apply again",
                    stopped.reverted, stopped.assigned
                );
            } else {
                println!(
                    "{name} stopped: no new assignments; its {} account(s) keep their limits",
                    stopped.assigned
                );
            }
        }
        ExperimentAction::Report {
            name,
            format,
            chart,
        } => {
            let e = store::get(pool, &name).await?;
            let report = cohort_report::build(&ctx.clickhouse, &e, now)
                .await
                .context("reading the experiment's metrics from ClickHouse")?;
            match format {
                Format::Text => print!("{}", report.text()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Csv => print!("{}", report.csv()),
            }
            for w in &report.warnings {
                if format != Format::Text {
                    eprintln!("warning: {w}");
                }
            }
            if let Some(path) = chart {
                crate::chart::draw(&report, &path)?;
                eprintln!("chart written to {}", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_from_flags() {
        let v = parse_variant("generous:30:month_requests=30, day_requests=-1", "control").unwrap();
        assert_eq!(v.name, "generous");
        assert_eq!(v.weight, 30);
        assert!(!v.control);
        assert_eq!(v.limits["month_requests"], 30.0);
        assert_eq!(v.limits["day_requests"], -1.0);
        let c = parse_variant("control:70", "control").unwrap();
        assert!(c.control && c.limits.is_empty());
        let err = parse_variant("x:lots", "control").unwrap_err().to_string();
        assert!(err.contains("weight"), "{err}");
        let err = format!(
            "{:#}",
            parse_variant("x:1:month_bananas=3", "control").unwrap_err()
        );
        assert!(err.contains("month_bananas"), "{err}");
    }
}
