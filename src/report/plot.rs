//! PNG rendering of the original trainer's experiment guide's comparison figure with plotters' bitmap backend.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

// DejaVu Sans 2.37 from Debian's fonts-dejavu-core, under the Bitstream Vera license (free redistribution provided
// the notice travels with it: assets/DejaVuSans.LICENSE). Embedded so that rendering needs no system font libraries.
static FONT_TTF: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
// plotters' axis labels ask for "sans-serif" by default, so registering under that name covers every text.
const FONT: &str = "sans-serif";

pub(super) const COMPARISON_SIZE: (u32, u32) = (1800, 500);
pub(super) const FEWSHOT_SIZE: (u32, u32) = (800, 500);

// matplotlib's tab10, so the figure reads like the seed's.
const PALETTE: [u32; 10] =
    [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf];

/// Accuracy (percent) against shots for one method; `color` is the method's index so colours match across panels.
pub(super) struct Curve {
    pub label: String,
    pub color: usize,
    /// (shots, accuracy %, error-bar half-height in percentage points)
    pub points: Vec<(f64, f64, f64)>,
}

/// One method that has a training log.
pub(super) struct Cost {
    pub label: String,
    pub color: usize,
    /// Already converted to the figure's time unit.
    pub time: f64,
    pub mem_gib: Option<f64>,
    pub mem_src: &'static str,
    /// Accuracy % at the summary shots; None keeps the method off the scatter.
    pub acc: Option<f64>,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn color(i: usize) -> RGBColor {
    let [_, r, g, b] = PALETTE[i % PALETTE.len()].to_be_bytes();
    RGBColor(r, g, b)
}

fn register_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    if *OK.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_TTF).is_ok()) {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVuSans.ttf could not be parsed"))
    }
}

pub(super) fn fewshot_png(path: &Path, task: &str, curves: &[Curve]) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, FEWSHOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    draw_curves(&root, &format!("Few-Shot Learning Curve: {task}"), "Accuracy (%)", curves)?;
    root.present()?;
    Ok(())
}

pub(super) fn comparison_png(
    path: &Path,
    curves: &[Curve],
    costs: &[Cost],
    time_unit: &str,
    summary_shots: usize,
) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, COMPARISON_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    draw_curves(&panels[0], "Few-Shot Learning Curve (mean over tasks)", "Mean accuracy (%)", curves)?;
    draw_costs(&panels[1], costs, time_unit)?;
    draw_tradeoff(&panels[2], costs, time_unit, summary_shots)?;
    root.present()?;
    Ok(())
}

type NumericChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The grid, tick labels and axis titles both numeric panels share.
fn numeric_mesh(chart: &mut NumericChart, x_desc: &str, y_desc: &str) -> Result<()> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.04))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;
    Ok(())
}

// plotters prints every f64 tick with a decimal ("5.0 shots"); keep the decimals a tick needs (up to
// three, so small ranges such as 0.15 min do not print as repeated 0.1 / 0.2).
fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Data range with 10% headroom, never degenerate, so flat curves still get a readable axis.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 100.0);
    }
    // At least 5 units tall: a lone scatter point would otherwise get ticks finer than their one-decimal labels.
    let span = (hi - lo).max(5.0);
    let pad = span * 0.1 + (span - (hi - lo)) / 2.0;
    (lo - pad, hi + pad)
}

fn draw_curves(area: &Area, title: &str, y_desc: &str, curves: &[Curve]) -> Result<()> {
    let points = || curves.iter().flat_map(|c| c.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) =
        points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y, e)| (lo.min(y - e), hi.max(y + e)));
    let (y_lo, y_hi) = padded(lo, hi);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.04 * x_max..1.04 * x_max, y_lo..y_hi)?;
    numeric_mesh(&mut chart, "Number of Shots", y_desc)?;
    for c in curves.iter().filter(|c| !c.points.is_empty()) {
        let col = color(c.color);
        let xy: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.1)).collect();
        chart.draw_series(
            c.points
                .iter()
                .filter(|p| p.2 > 0.0)
                .map(|&(x, y, e)| ErrorBar::new_vertical(x, y - e, y, y + e, col.mix(0.6).stroke_width(1), 8)),
        )?;
        chart
            .draw_series(LineSeries::new(xy.clone(), col.stroke_width(2)))?
            .label(c.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 4, col.filled())))?;
    }
    if curves.iter().any(|c| !c.points.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

fn placeholder(area: &Area, msg: &str) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let style = (FONT, 16).into_font().color(&BLACK.mix(0.6)).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(msg, (w as i32 / 2, h as i32 / 2), style))?;
    Ok(())
}

// Time and memory have different units, so instead of the seed's shared y axis each gets its own sub-panel.
fn draw_costs(area: &Area, costs: &[Cost], time_unit: &str) -> Result<()> {
    let area = area.titled("Computational Efficiency", (FONT, 20))?;
    if costs.is_empty() {
        return placeholder(&area, "no training logs");
    }
    let halves = area.split_evenly((1, 2));
    let times: Vec<Option<f64>> = costs.iter().map(|c| Some(c.time)).collect();
    bars(&halves[0], &format!("Train time ({time_unit})"), costs, &times, |c| tick(&c.time))?;
    let mems: Vec<Option<f64>> = costs.iter().map(|c| c.mem_gib).collect();
    bars(&halves[1], "Peak memory (GiB)", costs, &mems, |c| match c.mem_gib {
        Some(m) => format!("{} {}", tick(&m), c.mem_src),
        None => "n/a".into(),
    })
}

/// One slot per bar, centred on 0, 1, …, with a tick under each: plotters' segmented integer axes add a spare slot
/// (their ranges include the end) and degenerate for a single bar.
struct BarAxis(usize);

impl Ranged for BarAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, (lo, hi): (i32, i32)) -> i32 {
        lo + ((v + 0.5) / self.0 as f64 * f64::from(hi - lo)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

fn bars(
    area: &Area,
    title: &str,
    costs: &[Cost],
    values: &[Option<f64>],
    text: impl Fn(&Cost) -> String,
) -> Result<()> {
    let y_max = values.iter().flatten().fold(0.0, |a: f64, &b| a.max(b)).max(1e-6) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 15))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(BarAxis(costs.len()), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.04))
        .label_style((FONT, 12))
        .y_label_formatter(&tick)
        .x_label_formatter(&|v| costs.get(v.round() as usize).map(|c| c.label.clone()).unwrap_or_default())
        .draw()?;
    let above = (FONT, 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    for ((i, c), v) in (0..).map(f64::from).zip(costs).zip(values) {
        let v = v.unwrap_or(0.0);
        chart.draw_series([Rectangle::new([(i - 0.35, 0.0), (i + 0.35, v)], color(c.color).mix(0.8).filled())])?;
        chart.draw_series([Text::new(text(c), (i, v), above.clone())])?;
    }
    Ok(())
}

fn draw_tradeoff(area: &Area, costs: &[Cost], time_unit: &str, summary_shots: usize) -> Result<()> {
    let title = "Performance vs Efficiency Trade-off";
    let pts: Vec<(&Cost, f64)> = costs.iter().filter_map(|c| c.acc.map(|a| (c, a))).collect();
    if pts.is_empty() {
        let area = area.titled(title, (FONT, 20))?;
        return placeholder(&area, "no method has both a training log and a summary accuracy");
    }
    let x_max = pts.iter().map(|p| p.0.time).fold(0.0, f64::max).max(1e-6);
    let (y_lo, y_hi) =
        padded(pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min), pts.iter().map(|p| p.1).fold(0.0, f64::max));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        // Labels sit to the right of each point, so leave room past the slowest method.
        .build_cartesian_2d(0.0..1.25 * x_max, y_lo..y_hi)?;
    numeric_mesh(
        &mut chart,
        &format!("Training time ({time_unit})"),
        &format!("Average {summary_shots}-shot Accuracy (%)"),
    )?;
    let label_style = (FONT, 14).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom));
    for (c, acc) in pts {
        let point = EmptyElement::at((c.time, acc))
            + Circle::new((0, 0), 10, color(c.color).mix(0.6).filled())
            + Text::new(c.label.clone(), (10, -8), label_style.clone());
        chart.draw_series([point])?;
    }
    Ok(())
}
