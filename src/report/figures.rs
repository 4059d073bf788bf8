//! The evaluation's figures as PNG bytes, drawn with plotters into memory. Text uses the
//! DejaVu Sans font compiled into mvc (no system fonts are needed).

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known good; a failure would show as missing text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// The jet colour map (blue, cyan, yellow, red) at `v` in [0, 1] (clamped).
pub fn jet(v: f64) -> RGBColor {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let channel = |centre: f64| ((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    RGBColor(channel(3.0), channel(2.0), channel(1.0))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

/// Draws into an RGB buffer of `w` x `h` and encodes it as PNG.
fn png(
    w: u32,
    h: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    register_font();
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(root.clone())?;
        root.present().map_err(err)?;
    }
    let img =
        image::RgbImage::from_raw(w, h, buffer).ok_or_else(|| anyhow!("internal: image size"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// A square matrix (`side` x `side`, row-major) as a jet heatmap over [0, 1] with a colour
/// bar; row 0 at the top, as the study's figures.
pub fn heatmap(values: &[f64], side: usize, title: &str, axis: &str) -> Result<Vec<u8>> {
    png(720, 640, |root| {
        let (main, bar) = root.split_horizontally(620);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..side as f64, side as f64..0f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(axis)
            .y_desc(axis)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        // Paint every pixel of the plotting area from its cell: exact for any matrix size.
        let area = chart.plotting_area().strip_coord_spec();
        let (w, h) = area.dim_in_pixel();
        for py in 0..h {
            let i = (py as usize * side / h as usize).min(side - 1);
            for px in 0..w {
                let j = (px as usize * side / w as usize).min(side - 1);
                area.draw_pixel((px as i32, py as i32), &jet(values[i * side + j]))
                    .map_err(err)?;
            }
        }
        colour_bar(&bar)
    })
}

fn colour_bar(area: &DrawingArea<BitMapBackend, Shift>) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(50)
        .margin_right(40)
        .y_label_area_size(0)
        .right_y_label_area_size(40)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let steps = 200;
    chart
        .draw_series((0..steps).map(|k| {
            let lo = k as f64 / steps as f64;
            let hi = (k + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, lo), (1.0, hi)], jet(lo).filled())
        }))
        .map_err(err)?;
    Ok(())
}

/// Mean similarity (with ± std band) against an angle difference.
pub fn line_plot(points: &[(f64, f64, f64)], title: &str, x_desc: &str) -> Result<Vec<u8>> {
    png(720, 480, |root| {
        let x_max = points.iter().map(|p| p.0).fold(0f64, f64::max).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("same-object cosine")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let band: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.0, (p.1 + p.2).min(1.0)))
            .chain(points.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0))))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.15))))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                BLUE.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())),
            )
            .map_err(err)?;
        Ok(())
    })
}

/// One named line of a [`lines`] figure.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Several named lines on one chart, with a legend; `y_range` fixes the vertical axis (else
/// it spans the data).
pub fn lines(
    series: &[Series],
    title: &str,
    x_desc: &str,
    y_desc: &str,
    y_range: Option<(f64, f64)>,
) -> Result<Vec<u8>> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let finite = |v: &f64| v.is_finite();
    let x_max = all()
        .map(|p| p.0)
        .filter(finite)
        .fold(0f64, f64::max)
        .max(1.0);
    let x_min = all()
        .map(|p| p.0)
        .filter(finite)
        .fold(x_max, f64::min)
        .min(0.0);
    let (y_min, y_max) = y_range.unwrap_or_else(|| {
        let lo = all()
            .map(|p| p.1)
            .filter(finite)
            .fold(f64::INFINITY, f64::min);
        let hi = all()
            .map(|p| p.1)
            .filter(finite)
            .fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi > lo {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    });
    png(720, 480, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (k, s) in series.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

/// A line of a [`sweep_panels`] figure: a point per value of the swept parameter (its index
/// on the axis), with the std over seeds as an error bar (0: none drawn).
pub struct ErrorSeries {
    pub name: String,
    pub points: Vec<(usize, f64, f64)>,
}

/// A panel of a [`sweep_panels`] figure: one metric.
pub struct Panel {
    pub title: String,
    pub series: Vec<ErrorSeries>,
}

/// Each metric against the values of a swept parameter, a panel per metric (two columns),
/// the values evenly spaced in the order swept, error bars where seeds were swept.
pub fn sweep_panels(
    title: &str,
    param: &str,
    values: &[String],
    panels: &[Panel],
) -> Result<Vec<u8>> {
    let rows = panels.len().div_ceil(2).max(1);
    png(960, 40 + 300 * rows as u32, |root| {
        let (top, body) = root.split_vertically(40);
        top.titled(title, (FONT, 20)).map_err(err)?;
        let cells = body.split_evenly((rows, 2));
        for (panel, area) in panels.iter().zip(cells.iter()) {
            let all = || panel.series.iter().flat_map(|s| s.points.iter());
            let lo = all()
                .map(|p| p.1 - p.2)
                .filter(|v| v.is_finite())
                .fold(f64::INFINITY, f64::min);
            let hi = all()
                .map(|p| p.1 + p.2)
                .filter(|v| v.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.1;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.05, lo + 0.05)
            } else {
                (0.0, 1.0)
            };
            let n = values.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(-0.5f64..n - 0.5, lo..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(param)
                .x_labels(values.len().max(1))
                .x_label_formatter(&|v| {
                    let i = v.round();
                    if (v - i).abs() < 1e-6 && i >= 0.0 {
                        values.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .label_style((FONT, 12))
                .draw()
                .map_err(err)?;
            for (k, s) in panel.series.iter().enumerate() {
                let colour = Palette99::pick(k).to_rgba();
                let points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter(|p| p.1.is_finite())
                    .map(|p| (p.0 as f64, p.1))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(err)?;
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .filter(|p| p.2 > 0.0 && p.1.is_finite())
                            .map(|p| {
                                ErrorBar::new_vertical(
                                    p.0 as f64,
                                    p.1 - p.2,
                                    p.1,
                                    p.1 + p.2,
                                    colour.stroke_width(1),
                                    8,
                                )
                            }),
                    )
                    .map_err(err)?;
            }
            if panel.series.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font((FONT, 11))
                    .draw()
                    .map_err(err)?;
            }
        }
        Ok(())
    })
}
