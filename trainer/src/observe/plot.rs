//! A minimal rasteriser for loss curves: axes with numeric ticks, grid, title, axis labels
//! and a legend, drawn with the built-in bitmap font and written as an RGB PNG.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use super::font;

/// Size of the PNG that [`plot_losses`] writes, in pixels.
pub const PLOT_WIDTH: u32 = 960;
pub const PLOT_HEIGHT: u32 = 560;

/// Series colours in order (matplotlib's "tab10"), reused cyclically past ten series.
pub const PALETTE: [[u8; 3]; 10] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x7f, 0x7f, 0x7f],
    [0xbc, 0xbd, 0x22],
    [0x17, 0xbe, 0xcf],
];

type Rgb = [u8; 3];
const BACKGROUND: Rgb = [0xff, 0xff, 0xff];
const INK: Rgb = [0x20, 0x20, 0x20];
const GRID: Rgb = [0xe6, 0xe6, 0xe6];
const FRAME: Rgb = [0xa0, 0xa0, 0xa0];

/// Font pixels per glyph pixel.
const TEXT_SCALE: i64 = 2;
const CHAR_W: i64 = font::ADVANCE as i64 * TEXT_SCALE;
const TEXT_H: i64 = font::GLYPH_H as i64 * TEXT_SCALE;
const PAD: i64 = 10;
const TICK_LEN: i64 = 5;
const LINE_WIDTH: i64 = 2;
const MARKER_RADIUS: i64 = 3;
const TARGET_TICKS: f64 = 6.0;
const LEGEND_SWATCH: i64 = 24;
const LEGEND_ROW: i64 = TEXT_H + 8;
/// Longer series names are cut (with "..") so the legend leaves room for the data.
const LEGEND_MAX_CHARS: usize = 24;

/// Writes a line chart of `series` (name, (x, y) points) to `path` as a PNG of
/// [`PLOT_WIDTH`] x [`PLOT_HEIGHT`]. Non-finite points are skipped and break the line.
pub fn plot_losses(
    path: impl AsRef<Path>,
    series: &[(&str, Vec<(f64, f64)>)],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> io::Result<()> {
    let points = || {
        series
            .iter()
            .flat_map(|(_, pts)| pts.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let xs = Axis::fit(points().map(|p| p.0));
    let ys = Axis::fit(points().map(|p| p.1));
    let x_ticks = xs.ticks();
    let y_ticks = ys.ticks();
    let names: Vec<String> = series.iter().map(|(n, _)| legend_name(n)).collect();

    let mut c = Canvas::new(PLOT_WIDTH as usize, PLOT_HEIGHT as usize);
    let y_label_w = y_ticks
        .iter()
        .map(|(_, s)| text_width(s))
        .max()
        .unwrap_or(0);
    let legend_w = names
        .iter()
        .map(|n| text_width(n))
        .max()
        .map_or(0, |w| w + LEGEND_SWATCH + 3 * PAD);
    let area = Rect {
        left: PAD + TEXT_H + PAD + y_label_w + PAD + TICK_LEN,
        right: c.w as i64 - PAD - legend_w - PAD,
        top: PAD + TEXT_H + 2 * PAD,
        bottom: c.h as i64 - (PAD + TEXT_H + PAD + TEXT_H + PAD + TICK_LEN),
    };
    let to_px = |x: f64| area.left + (xs.frac(x) * (area.right - area.left) as f64).round() as i64;
    let to_py =
        |y: f64| area.bottom - (ys.frac(y) * (area.bottom - area.top) as f64).round() as i64;

    for (v, label) in &x_ticks {
        let x = to_px(*v);
        c.line((x, area.top), (x, area.bottom), 1, GRID);
        c.line((x, area.bottom), (x, area.bottom + TICK_LEN), 1, INK);
        c.text(
            x - text_width(label) / 2,
            area.bottom + TICK_LEN + PAD / 2,
            label,
            INK,
        );
    }
    for (v, label) in &y_ticks {
        let y = to_py(*v);
        c.line((area.left, y), (area.right, y), 1, GRID);
        c.line((area.left - TICK_LEN, y), (area.left, y), 1, INK);
        let x = area.left - TICK_LEN - PAD / 2 - text_width(label);
        c.text(x, y - TEXT_H / 2, label, INK);
    }
    c.frame(&area, INK);

    for (i, (_, pts)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pixels: Vec<Option<(i64, i64)>> = pts
            .iter()
            .map(|&(x, y)| (x.is_finite() && y.is_finite()).then(|| (to_px(x), to_py(y))))
            .collect();
        for (k, p) in pixels.iter().enumerate() {
            let Some(p) = *p else { continue };
            let prev = k.checked_sub(1).and_then(|j| pixels[j]);
            let next = pixels.get(k + 1).copied().flatten();
            match prev {
                Some(q) => c.line(q, p, LINE_WIDTH, colour),
                // An isolated point would be invisible as a line.
                None if next.is_none() => c.dot(p, MARKER_RADIUS, colour),
                None => {}
            }
        }
    }

    c.text((c.w as i64 - text_width(title)) / 2, PAD, title, INK);
    let x_label_y = c.h as i64 - PAD - TEXT_H;
    let x_label_x = (area.left + area.right - text_width(x_label)) / 2;
    c.text(x_label_x, x_label_y, x_label, INK);
    let y_label_y = (area.top + area.bottom + text_width(y_label)) / 2;
    c.text_up(PAD, y_label_y, y_label, INK);
    if !names.is_empty() {
        draw_legend(&mut c, area.right + PAD, area.top, &names);
    }
    c.write_png(path.as_ref())
}

fn legend_name(name: &str) -> String {
    if name.chars().count() <= LEGEND_MAX_CHARS {
        return name.to_owned();
    }
    let cut: String = name.chars().take(LEGEND_MAX_CHARS - 2).collect();
    format!("{cut}..")
}

fn draw_legend(c: &mut Canvas, left: i64, top: i64, names: &[String]) {
    let w = names.iter().map(|n| text_width(n)).max().unwrap_or(0) + LEGEND_SWATCH + 3 * PAD;
    let h = names.len() as i64 * LEGEND_ROW + PAD;
    let frame = Rect {
        left,
        right: left + w,
        top,
        bottom: top + h,
    };
    c.frame(&frame, FRAME);
    for (i, name) in names.iter().enumerate() {
        let y = top + PAD + i as i64 * LEGEND_ROW;
        let mid = y + TEXT_H / 2;
        let colour = PALETTE[i % PALETTE.len()];
        c.line(
            (left + PAD, mid),
            (left + PAD + LEGEND_SWATCH, mid),
            LINE_WIDTH + 1,
            colour,
        );
        c.text(left + 2 * PAD + LEGEND_SWATCH, y, name, INK);
    }
}

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * CHAR_W
}

/// Inclusive pixel rectangle.
struct Rect {
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
}

/// A linear axis range with "nice" (1, 2, 5 x 10^k) tick spacing covering the data.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let step = nice_step((hi - lo) / (TARGET_TICKS - 1.0));
        Self {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// Position of `v` along the axis, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }

    fn ticks(&self) -> Vec<(f64, String)> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n)
            .map(|k| {
                let v = self.lo + k as f64 * self.step;
                // Snap float noise such as 1e-17 to an exact zero label.
                let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
                (v, format_tick(v, self.step))
            })
            .collect()
    }
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Ticks in plain decimals with as many digits as the step needs; exponent form for very
/// large or very small scales.
fn format_tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    if v != 0.0 && (v.abs() >= 1e6 || decimals > 5) {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            rgb: BACKGROUND.repeat(w * h),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if (0..self.w as i64).contains(&x) && (0..self.h as i64).contains(&y) {
            let i = 3 * (y as usize * self.w + x as usize);
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    fn square(&mut self, (x, y): (i64, i64), side: i64, c: Rgb) {
        let off = (side - 1) / 2;
        for dy in 0..side {
            for dx in 0..side {
                self.set(x - off + dx, y - off + dy, c);
            }
        }
    }

    fn dot(&mut self, p: (i64, i64), radius: i64, c: Rgb) {
        self.square(p, 2 * radius + 1, c);
    }

    /// Bresenham line drawn with a square brush of side `width`.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), width: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.square((x, y), width, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn frame(&mut self, r: &Rect, c: Rgb) {
        self.line((r.left, r.top), (r.right, r.top), 1, c);
        self.line((r.right, r.top), (r.right, r.bottom), 1, c);
        self.line((r.right, r.bottom), (r.left, r.bottom), 1, c);
        self.line((r.left, r.bottom), (r.left, r.top), 1, c);
    }

    /// Text with its top-left corner at (`x`, `y`).
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        self.glyphs(s, c, |along, across| (x + along, y + across));
    }

    /// Text rotated a quarter turn anticlockwise, reading upwards from (`x`, `y`).
    fn text_up(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        self.glyphs(s, c, |along, across| (x + across, y - along));
    }

    /// Draws `s` with `place` mapping (offset along the line, offset across it) to pixels.
    fn glyphs(&mut self, s: &str, c: Rgb, place: impl Fn(i64, i64) -> (i64, i64)) {
        for (i, ch) in s.chars().enumerate() {
            for gy in 0..font::GLYPH_H {
                for gx in 0..font::GLYPH_W {
                    if !font::pixel(ch, gx, gy) {
                        continue;
                    }
                    let along = i as i64 * CHAR_W + gx as i64 * TEXT_SCALE;
                    let across = gy as i64 * TEXT_SCALE;
                    for (sa, sc) in
                        (0..TEXT_SCALE).flat_map(|a| (0..TEXT_SCALE).map(move |b| (a, b)))
                    {
                        let (px, py) = place(along + sa, across + sc);
                        self.set(px, py, c);
                    }
                }
            }
        }
    }

    fn write_png(&self, path: &Path) -> io::Result<()> {
        let out = BufWriter::new(File::create(path)?);
        let mut enc = png::Encoder::new(out, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(io::Error::other)?;
        writer
            .write_image_data(&self.rgb)
            .map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_the_data_with_nice_steps() {
        let a = Axis::fit([0.13, 2.31].into_iter());
        assert_eq!((a.lo, a.hi, a.step), (0.0, 2.5, 0.5));
        let labels: Vec<String> = a.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]);
        let flat = Axis::fit([5.0, 5.0].into_iter());
        assert!(flat.lo < 5.0 && flat.hi > 5.0);
        let steps = Axis::fit([0.0, 12000.0].into_iter());
        assert_eq!(steps.ticks().last().unwrap().1, "15000");
    }

    #[test]
    fn long_legend_names_are_cut() {
        assert_eq!(legend_name("loss"), "loss");
        assert_eq!(
            legend_name(&"x".repeat(40)).chars().count(),
            LEGEND_MAX_CHARS
        );
    }
}
