//! CLIP image preprocessing as transformers 5.23's `CLIPImageProcessorPil` does it: RGB
//! (transparency composited onto white), resize (shortest edge, Pillow's bicubic), centre
//! crop, rescale by 1/255, normalise with the OpenAI CLIP mean and std.
//!
//! transformers 5.23 also has a torchvision backend (`CLIPImageProcessor`), which
//! `AutoImageProcessor` picks when torchvision is installed; its resize works on tensors and
//! rounds differently. edkd follows the PIL backend: it is what transformers uses without
//! torchvision, and PIL's bicubic is what LLaVA's CLIP towers were trained with.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;
use tch::Tensor;

use super::resample::{Filter, resize};
use crate::error::{Error, Result, read_json};

pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
/// `OPENAI_CLIP_MEAN` and `OPENAI_CLIP_STD` of transformers, per RGB channel.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `Resampling.BICUBIC`, CLIP's resize filter.
const PIL_BICUBIC: i64 = 3;

/// `size` or `crop_size`: a dict, or a bare integer in configs older than transformers 4.26.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum HfSize {
    Edge(i64),
    Dict {
        shortest_edge: Option<i64>,
        height: Option<i64>,
        width: Option<i64>,
    },
}

/// Mirrors `preprocessor_config.json` of a CLIP image processor (defaults: the class's).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct HfImageProcessorConfig {
    do_resize: bool,
    size: Option<HfSize>,
    resample: i64,
    do_center_crop: bool,
    crop_size: Option<HfSize>,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    do_convert_rgb: bool,
}

impl Default for HfImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: None,
            resample: PIL_BICUBIC,
            do_center_crop: true,
            crop_size: None,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN.to_vec(),
            image_std: OPENAI_CLIP_STD.to_vec(),
            do_convert_rgb: true,
        }
    }
}

/// How the resize step sizes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side becomes this long, the longer one keeps the aspect ratio (truncated).
    ShortestEdge(u32),
    Exact {
        height: u32,
        width: u32,
    },
}

/// A resolved CLIP image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub resize: Option<(Resize, Filter)>,
    /// `(height, width)` of the centre crop.
    pub crop: Option<(u32, u32)>,
    pub rescale: Option<f64>,
    /// Per-channel `(mean, std)`.
    pub normalize: Option<([f64; 3], [f64; 3])>,
}

impl ImageProcessor {
    /// OpenAI CLIP's processing for a tower reading `image_size` pixels square.
    pub fn clip_default(image_size: u32) -> Self {
        Self {
            resize: Some((Resize::ShortestEdge(image_size), Filter::Bicubic)),
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)),
        }
    }

    /// Reads `dir/preprocessor_config.json`, or falls back to [`Self::clip_default`] at the
    /// tower's own `image_size` (transformers' class default, 224, would not fit a 336 tower).
    pub fn from_folder(dir: &Path, image_size: u32) -> Result<Self> {
        let path = dir.join(PREPROCESSOR_FILE);
        if !path.exists() {
            return Ok(Self::clip_default(image_size));
        }
        let raw: HfImageProcessorConfig = read_json(&path)?;
        Self::resolve(&raw, image_size, &path)
    }

    fn resolve(raw: &HfImageProcessorConfig, image_size: u32, path: &Path) -> Result<Self> {
        let bad = |field: &'static str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field,
            msg,
        };
        if !raw.do_convert_rgb {
            return Err(bad("do_convert_rgb", "false: edkd always reads RGB".into()));
        }
        let side = |field: &'static str, v: Option<i64>| -> Result<u32> {
            v.filter(|&v| v > 0)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad(field, format!("{v:?}: expected a positive pixel count")))
        };
        let resize = if raw.do_resize {
            let filter = Filter::from_pil(raw.resample).ok_or_else(|| {
                bad(
                    "resample",
                    format!(
                        "{}: supported are 2 (bilinear) and 3 (bicubic)",
                        raw.resample
                    ),
                )
            })?;
            let how = match &raw.size {
                None => Resize::ShortestEdge(image_size),
                Some(HfSize::Edge(e)) => Resize::ShortestEdge(side("size", Some(*e))?),
                Some(HfSize::Dict {
                    shortest_edge: Some(e),
                    ..
                }) => Resize::ShortestEdge(side("size.shortest_edge", Some(*e))?),
                Some(HfSize::Dict { height, width, .. }) => Resize::Exact {
                    height: side("size.height", *height)?,
                    width: side("size.width", *width)?,
                },
            };
            Some((how, filter))
        } else {
            None
        };
        let crop = if raw.do_center_crop {
            Some(match &raw.crop_size {
                None => (image_size, image_size),
                Some(HfSize::Edge(e)) => {
                    let e = side("crop_size", Some(*e))?;
                    (e, e)
                }
                Some(HfSize::Dict { height, width, .. }) => (
                    side("crop_size.height", *height)?,
                    side("crop_size.width", *width)?,
                ),
            })
        } else {
            None
        };
        let channels = |field: &'static str, v: &[f64]| -> Result<[f64; 3]> {
            <[f64; 3]>::try_from(v).map_err(|_| bad(field, format!("{v:?}: expected 3 values")))
        };
        let normalize = if raw.do_normalize {
            let std = channels("image_std", &raw.image_std)?;
            if std.iter().any(|&s| s <= 0.0) {
                return Err(bad("image_std", format!("{std:?}: must be positive")));
            }
            Some((channels("image_mean", &raw.image_mean)?, std))
        } else {
            None
        };
        Ok(Self {
            resize,
            crop,
            rescale: raw.do_rescale.then_some(raw.rescale_factor),
            normalize,
        })
    }

    /// The `(width, height)` the resize step produces for a `width x height` image.
    pub fn resized_size(how: Resize, width: u32, height: u32) -> (u32, u32) {
        match how {
            Resize::Exact { height, width } => (width, height),
            Resize::ShortestEdge(edge) => {
                let (short, long) = (width.min(height), width.max(height));
                // Python's `int(edge * long / short)`: true division, then truncation.
                let new_long = (f64::from(edge) * f64::from(long) / f64::from(short)) as u32;
                if width <= height {
                    (edge, new_long)
                } else {
                    (new_long, edge)
                }
            }
        }
    }

    /// Resized and cropped 8-bit pixels, before rescaling (what PIL and numpy hold as uint8).
    pub fn geometry(&self, img: &RgbImage) -> RgbImage {
        let mut img = img.clone();
        if let Some((how, filter)) = self.resize {
            let (w, h) = Self::resized_size(how, img.width(), img.height());
            // Pillow returns a copy when the size does not change.
            if (w, h) != img.dimensions() {
                img = resize(&img, w, h, filter);
            }
        }
        match self.crop {
            Some((height, width)) => center_crop(&img, height, width),
            None => img,
        }
    }

    /// One image as `[3, h, w]` f32 values, as the processor's `pixel_values` row.
    pub fn pixel_values(&self, img: &RgbImage) -> Tensor {
        let img = self.geometry(img);
        let (w, h) = img.dimensions();
        let (w, h) = (w as usize, h as usize);
        let mut chw = vec![0f32; 3 * h * w];
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                // As numpy: rescale in f64 and cast to f32, then normalise in f32.
                let mut v = match self.rescale {
                    Some(f) => (f64::from(p.0[c]) * f) as f32,
                    None => f32::from(p.0[c]),
                };
                if let Some((mean, std)) = &self.normalize {
                    v = (v - mean[c] as f32) / std[c] as f32;
                }
                chw[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        Tensor::from_slice(&chw).view([3, h as i64, w as i64])
    }

    /// A batch `[n, 3, h, w]`; the images must come out the same size (any crop does that).
    pub fn batch(&self, images: &[RgbImage]) -> Result<Tensor> {
        let rows: Vec<Tensor> = images.iter().map(|i| self.pixel_values(i)).collect();
        let first = rows.first().map(Tensor::size);
        if let Some(bad) = rows.iter().find(|r| Some(r.size()) != first) {
            return Err(Error::Input(format!(
                "images processed to different sizes ({first:?} and {:?}); configure a crop",
                bad.size()
            )));
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }
}

/// transformers' `center_crop`: the window starts at `(size - crop) // 2` (floor), and
/// where the image is smaller than the crop the outside is zero.
pub fn center_crop(img: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let top = (i64::from(h) - i64::from(height)).div_euclid(2);
    let left = (i64::from(w) - i64::from(width)).div_euclid(2);
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
        if (0..i64::from(w)).contains(&sx) && (0..i64::from(h)).contains(&sy) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-channel picture of `rows` replicated into RGB.
    fn grey(rows: &[&[u8]]) -> RgbImage {
        RgbImage::from_fn(rows[0].len() as u32, rows.len() as u32, |x, y| {
            image::Rgb([rows[y as usize][x as usize]; 3])
        })
    }

    #[test]
    fn centre_crop_pads_with_zeros_where_transformers_does() {
        // Expected values printed by transformers.image_transforms.center_crop.
        let small = grey(&[&[1, 2, 3], &[4, 5, 6]]);
        let want = grey(&[&[0, 0, 0, 0], &[0, 1, 2, 3], &[0, 4, 5, 6], &[0, 0, 0, 0]]);
        assert_eq!(center_crop(&small, 4, 4), want);
        let tall = grey(&[&[1, 2], &[3, 4], &[5, 6], &[7, 8], &[9, 10]]);
        let want = grey(&[&[0, 3, 4, 0], &[0, 5, 6, 0], &[0, 7, 8, 0]]);
        assert_eq!(center_crop(&tall, 3, 4), want);
    }

    #[test]
    fn the_longer_side_is_truncated_like_python_int() {
        let edge = Resize::ShortestEdge(336);
        assert_eq!(ImageProcessor::resized_size(edge, 640, 480), (448, 336));
        // 336 * 500 / 333 = 504.5045..., truncated.
        assert_eq!(ImageProcessor::resized_size(edge, 333, 500), (336, 504));
        assert_eq!(ImageProcessor::resized_size(edge, 336, 336), (336, 336));
    }
}
