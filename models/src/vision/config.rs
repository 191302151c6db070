//! The `config.json` of a CLIP vision tower (`CLIPVisionModel`, or the `vision_config` of a
//! `CLIPModel`) and the resolved runtime config.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result, read_json};
use crate::nn::Activation;

/// Mirrors transformers' `CLIPVisionConfig`; the defaults are that class's (ViT-B/32).
/// Serialisable so a vision-language student can carry its tower's config inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HfClipVisionConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
}

impl Default for HfClipVisionConfig {
    fn default() -> Self {
        Self {
            model_type: None,
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
        }
    }
}

impl HfClipVisionConfig {
    /// The tower's raw config in `dir/config.json` (a `CLIPVisionModel`'s own, or a
    /// `CLIPModel`'s `vision_config`) and which checkpoint the folder holds.
    pub fn from_folder(dir: &Path) -> Result<(Self, ClipCheckpoint)> {
        let path = dir.join("config.json");
        let top: serde_json::Value = read_json(&path)?;
        fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value, path: &Path) -> Result<T> {
            serde_json::from_value(v).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })
        }
        let model_type = top.get("model_type").and_then(|t| t.as_str());
        if top.get("vision_config").is_some() || model_type == Some(FULL_MODEL_TYPE) {
            let full: HfClipConfig = parse(top, &path)?;
            return Ok((full.vision_config, ClipCheckpoint::FullModel));
        }
        if let Some(other) = model_type.filter(|t| *t != VISION_MODEL_TYPE) {
            return Err(Error::UnsupportedArchitecture {
                path: path.clone(),
                found: format!("model_type {other}"),
                supported: format!("model_type {VISION_MODEL_TYPE} or {FULL_MODEL_TYPE}"),
            });
        }
        Ok((parse(top, &path)?, ClipCheckpoint::VisionModel))
    }
}

/// The part of a `CLIPModel` config.json the vision tower reads.
#[derive(Debug, Clone, Deserialize)]
struct HfClipConfig {
    /// transformers uses `CLIPVisionConfig`'s defaults when it is absent.
    #[serde(default)]
    vision_config: HfClipVisionConfig,
}

/// Which checkpoint a folder holds; it decides which keys are expected and which are known
/// extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipCheckpoint {
    /// `CLIPVisionModel`: only the vision tower.
    VisionModel,
    /// `CLIPModel`: the vision tower under `vision_model.`, plus a text tower and projections.
    FullModel,
}

/// The model types this loader reads, with what they are.
const VISION_MODEL_TYPE: &str = "clip_vision_model";
const FULL_MODEL_TYPE: &str = "clip";

/// `hidden_act` of a CLIP tower: OpenAI's checkpoints use `quick_gelu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionActivation {
    /// `x * sigmoid(1.702 x)`, CLIP's original approximation of GELU.
    QuickGelu,
    Other(Activation),
}

/// The coefficient of `quick_gelu` (transformers' `QuickGELUActivation`).
const QUICK_GELU_SCALE: f64 = 1.702;

impl VisionActivation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            other => Activation::parse(other).map(Self::Other),
        }
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::QuickGelu => x * (x * QUICK_GELU_SCALE).sigmoid(),
            Self::Other(act) => act.apply(x),
        }
    }
}

/// The resolved, validated config of a CLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub head_dim: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub act: VisionActivation,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub checkpoint: ClipCheckpoint,
}

impl ClipVisionConfig {
    /// Patches along one side of the (square) input.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image (without the class token).
    pub fn num_patches(&self) -> i64 {
        self.grid() * self.grid()
    }

    /// Reads `dir/config.json` (a `CLIPVisionModel` or `CLIPModel` config).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let (raw, checkpoint) = HfClipVisionConfig::from_folder(dir)?;
        Self::resolve(&raw, checkpoint, &dir.join("config.json"))
    }

    /// Checks the fields the forward pass depends on; `path` names the file in errors.
    pub fn resolve(
        raw: &HfClipVisionConfig,
        checkpoint: ClipCheckpoint,
        path: &Path,
    ) -> Result<Self> {
        let bad = |field: &'static str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let positive = [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_channels", raw.num_channels),
            ("image_size", raw.image_size),
            ("patch_size", raw.patch_size),
        ];
        for (field, value) in positive {
            if value <= 0 {
                return Err(bad(field, format!("{value}: must be positive")));
            }
        }
        if raw.hidden_size % raw.num_attention_heads != 0 {
            return Err(bad(
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    raw.hidden_size, raw.num_attention_heads
                ),
            ));
        }
        // transformers would silently drop the remainder's pixels; no real tower does this.
        if raw.image_size % raw.patch_size != 0 {
            return Err(bad(
                "image_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    raw.image_size, raw.patch_size
                ),
            ));
        }
        let act = VisionActivation::parse(&raw.hidden_act).ok_or_else(|| {
            bad(
                "hidden_act",
                format!(
                    "{:?}: supported are quick_gelu, gelu, gelu_pytorch_tanh, silu, relu",
                    raw.hidden_act
                ),
            )
        })?;
        if !raw.layer_norm_eps.is_finite() || raw.layer_norm_eps <= 0.0 {
            return Err(bad(
                "layer_norm_eps",
                format!("{}: must be positive", raw.layer_norm_eps),
            ));
        }
        Ok(Self {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            head_dim: raw.hidden_size / raw.num_attention_heads,
            num_channels: raw.num_channels,
            image_size: raw.image_size,
            patch_size: raw.patch_size,
            act,
            layer_norm_eps: raw.layer_norm_eps,
            attention_dropout: raw.attention_dropout,
            checkpoint,
        })
    }
}
