//! plotters' bitmap backend with text and wide lines drawn here.
//!
//! plotters 0.3.7's own ab_glyph text path places every glyph at the pen position without
//! its left side bearing, so narrow letters drift ("l oss"), and its polygons for lines
//! wider than a pixel come out between one and three pixels wide depending on the slope.
//! This backend delegates all other shapes to [`BitMapBackend`], rasterises text itself
//! (glyphs at pen position plus bearing, kerning, anchors and the quarter-turn rotations
//! plotters asks for: the y-axis descriptions) and draws wide lines from the distance of
//! each pixel to the path: the same width at every slope, edges anti-aliased.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::backend::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

type Failure = DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// DejaVu Sans, parsed once.
pub(crate) fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular()).ok())
        .as_ref()
}

pub(crate) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Canvas<'a> {
    pub(crate) fn new(
        rgb: &'a mut [u8],
        size: (u32, u32),
        font: &'static FontRef<'static>,
    ) -> Self {
        Self {
            inner: BitMapBackend::with_buffer(rgb, size),
            font,
        }
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Failure> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Failure> {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Failure> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), Failure> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Failure> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Failure> {
        let width = style.stroke_width() as i32;
        if width <= 1 {
            return self.inner.draw_path(path, style);
        }
        let points: Vec<BackendCoord> = path.into_iter().collect();
        let (w, h) = self.get_size();
        let color = style.color();
        for ((x, y), coverage) in stroke(&points, f64::from(width), (w as i32, h as i32)) {
            let px = BackendColor {
                alpha: color.alpha * coverage,
                rgb: color.rgb,
            };
            self.inner.draw_pixel((x, y), px)?;
        }
        Ok(())
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Failure> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Failure> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), Failure> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), Failure> {
        let (w, h) = Layout::of(self.font, text, style.size() as f32).size();
        Ok((w.max(0) as u32, h.max(0) as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), Failure> {
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let layout = Layout::of(self.font, text, style.size() as f32);
        let (w, h) = layout.size();
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let turn = style.transform();
        let (width, height) = self.get_size();
        let mut coverage = Vec::new();
        for glyph in layout.glyphs {
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|x, y, c| {
                    coverage.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, c))
                });
            }
        }
        for (x, y, c) in coverage {
            let (x, y) = turn.transform(x + dx, y + dy);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if c > 0.0 && x >= 0 && y >= 0 && x < width as i32 && y < height as i32 {
                let px = BackendColor {
                    alpha: color.alpha * f64::from(c.min(1.0)),
                    rgb: color.rgb,
                };
                self.inner.draw_pixel((x, y), px)?;
            }
        }
        Ok(())
    }
}

/// Coverage of the pixels within `width / 2` of the polyline `points` (round caps and
/// joins), anti-aliased over the outermost half pixel, each pixel once (the largest
/// coverage any segment gives it), clipped to `size`.
fn stroke(points: &[BackendCoord], width: f64, size: (i32, i32)) -> Vec<(BackendCoord, f64)> {
    let r = width / 2.0;
    let reach = (r + 1.0).ceil() as i32;
    let mut coverage: std::collections::HashMap<BackendCoord, f64> = Default::default();
    let segments = points.windows(2).map(|s| (s[0], s[1]));
    // A lone point is a dot.
    let dots = (points.len() == 1).then(|| (points[0], points[0]));
    for (a, b) in segments.chain(dots) {
        let (x0, x1) = (a.0.min(b.0) - reach, a.0.max(b.0) + reach);
        let (y0, y1) = (a.1.min(b.1) - reach, a.1.max(b.1) + reach);
        for y in y0.max(0)..=y1.min(size.1 - 1) {
            for x in x0.max(0)..=x1.min(size.0 - 1) {
                let c = (r + 0.5 - distance((x, y), a, b)).clamp(0.0, 1.0);
                if c > 0.0 {
                    let e = coverage.entry((x, y)).or_insert(0.0);
                    *e = e.max(c);
                }
            }
        }
    }
    let mut out: Vec<_> = coverage.into_iter().collect();
    out.sort_by_key(|&((x, y), _)| (y, x));
    out
}

/// Distance from pixel `p` to the segment `a`-`b`.
fn distance(p: BackendCoord, a: BackendCoord, b: BackendCoord) -> f64 {
    let (px, py) = (f64::from(p.0), f64::from(p.1));
    let (ax, ay) = (f64::from(a.0), f64::from(a.1));
    let (dx, dy) = (f64::from(b.0) - ax, f64::from(b.1) - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
    };
    ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt()
}

/// Glyphs of one line of text placed from the top-left of its box (baseline at the ascent).
struct Layout {
    glyphs: Vec<ab_glyph::Glyph>,
    width: f32,
    height: f32,
}

impl Layout {
    fn of(font: &FontRef<'static>, text: &str, size: f32) -> Self {
        let scaled = font.as_scaled(PxScale::from(size));
        let mut glyphs = Vec::with_capacity(text.len());
        let (mut x, mut prev) = (0.0f32, None);
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(size, point(x, scaled.ascent())));
            x += scaled.h_advance(id);
            prev = Some(id);
        }
        Self {
            glyphs,
            width: x,
            height: scaled.ascent() - scaled.descent(),
        }
    }

    fn size(&self) -> (i32, i32) {
        (self.width.ceil() as i32, self.height.ceil() as i32)
    }
}
