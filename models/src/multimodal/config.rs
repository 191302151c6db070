//! The `vision` section of a vision-language student's config.json: which tower, which of
//! its features, how they reach `d_model`, where they go in the text, and what trains.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::vision::HfClipVisionConfig;
use crate::vision::{ClipCheckpoint, ClipVisionConfig, FeatureLayer, FeatureSelect};

/// How tower features become text-model embeddings (LLaVA's `mm_projector_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ProjectorKind {
    /// `Linear(tower -> d_model) -> GELU (erf) -> Linear(d_model -> d_model)`, both with
    /// bias: LLaVA-1.5's projector and the paper's Mu-vision.
    #[default]
    #[serde(rename = "mlp2x_gelu")]
    Mlp2xGelu,
}

fn llava_layer() -> FeatureLayer {
    FeatureLayer::LLAVA
}

fn yes() -> bool {
    true
}

/// A tower, a projector and a placeholder token on top of a text model. Absent from a
/// text student's config (its config.json is then what it always was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// The tower's `CLIPVisionConfig` as its own config.json has it, kept inline so a
    /// student folder is whole without the folder the tower came from.
    pub tower: HfClipVisionConfig,
    /// Which hidden state of the tower is read (default -2, LLaVA's).
    #[serde(default = "llava_layer")]
    pub feature_layer: FeatureLayer,
    /// Patch tokens only (default) or the class token too.
    #[serde(default)]
    pub feature_select: FeatureSelect,
    /// The `<image>` placeholder in `input_ids`: each row's one occurrence is replaced by
    /// its image's projected features.
    pub image_token_id: i64,
    #[serde(default)]
    pub projector: ProjectorKind,
    /// Whether the tower's weights train. Default off: LLaVA keeps CLIP frozen in both of
    /// its stages, and a frozen tower's activations need no gradient memory.
    #[serde(default)]
    pub train_tower: bool,
    /// Whether the text model's weights train (off: LLaVA's first stage, projector only).
    /// The projector always trains.
    #[serde(default = "yes")]
    pub train_text: bool,
}

impl VisionConfig {
    /// A config for the tower whose raw config is `tower`, with LLaVA's choices.
    pub fn llava(tower: HfClipVisionConfig, image_token_id: i64) -> Self {
        Self {
            tower,
            feature_layer: FeatureLayer::LLAVA,
            feature_select: FeatureSelect::Patch,
            image_token_id,
            projector: ProjectorKind::Mlp2xGelu,
            train_tower: false,
            train_text: true,
        }
    }

    /// The tower's resolved config; `path` names the file in errors.
    pub fn tower_config(&self, path: &Path) -> Result<ClipVisionConfig> {
        ClipVisionConfig::resolve(&self.tower, ClipCheckpoint::VisionModel, path)
    }

    /// Image tokens each image becomes in the text model's input.
    pub fn tokens_per_image(&self, tower: &ClipVisionConfig) -> i64 {
        match self.feature_select {
            FeatureSelect::Patch => tower.num_patches(),
            FeatureSelect::ClsPatch => tower.num_patches() + 1,
        }
    }

    /// Parameters of tower and projector for a text model of width `d_model`, from the
    /// shapes (the tower's `post_layernorm` included though unused: every CLIP checkpoint
    /// has it). The same for a student and its twin.
    pub fn num_parameters(&self, d_model: i64, path: &Path) -> Result<i64> {
        let t = self.tower_config(path)?;
        let d = t.hidden_size;
        let ff = t.intermediate_size;
        let embeddings =
            d + t.num_channels * t.patch_size * t.patch_size * d + (t.num_patches() + 1) * d;
        let attn = 4 * (d * d + d);
        let mlp = 2 * d * ff + ff + d;
        let layer_norms = 2 * 2 * d;
        let tower = embeddings + t.num_layers * (attn + mlp + layer_norms) + 2 * 2 * d;
        Ok(tower + super::projector::Projector::num_parameters(d, d_model))
    }

    /// Checks the section against the text model it sits on (`vocab_size`, `pad_token_id`);
    /// names the field at fault.
    pub fn validate(&self, vocab_size: i64, pad_token_id: i64, path: &Path) -> Result<()> {
        let bad = |field: &'static str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let tower = self.tower_config(path)?;
        self.feature_layer
            .resolve(tower.num_layers)
            .map_err(|e| bad("vision.feature_layer", e.to_string()))?;
        if !(0..vocab_size).contains(&self.image_token_id) {
            return Err(bad(
                "vision.image_token_id",
                format!(
                    "{} is outside the vocabulary [0, {vocab_size})",
                    self.image_token_id
                ),
            ));
        }
        // Padding must never be mistaken for a place to put an image.
        if self.image_token_id == pad_token_id {
            return Err(bad(
                "vision.image_token_id",
                format!("{} is the pad token id", self.image_token_id),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_llavas_and_the_projector_is_named_as_llava_names_it() {
        let json = serde_json::json!({ "tower": {"hidden_size": 32}, "image_token_id": 5 });
        let c: VisionConfig = serde_json::from_value(json).unwrap();
        assert_eq!(c, VisionConfig::llava(c.tower.clone(), 5));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["projector"], "mlp2x_gelu");
        assert_eq!(back["feature_layer"], -2);
        assert_eq!(back["feature_select"], "patch");
        let bad = serde_json::json!({ "tower": {}, "image_token_id": 5, "projector": "linear" });
        let e = serde_json::from_value::<VisionConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mlp2x_gelu"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = VisionConfig::llava(HfClipVisionConfig::default(), 600);
        let p = Path::new("config.json");
        let e = c.validate(512, 0, p).unwrap_err().to_string();
        assert!(
            e.contains("vision.image_token_id") && e.contains("[0, 512)"),
            "{e}"
        );
        c.image_token_id = 0;
        let e = c.validate(512, 0, p).unwrap_err().to_string();
        assert!(e.contains("pad token"), "{e}");
        c.image_token_id = 7;
        c.feature_layer = FeatureLayer(-14);
        let e = c.validate(512, 0, p).unwrap_err().to_string();
        assert!(e.contains("vision.feature_layer"), "{e}");
        c.feature_layer = FeatureLayer(-13);
        c.validate(512, 0, p).unwrap();
    }
}
