//! `meterline report growth --chart FILE.png`: cumulative conversions by month, one line per plan
//! path (free → pro, free → enterprise, pro → enterprise).
//!
//! Drawn like the experiments chart ([`crate::chart`]: its font, compiled in, and its palette):
//! each path keeps its colour whatever `--plan` leaves out (`PALETTE[i]` for `PATHS[i]`), the
//! legend names the path with its total, and the title names the period, so the picture reads
//! without the table. The x axis marks month starts; a line's value at a month's start is the
//! number of conversions before it, so the last point is the period's total.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{GrowthReport, PATHS};
use crate::chart::{color, register_font, HEIGHT, WIDTH};

/// The palette index of a plan path: its place in [`PATHS`].
pub fn path_colour_index(from_plan: &str, to_plan: &str) -> Option<usize> {
    PATHS
        .iter()
        .position(|(f, t)| *f == from_plan && *t == to_plan)
}

/// `202611` → `2026-11`; `i` months after `first`.
fn month_label(first: u32, i: usize) -> String {
    let index = (first / 100) as usize * 12 + (first % 100) as usize - 1 + i;
    format!("{}-{:02}", index / 12, index % 12 + 1)
}

/// Draws the report's cumulative conversions to `path` (PNG).
pub fn draw(report: &GrowthReport, path: &Path) -> Result<()> {
    register_font();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let n = report.months.len();
    let first = report.months.first().copied().unwrap_or(197001);
    let top = report
        .monthly
        .iter()
        .filter_map(|p| p.cumulative.last().copied())
        .max()
        .unwrap_or(0) as f64;
    // Whole numbers on the y axis: conversions are counted.
    let y_max = (top * 1.15).ceil().max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Cumulative conversions by plan path ({})", report.period),
            ("sans-serif", 18),
        )
        .margin(20)
        .margin_right(45)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n.max(1) as f64, 0f64..y_max)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_labels(n.clamp(1, 12) + 1)
        .x_label_formatter(&|x| {
            if x.fract().abs() < 1e-9 && *x >= 0.0 {
                month_label(first, *x as usize)
            } else {
                String::new()
            }
        })
        .y_labels((y_max as usize).min(10) + 1)
        .y_label_formatter(&|y| {
            if y.fract().abs() < 1e-9 {
                format!("{y:.0}")
            } else {
                String::new()
            }
        })
        .x_desc("month (UTC); each point is the total at the month's start")
        .y_desc("conversions (cumulative count)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| fail(&e))?;
    for p in &report.monthly {
        let c = color(path_colour_index(&p.from_plan, &p.to_plan).unwrap_or(0));
        let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
            .chain(
                p.cumulative
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64, *v as f64)),
            )
            .collect();
        chart
            .draw_series(points.iter().map(|pt| Circle::new(*pt, 4, c.filled())))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(3)))
            .map_err(|e| fail(&e))?
            .label({
                let total = p.cumulative.last().copied().unwrap_or(0);
                format!(
                    "{} → {} ({total} conversion{})",
                    p.from_plan,
                    p.to_plan,
                    if total == 1 { "" } else { "s" }
                )
            })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_labels_cross_the_year_end() {
        assert_eq!(month_label(202611, 0), "2026-11");
        assert_eq!(month_label(202611, 2), "2027-01");
        assert_eq!(month_label(202612, 13), "2028-01");
        assert_eq!(path_colour_index("pro", "enterprise"), Some(2));
        assert_eq!(path_colour_index("pro", "free"), None);
    }
}
