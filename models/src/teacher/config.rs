//! Hugging Face `config.json` for decoder-only causal LMs, and the resolved runtime config.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result, read_json};
use crate::nn::{Activation, RopeConfig, RopeScaling};

/// The decoder-only families edkd loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Phi3,
}

impl Family {
    pub const SUPPORTED: [(&'static str, Family); 3] = [
        ("LlamaForCausalLM", Family::Llama),
        ("Qwen2ForCausalLM", Family::Qwen2),
        ("Phi3ForCausalLM", Family::Phi3),
    ];

    pub fn architecture(self) -> &'static str {
        Self::SUPPORTED
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(name, _)| *name)
            .expect("every family is listed")
    }
}

/// A token id or a list of them (`eos_token_id` is either in HF configs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `rope_scaling` (transformers 4.x) or `rope_parameters` (transformers 5.x).
#[derive(Debug, Clone, Default, Deserialize)]
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
}

/// Mirrors the fields of the checkpoint's `config.json` that the forward pass depends on.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    pub original_max_position_embeddings: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RawRope>,
    pub rope_parameters: Option<RawRope>,
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub bos_token_id: Option<OneOrMany>,
    pub eos_token_id: Option<OneOrMany>,
    pub pad_token_id: Option<OneOrMany>,
}

fn default_max_positions() -> i64 {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

/// The resolved runtime configuration of a decoder-only teacher.
#[derive(Debug, Clone)]
pub struct CausalLmConfig {
    pub family: Family,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub max_positions: i64,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub act: Activation,
    pub attention_dropout: f64,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

impl CausalLmConfig {
    /// Parameter count from the shapes (tied embeddings counted once).
    pub fn num_parameters(&self) -> i64 {
        let d = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let b = |on: bool, n: i64| if on { n } else { 0 };
        let attn = 2 * d * q + 2 * d * kv + b(self.qkv_bias, q + 2 * kv) + b(self.o_bias, d);
        let ff = self.intermediate_size;
        let mlp = 3 * d * ff + b(self.mlp_bias, 2 * ff + d);
        let embed = self.vocab_size * d * if self.tie_word_embeddings { 1 } else { 2 };
        embed + self.num_layers * (attn + mlp + 2 * d) + d
    }

    /// The Hugging Face `config.json` for this model (LlamaForCausalLM and friends).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": [self.family.architecture()],
            "model_type": match self.family { Family::Llama => "llama", Family::Qwen2 => "qwen2", Family::Phi3 => "phi3" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "attention_dropout": self.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
    }

    /// Reads `dir/config.json` and resolves it; errors name the file and field.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let raw: HfConfig = read_json(&path)?;
        Self::resolve(&raw, &path)
    }

    pub fn resolve(raw: &HfConfig, path: &Path) -> Result<Self> {
        let supported = Family::SUPPORTED
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let arch = raw.architectures.first().cloned().unwrap_or_default();
        let family = Family::SUPPORTED
            .iter()
            .find(|(name, _)| *name == arch)
            .map(|(_, f)| *f)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: if arch.is_empty() {
                    "<none>".into()
                } else {
                    arch.clone()
                },
                supported,
            })?;
        let bad = |field: &'static str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads <= 0
            || num_kv_heads <= 0
            || raw.num_attention_heads % num_kv_heads != 0
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{num_kv_heads} must divide num_attention_heads {}",
                    raw.num_attention_heads
                ),
            ));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let act = Activation::parse(&raw.hidden_act).ok_or_else(|| {
            bad(
                "hidden_act",
                format!("unsupported activation {:?}", raw.hidden_act),
            )
        })?;
        if raw.use_sliding_window {
            return Err(bad(
                "use_sliding_window",
                "sliding-window attention is not supported".into(),
            ));
        }
        let rope = resolve_rope(raw, head_dim, path)?;
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Phi3 => (raw.attention_bias, raw.attention_bias),
        };
        Ok(Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            max_positions: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias && family == Family::Llama,
            act,
            attention_dropout: raw.attention_dropout,
            bos_token_id: raw
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: raw
                .eos_token_id
                .as_ref()
                .map(|t| t.to_vec())
                .unwrap_or_default(),
            pad_token_id: raw
                .pad_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
        })
    }
}

fn resolve_rope(raw: &HfConfig, head_dim: i64, path: &Path) -> Result<RopeConfig> {
    let bad = |field: &'static str, msg: String| Error::Config {
        path: path.to_path_buf(),
        field,
        msg,
    };
    let params = raw
        .rope_parameters
        .clone()
        .or_else(|| raw.rope_scaling.clone())
        .unwrap_or_default();
    let theta = params.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0);
    let partial = params
        .partial_rotary_factor
        .or(raw.partial_rotary_factor)
        .unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * partial) as i64;
    let original_max = params
        .original_max_position_embeddings
        .or(raw.original_max_position_embeddings)
        .unwrap_or(raw.max_position_embeddings);
    let kind = params.rope_type.clone().unwrap_or_else(|| "default".into());
    let factor = |name: &'static str| {
        params
            .factor
            .ok_or_else(|| bad("rope_scaling", format!("rope type {name:?} needs `factor`")))
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor("linear")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor("dynamic")?,
            original_max,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor("llama3")?,
            low_freq_factor: params.low_freq_factor.unwrap_or(1.0),
            high_freq_factor: params.high_freq_factor.unwrap_or(4.0),
            original_max,
        },
        "longrope" | "su" => {
            let half = (rotary_dim / 2) as usize;
            let short = params.short_factor.clone().unwrap_or_default();
            let long = params.long_factor.clone().unwrap_or_default();
            if short.len() != half || long.len() != half {
                return Err(bad(
                    "rope_scaling",
                    format!(
                        "longrope short_factor/long_factor need {half} entries, got {}/{}",
                        short.len(),
                        long.len()
                    ),
                ));
            }
            let scale = raw.max_position_embeddings as f64 / original_max as f64;
            let attention_factor = params.attention_factor.unwrap_or(if scale <= 1.0 {
                1.0
            } else {
                (1.0 + scale.ln() / (original_max as f64).ln()).sqrt()
            });
            RopeScaling::LongRope {
                short_factor: short,
                long_factor: long,
                original_max,
                attention_factor,
            }
        }
        other => {
            return Err(bad(
                "rope_scaling",
                format!(
                    "unsupported rope type {other:?}; supported: default, linear, dynamic, llama3, longrope"
                ),
            ));
        }
    };
    Ok(RopeConfig {
        rotary_dim,
        theta,
        scaling,
    })
}
