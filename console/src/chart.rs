//! The account page's 30-day usage chart: stacked bars by model, one panel for requests and
//! one for tokens, laid out here as numbers and drawn by the template as inline SVG (so every
//! label is escaped like any other value, and the page needs no script or image request).
//!
//! The rows come from ClickHouse `usage_day` (the daily rollup the notifier's usage summary
//! reads), one per day and model.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// Bar colours, in model order (most used first); the rest share the last.
pub const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#5f6b73",
];

pub const DAYS: i64 = 30;

/// One day and model of the account's usage.
#[derive(Debug, Clone, PartialEq, Row, Deserialize, Serialize)]
pub struct DayModel {
    /// Days since 1970-01-01 (ClickHouse `Date`).
    pub day: u16,
    pub model: String,
    pub requests: u64,
    pub tokens: u64,
}

/// The last 30 days (today and the 29 before) of `account`, by day and model.
pub async fn usage(
    ch: &clickhouse::Client,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Vec<DayModel>, clickhouse::error::Error> {
    let from = (now.date_naive() - Duration::days(DAYS - 1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp();
    ch.query(
        "SELECT toDate(window_start) AS day, model, sum(requests) AS requests, \
                sum(input_tokens + output_tokens) AS tokens \
         FROM usage_day WHERE account_id = ? AND window_start >= toDateTime(?) \
         GROUP BY day, model ORDER BY day, model",
    )
    .bind(account)
    .bind(from)
    .fetch_all()
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub fill: &'static str,
    /// The tooltip: day, model, value.
    pub title: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    pub title: &'static str,
    /// The top of the scale, as a label.
    pub max_label: String,
    pub y: f64,
    pub bars: Vec<Bar>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Legend {
    pub model: String,
    pub fill: &'static str,
    pub requests: u64,
    pub tokens: u64,
}

/// What the template draws.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub panels: Vec<Panel>,
    pub legend: Vec<Legend>,
    /// The first and last day, under the bars.
    pub first_day: String,
    pub last_day: String,
    pub label_y: f64,
    pub empty: bool,
    /// One line for screen readers.
    pub summary: String,
}

pub const WIDTH: f64 = 720.0;
const LEFT: f64 = 70.0;
const PANEL_HEIGHT: f64 = 120.0;
const GAP: f64 = 30.0;

fn date(day: u16) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + Duration::days(i64::from(day))
}

/// 1234567 → "1.2M".
pub fn short(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}B", n as f64 / 1e9),
    }
}

/// Lays out `rows` over the 30 days ending on `today`.
pub fn layout(rows: &[DayModel], today: NaiveDate) -> Chart {
    let first = today - Duration::days(DAYS - 1);
    // Models by total tokens, most first, so colours are stable for a given mix.
    let mut models: Vec<Legend> = Vec::new();
    for r in rows {
        match models.iter_mut().find(|m| m.model == r.model) {
            Some(m) => {
                m.requests += r.requests;
                m.tokens += r.tokens;
            }
            None => models.push(Legend {
                model: r.model.clone(),
                fill: PALETTE[0],
                requests: r.requests,
                tokens: r.tokens,
            }),
        }
    }
    models.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(a.model.cmp(&b.model)));
    for (i, m) in models.iter_mut().enumerate() {
        m.fill = PALETTE[i.min(PALETTE.len() - 1)];
    }
    let slot = (WIDTH - LEFT - 10.0) / DAYS as f64;
    let mut panels = Vec::new();
    for (p, title) in ["Requests", "Tokens"].into_iter().enumerate() {
        let value = |r: &DayModel| if p == 0 { r.requests } else { r.tokens };
        let mut per_day = vec![0u64; DAYS as usize];
        for r in rows {
            let d = (date(r.day) - first).num_days();
            if (0..DAYS).contains(&d) {
                per_day[d as usize] += value(r);
            }
        }
        let max = per_day.iter().copied().max().unwrap_or(0).max(1);
        let top = p as f64 * (PANEL_HEIGHT + GAP) + 20.0;
        let mut bars = Vec::new();
        let mut stacked = vec![0u64; DAYS as usize];
        for m in &models {
            for r in rows.iter().filter(|r| r.model == m.model) {
                let d = (date(r.day) - first).num_days();
                if !(0..DAYS).contains(&d) || value(r) == 0 {
                    continue;
                }
                let d = d as usize;
                let below = stacked[d];
                stacked[d] += value(r);
                let h = value(r) as f64 / max as f64 * PANEL_HEIGHT;
                let y = top + PANEL_HEIGHT - (below as f64 / max as f64 * PANEL_HEIGHT) - h;
                bars.push(Bar {
                    x: LEFT + d as f64 * slot + 1.0,
                    y,
                    w: (slot - 2.0).max(1.0),
                    h: h.max(0.5),
                    fill: m.fill,
                    title: format!(
                        "{}: {} {} {}",
                        date(r.day),
                        m.model,
                        value(r),
                        title.to_lowercase()
                    ),
                });
            }
        }
        panels.push(Panel {
            title,
            max_label: short(max),
            y: top,
            bars,
            total: per_day.iter().sum(),
        });
    }
    let total_requests = panels[0].total;
    let total_tokens = panels[1].total;
    Chart {
        width: WIDTH,
        height: 2.0 * (PANEL_HEIGHT + GAP) + 20.0,
        label_y: 2.0 * (PANEL_HEIGHT + GAP) + 5.0,
        first_day: first.to_string(),
        last_day: today.to_string(),
        empty: rows.is_empty(),
        summary: format!(
            "Last {DAYS} days: {total_requests} requests and {total_tokens} tokens over {} models",
            models.len()
        ),
        panels,
        legend: models,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: NaiveDate) -> u16 {
        (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as u16
    }

    #[test]
    fn bars_stack_by_model_and_scale_to_the_busiest_day() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 31).unwrap();
        let rows = vec![
            DayModel {
                day: day(today),
                model: "a".into(),
                requests: 30,
                tokens: 300,
            },
            DayModel {
                day: day(today),
                model: "b".into(),
                requests: 10,
                tokens: 100,
            },
            DayModel {
                day: day(today - Duration::days(29)),
                model: "a".into(),
                requests: 20,
                tokens: 200,
            },
            // Outside the window: not drawn, not counted.
            DayModel {
                day: day(today - Duration::days(30)),
                model: "a".into(),
                requests: 99,
                tokens: 999,
            },
        ];
        let c = layout(&rows, today);
        let requests = &c.panels[0];
        assert_eq!(requests.total, 60);
        assert_eq!(requests.max_label, "40");
        assert_eq!(requests.bars.len(), 3);
        // The busiest day's two bars fill the panel exactly.
        let full: f64 = requests
            .bars
            .iter()
            .filter(|b| b.x > 600.0)
            .map(|b| b.h)
            .sum();
        assert!((full - PANEL_HEIGHT).abs() < 1e-9, "{full}");
        assert_eq!(c.legend[0].model, "a");
        assert_eq!(c.legend[0].fill, PALETTE[0]);
        assert!(!c.empty);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(950), "950");
        assert_eq!(short(12_345), "12.3k");
        assert_eq!(short(4_500_000), "4.5M");
    }
}
