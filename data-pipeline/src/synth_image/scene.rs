//! Scenes: up to nine flat-coloured shapes on a 3 x 3 grid of cells, optionally a word in
//! black across one grid row, on white. Each shape stays inside its own cell at least one
//! pixel from the cell's edge, so shapes never touch and positions are read off the grid.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::font::{GLYPH_HEIGHT, draw_text, text_width};
use crate::rng::Rng;

/// Cells per side of the layout grid.
pub const GRID: u32 = 3;
/// Shape colours: name and exact RGB (no anti-aliasing, so every pixel is one of these,
/// [`BACKGROUND`] or [`INK`]).
pub const PALETTE: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [30, 160, 70]),
    ("blue", [40, 90, 230]),
    ("yellow", [235, 190, 20]),
    ("purple", [140, 60, 180]),
    ("orange", [240, 120, 20]),
];
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Colour of written words.
pub const INK: [u8; 3] = [0, 0, 0];
/// Smallest shape side as a fraction of a cell, and the largest.
const SHAPE_MIN_FRACTION: f64 = 0.5;
const SHAPE_MAX_FRACTION: f64 = 0.85;

/// The drawable shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeKind {
    Square,
    Circle,
    Triangle,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 3] = [Self::Square, Self::Circle, Self::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Self::Square => "square",
            Self::Circle => "circle",
            Self::Triangle => "triangle",
        }
    }
}

/// One shape: its kind, colour (index into [`PALETTE`]), grid cell and pixel box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub kind: ShapeKind,
    pub colour: usize,
    pub row: u32,
    pub col: u32,
    /// Top-left corner of the shape's `side` x `side` box, in pixels.
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

impl Shape {
    pub fn colour_name(&self) -> &'static str {
        PALETTE[self.colour].0
    }

    /// Whether the pixel `(px, py)` is inside the shape (tested at the pixel's centre).
    pub fn covers(&self, px: u32, py: u32) -> bool {
        let s = self.side as f64;
        let (u, v) = (
            px as f64 + 0.5 - self.x as f64,
            py as f64 + 0.5 - self.y as f64,
        );
        if !(0.0..s).contains(&u) || !(0.0..s).contains(&v) {
            return false;
        }
        match self.kind {
            ShapeKind::Square => true,
            ShapeKind::Circle => (u - s / 2.0).powi(2) + (v - s / 2.0).powi(2) <= (s / 2.0).powi(2),
            // Apex at the top middle, base along the bottom edge.
            ShapeKind::Triangle => (u - s / 2.0).abs() <= v / 2.0,
        }
    }
}

/// A word written in [`INK`] across grid row `row`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Word {
    pub text: String,
    pub row: u32,
    pub x: u32,
    pub y: u32,
    pub scale: u32,
}

/// What an image shows; [`Scene::render`] draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    /// Width and height in pixels.
    pub size: u32,
    pub shapes: Vec<Shape>,
    pub word: Option<Word>,
}

impl Scene {
    /// Pixels per grid cell side.
    pub fn cell(&self) -> u32 {
        self.size / GRID
    }

    /// `n` shapes of random kinds and colours in distinct random cells, avoiding grid row
    /// `skip_row`.
    pub fn random(rng: &mut Rng, size: u32, n: usize, skip_row: Option<u32>) -> Scene {
        let cell = size / GRID;
        let free: Vec<(u32, u32)> = (0..GRID * GRID)
            .map(|c| (c / GRID, c % GRID))
            .filter(|&(r, _)| Some(r) != skip_row)
            .collect();
        let lo = (cell as f64 * SHAPE_MIN_FRACTION) as usize;
        let hi = (cell as f64 * SHAPE_MAX_FRACTION) as usize;
        let shapes = rng
            .sample(free.len(), n)
            .into_iter()
            .map(|c| {
                let (row, col) = free[c];
                let side = rng.range(lo, hi.min(cell as usize - 2)) as u32;
                // At least one free pixel between the shape and its cell's edges.
                let slack = (cell - side - 2) as usize;
                Shape {
                    kind: *rng.pick(&ShapeKind::ALL),
                    colour: rng.below(PALETTE.len()),
                    row,
                    col,
                    x: col * cell + 1 + rng.below(slack + 1) as u32,
                    y: row * cell + 1 + rng.below(slack + 1) as u32,
                    side,
                }
            })
            .collect();
        Scene {
            size,
            shapes,
            word: None,
        }
    }

    /// Places `text` across grid row `row` at the largest scale that fits, at a random
    /// horizontal offset.
    pub fn write(&mut self, rng: &mut Rng, text: &str, row: u32) {
        let cell = self.cell();
        let fit_height = (cell - 2) / GLYPH_HEIGHT;
        let fit_width = (self.size - 2) / text_width(text, 1);
        let scale = fit_height.min(fit_width).max(1);
        let slack = self.size - 2 - text_width(text, scale);
        let y = row * cell + (cell - GLYPH_HEIGHT * scale) / 2;
        self.word = Some(Word {
            text: text.to_owned(),
            row,
            x: 1 + rng.below(slack as usize + 1) as u32,
            y,
            scale,
        });
    }

    /// The scene as an RGB image.
    pub fn render(&self) -> RgbImage {
        let mut image = RgbImage::from_pixel(self.size, self.size, Rgb(BACKGROUND));
        for shape in &self.shapes {
            for py in shape.y..shape.y + shape.side {
                for px in shape.x..shape.x + shape.side {
                    if shape.covers(px, py) {
                        image.put_pixel(px, py, Rgb(PALETTE[shape.colour].1));
                    }
                }
            }
        }
        if let Some(w) = &self.word {
            draw_text(&mut image, &w.text, (w.x, w.y), w.scale, INK);
        }
        image
    }

    /// Shapes with `colour`.
    pub fn count_colour(&self, colour: usize) -> usize {
        self.shapes.iter().filter(|s| s.colour == colour).count()
    }

    /// The only shape of `kind`, if there is exactly one.
    pub fn only_of_kind(&self, kind: ShapeKind) -> Option<&Shape> {
        let mut of_kind = self.shapes.iter().filter(|s| s.kind == kind);
        let first = of_kind.next();
        if of_kind.next().is_some() {
            None
        } else {
            first
        }
    }

    /// Whether no other shape has `shape`'s kind and colour (so "the red square" names it).
    pub fn is_unique(&self, shape: &Shape) -> bool {
        self.shapes
            .iter()
            .filter(|s| s.kind == shape.kind && s.colour == shape.colour)
            .count()
            == 1
    }

    /// The only shape in `shape`'s grid row to its left, if there is exactly one.
    pub fn only_left_of(&self, shape: &Shape) -> Option<&Shape> {
        self.only(|s| s.row == shape.row && s.col < shape.col)
    }

    /// The only shape in `shape`'s grid column above it, if there is exactly one.
    pub fn only_above(&self, shape: &Shape) -> Option<&Shape> {
        self.only(|s| s.col == shape.col && s.row < shape.row)
    }

    fn only(&self, keep: impl Fn(&Shape) -> bool) -> Option<&Shape> {
        let mut found = self.shapes.iter().filter(|s| keep(s));
        let first = found.next();
        if found.next().is_some() { None } else { first }
    }
}
