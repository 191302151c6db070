//! Figures onto plotters' bitmap backend.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::canvas::{self, Canvas};
use crate::error::{Error, Result};
use crate::smooth::{ema, ema_weight};
use crate::{Corner, Figure, INK, Panel, Rgb, Scale, Series, Side, Style};

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
const TITLE_PX: u32 = 22;
const CAPTION_PX: u32 = 17;
const DESC_PX: u32 = 16;
const LABEL_PX: u32 = 14;
const MARGIN_PX: u32 = 12;
const X_LABEL_AREA_PX: u32 = 48;
const Y_LABEL_AREA_PX: u32 = 72;
/// Fraction of the data span left free on each side of an axis.
const PAD: f64 = 0.04;
const LINE_PX: u32 = 2;
const MARKER_PX: i32 = 4;
const LEGEND_LINE_PX: i32 = 22;
/// Opacity of the raw series under a smoothed line.
const RAW_ALPHA: f64 = 0.28;
const LEGEND_BACKGROUND_ALPHA: f64 = 0.9;
const GRID_BOLD: RGBColor = RGBColor(0xdc, 0xdc, 0xdc);
const GRID_LIGHT: RGBColor = RGBColor(0xf1, 0xf1, 0xf1);
/// Faint grid lines between two labelled ones.
const LIGHT_LINES: usize = 1;
/// Most tick labels on an axis.
const MAX_TICKS: usize = 10;
/// Tick values this close to an integer exponent get a label on a log-2 axis.
const EXPONENT_TOLERANCE: f64 = 1e-6;

fn colour(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Draw {
        what: what.to_owned(),
        msg: e.to_string(),
    }
}

/// The embedded font, registered with plotters too (its layout estimates use it).
fn embedded_font() -> Result<&'static ab_glyph::FontRef<'static>> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    match canvas::font() {
        Some(font) if registered => Ok(font),
        _ => Err(Error::Draw {
            what: "the embedded font".into(),
            msg: "DejaVu Sans did not parse".into(),
        }),
    }
}

/// Draws `fig` into `rgb` (`width * height * 3` bytes).
pub(crate) fn figure(fig: &Figure, rgb: &mut [u8]) -> Result<()> {
    let font = embedded_font()?;
    let root = Canvas::new(rgb, (fig.width, fig.height), font).into_drawing_area();
    root.fill(&WHITE).map_err(failed("the background"))?;
    let body = if fig.title.is_empty() {
        root.clone()
    } else {
        let style = (FONT, TITLE_PX).into_font().color(&colour(INK));
        root.titled(&fig.title, style)
            .map_err(failed("the figure title"))?
    };
    for (panel, area) in fig
        .panels
        .iter()
        .zip(body.split_evenly((1, fig.panels.len())))
    {
        draw_panel(panel, &area)?;
    }
    root.present().map_err(failed("the figure"))
}

/// A value's position on an axis of `scale`, `None` where it cannot be drawn.
fn on_axis(scale: Scale, v: f64) -> Option<f64> {
    let v = match scale {
        Scale::Linear => v,
        Scale::Log2 if v > 0.0 => v.log2(),
        Scale::Log2 => return None,
    };
    v.is_finite().then_some(v)
}

/// The padded span of `values`; 0..1 for none, a unit around a single value.
fn span(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    if lo == hi {
        let half = (lo.abs() * 0.1).max(0.5);
        return lo - half..hi + half;
    }
    let pad = (hi - lo) * PAD;
    lo - pad..hi + pad
}

/// Consecutive drawable points of a series, in axis coordinates.
type Segment = Vec<(f64, f64)>;

/// A series' points in axis coordinates, split where a point cannot be drawn.
fn segments(points: &[(f64, f64)], x: Scale, y: Scale) -> Vec<Segment> {
    let mut out = vec![Vec::new()];
    for &(px, py) in points {
        match (on_axis(x, px), on_axis(y, py)) {
            (Some(a), Some(b)) => out.last_mut().expect("one segment").push((a, b)),
            _ if out.last().is_some_and(|s| !s.is_empty()) => out.push(Vec::new()),
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Compact tick text: no trailing zeros, exponent notation for very large or small values.
pub(crate) fn tick(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Tick text on a log-2 axis (positions are exponents): the power of two at integer
/// exponents, nothing between them.
pub(crate) fn pow2_tick(e: f64) -> String {
    let r = e.round();
    if (e - r).abs() < EXPONENT_TOLERANCE {
        tick(2f64.powi(r as i32))
    } else {
        String::new()
    }
}

fn formatter(scale: Scale) -> fn(&f64) -> String {
    match scale {
        Scale::Linear => |v| tick(*v),
        Scale::Log2 => |v| pow2_tick(*v),
    }
}

/// Tick count for an axis: on a log-2 axis one per power of two, so that they land on
/// integer exponents.
fn ticks(scale: Scale, range: &Range<f64>) -> usize {
    match scale {
        Scale::Linear => MAX_TICKS,
        Scale::Log2 => ((range.end - range.start).floor() as usize + 1).clamp(2, MAX_TICKS),
    }
}

/// Fraction of the plot's width and height a legend box is taken to cover when choosing
/// [`Corner::Best`].
const LEGEND_SHARE: (f64, f64) = (0.4, 0.3);

/// The corner whose legend-sized box holds the fewest points (upper corners first on a
/// tie); `points` are (x, y) fractions of the plotting area, y upwards.
fn best_corner(points: impl Iterator<Item = (f64, f64)>) -> Corner {
    let corners = [
        Corner::UpperRight,
        Corner::UpperLeft,
        Corner::LowerRight,
        Corner::LowerLeft,
    ];
    let (w, h) = LEGEND_SHARE;
    let mut counts = [0usize; 4];
    for (x, y) in points {
        let (left, right, low, high) = (x < w, x > 1.0 - w, y < h, y > 1.0 - h);
        for (i, hit) in [high && right, high && left, low && right, low && left]
            .into_iter()
            .enumerate()
        {
            counts[i] += usize::from(hit);
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    corners[best]
}

fn legend_position(c: Corner) -> SeriesLabelPosition {
    match c {
        Corner::Best | Corner::UpperRight => SeriesLabelPosition::UpperRight,
        Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
        Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
        Corner::LowerRight => SeriesLabelPosition::LowerRight,
    }
}

fn draw_panel<DB: DrawingBackend>(p: &Panel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    // Without a right axis every series is drawn against the left one.
    let side_of = |s: &Series| {
        if p.y_right.is_some() {
            s.side
        } else {
            Side::Left
        }
    };
    let scale_of = |side: Side| match (side, &p.y_right) {
        (Side::Right, Some(axis)) => axis.scale,
        _ => p.y.scale,
    };
    let parts: Vec<(Side, Vec<Segment>)> = p
        .series
        .iter()
        .map(|s| {
            let side = side_of(s);
            (side, segments(&s.points, p.x.scale, scale_of(side)))
        })
        .collect();
    let values = |side: Option<Side>, pick: fn(&(f64, f64)) -> f64| {
        parts
            .iter()
            .filter(move |(s, _)| side.is_none_or(|side| side == *s))
            .flat_map(move |(_, segs)| segs.iter().flatten().map(pick))
    };
    let x = span(values(None, |q| q.0));
    let left = span(values(Some(Side::Left), |q| q.1));
    let right = span(values(Some(Side::Right), |q| q.1));

    let mut builder = ChartBuilder::on(area);
    builder
        .margin(MARGIN_PX)
        .x_label_area_size(X_LABEL_AREA_PX)
        .y_label_area_size(Y_LABEL_AREA_PX);
    if p.y_right.is_some() {
        builder.right_y_label_area_size(Y_LABEL_AREA_PX);
    }
    if !p.title.is_empty() {
        builder.caption(&p.title, (FONT, CAPTION_PX).into_font().color(&colour(INK)));
    }
    let mut chart = builder
        .build_cartesian_2d(x.clone(), left.clone())
        .map_err(failed("the axes"))?
        .set_secondary_coord(x.clone(), right.clone());

    let ink = colour(INK);
    let label_style = (FONT, LABEL_PX).into_font().color(&ink);
    let desc_style = (FONT, DESC_PX).into_font().color(&ink);
    let (x_fmt, y_fmt) = (formatter(p.x.scale), formatter(p.y.scale));
    chart
        .configure_mesh()
        .x_desc(p.x.label.as_str())
        .y_desc(p.y.label.as_str())
        .x_labels(ticks(p.x.scale, &x))
        .y_labels(ticks(p.y.scale, &left))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(label_style.clone())
        .axis_desc_style(desc_style.clone())
        .axis_style(ink)
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .max_light_lines(LIGHT_LINES)
        .draw()
        .map_err(failed("the grid"))?;
    if let Some(axis) = &p.y_right {
        let fmt = formatter(axis.scale);
        chart
            .configure_secondary_axes()
            .y_desc(axis.label.as_str())
            .y_labels(ticks(axis.scale, &right))
            .y_label_formatter(&fmt)
            .label_style(label_style.clone())
            .axis_desc_style(desc_style)
            .axis_style(ink)
            .draw()
            .map_err(failed("the right axis"))?;
    }

    for (i, (s, (side, segs))) in p.series.iter().zip(&parts).enumerate() {
        draw_series(&mut chart, s, *side, segs, p.colour(i))?;
    }
    let corner = match p.legend {
        Corner::Best => {
            let frac = |v: f64, r: &Range<f64>| (v - r.start) / (r.end - r.start);
            let x = &x;
            best_corner(parts.iter().flat_map(|(side, segs)| {
                let y = if *side == Side::Right { &right } else { &left };
                segs.iter()
                    .flatten()
                    .map(move |q| (frac(q.0, x), frac(q.1, y)))
            }))
        }
        fixed => fixed,
    };
    chart
        .configure_series_labels()
        .position(legend_position(corner))
        .background_style(WHITE.mix(LEGEND_BACKGROUND_ALPHA))
        .border_style(ink.mix(0.4))
        .label_font(label_style)
        .draw()
        .map_err(failed("the legend"))
}

type DualChart<'a, DB> = plotters::chart::DualCoordChartContext<
    'a,
    DB,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

/// Draws elements against the series' axis; yields the annotation for its legend entry.
macro_rules! draw_on {
    ($chart:expr, $side:expr, $elements:expr) => {
        match $side {
            Side::Left => $chart.draw_series($elements),
            Side::Right => $chart.draw_secondary_series($elements),
        }
        .map_err(failed("a series"))?
    };
}

fn draw_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut DualChart<'a, DB>,
    s: &Series,
    side: Side,
    segs: &[Segment],
    rgb: Rgb,
) -> Result<()> {
    let c = colour(rgb);
    let line = c.stroke_width(LINE_PX);
    let lines = matches!(
        s.style,
        Style::Smoothed(_) | Style::Line | Style::LineMarkers
    );
    let markers = matches!(s.style, Style::LineMarkers | Style::Markers);
    if let Style::Smoothed(weight) = s.style {
        let n = segs.iter().map(Vec::len).sum();
        let w = weight.unwrap_or_else(|| ema_weight(n));
        let faint = c.mix(RAW_ALPHA).stroke_width(1);
        let ys: Vec<f64> = segs.iter().flatten().map(|q| q.1).collect();
        let smooth = ema(&ys, w);
        let mut at = 0;
        for seg in segs {
            draw_on!(chart, side, LineSeries::new(seg.iter().copied(), faint));
            let ys = &smooth[at..at + seg.len()];
            at += seg.len();
            let pts = seg.iter().zip(ys).map(|(q, &y)| (q.0, y));
            draw_on!(chart, side, LineSeries::new(pts, line));
        }
    } else {
        for seg in segs {
            if lines {
                draw_on!(chart, side, LineSeries::new(seg.iter().copied(), line));
            }
            if markers {
                let dots = seg.iter().map(|&q| Circle::new(q, MARKER_PX, c.filled()));
                draw_on!(chart, side, dots);
            }
        }
    }
    // An empty draw holds the legend entry, so a series without points still has one.
    let anno = draw_on!(chart, side, std::iter::empty::<Circle<(f64, f64), i32>>());
    anno.label(s.name.as_str());
    match (lines, markers) {
        (true, true) => anno.legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (LEGEND_LINE_PX, 0)], line)
                + Circle::new((LEGEND_LINE_PX / 2, 0), MARKER_PX, c.filled())
        }),
        (true, false) => {
            anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + LEGEND_LINE_PX, y)], line))
        }
        _ => anno
            .legend(move |(x, y)| Circle::new((x + LEGEND_LINE_PX / 2, y), MARKER_PX, c.filled())),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_like_numbers() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(12000.0), "12000");
        assert_eq!(tick(-2.5), "-2.5");
        assert_eq!(tick(1e-13), "0");
        assert_eq!(tick(2.5e7), "2.5e7");
        assert_eq!(pow2_tick(10.0), "1024");
        assert_eq!(pow2_tick(9.5), "");
    }

    #[test]
    fn gaps_and_unplottable_points_split_a_series() {
        let pts = [
            (1.0, 1.0),
            (2.0, f64::NAN),
            (3.0, 3.0),
            (4.0, 4.0),
            (0.0, 5.0),
        ];
        let lin = segments(&pts, Scale::Linear, Scale::Linear);
        assert_eq!(
            lin,
            vec![vec![(1.0, 1.0)], vec![(3.0, 3.0), (4.0, 4.0), (0.0, 5.0)]]
        );
        // log2(0) cannot be drawn: the last point goes, and x becomes the exponent.
        let log = segments(&pts, Scale::Log2, Scale::Linear);
        assert_eq!(log[1], vec![(3f64.log2(), 3.0), (2.0, 4.0)]);
    }

    #[test]
    fn the_best_legend_corner_is_the_emptiest() {
        // A falling curve leaves the upper right free; a rising one the upper left.
        let falling = (0..20).map(|i| (i as f64 / 19.0, 1.0 - i as f64 / 19.0));
        assert_eq!(best_corner(falling), Corner::UpperRight);
        let rising = (0..20).map(|i| (i as f64 / 19.0, i as f64 / 19.0));
        assert_eq!(best_corner(rising), Corner::UpperLeft);
        let top = (0..20).map(|i| (i as f64 / 19.0, 0.95));
        assert_eq!(best_corner(top), Corner::LowerRight);
    }

    #[test]
    fn spans_are_padded_and_never_empty() {
        assert_eq!(span(std::iter::empty()), 0.0..1.0);
        let r = span([2.0, 2.0].into_iter());
        assert!(r.start < 2.0 && r.end > 2.0);
        let r = span([0.0, 10.0].into_iter());
        assert!((r.start + 0.4).abs() < 1e-12 && (r.end - 10.4).abs() < 1e-12);
    }
}
