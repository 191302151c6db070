//! edkd-plot: every figure edkd draws, through one path.
//!
//! A [`Figure`] is a title over one or more [`Panel`]s side by side; a panel is a line
//! chart with a left y axis, an optional right one, a linear or log-2 x axis, a legend and
//! [`Series`] drawn in one of four [`Style`]s. [`Style::Smoothed`] is how training curves
//! are read: the raw values faint, a smoothed line over them. Drawing is plotters' bitmap
//! backend with DejaVu Sans embedded (the `dejavu` crate; the fonts are under the Bitstream
//! Vera licence, DejaVu's changes in the public domain), so no system font, no Python and
//! no display are needed.

mod canvas;
mod draw;
mod error;
mod smooth;

use std::path::Path;

pub use error::{Error, Result};
pub use smooth::{ema, ema_weight};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Series colours in order (the "tab10" colours people know from matplotlib), reused
/// cyclically past ten series.
pub const PALETTE: [Rgb; 10] = [
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

/// Text and axis colour.
pub const INK: Rgb = [0x1a, 0x1a, 0x1a];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// The raw points as a faint line and their exponential moving average over them
    /// (TensorBoard's debiased EMA; `None` picks the weight from the number of points).
    Smoothed(Option<f64>),
    /// A plain line.
    Line,
    /// A line with a marker on every point (few points: evaluations, measurements).
    LineMarkers,
    /// Markers alone.
    Markers,
}

/// Which y axis a series is plotted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// Where the legend goes inside the plotting area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    /// The corner with the fewest data points under the legend's box.
    Best,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
}

/// An axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Logarithmic with ticks at powers of two (input lengths, batch sizes).
    Log2,
}

/// One axis: its label (with the unit, e.g. "latency (ms)") and scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
}

impl Axis {
    pub fn linear(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            scale: Scale::Linear,
        }
    }

    pub fn log2(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            scale: Scale::Log2,
        }
    }
}

/// A named series of (x, y) points. Non-finite points (and, on a log axis, points at or
/// below zero) are left out and break the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    pub side: Side,
    /// `None`: the palette colour of the series' position in its panel.
    pub colour: Option<Rgb>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Self {
            name: name.into(),
            points,
            style,
            side: Side::Left,
            colour: None,
        }
    }

    /// Raw points faint, smoothed line over them, the weight chosen from the length.
    pub fn smoothed(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::Smoothed(None))
    }

    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::Line)
    }

    pub fn line_markers(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::LineMarkers)
    }

    /// Plotted against the panel's right y axis.
    pub fn on_right(mut self) -> Self {
        self.side = Side::Right;
        self
    }

    pub fn with_colour(mut self, colour: Rgb) -> Self {
        self.colour = Some(colour);
        self
    }
}

/// One chart: axes, series and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Drawn above the chart; empty for none (a one-panel figure has the figure's title).
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    /// The right y axis, for series with [`Side::Right`]; `None` draws none.
    pub y_right: Option<Axis>,
    pub series: Vec<Series>,
    pub legend: Corner,
}

impl Panel {
    pub fn new(x: Axis, y: Axis) -> Self {
        Self {
            title: String::new(),
            x,
            y,
            y_right: None,
            series: Vec::new(),
            legend: Corner::Best,
        }
    }

    pub fn titled(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    pub fn right_axis(mut self, axis: Axis) -> Self {
        self.y_right = Some(axis);
        self
    }

    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    pub fn legend_at(mut self, corner: Corner) -> Self {
        self.legend = corner;
        self
    }

    /// The colour series `i` is drawn in.
    pub fn colour(&self, i: usize) -> Rgb {
        self.series[i].colour.unwrap_or(PALETTE[i % PALETTE.len()])
    }
}

/// A titled figure of panels side by side, `width` x `height` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub panels: Vec<Panel>,
}

/// Most pixels a side of a figure may have (a typo in a size should not allocate gigabytes).
pub const MAX_SIDE: u32 = 8192;
/// Fewest pixels a side needs for axes, labels and a legend.
pub const MIN_SIDE: u32 = 200;

impl Figure {
    pub fn new(title: impl Into<String>, width: u32, height: u32) -> Self {
        Self {
            title: title.into(),
            width,
            height,
            panels: Vec::new(),
        }
    }

    pub fn with(mut self, panel: Panel) -> Self {
        self.panels.push(panel);
        self
    }

    /// Draws the figure into an RGB image.
    pub fn render(&self) -> Result<Image> {
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&side) {
                return Err(Error::Input(format!(
                    "figure {field} {side} px: expected {MIN_SIDE}..={MAX_SIDE}"
                )));
            }
        }
        if self.panels.is_empty() {
            return Err(Error::Input(format!(
                "figure {:?} has no panel",
                self.title
            )));
        }
        let mut rgb = vec![0xff; self.width as usize * self.height as usize * 3];
        draw::figure(self, &mut rgb)?;
        Ok(Image {
            width: self.width,
            height: self.height,
            rgb,
        })
    }

    /// Draws the figure and writes it to `path` as a PNG.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        self.render()?.write_png(path)
    }
}

/// Pixels of a rendered figure, row by row, 3 bytes a pixel.
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn pixel(&self, x: u32, y: u32) -> Rgb {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Writes the image as an 8-bit RGB PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::File::create(path).map_err(io)?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let png = |e: png::EncodingError| Error::Png {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut writer = enc.write_header().map_err(png)?;
        writer.write_image_data(&self.rgb).map_err(png)?;
        writer.finish().map_err(png)
    }
}
