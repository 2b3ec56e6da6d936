//! The growth report's figures, as [`super::build`] assembles them from ClickHouse: what the
//! table, the CSV and the chart show, and what the tests check. Every rate is a [`Rate`] with its
//! counts, so it can be recomputed.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::stats::Rate;

/// One plan path of the waterfall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathFigures {
    pub from_plan: String,
    pub to_plan: String,
    /// Upward steps on this path in the period.
    pub conversions: u64,
    /// Accounts that took it (of the accounts on `from_plan` in the period).
    pub rate: Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoticeKindFigures {
    /// The notice's kind (`plugin_gate`, `power_user`, …); `(unknown)` until the notifier has
    /// copied the notice to ClickHouse.
    pub kind: String,
    pub shown: u64,
    /// Clicked, of shown.
    pub clicked: Rate,
    /// Clicked and upgraded within 14 days, of clicked.
    pub clicked_upgraded: Rate,
    /// Upgraded within 14 days of the first showing, clicked or not, of shown.
    pub upgraded: Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadTimeFigures {
    /// Accounts whose first move to Enterprise is in the period.
    pub moved: u64,
    /// Of those, with a deal readiness score above 70 at or before the move.
    pub deal_ready: Rate,
    /// Of the movers, caught 30 or more days before the move.
    pub caught_30d: Rate,
    /// Days from the first deal_ready to the move, over the accounts with one.
    pub mean_days: Option<f64>,
    pub median_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloseFigures {
    /// Accounts whose first move from free to a paid plan is in the period.
    pub closes: u64,
    /// Of those, with usage before the move (the ones measured).
    pub with_usage: u64,
    pub mean_days: Option<f64>,
    pub median_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostMonth {
    /// `YYYYMM`.
    pub month: u32,
    pub active_accounts: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostFigures {
    pub plan: String,
    /// Active accounts summed over months (an account active in two months counts twice).
    pub account_months: u64,
    pub cost_usd: f64,
    /// `cost_usd / account_months`: the cost to serve per active account per month.
    pub per_account_month_usd: Option<f64>,
    pub months: Vec<CostMonth>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitHitFigures {
    pub plan: String,
    /// Accounts that converted after their first hit, of the accounts whose first hit is in the
    /// period.
    pub converted: Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraceFigures {
    pub plan: String,
    pub limit_name: String,
    pub episodes: u64,
    /// Accounts that converted after using grace, of the accounts that used it.
    pub converted: Rate,
}

/// Conversions per month and plan path, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyPath {
    pub from_plan: String,
    pub to_plan: String,
    /// Cumulative conversions at the end of each month of [`GrowthReport::months`].
    pub cumulative: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrowthReport {
    pub period: String,
    pub generated_at: DateTime<Utc>,
    pub waterfall: Vec<PathFigures>,
    /// `None` when `--plan` excludes free.
    pub free_to_paid: Option<Rate>,
    pub notice_funnel: Vec<NoticeKindFigures>,
    pub lead_time: LeadTimeFigures,
    /// `None` when `--plan` excludes free.
    pub time_to_close: Option<CloseFigures>,
    pub cost_to_serve: Vec<CostFigures>,
    pub limit_hit_conversion: Vec<LimitHitFigures>,
    pub grace: Vec<GraceFigures>,
    /// `YYYYMM`, every month from the first conversion in the period to the last.
    pub months: Vec<u32>,
    pub monthly: Vec<MonthlyPath>,
}
