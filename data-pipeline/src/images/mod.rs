//! Images of vision-language examples: the shards' optional `image` column holds each
//! example's encoded PNG or JPEG bytes exactly as given (Arrow `binary`, null for an example
//! without an image). This module sniffs, checks and decodes them; [`source`] reads them from
//! `edkd data prepare`'s inputs.
//!
//! In the text, [`IMAGE_PLACEHOLDER`] marks where the image belongs. When the tokenizer has
//! it as an added token, it is one id in `input_ids` and the manifest records that id as
//! `images.image_token_id`; otherwise it is tokenised as ordinary text and the id is null.

pub mod source;

use std::io::Cursor;

pub use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ImageProblem, Result};

/// Text marking an image's place in an input.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// Name of the shards' image column.
pub const IMAGE_COLUMN: &str = "image";
/// Largest accepted width or height of an image, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Bytes of a file shown in a "not an image" error.
const HEAD_BYTES_SHOWN: usize = 8;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xFF\xD8\xFF";
/// Signatures of formats that are recognised only to be refused by name.
const REFUSED: [(&[u8], &str); 6] = [
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"),
    (b"\0\0\0\x0cjP  ", "JPEG 2000"),
    (b"\0\0\x01\0", "ICO"),
];

/// The encodings the image column accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
        }
    }

    fn codec(self) -> image::ImageFormat {
        match self {
            Self::Png => image::ImageFormat::Png,
            Self::Jpeg => image::ImageFormat::Jpeg,
        }
    }
}

/// The format of `bytes` from its signature (never from a file name).
pub fn sniff(bytes: &[u8]) -> std::result::Result<ImageFormat, ImageProblem> {
    if bytes.is_empty() {
        return Err(ImageProblem::Empty);
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        return Ok(ImageFormat::Png);
    }
    if bytes.starts_with(JPEG_SIGNATURE) {
        return Ok(ImageFormat::Jpeg);
    }
    if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        return Err(ImageProblem::Unsupported { format: "WebP" });
    }
    if let Some(&(_, format)) = REFUSED.iter().find(|(sig, _)| bytes.starts_with(sig)) {
        return Err(ImageProblem::Unsupported { format });
    }
    let head: Vec<String> = bytes
        .iter()
        .take(HEAD_BYTES_SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    Err(ImageProblem::NotAnImage {
        head: head.join(" "),
    })
}

/// Decodes PNG or JPEG `bytes` to 8-bit RGB (alpha dropped, grey expanded, 16-bit narrowed),
/// refusing images wider or taller than [`MAX_IMAGE_SIDE`] before decoding their pixels.
pub fn decode(bytes: &[u8]) -> std::result::Result<(ImageFormat, RgbImage), ImageProblem> {
    let format = sniff(bytes)?;
    let corrupt = |e: image::ImageError| ImageProblem::Corrupt {
        format: format.name(),
        message: e.to_string(),
    };
    let reader = || image::ImageReader::with_format(Cursor::new(bytes), format.codec());
    let (width, height) = reader().into_dimensions().map_err(corrupt)?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageProblem::TooLarge {
            width,
            height,
            limit: MAX_IMAGE_SIDE,
        });
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    let mut decoder = reader();
    decoder.limits(limits);
    Ok((format, decoder.decode().map_err(corrupt)?.into_rgb8()))
}

/// [`decode`] with an error naming example `id`.
pub fn decode_rgb8(bytes: &[u8], id: &str) -> Result<RgbImage> {
    decode(bytes)
        .map(|(_, image)| image)
        .map_err(|problem| Error::Image {
            id: id.to_owned(),
            problem: Box::new(problem),
        })
}

/// PNG bytes of `image` (deterministic: the same pixels always give the same bytes).
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encoding PNG into memory cannot fail");
    out
}

/// JPEG bytes of `image` at `quality` (1-100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .expect("encoding JPEG into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]))
    }

    #[test]
    fn png_round_trips_exactly_and_jpeg_approximately() {
        let img = gradient(30, 20);
        let png = encode_png(&img);
        assert_eq!(sniff(&png).unwrap(), ImageFormat::Png);
        assert_eq!(decode_rgb8(&png, "x").unwrap(), img);
        let jpeg = encode_jpeg(&img, 95);
        let (format, back) = decode(&jpeg).unwrap();
        assert_eq!((format, back.dimensions()), (ImageFormat::Jpeg, (30, 20)));
        let worst = img
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(worst < 40, "JPEG at quality 95 moved a channel by {worst}");
    }

    #[test]
    fn other_formats_and_non_images_are_named() {
        let msg = |b: &[u8]| sniff(b).unwrap_err().to_string();
        assert!(msg(b"GIF89a\x01\x00").contains("GIF images are not supported"));
        assert!(msg(b"RIFF\0\0\0\0WEBPVP8 ").contains("WebP"));
        assert!(msg(b"hello world").contains("not a PNG or JPEG image (first bytes 68 65 6c"));
        assert!(msg(b"").contains("empty"));
        let truncated = &encode_png(&gradient(8, 8))[..40];
        let err = decode_rgb8(truncated, "ex-7").unwrap_err().to_string();
        assert!(
            err.starts_with("example `ex-7`: image: PNG does not decode"),
            "{err}"
        );
    }

    #[test]
    fn images_over_the_side_limit_are_refused_before_decoding() {
        let wide = encode_png(&RgbImage::new(MAX_IMAGE_SIDE + 1, 1));
        let err = decode_rgb8(&wide, "big").unwrap_err().to_string();
        assert!(
            err.contains("8193x1 px is over the limit of 8192 px per side"),
            "{err}"
        );
        let edge = encode_png(&RgbImage::new(MAX_IMAGE_SIDE, 1));
        assert_eq!(decode_rgb8(&edge, "ok").unwrap().width(), MAX_IMAGE_SIDE);
    }
}
