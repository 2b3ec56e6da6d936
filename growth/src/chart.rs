//! `--chart FILE.png`: cumulative conversion over days since signup, one line per variant.
//!
//! Drawn with plotters into a bitmap, with the font compiled in (DejaVu Sans Mono, under
//! `assets/fonts/` with its licence), so the chart renders the same on a server with no fonts
//! installed. Every variant has its own colour from [`PALETTE`], named in the legend with its
//! account count, so the picture reads without the table.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::cohort_report::Report;

/// Line colours, in variant order (the control first).
pub const PALETTE: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
];

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 560;

static FONT: Once = Once::new();

pub(crate) fn register_font() {
    FONT.call_once(|| {
        // The bytes are a valid TrueType font; a failure here would be a build defect.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/fonts/DejaVuSansMono.ttf"),
        );
    });
}

pub(crate) fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Draws the report's conversion curves to `path` (PNG).
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    register_font();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (days, highest) = report.curve_extent();
    let top = highest * 100.0;
    let y_max = (top * 1.15).max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: cumulative conversion by days since signup",
                report.experiment
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..days as f64, 0f64..y_max)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("days since signup")
        .y_desc("accounts converted (%)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, curve) in report.conversion_curves.iter().enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = curve
            .by_day
            .iter()
            .enumerate()
            .map(|(d, v)| (d as f64, v * 100.0))
            .collect();
        let control = report
            .variants
            .iter()
            .any(|v| v.variant == curve.variant && v.control);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(3)))
            .map_err(|e| fail(&e))?
            .label(format!(
                "{}{} (n = {})",
                curve.variant,
                if control && curve.variant != "control" {
                    ", the control"
                } else {
                    ""
                },
                curve.accounts
            ))
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
