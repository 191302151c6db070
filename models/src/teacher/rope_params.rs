//! RoPE parameters of a Hugging Face config (`rope_parameters`, flat or per layer type, or
//! the older `rope_theta` + `rope_scaling`), resolved the way transformers'
//! `modeling_rope_utils.py` resolves them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::config::HfConfig;
use crate::error::{Error, Result};
use crate::nn::rope::yarn_mscale;
use crate::nn::{RopeConfig, RopeScaling};

/// One set of RoPE parameters: `rope_scaling` (transformers 4.x) or `rope_parameters`
/// (transformers 5.x).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawRope {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<i64>,
    pub short_factor: Option<Vec<f64>>,
    pub long_factor: Option<Vec<f64>>,
    pub attention_factor: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
}

/// `rope_parameters` is one set, or one set per layer type (`{"full_attention": {...},
/// "sliding_attention": {...}}`, Gemma 3).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeParameters {
    Flat(Box<RawRope>),
    PerLayerType(BTreeMap<String, Option<RawRope>>),
}

impl<'de> Deserialize<'de> for RopeParameters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(d)?;
        let obj = value
            .as_object()
            .ok_or_else(|| D::Error::custom("rope_parameters must be an object"))?;
        // Nested when every entry is an object (or null) and at least one is an object:
        // the entries of a flat set are numbers, strings, lists and booleans.
        let nested = obj.values().any(|v| v.is_object())
            && obj.values().all(|v| v.is_object() || v.is_null());
        if nested {
            serde_json::from_value(value)
                .map(RopeParameters::PerLayerType)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(value)
                .map(|p| RopeParameters::Flat(Box::new(p)))
                .map_err(D::Error::custom)
        }
    }
}

/// The rope of one layer type, with the theta to use when the set names none.
pub(crate) struct RopeRequest<'a> {
    pub params: RawRope,
    pub default_theta: f64,
    pub head_dim: i64,
    /// `max_position_embeddings`, after the family's default.
    pub max_positions: i64,
    pub raw: &'a HfConfig,
    /// transformers lets a top-level `original_max_position_embeddings` override the set's
    /// (Phi-3 declares the field, with a default of 4096).
    pub top_level_original_max: Option<i64>,
}

/// Resolves one set of RoPE parameters into the runtime config.
pub(crate) fn resolve_rope(req: &RopeRequest<'_>, path: &Path) -> Result<RopeConfig> {
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        field: "rope_parameters",
        msg,
    };
    let params = &req.params;
    let raw = req.raw;
    let theta = params
        .rope_theta
        .or(raw.rope_theta)
        .unwrap_or(req.default_theta);
    if theta <= 1.0 {
        return Err(bad(format!("rope_theta {theta} must be > 1")));
    }
    let partial = params
        .partial_rotary_factor
        .or(raw.partial_rotary_factor)
        .unwrap_or(1.0);
    let rotary_dim = (req.head_dim as f64 * partial) as i64;
    if rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > req.head_dim {
        return Err(bad(format!(
            "rotary dimension {rotary_dim} (head_dim {} x partial_rotary_factor {partial}) must be even and in (0, head_dim]",
            req.head_dim
        )));
    }
    let max_pos = req.max_positions;
    let original_max = req
        .top_level_original_max
        .or(params.original_max_position_embeddings)
        .unwrap_or(max_pos);
    let kind = params.rope_type.clone().unwrap_or_else(|| "default".into());
    let factor = |name: &str| {
        params
            .factor
            .ok_or_else(|| bad(format!("rope type {name:?} needs `factor`")))
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor("linear")?,
        },
        // The base grows once a pass is longer than max_position_embeddings.
        "dynamic" => RopeScaling::Dynamic {
            factor: factor("dynamic")?,
            original_max: max_pos,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor("llama3")?,
            low_freq_factor: params.low_freq_factor.unwrap_or(1.0),
            high_freq_factor: params.high_freq_factor.unwrap_or(4.0),
            original_max,
        },
        "yarn" => {
            let factor = params
                .factor
                .unwrap_or(max_pos as f64 / original_max as f64);
            let attention_factor = params.attention_factor.unwrap_or_else(|| {
                match (params.mscale, params.mscale_all_dim) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        yarn_mscale(factor, m) / yarn_mscale(factor, all)
                    }
                    _ => yarn_mscale(factor, 1.0),
                }
            });
            // `or 32` / `or 1` in transformers: zero counts as unset.
            let nonzero = |x: Option<f64>| x.filter(|v| *v != 0.0);
            RopeScaling::Yarn {
                factor,
                original_max,
                attention_factor,
                beta_fast: nonzero(params.beta_fast).unwrap_or(32.0),
                beta_slow: nonzero(params.beta_slow).unwrap_or(1.0),
                truncate: params.truncate.unwrap_or(true),
            }
        }
        "longrope" | "su" => {
            let half = (rotary_dim / 2) as usize;
            let short = params.short_factor.clone().unwrap_or_default();
            let long = params.long_factor.clone().unwrap_or_default();
            if short.len() != half || long.len() != half {
                return Err(bad(format!(
                    "longrope short_factor/long_factor need {half} entries, got {}/{}",
                    short.len(),
                    long.len()
                )));
            }
            let factor = params
                .factor
                .unwrap_or(max_pos as f64 / original_max as f64);
            let attention_factor = params.attention_factor.unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (original_max as f64).ln()).sqrt()
            });
            RopeScaling::LongRope {
                short_factor: short,
                long_factor: long,
                original_max,
                attention_factor,
            }
        }
        other => {
            return Err(bad(format!(
                "unsupported rope type {other:?}; supported: default, linear, dynamic, llama3, yarn, longrope"
            )));
        }
    };
    Ok(RopeConfig {
        rotary_dim,
        theta,
        scaling,
    })
}

/// The `rope_parameters` object transformers 5.x writes for `rope` (flat form).
pub(crate) fn rope_json(rope: &RopeConfig, head_dim: i64) -> serde_json::Value {
    use serde_json::json;
    let mut v = match &rope.scaling {
        RopeScaling::None => json!({"rope_type": "default"}),
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Dynamic { factor, .. } => json!({"rope_type": "dynamic", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max,
        }),
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max,
            attention_factor,
        } => json!({
            "rope_type": "longrope",
            "short_factor": short_factor,
            "long_factor": long_factor,
            "original_max_position_embeddings": original_max,
            "attention_factor": attention_factor,
        }),
        RopeScaling::Yarn {
            factor,
            original_max,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
        } => json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max,
            "attention_factor": attention_factor,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "truncate": truncate,
        }),
    };
    v["rope_theta"] = json!(rope.theta);
    if rope.rotary_dim != head_dim {
        // A factor whose product with head_dim truncates back to rotary_dim.
        let mut p = rope.rotary_dim as f64 / head_dim as f64;
        if (head_dim as f64 * p) as i64 != rope.rotary_dim {
            p = (rope.rotary_dim as f64 + 0.5) / head_dim as f64;
        }
        v["partial_rotary_factor"] = json!(p);
    }
    v
}
