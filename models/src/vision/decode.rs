//! Reading PNG and JPEG files into 8-bit RGB as transformers' `convert_to_rgb` leaves them:
//! grey replicated into three channels, transparency composited onto opaque white with
//! Pillow's integer `alpha_composite` arithmetic.

use std::path::Path;

use image::{DynamicImage, RgbImage, RgbaImage};

use crate::error::{Error, Result};

/// Fractional bits of Pillow's compositing coefficients.
const COMPOSITE_BITS: u32 = 7;

/// Pillow's rounded division by 255 of a value below 2^16 * 255.
fn div255(v: u32) -> u32 {
    ((v >> 8) + v) >> 8
}

/// `src` over an opaque white background, channel by channel: the source weighs `a / 255`
/// in fixed point, the white `1 - a / 255`, rounded as Pillow rounds.
fn over_white(rgb: u8, alpha: u8) -> u8 {
    const WHITE: u32 = 255;
    let a = u32::from(alpha);
    if a == 0 {
        return WHITE as u8;
    }
    // Pillow's general formula, with the destination's alpha fixed at 255.
    let out_alpha = a * 255 + WHITE * (255 - a);
    let src_coef = a * 255 * 255 * (1 << COMPOSITE_BITS) / out_alpha;
    let dst_coef = 255 * (1 << COMPOSITE_BITS) - src_coef;
    let mixed = u32::from(rgb) * src_coef + WHITE * dst_coef;
    (div255(mixed + (0x80 << COMPOSITE_BITS)) >> COMPOSITE_BITS) as u8
}

/// Flattens an RGBA image onto white (transformers 5.x's `convert_to_rgb` for images with
/// an alpha band).
pub fn composite_on_white(img: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b, a] = img.get_pixel(x, y).0;
        image::Rgb([over_white(r, a), over_white(g, a), over_white(b, a)])
    })
}

/// An already decoded image in RGB: alpha composited onto white, grey replicated.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    if img.color().has_alpha() {
        composite_on_white(&img.to_rgba8())
    } else {
        img.to_rgb8()
    }
}

/// Decodes a PNG or JPEG file (the format is sniffed from its bytes) into RGB.
///
/// EXIF orientation is not applied, as `PIL.Image.open` does not apply it either.
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    let fail = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let reader = image::ImageReader::open(path)
        .map_err(Error::io(path))?
        .with_guessed_format()
        .map_err(Error::io(path))?;
    let img = reader.decode().map_err(|e| fail(e.to_string()))?;
    Ok(to_rgb(&img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_keeps_opaque_pixels_and_whitens_transparent_ones() {
        for v in [0u8, 1, 127, 254, 255] {
            assert_eq!(over_white(v, 255), v);
            assert_eq!(over_white(v, 0), 255);
        }
        // Half transparent black is mid grey (255 * 127/255 of white).
        assert_eq!(over_white(0, 128), 127);
    }
}
