//! The flags of `meterline report growth` and what they mean: a period and a starting plan.
//!
//! Bad values are refused while the command line is parsed, with an error that names the flag
//! and the reason (`--since: "2026-13-01" is not a date: …`), before anything is read.

use std::path::PathBuf;

use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use meterline_schemas::domain::Plan;

/// `meterline report …`: the reports over the pipeline's history.
#[derive(Debug, Subcommand)]
pub enum ReportAction {
    /// Seed 000's results: the tier waterfall, free → paid conversion, the notice funnel, the
    /// deal score's lead time, time to close, cost to serve, limit hit → conversion and grace
    /// use, read from ClickHouse's growth views (docs/analytics.md).
    Growth(GrowthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GrowthArgs {
    /// Count only what happened at or after this time: YYYY-MM-DD (midnight UTC) or RFC 3339.
    #[arg(long, value_name = "DATE", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Count only what happened before this time (exclusive): YYYY-MM-DD (midnight UTC) or
    /// RFC 3339.
    #[arg(long, value_name = "DATE", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only figures whose starting plan is this one (free, pro or enterprise): the plan
    /// converted from, the plan a notice was shown on, the plan that hit a limit.
    #[arg(long, value_name = "PLAN", value_parser = parse_plan)]
    pub plan: Option<Plan>,
    /// Also draw cumulative conversions by month, one line per plan path, to this PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub chart: Option<PathBuf>,
    /// Also write every figure to this CSV file (section, key, metric, value, successes, trials).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// What the report counts: events in `[since, until)` whose starting plan is `plan` (any when
/// `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filters {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub plan: Option<Plan>,
}

/// The earliest and latest times ClickHouse's `DateTime` holds on every supported version; an
/// open end of the period is one of these.
pub const OPEN_SINCE: i64 = 0;
pub const OPEN_UNTIL: i64 = 4_102_444_800; // 2100-01-01T00:00:00Z

impl Filters {
    /// Checks the period: both ends inside what ClickHouse stores, `--since` before `--until`.
    pub fn new(
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        plan: Option<Plan>,
    ) -> Result<Self> {
        for (flag, t) in [("--since", since), ("--until", until)] {
            if let Some(t) = t {
                if !(OPEN_SINCE..=OPEN_UNTIL).contains(&t.timestamp()) {
                    bail!("{flag}: {t} is outside 1970-01-01 … 2100-01-01, the range ClickHouse stores");
                }
            }
        }
        if let (Some(s), Some(u)) = (since, until) {
            if u <= s {
                bail!("--until: {u} is not after --since ({s}); the period would be empty");
            }
        }
        Ok(Self { since, until, plan })
    }

    pub fn from_args(args: &GrowthArgs) -> Result<Self> {
        Self::new(args.since, args.until, args.plan)
    }

    /// The period's ends as Unix seconds, for the queries.
    pub fn bounds(&self) -> (u32, u32) {
        let since = self.since.map_or(OPEN_SINCE, |t| t.timestamp());
        let until = self.until.map_or(OPEN_UNTIL, |t| t.timestamp());
        (since as u32, until as u32)
    }

    /// The plan filter for the queries: `""` for any.
    pub fn plan_str(&self) -> &'static str {
        self.plan.map_or("", Plan::as_str)
    }

    /// Whether figures starting on `plan` are in the report.
    pub fn includes(&self, plan: &str) -> bool {
        self.plan.is_none_or(|p| p.as_str() == plan)
    }

    /// The period in words, for the report's heading.
    pub fn describe(&self) -> String {
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        let period = match (self.since, self.until) {
            (None, None) => "all time".to_owned(),
            (Some(s), None) => format!("from {}", fmt(s)),
            (None, Some(u)) => format!("before {}", fmt(u)),
            (Some(s), Some(u)) => format!("from {} to {} (exclusive)", fmt(s), fmt(u)),
        };
        match self.plan {
            Some(p) => format!("{period}, starting plan {p}"),
            None => format!("{period}, every starting plan"),
        }
    }
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "{s:?} is not a date: expected YYYY-MM-DD or RFC 3339 (2026-11-01T00:00:00Z): {e}"
            )
        })
}

/// `free`, `pro` or `enterprise`.
pub fn parse_plan(s: &str) -> Result<Plan, String> {
    Plan::parse("--plan", s).map_err(|e| e.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        action: ReportAction,
    }

    fn parse(args: &[&str]) -> Result<GrowthArgs, String> {
        let mut argv = vec!["report", "growth"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                action: ReportAction::Growth(a),
            }) => Ok(a),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_reason() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--since", "2026-13-01"], "--since", "is not a date"),
            (&["--until", "yesterday"], "--until", "is not a date"),
            (
                &["--plan", "gold"],
                "--plan",
                "not one of free, pro, enterprise",
            ),
            (&["--since", "2026-02-30"], "--since", "is not a date"),
        ];
        for (args, flag, reason) in cases {
            let e = parse(args).expect_err("refused");
            assert!(e.contains(flag) && e.contains(reason), "{args:?}: {e}");
        }
        let a = parse(&["--since", "2026-11-01", "--until", "2026-11-01"]).unwrap();
        let e = Filters::from_args(&a).unwrap_err().to_string();
        assert!(
            e.starts_with("--until:") && e.contains("not after --since"),
            "{e}"
        );
        let a = parse(&["--until", "2101-01-01"]).unwrap();
        let e = Filters::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("--until:") && e.contains("outside"), "{e}");
    }

    #[test]
    fn dates_are_midnight_utc_and_rfc3339_keeps_its_offset() {
        let a = parse(&[
            "--since",
            "2026-11-01",
            "--until",
            "2026-12-01T01:00:00+01:00",
            "--plan",
            "pro",
        ])
        .unwrap();
        let f = Filters::from_args(&a).unwrap();
        assert_eq!(f.bounds(), (1_793_491_200, 1_796_083_200));
        assert_eq!(f.plan_str(), "pro");
        assert!(f.includes("pro") && !f.includes("free"));
        let open = Filters::new(None, None, None).unwrap();
        assert_eq!(open.bounds(), (0, OPEN_UNTIL as u32));
        assert!(open.includes("free"));
    }
}
