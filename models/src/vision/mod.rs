//! A CLIP-style ViT vision tower and its image processor, for image-to-text students in the
//! way of LLaVA (and the paper's Mu-vision): a CLIP ViT-L/14-336 tower whose second-to-last
//! layer's patch features feed a projector into the language model.
//!
//! Loads Hugging Face folders written by `CLIPVisionModel.save_pretrained` (transformers 4.x
//! or 5.x) or `CLIPModel.save_pretrained`, strictly; preprocessing follows transformers'
//! PIL-backend `CLIPImageProcessor` bit for bit on PNG input.

pub mod checkpoint;
pub mod config;
pub mod decode;
mod layer;
pub mod model;
pub mod processor;
pub mod resample;

use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{Device, Tensor, nn::VarStore};

pub use checkpoint::load_tower_weights;
pub use config::{ClipCheckpoint, ClipVisionConfig, HfClipVisionConfig, VisionActivation};
pub use decode::open_rgb;
pub use model::{ClipVisionModel, FeatureLayer, FeatureSelect, VisionOutput};
pub use processor::{ImageProcessor, Resize};
pub use resample::Filter;

use crate::error::Result;
use crate::teacher::{LoadOptions, check_dtype};

/// A vision tower loaded from a folder, with the image processor that folder describes.
pub struct VisionTower {
    /// Holds the tower under [`VisionTower::SCOPE`].
    pub vs: VarStore,
    pub model: ClipVisionModel,
    pub processor: ImageProcessor,
    pub dir: PathBuf,
}

impl VisionTower {
    /// The VarStore path of a standalone tower: the key prefix of `CLIPModel` checkpoints.
    pub const SCOPE: &'static str = "vision_model";

    /// Loads `dir` (config.json, model.safetensors or a sharded index, and
    /// preprocessor_config.json when present). The weights are frozen: a tower loaded on its
    /// own is an inference component; a trainer that tunes one builds it in its own VarStore.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        check_dtype(opts.kind, opts.device)?;
        let config = ClipVisionConfig::from_folder(dir)?;
        let processor = ImageProcessor::from_folder(dir, config.image_size as u32)?;
        let mut vs = VarStore::new(Device::Cpu);
        let model =
            crate::rng::exclusive(|| ClipVisionModel::new(&(vs.root() / Self::SCOPE), &config));
        load_tower_weights(&mut vs, Self::SCOPE, dir, config.checkpoint)?;
        vs.set_kind(opts.kind);
        vs.set_device(opts.device);
        vs.freeze();
        Ok(Self {
            vs,
            model,
            processor,
            dir: dir.to_path_buf(),
        })
    }

    /// Processed pixels `[n, 3, s, s]` of decoded images, on the tower's device.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        Ok(self.processor.batch(images)?.to_device(self.model.device()))
    }

    /// LLaVA's features of image files: layer -2, patch tokens only, `[n, patches, d]`.
    pub fn llava_features(&self, paths: &[&Path]) -> Result<Tensor> {
        let images = paths
            .iter()
            .map(|p| open_rgb(p))
            .collect::<Result<Vec<_>>>()?;
        let pixels = self.pixel_values(&images)?;
        tch::no_grad(|| {
            self.model
                .features(&pixels, FeatureLayer::LLAVA, FeatureSelect::Patch, false)
        })
    }
}

/// Sets `requires_grad` on every variable under `scope` (a tower inside a larger model):
/// LLaVA's first stage trains the projector with the tower frozen.
pub fn set_trainable(vs: &VarStore, scope: &str, trainable: bool) {
    let prefix = format!("{scope}.");
    for (name, var) in vs.variables() {
        if name.starts_with(&prefix) {
            let _ = var.set_requires_grad(trainable);
        }
    }
}
