//! Image inputs for the efficiency comparison: the same CLIP tower and `mlp2x_gelu`
//! projector in front of the student's encoder and of the twin's prompt (the paper's
//! Mu-vision, LLaVA-style), so the two differ only in their text models. The tower runs
//! once per tile, its patch tokens (layer -2, LLaVA's choice) are projected and put before
//! the text tokens; preprocessing (decode, resize, normalise) is left out, as it is the
//! same work on both sides and not the model's.

use std::path::Path;

use edkd_models::multimodal::{ImageEmbedder, VisionConfig};
use edkd_models::vision::HfClipVisionConfig;
use tch::{Device, Kind, Tensor, nn};

use super::session::{Clock, Part};
use crate::error::{Error, Result};

/// Towers by name: `clip-vit-l-14-336` is the paper's (576 patch tokens per 336-pixel
/// tile); `clip-vit-b-16` (196 per 224-pixel tile) and `tiny` (16 per 32-pixel tile) are
/// for quicker runs and tests.
pub const TOWERS: [&str; 3] = ["clip-vit-l-14-336", "clip-vit-b-16", "tiny"];

/// The config of a named tower (random weights: speed does not depend on their values).
pub fn tower(name: &str) -> Result<HfClipVisionConfig> {
    let base = HfClipVisionConfig::default();
    Ok(match name {
        "clip-vit-l-14-336" => HfClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..base
        },
        "clip-vit-b-16" => HfClipVisionConfig {
            patch_size: 16,
            ..base
        },
        "tiny" => HfClipVisionConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            image_size: 32,
            patch_size: 8,
            ..base
        },
        _ => {
            return Err(Error::input(
                "tower",
                format!("{name:?}: expected one of {}", TOWERS.join(", ")),
            ));
        }
    })
}

/// The tower and projector of one model under test, and the tiles it sees.
pub struct ImageInput {
    /// Holds the embedder's variables.
    pub vs: nn::VarStore,
    pub embedder: ImageEmbedder,
    pub pixels: Tensor,
    d_model: i64,
}

impl ImageInput {
    /// A tower and projector for a text model of width `d_model`, seeded with `seed` (the
    /// student and its twin get identical ones), and `image_tokens / patches` random tiles.
    pub fn new(
        tower_name: &str,
        image_tokens: i64,
        d_model: i64,
        kind: Kind,
        device: Device,
        seed: i64,
    ) -> Result<Self> {
        // Any id: the benchmark splices the embeddings itself.
        let config = VisionConfig::llava(tower(tower_name)?, 0);
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(device);
        let embedder = ImageEmbedder::new(&vs.root(), &config, d_model, Path::new(tower_name))?;
        vs.set_kind(kind);
        let per_tile = embedder.tokens_per_image;
        if image_tokens <= 0 || image_tokens % per_tile != 0 {
            return Err(Error::input(
                "image_tokens",
                format!(
                    "{image_tokens}: must be a positive multiple of the {per_tile} patch tokens \
                     of one {tower_name} tile"
                ),
            ));
        }
        let t = embedder.tower_config();
        let pixels = Tensor::randn(
            [
                image_tokens / per_tile,
                t.num_channels,
                t.image_size,
                t.image_size,
            ],
            (kind, device),
        );
        Ok(Self {
            vs,
            embedder,
            pixels,
            d_model,
        })
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs.variables().values().map(|v| v.numel() as i64).sum()
    }

    /// Image embeddings `[1, tiles * patches, d_model]`: the tower, then the projector, each
    /// timed on its own.
    pub fn embeds(&self, clock: &mut Clock) -> Tensor {
        let c = &self.embedder.config;
        let features = clock.time(Part::Tower, || {
            self.embedder
                .tower
                .features(&self.pixels, c.feature_layer, c.feature_select, false)
                .expect("the feature layer was checked when the tower was built")
        }); // [tiles, patches, d_tower]
        let x = clock.time(Part::Projector, || {
            self.embedder.projector.forward(&features)
        });
        let (tiles, patches, d) = x.size3().expect("[tiles, patches, d] embeddings");
        x.reshape([1, tiles * patches, d])
    }

    /// Matmul FLOPs of the tower (up to the feature layer) and the projector for every
    /// tile, counted as in [`super::flops`].
    pub fn flops(&self) -> f64 {
        let t = self.embedder.tower_config();
        let (d, ff) = (t.hidden_size as f64, t.intermediate_size as f64);
        let tokens = (t.num_patches() + 1) as f64;
        let blocks = self
            .embedder
            .config
            .feature_layer
            .resolve(t.num_layers)
            .unwrap_or(t.num_layers as usize) as f64;
        let per_block = 2.0 * tokens * (4.0 * d * d + 2.0 * d * ff) + 4.0 * tokens * tokens * d;
        let patch_embed = 2.0
            * t.num_patches() as f64
            * (t.num_channels * t.patch_size * t.patch_size) as f64
            * d;
        let (tiles, _, _, _) = self.pixels.size4().expect("[tiles, c, s, s] pixels");
        let d_model = self.d_model as f64;
        let projector = 2.0 * t.num_patches() as f64 * (d * d_model + d_model * d_model);
        tiles as f64 * (blocks * per_block + patch_embed + projector)
    }
}
