//! `[model.vision]`: the job trains a vision-language model (a CLIP tower and a projector
//! in front of the text model; `edkd_models::multimodal`). The image placeholder's token
//! id is the data's (`images.image_token_id` of its manifest), never set here.

use std::path::PathBuf;

use edkd_models::vision::{FeatureLayer, FeatureSelect, HfClipVisionConfig, VisionActivation};
use serde::{Deserialize, Serialize};

use super::{ConfigError, field};

/// Most blocks an inline tower may have (CLIP ViT-bigG has 48).
pub const MAX_TOWER_LAYERS: i64 = 64;
/// Widest inline tower (hidden and MLP widths).
pub const MAX_TOWER_WIDTH: i64 = 16_384;
/// Largest inline tower input side, pixels ([`edkd_data::images::MAX_IMAGE_SIDE`] is the
/// data's limit; towers are far smaller).
pub const MAX_TOWER_IMAGE_SIZE: i64 = 4096;
/// Largest `layer_norm_eps` of an inline tower.
pub const MAX_LAYER_NORM_EPS: f64 = 0.1;

/// `[model.vision]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionSection {
    /// A CLIP folder (`CLIPVisionModel` or `CLIPModel`): the tower's weights and its image
    /// processor. Exclusive with `tower_config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tower: Option<PathBuf>,
    /// A freshly initialised tower of this shape (training from scratch, e.g. on synthetic
    /// images), with CLIP's default image processor at its `image_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tower_config: Option<TowerShape>,
    /// Which hidden state of the tower is read (unset: -2, LLaVA's; with a vision-language
    /// `model.init`, the folder's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_layer: Option<i64>,
    /// `patch` or `cls_patch` (unset: `patch`; with a vision-language `model.init`, the
    /// folder's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_select: Option<FeatureSelect>,
    /// Whether the tower trains (unset: no, as in LLaVA; with a vision-language
    /// `model.init`, the folder's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_tower: Option<bool>,
    /// Whether the text model trains (unset: yes; with a vision-language `model.init`, the
    /// folder's choice). The projector always trains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_text: Option<bool>,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}

fn clip_eps() -> f64 {
    1e-5
}

/// The shape of a fresh CLIP tower: the fields of transformers' `CLIPVisionConfig` that a
/// from-scratch tower needs (RGB input, so `num_channels` is 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerShape {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub image_size: i64,
    pub patch_size: i64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "clip_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub attention_dropout: f64,
}

impl TowerShape {
    /// The raw config the model crate builds a tower from.
    pub fn to_hf(&self) -> HfClipVisionConfig {
        HfClipVisionConfig {
            model_type: Some("clip_vision_model".into()),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: 3,
            image_size: self.image_size,
            patch_size: self.patch_size,
            hidden_act: self.hidden_act.clone(),
            layer_norm_eps: self.layer_norm_eps,
            attention_dropout: self.attention_dropout,
            ..HfClipVisionConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let name = |f: &str| format!("model.vision.tower_config.{f}");
        let ranged = [
            ("hidden_size", self.hidden_size, MAX_TOWER_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_TOWER_WIDTH),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                MAX_TOWER_LAYERS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                self.hidden_size.max(1),
            ),
            ("image_size", self.image_size, MAX_TOWER_IMAGE_SIZE),
            ("patch_size", self.patch_size, self.image_size.max(1)),
        ];
        for (f, v, hi) in ranged {
            if !(1..=hi).contains(&v) {
                return Err(field(&name(f), format!("{v} is outside [1, {hi}]")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(field(
                &name("num_attention_heads"),
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(field(
                &name("patch_size"),
                format!(
                    "{} does not divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if VisionActivation::parse(&self.hidden_act).is_none() {
            return Err(field(
                &name("hidden_act"),
                format!("`{}` is not an activation edkd knows", self.hidden_act),
            ));
        }
        let eps = self.layer_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && eps <= MAX_LAYER_NORM_EPS) {
            return Err(field(
                &name("layer_norm_eps"),
                format!("{eps} is outside (0, {MAX_LAYER_NORM_EPS}]"),
            ));
        }
        let p = self.attention_dropout;
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(field(
                &name("attention_dropout"),
                format!("{p} is outside [0, 1)"),
            ));
        }
        Ok(())
    }
}

impl VisionSection {
    /// The checks that need no folder: one tower source for a fresh model, the shape of an
    /// inline tower, the feature layer's range. `init`: whether `model.init` is set (a
    /// vision-language folder brings its tower; a text one takes `tower`).
    pub fn validate(&self, init: bool) -> Result<(), ConfigError> {
        match (&self.tower, &self.tower_config) {
            (Some(_), Some(_)) => {
                return Err(field(
                    "model.vision.tower_config",
                    "set either model.vision.tower (a CLIP folder) or tower_config (a fresh \
                     tower), not both",
                ));
            }
            (None, None) if !init => {
                return Err(field(
                    "model.vision.tower",
                    "required (a CLIP folder), or tower_config for a fresh tower, unless \
                     model.init is a vision-language folder",
                ));
            }
            (_, Some(_)) if init => {
                return Err(field(
                    "model.vision.tower_config",
                    "a fresh tower cannot join a model.init folder; give model.vision.tower \
                     (a CLIP folder) to add vision to a text student",
                ));
            }
            _ => {}
        }
        if let Some(shape) = &self.tower_config {
            shape.validate()?;
        }
        if let Some(layer) = self.feature_layer {
            let layers = self
                .tower_config
                .as_ref()
                .map_or(MAX_TOWER_LAYERS, |s| s.num_hidden_layers);
            check_feature_layer(layer, layers)?;
        }
        Ok(())
    }

    /// The feature layer to use (the section's, else LLaVA's).
    pub fn feature_layer(&self) -> FeatureLayer {
        self.feature_layer.map_or(FeatureLayer::LLAVA, FeatureLayer)
    }
}

/// Errors unless `layer` indexes one of the `layers + 1` hidden states of a tower with
/// `layers` blocks (negative: from the end).
pub fn check_feature_layer(layer: i64, layers: i64) -> Result<(), ConfigError> {
    if FeatureLayer(layer).resolve(layers).is_err() {
        return Err(field(
            "model.vision.feature_layer",
            format!(
                "{layer} is outside [{}, {layers}] for a tower with {layers} blocks",
                -(layers + 1)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> TowerShape {
        TowerShape {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            image_size: 32,
            patch_size: 8,
            hidden_act: quick_gelu(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
        }
    }

    fn err(section: &VisionSection, init: bool) -> String {
        section.validate(init).unwrap_err().to_string()
    }

    #[test]
    fn one_tower_source_is_required_unless_a_folder_brings_it() {
        let none = VisionSection::default();
        assert!(err(&none, false).contains("model.vision.tower"));
        none.validate(true).unwrap();
        let both = VisionSection {
            tower: Some("clip".into()),
            tower_config: Some(shape()),
            ..Default::default()
        };
        assert!(err(&both, false).contains("not both"));
        let fresh_on_init = VisionSection {
            tower_config: Some(shape()),
            ..Default::default()
        };
        fresh_on_init.validate(false).unwrap();
        assert!(err(&fresh_on_init, true).contains("model.vision.tower_config"));
    }

    #[test]
    fn the_section_parses_round_trips_and_resolves_its_folder() {
        use crate::config::TrainConfig;
        let t = "model.vision.tower_config";
        let cfg = TrainConfig::from_overrides(&[
            "data.manifest=x".into(),
            format!("{t}.hidden_size=64"),
            format!("{t}.num_hidden_layers=2"),
            format!("{t}.num_attention_heads=4"),
            format!("{t}.intermediate_size=128"),
            format!("{t}.image_size=48"),
            format!("{t}.patch_size=16"),
            "model.vision.train_tower=true".into(),
        ])
        .unwrap();
        cfg.validate().unwrap();
        let v = cfg.model.vision.as_ref().unwrap();
        assert_eq!(v.tower_config.as_ref().unwrap().hidden_act, "quick_gelu");
        assert_eq!((v.train_tower, v.train_text), (Some(true), None));
        let back: TrainConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
        let e = TrainConfig::from_overrides(&["model.vision.tower_cfg=1".into()]).unwrap_err();
        assert!(e.to_string().contains("tower_cfg"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        std::fs::write(
            &job,
            "[data]\nmanifest = \"d\"\n[model.vision]\ntower = \"clip\"\n",
        )
        .unwrap();
        let cfg = TrainConfig::load(&job, &[]).unwrap();
        let tower = cfg.model.vision.unwrap().tower.unwrap();
        assert_eq!(tower, dir.path().join("clip"));
    }

    #[test]
    fn every_tower_number_is_range_checked_by_name() {
        type Break = fn(&mut TowerShape);
        let cases: [(&str, Break); 9] = [
            ("hidden_size", |s| s.hidden_size = 0),
            ("intermediate_size", |s| s.intermediate_size = -1),
            ("num_hidden_layers", |s| s.num_hidden_layers = 65),
            ("num_attention_heads", |s| s.num_attention_heads = 3),
            ("image_size", |s| s.image_size = 5000),
            ("patch_size", |s| s.patch_size = 7),
            ("hidden_act", |s| s.hidden_act = "swish2".into()),
            ("layer_norm_eps", |s| s.layer_norm_eps = f64::NAN),
            ("attention_dropout", |s| s.attention_dropout = 1.0),
        ];
        for (name, break_it) in cases {
            let mut s = shape();
            break_it(&mut s);
            let section = VisionSection {
                tower_config: Some(s),
                ..Default::default()
            };
            let e = err(&section, false);
            assert!(
                e.contains(&format!("model.vision.tower_config.{name}")),
                "{name}: {e}"
            );
        }
        let layer = VisionSection {
            tower_config: Some(shape()),
            feature_layer: Some(-4),
            ..Default::default()
        };
        let e = err(&layer, false);
        assert!(
            e.contains("model.vision.feature_layer") && e.contains("[-3, 2]"),
            "{e}"
        );
    }
}
