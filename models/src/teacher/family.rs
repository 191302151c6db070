//! What differs between the families: the defaults of each transformers config class,
//! the per-layer attention pattern (sliding windows, RoPE or not, local RoPE) and the
//! architectural features, read from a Hugging Face config the way transformers reads it.

use std::path::Path;

use super::config::{EmbedScale, Family, Features, HfConfig, LayerKind, LayerRope, NormPlacement};
use super::rope_params::{RawRope, RopeParameters, RopeRequest, resolve_rope};
use crate::error::{Error, Result};
use crate::nn::{QkNorm, RmsNormKind, RopeConfig};

/// What each family's transformers config class defaults to when config.json omits it.
pub(crate) struct FamilyDefaults {
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: i64,
    /// `sliding_window` when the key is absent (`null` always means no window).
    pub sliding_window: Option<i64>,
}

pub(crate) fn defaults(family: Family) -> FamilyDefaults {
    let base = FamilyDefaults {
        tie_word_embeddings: false,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 2048,
        sliding_window: None,
    };
    match family {
        Family::Llama | Family::Granite => base,
        Family::Olmo2 => FamilyDefaults {
            rms_norm_eps: 1e-5,
            ..base
        },
        Family::Phi3 => FamilyDefaults {
            rms_norm_eps: 1e-5,
            max_position_embeddings: 4096,
            ..base
        },
        Family::Qwen2 | Family::Qwen3 => FamilyDefaults {
            max_position_embeddings: 32_768,
            sliding_window: Some(4096),
            ..base
        },
        Family::Mistral => FamilyDefaults {
            max_position_embeddings: 131_072,
            sliding_window: Some(4096),
            ..base
        },
        Family::Gemma2 => FamilyDefaults {
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
            sliding_window: Some(4096),
            ..base
        },
        Family::Gemma3 => FamilyDefaults {
            tie_word_embeddings: true,
            rope_theta: GEMMA3_GLOBAL_THETA,
            max_position_embeddings: 131_072,
            sliding_window: Some(4096),
            ..base
        },
        Family::SmolLm3 => FamilyDefaults {
            tie_word_embeddings: true,
            rope_theta: 2_000_000.0,
            max_position_embeddings: 32_768,
            ..base
        },
    }
}

const GEMMA3_GLOBAL_THETA: f64 = 1_000_000.0;
const GEMMA3_LOCAL_THETA: f64 = 10_000.0;
/// Gemma 3's old `sliding_window_pattern`: every 6th layer is global.
const GEMMA3_PATTERN: i64 = 6;
const GEMMA_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
const GEMMA2_FINAL_SOFTCAP: f64 = 30.0;
const GEMMA2_ATTN_SOFTCAP: f64 = 50.0;
/// Qwen2/Qwen3: layers from this index on use the window (when it is on).
const QWEN_MAX_WINDOW_LAYERS: i64 = 28;
/// SmolLM3: every 4th layer has no RoPE.
const SMOLLM3_NO_ROPE_INTERVAL: i64 = 4;
const SLIDING: &str = "sliding_attention";
const FULL: &str = "full_attention";

/// The global RoPE and, for Gemma 3, the local one.
pub(crate) fn family_ropes(
    family: Family,
    raw: &HfConfig,
    head_dim: i64,
    path: &Path,
) -> Result<(RopeConfig, Option<RopeConfig>)> {
    let request = |params: RawRope, default_theta: f64| RopeRequest {
        params,
        default_theta,
        head_dim,
        max_positions: raw.max_position_embeddings.unwrap_or_default(),
        raw,
        top_level_original_max: match family {
            Family::Phi3 => Some(raw.original_max_position_embeddings.unwrap_or(4096)),
            _ => raw.original_max_position_embeddings,
        },
    };
    let theta = defaults(family).rope_theta;
    let missing_set = |name: &str| Error::Config {
        path: path.to_path_buf(),
        field: "rope_parameters",
        msg: format!("per-layer-type rope_parameters has no {name:?} entry"),
    };
    if family != Family::Gemma3 {
        let params = match &raw.rope_parameters {
            Some(RopeParameters::Flat(p)) => (**p).clone(),
            Some(RopeParameters::PerLayerType(sets)) => sets
                .get(FULL)
                .cloned()
                .flatten()
                .ok_or_else(|| missing_set(FULL))?,
            None => raw.rope_scaling.clone().unwrap_or_default(),
        };
        return Ok((resolve_rope(&request(params, theta), path)?, None));
    }
    // Gemma 3: rope_parameters per layer type, or rope_theta + rope_scaling (global) and
    // rope_local_base_freq (local) in older configs.
    let local_theta = raw.rope_local_base_freq.unwrap_or(GEMMA3_LOCAL_THETA);
    let (global, local) = match &raw.rope_parameters {
        Some(RopeParameters::PerLayerType(sets)) => {
            let get = |k: &str| sets.get(k).cloned().flatten();
            (
                get(FULL).ok_or_else(|| missing_set(FULL))?,
                get(SLIDING).unwrap_or_default(),
            )
        }
        Some(RopeParameters::Flat(p)) => ((**p).clone(), RawRope::default()),
        None => (
            raw.rope_scaling.clone().unwrap_or_default(),
            RawRope::default(),
        ),
    };
    let mut local_req = request(local, local_theta);
    // The local set never inherits the global `rope_theta`.
    let mut no_global_theta = raw.clone();
    no_global_theta.rope_theta = None;
    local_req.raw = &no_global_theta;
    Ok((
        resolve_rope(&request(global, theta), path)?,
        Some(resolve_rope(&local_req, path)?),
    ))
}

/// Per-layer window and RoPE, following each family's config class.
pub(crate) fn layer_kinds(
    family: Family,
    raw: &HfConfig,
    defaults: &FamilyDefaults,
    path: &Path,
) -> Result<Vec<LayerKind>> {
    let bad = |field: &'static str, msg: String| Error::Config {
        path: path.to_path_buf(),
        field,
        msg,
    };
    let n = raw.num_hidden_layers;
    let window = raw.sliding_window.unwrap_or(defaults.sliding_window);
    if let Some(w) = window
        && w <= 0
    {
        return Err(bad("sliding_window", format!("{w} must be positive")));
    }
    // Explicit `layer_types` win over the patterns the config classes derive.
    let types = |derive: &dyn Fn(i64) -> bool| -> Result<Vec<bool>> {
        match &raw.layer_types {
            Some(t) => {
                if t.len() as i64 != n {
                    return Err(bad(
                        "layer_types",
                        format!("{} entries for {n} layers", t.len()),
                    ));
                }
                t.iter()
                    .map(|s| match s.as_str() {
                        SLIDING => Ok(true),
                        FULL => Ok(false),
                        other => Err(bad(
                            "layer_types",
                            format!(
                                "unsupported layer type {other:?}; supported: {FULL}, {SLIDING}"
                            ),
                        )),
                    })
                    .collect()
            }
            None => Ok((0..n).map(derive).collect()),
        }
    };
    let uniform = |window: Option<i64>| {
        vec![
            LayerKind {
                window,
                rope: LayerRope::Global
            };
            n as usize
        ]
    };
    let sliding = match family {
        Family::Llama | Family::Olmo2 | Family::Granite => return Ok(uniform(None)),
        Family::Mistral | Family::Phi3 => return Ok(uniform(window)),
        Family::Qwen2 | Family::Qwen3 => {
            let window = window.filter(|_| raw.use_sliding_window);
            let first = raw.max_window_layers.unwrap_or(QWEN_MAX_WINDOW_LAYERS);
            let kinds = types(&|i| window.is_some() && i >= first)?;
            return windows(&kinds, window, |_| LayerRope::Global, &bad);
        }
        Family::Gemma2 => types(&|i| (i + 1) % 2 != 0)?,
        Family::Gemma3 => {
            let pattern = raw.sliding_window_pattern.unwrap_or(GEMMA3_PATTERN);
            if pattern <= 0 {
                return Err(bad(
                    "sliding_window_pattern",
                    format!("{pattern} must be positive"),
                ));
            }
            types(&|i| (i + 1) % pattern != 0)?
        }
        Family::SmolLm3 => {
            let interval = raw
                .no_rope_layer_interval
                .unwrap_or(SMOLLM3_NO_ROPE_INTERVAL);
            if interval <= 0 {
                return Err(bad(
                    "no_rope_layer_interval",
                    format!("{interval} must be positive"),
                ));
            }
            let uses_rope: Vec<bool> = match &raw.no_rope_layers {
                Some(v) if v.len() as i64 != n => {
                    return Err(bad(
                        "no_rope_layers",
                        format!("{} entries for {n} layers", v.len()),
                    ));
                }
                Some(v) => v.iter().map(|&x| x != 0).collect(),
                None => (0..n).map(|i| (i + 1) % interval != 0).collect(),
            };
            // Derived sliding layers need `use_sliding_window`; explicit ones get the
            // window regardless (transformers builds their mask from `sliding_window`).
            let derive = window.is_some() && raw.use_sliding_window;
            let kinds = types(&|i| derive && !uses_rope[i as usize])?;
            let rope = |i: usize| {
                if uses_rope[i] {
                    LayerRope::Global
                } else {
                    LayerRope::None
                }
            };
            return windows(&kinds, window, rope, &bad);
        }
    };
    let rope = |i: usize| match (family, sliding[i]) {
        (Family::Gemma3, true) => LayerRope::Local,
        _ => LayerRope::Global,
    };
    windows(&sliding, window, rope, &bad)
}

fn windows(
    sliding: &[bool],
    window: Option<i64>,
    rope: impl Fn(usize) -> LayerRope,
    bad: &dyn Fn(&'static str, String) -> Error,
) -> Result<Vec<LayerKind>> {
    if sliding.iter().any(|&s| s) && window.is_none() {
        return Err(bad(
            "sliding_window",
            format!("layers of type {SLIDING:?} need a sliding_window"),
        ));
    }
    Ok(sliding
        .iter()
        .enumerate()
        .map(|(i, &s)| LayerKind {
            window: window.filter(|_| s),
            rope: rope(i),
        })
        .collect())
}

pub(crate) fn family_features(
    family: Family,
    raw: &HfConfig,
    layers: Vec<LayerKind>,
    local_rope: Option<RopeConfig>,
) -> Features {
    let eps = raw.rms_norm_eps.unwrap_or(defaults(family).rms_norm_eps);
    let plain = Features {
        layers,
        local_rope,
        ..Features::default()
    };
    match family {
        Family::Llama | Family::Qwen2 | Family::Phi3 | Family::Mistral | Family::SmolLm3 => plain,
        Family::Qwen3 => Features {
            qk_norm: QkNorm::PerHead {
                eps,
                kind: RmsNormKind::WeightAfterCast,
            },
            ..plain
        },
        Family::Olmo2 => Features {
            norm_kind: RmsNormKind::WeightBeforeCast,
            norm_placement: NormPlacement::Post,
            qk_norm: QkNorm::Whole {
                eps,
                kind: RmsNormKind::WeightBeforeCast,
            },
            ..plain
        },
        Family::Granite => Features {
            attention_multiplier: Some(raw.attention_multiplier.unwrap_or(1.0)),
            embed_scale: EmbedScale::Scalar(raw.embedding_multiplier.unwrap_or(1.0)),
            residual_multiplier: Some(raw.residual_multiplier.unwrap_or(1.0)),
            logits_scaling: Some(raw.logits_scaling.unwrap_or(1.0)),
            ..plain
        },
        Family::Gemma2 | Family::Gemma3 => {
            let gemma2 = family == Family::Gemma2;
            Features {
                norm_kind: RmsNormKind::OnePlusWeight,
                norm_placement: NormPlacement::Sandwich,
                qk_norm: if gemma2 {
                    QkNorm::None
                } else {
                    QkNorm::PerHead {
                        eps,
                        kind: RmsNormKind::OnePlusWeight,
                    }
                },
                query_pre_attn_scalar: Some(
                    raw.query_pre_attn_scalar
                        .unwrap_or(GEMMA_QUERY_PRE_ATTN_SCALAR),
                ),
                // transformers' Gemma 3 reads attn_logit_softcapping but never applies it.
                attn_softcap: if gemma2 {
                    raw.attn_logit_softcapping
                        .unwrap_or(Some(GEMMA2_ATTN_SOFTCAP))
                } else {
                    None
                },
                final_softcap: raw
                    .final_logit_softcapping
                    .unwrap_or(gemma2.then_some(GEMMA2_FINAL_SOFTCAP)),
                embed_scale: EmbedScale::InDtype((raw.hidden_size as f64).powf(0.5)),
                ..plain
            }
        }
    }
}
