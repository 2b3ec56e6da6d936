//! The growth report as text (a table per section, for people) and as CSV (one figure a line:
//! `section,key,metric,value,successes,trials`, for spreadsheets). Rates show their counts, so
//! each can be checked and recomputed; a rate with nothing to divide by is `-` (empty in CSV).

use std::fmt::Write as _;

use meterline_schemas::SignalKind;

use super::GrowthReport;
use crate::stats::Rate;

fn pct(r: &Rate) -> String {
    r.value
        .map_or_else(|| "-".into(), |v| format!("{:.1} %", v * 100.0))
}

fn counts(r: &Rate) -> String {
    format!("{}/{}", r.successes, r.trials)
}

fn days(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |d| format!("{d:.1} d"))
}

fn usd(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |d| format!("${d:.4}"))
}

/// Writes a table: a header line and rows, each column as wide as its widest cell; the first
/// column left-aligned, the others right-aligned.
fn table(out: &mut String, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title}");
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                let _ = write!(s, " {c}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{c}", " ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    );
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for r in rows {
        let _ = writeln!(out, "{}", line(r.clone()));
    }
}

impl GrowthReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "growth report: {}", self.period);
        let mut rows: Vec<Vec<String>> = self
            .waterfall
            .iter()
            .map(|p| {
                vec![
                    format!("{} → {}", p.from_plan, p.to_plan),
                    p.conversions.to_string(),
                    counts(&p.rate),
                    pct(&p.rate),
                ]
            })
            .collect();
        if let Some(r) = &self.free_to_paid {
            rows.push(vec!["free → paid".into(), "-".into(), counts(r), pct(r)]);
        }
        table(
            &mut out,
            "tier waterfall (accounts that took the path / accounts on its starting plan)",
            &["path", "conversions", "accounts", "rate"],
            &rows,
        );
        let rows: Vec<Vec<String>> = self
            .notice_funnel
            .iter()
            .map(|k| {
                vec![
                    k.kind.clone(),
                    k.shown.to_string(),
                    format!("{} ({})", counts(&k.clicked), pct(&k.clicked)),
                    format!(
                        "{} ({})",
                        counts(&k.clicked_upgraded),
                        pct(&k.clicked_upgraded)
                    ),
                    format!("{} ({})", counts(&k.upgraded), pct(&k.upgraded)),
                ]
            })
            .collect();
        table(
            &mut out,
            "notice funnel per kind (upgraded: within 14 days of the first showing)",
            &[
                "kind",
                "shown",
                "clicked",
                "clicked → upgraded",
                "upgraded, clicked or not",
            ],
            &rows,
        );
        let l = &self.lead_time;
        table(
            &mut out,
            "deal score lead time (accounts that moved to Enterprise)",
            &[
                "moved",
                "deal_ready before",
                "caught ≥ 30 days early",
                "mean lead",
                "median lead",
            ],
            &[vec![
                l.moved.to_string(),
                format!("{} ({})", counts(&l.deal_ready), pct(&l.deal_ready)),
                format!("{} ({})", counts(&l.caught_30d), pct(&l.caught_30d)),
                days(l.mean_days),
                days(l.median_days),
            ]],
        );
        if let Some(c) = &self.time_to_close {
            table(
                &mut out,
                "time from first request to close (first move from free to a paid plan)",
                &["closes", "with usage", "mean", "median"],
                &[vec![
                    c.closes.to_string(),
                    c.with_usage.to_string(),
                    days(c.mean_days),
                    days(c.median_days),
                ]],
            );
        }
        let rows: Vec<Vec<String>> = self
            .cost_to_serve
            .iter()
            .map(|c| {
                vec![
                    c.plan.clone(),
                    c.account_months.to_string(),
                    format!("${:.4}", c.cost_usd),
                    usd(c.per_account_month_usd),
                ]
            })
            .collect();
        table(
            &mut out,
            "cost to serve per active account per month",
            &[
                "plan",
                "active account-months",
                "cost",
                "per active account-month",
            ],
            &rows,
        );
        let rows: Vec<Vec<String>> = self
            .limit_hit_conversion
            .iter()
            .map(|h| vec![h.plan.clone(), counts(&h.converted), pct(&h.converted)])
            .collect();
        table(
            &mut out,
            "limit hit → conversion (converted after the first hit / accounts that hit)",
            &["plan", "converted/hit", "rate"],
            &rows,
        );
        let rows: Vec<Vec<String>> = self
            .grace
            .iter()
            .map(|g| {
                vec![
                    g.plan.clone(),
                    g.limit_name.clone(),
                    g.episodes.to_string(),
                    g.converted.trials.to_string(),
                    format!("{} ({})", g.converted.successes, pct(&g.converted)),
                ]
            })
            .collect();
        table(
            &mut out,
            "grace use (past 100 % of a limit, inside the hidden buffer)",
            &["plan", "limit", "episodes", "accounts", "converted after"],
            &rows,
        );
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("section,key,metric,value,successes,trials\n");
        let num = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x}"));
        let mut rate = |section: &str, key: &str, metric: &str, r: &Rate| {
            let _ = writeln!(
                out,
                "{section},{key},{metric},{},{},{}",
                num(r.value),
                r.successes,
                r.trials
            );
        };
        for p in &self.waterfall {
            rate(
                "waterfall",
                &format!("{}->{}", p.from_plan, p.to_plan),
                "rate",
                &p.rate,
            );
        }
        if let Some(r) = &self.free_to_paid {
            rate("waterfall", "free->paid", "rate", r);
        }
        for k in &self.notice_funnel {
            rate("notice_funnel", &k.kind, "clicked", &k.clicked);
            rate(
                "notice_funnel",
                &k.kind,
                "clicked_upgraded_14d",
                &k.clicked_upgraded,
            );
            rate("notice_funnel", &k.kind, "upgraded_14d", &k.upgraded);
        }
        rate(
            "lead_time",
            "enterprise",
            SignalKind::DealReady.as_str(),
            &self.lead_time.deal_ready,
        );
        rate(
            "lead_time",
            "enterprise",
            "caught_30d",
            &self.lead_time.caught_30d,
        );
        for h in &self.limit_hit_conversion {
            rate("limit_hit_conversion", &h.plan, "converted", &h.converted);
        }
        for g in &self.grace {
            rate(
                "grace",
                &format!("{}/{}", g.plan, g.limit_name),
                "converted",
                &g.converted,
            );
        }
        let mut value = |section: &str, key: &str, metric: &str, v: Option<f64>| {
            let _ = writeln!(out, "{section},{key},{metric},{},,", num(v));
        };
        for p in &self.waterfall {
            value(
                "waterfall",
                &format!("{}->{}", p.from_plan, p.to_plan),
                "conversions",
                Some(p.conversions as f64),
            );
        }
        for k in &self.notice_funnel {
            value("notice_funnel", &k.kind, "shown", Some(k.shown as f64));
        }
        let l = &self.lead_time;
        value("lead_time", "enterprise", "moved", Some(l.moved as f64));
        value("lead_time", "enterprise", "mean_days", l.mean_days);
        value("lead_time", "enterprise", "median_days", l.median_days);
        if let Some(c) = &self.time_to_close {
            value(
                "time_to_close",
                "free->paid",
                "closes",
                Some(c.closes as f64),
            );
            value(
                "time_to_close",
                "free->paid",
                "with_usage",
                Some(c.with_usage as f64),
            );
            value("time_to_close", "free->paid", "mean_days", c.mean_days);
            value("time_to_close", "free->paid", "median_days", c.median_days);
        }
        for c in &self.cost_to_serve {
            value(
                "cost_to_serve",
                &c.plan,
                "account_months",
                Some(c.account_months as f64),
            );
            value("cost_to_serve", &c.plan, "cost_usd", Some(c.cost_usd));
            value(
                "cost_to_serve",
                &c.plan,
                "per_active_account_month_usd",
                c.per_account_month_usd,
            );
            for m in &c.months {
                let key = format!("{}/{}", c.plan, m.month);
                value(
                    "cost_to_serve",
                    &key,
                    "active_accounts",
                    Some(m.active_accounts as f64),
                );
                value("cost_to_serve", &key, "cost_usd", Some(m.cost_usd));
            }
        }
        for g in &self.grace {
            value(
                "grace",
                &format!("{}/{}", g.plan, g.limit_name),
                "episodes",
                Some(g.episodes as f64),
            );
        }
        for p in &self.monthly {
            for (m, v) in self.months.iter().zip(&p.cumulative) {
                value(
                    "conversions_by_month",
                    &format!("{}->{}/{m}", p.from_plan, p.to_plan),
                    "cumulative",
                    Some(*v as f64),
                );
            }
        }
        out
    }
}
