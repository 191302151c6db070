//! Pixels to text-model embeddings: the CLIP tower, its chosen feature layer and tokens,
//! and the projector. The student and its decoder-only twin hold the same one, so the two
//! differ only in their text models.

use std::path::Path;

use tch::{Device, Kind, Tensor, nn};

use super::config::VisionConfig;
use super::merge::{ImageSlots, Merged, Side, splice};
use super::projector::Projector;
use crate::error::Result;
use crate::vision::{ClipVisionConfig, ClipVisionModel};

/// VarStore scope of the tower's container; the tower itself sits at
/// [`TOWER_SCOPE`] (`vision_tower.vision_model.*`, as LLaVA's checkpoints key it).
pub const VISION_SCOPE: &str = "vision_tower";
/// Where the tower's variables are: LLaVA's `model.vision_tower.vision_tower.vision_model`
/// less LLaVA's wrappers, i.e. a `CLIPVisionModel`'s own keys under `vision_tower.`.
pub const TOWER_SCOPE: &str = "vision_tower.vision_model";
/// VarStore scope of the projector (LLaVA's `mm_projector`).
pub const PROJECTOR_SCOPE: &str = "mm_projector";

/// The tower and projector of a vision-language model.
#[derive(Debug)]
pub struct ImageEmbedder {
    pub tower: ClipVisionModel,
    pub projector: Projector,
    pub config: VisionConfig,
    /// Image tokens per image after feature selection.
    pub tokens_per_image: i64,
}

impl ImageEmbedder {
    /// Builds both under `root` ([`TOWER_SCOPE`], [`PROJECTOR_SCOPE`]); `path` names the
    /// config file in errors.
    pub fn new(
        root: &nn::Path<'_>,
        config: &VisionConfig,
        d_model: i64,
        path: &Path,
    ) -> Result<Self> {
        let tower_config = config.tower_config(path)?;
        let tower = ClipVisionModel::new(&(root / VISION_SCOPE / "vision_model"), &tower_config);
        let projector = Projector::new(
            &(root / PROJECTOR_SCOPE),
            config.projector,
            tower_config.hidden_size,
            d_model,
        );
        Ok(Self {
            tokens_per_image: config.tokens_per_image(&tower_config),
            tower,
            projector,
            config: config.clone(),
        })
    }

    pub fn tower_config(&self) -> &ClipVisionConfig {
        &self.tower.config
    }

    /// `pixel_values` `[n, c, s, s]` -> image embeddings `[n, tokens_per_image, d_model]`.
    /// A frozen tower runs without autograd (its activations are not kept).
    pub fn forward(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let c = &self.config;
        let features = if c.train_tower && train {
            self.tower
                .features(pixel_values, c.feature_layer, c.feature_select, train)?
        } else {
            tch::no_grad(|| {
                self.tower
                    .features(pixel_values, c.feature_layer, c.feature_select, train)
            })?
        };
        Ok(self.projector.forward(&features))
    }
}

/// A right-padded text batch as the text model embeds it, before any image is spliced in.
pub struct TextBatch<'a> {
    /// `[b, s]`: where the placeholders are.
    pub input_ids: &'a Tensor,
    /// `[b, s]` bool, right padding: each row's extent.
    pub valid: &'a Tensor,
    /// `[b, s]` bool: which text tokens are attended to (`valid`, less pad-id tokens when
    /// the student masks them).
    pub key_valid: &'a Tensor,
    /// `[b, s, d]`: the text model's embeddings of `input_ids`.
    pub embeds: &'a Tensor,
}

impl ImageEmbedder {
    /// Embeds `pixel_values` (`[n, c, s, s]`, one image per placeholder row, in row order)
    /// and splices them into `text`, padding the result on `side`.
    pub fn splice(
        &self,
        text: &TextBatch<'_>,
        pixel_values: Option<&Tensor>,
        side: Side,
        train: bool,
    ) -> Result<Merged> {
        let (b, s) = text.input_ids.size2()?;
        let flat = Vec::<i64>::try_from(text.input_ids.to_device(Device::Cpu).flatten(0, -1))?;
        let ids: Vec<Vec<i64>> = flat
            .chunks(s.max(1) as usize)
            .map(<[i64]>::to_vec)
            .collect();
        let lengths = Vec::<i64>::try_from(text.valid.to_device(Device::Cpu).sum_dim_intlist(
            -1,
            false,
            Kind::Int64,
        ))?;
        debug_assert_eq!(lengths.len() as i64, b);
        let n_images = pixel_values.map_or(0, |p| p.size().first().copied().unwrap_or(0));
        let slots = ImageSlots::find(&ids, &lengths, self.config.image_token_id, n_images)?;
        let images = match pixel_values {
            Some(px) if n_images > 0 => {
                Some(self.forward(&px.to_device(self.tower.device()), train)?)
            }
            _ => None,
        };
        splice(
            text.embeds,
            text.key_valid,
            &lengths,
            slots,
            images.as_ref(),
            side,
        )
    }
}
