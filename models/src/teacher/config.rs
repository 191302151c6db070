//! Hugging Face `config.json` for decoder-only causal LMs, and the resolved runtime config.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::family::{defaults, family_features, family_ropes, layer_kinds};
use super::rope_params::{RawRope, RopeParameters};
use crate::error::{Error, Result, read_json};
use crate::nn::{Activation, QkNorm, RmsNormKind, RopeConfig};

/// The decoder-only families edkd loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Phi3,
    Mistral,
    Qwen3,
    Gemma2,
    Gemma3,
    Olmo2,
    Granite,
    SmolLm3,
}

impl Family {
    /// `(architectures[0], family, model_type)`.
    pub const SUPPORTED: [(&'static str, Family, &'static str); 10] = [
        ("LlamaForCausalLM", Family::Llama, "llama"),
        ("Qwen2ForCausalLM", Family::Qwen2, "qwen2"),
        ("Phi3ForCausalLM", Family::Phi3, "phi3"),
        ("MistralForCausalLM", Family::Mistral, "mistral"),
        ("Qwen3ForCausalLM", Family::Qwen3, "qwen3"),
        ("Gemma2ForCausalLM", Family::Gemma2, "gemma2"),
        ("Gemma3ForCausalLM", Family::Gemma3, "gemma3_text"),
        ("Olmo2ForCausalLM", Family::Olmo2, "olmo2"),
        ("GraniteForCausalLM", Family::Granite, "granite"),
        ("SmolLM3ForCausalLM", Family::SmolLm3, "smollm3"),
    ];

    fn entry(self) -> &'static (&'static str, Family, &'static str) {
        Self::SUPPORTED
            .iter()
            .find(|(_, f, _)| *f == self)
            .expect("every family is listed")
    }

    pub fn architecture(self) -> &'static str {
        self.entry().0
    }

    pub fn model_type(self) -> &'static str {
        self.entry().2
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
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

/// `Some(None)` for an explicit `null`, `None` for an absent key.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Mirrors the fields of the checkpoint's `config.json` that the forward pass depends on.
#[derive(Debug, Clone, Default, Deserialize)]
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
    pub max_position_embeddings: Option<i64>,
    pub original_max_position_embeddings: Option<i64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RawRope>,
    pub rope_parameters: Option<RopeParameters>,
    pub partial_rotary_factor: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Gemma's name for the activation (it ignores `hidden_act`).
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<i64>>,
    pub max_window_layers: Option<i64>,
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 (transformers 4.x): every n-th layer is global.
    pub sliding_window_pattern: Option<i64>,
    pub use_bidirectional_attention: Option<bool>,
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// Gemma 3 (transformers 4.x): theta of the local layers.
    pub rope_local_base_freq: Option<f64>,
    pub embedding_multiplier: Option<f64>,
    pub residual_multiplier: Option<f64>,
    pub attention_multiplier: Option<f64>,
    pub logits_scaling: Option<f64>,
    /// SmolLM3: 1 = the layer uses RoPE, 0 = it does not.
    pub no_rope_layers: Option<Vec<i64>>,
    pub no_rope_layer_interval: Option<i64>,
    pub bos_token_id: Option<OneOrMany>,
    pub eos_token_id: Option<OneOrMany>,
    pub pad_token_id: Option<OneOrMany>,
}

fn default_act() -> String {
    "silu".into()
}

/// Which RoPE a layer applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerRope {
    /// `CausalLmConfig::rope`.
    #[default]
    Global,
    /// `Features::local_rope` (Gemma 3's sliding layers).
    Local,
    /// No positional encoding in this layer (SmolLM3's NoPE layers).
    None,
}

/// Attention pattern of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerKind {
    /// Sliding window in key slots (the query sees itself and `window - 1` before it).
    pub window: Option<i64>,
    pub rope: LayerRope,
}

/// Where a layer's RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormPlacement {
    /// `x + attn(norm(x))`, `x + mlp(norm(x))` (Llama).
    #[default]
    Pre,
    /// `x + norm(attn(norm(x)))`, `x + norm(mlp(norm(x)))` (Gemma 2/3).
    Sandwich,
    /// `x + norm(attn(x))`, `x + norm(mlp(x))` (OLMo 2).
    Post,
}

/// Multiplier on the token embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum EmbedScale {
    #[default]
    None,
    /// Rounded to the weights' dtype first (Gemma's `sqrt(hidden_size)`).
    InDtype(f64),
    /// Applied as a scalar (Granite's `embedding_multiplier`).
    Scalar(f64),
}

/// Everything beyond the Llama layout; `Features::default()` is plain Llama.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// One entry per layer; empty means full attention with the global RoPE everywhere.
    pub layers: Vec<LayerKind>,
    /// RoPE of `LayerRope::Local` layers.
    pub local_rope: Option<RopeConfig>,
    pub norm_kind: RmsNormKind,
    pub norm_placement: NormPlacement,
    pub qk_norm: QkNorm,
    /// Gemma: attention scores scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Granite: attention scores scaled by this instead of `head_dim^-0.5`.
    pub attention_multiplier: Option<f64>,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub embed_scale: EmbedScale,
    /// Granite: each residual branch is multiplied by this.
    pub residual_multiplier: Option<f64>,
    /// Granite: logits are divided by this.
    pub logits_scaling: Option<f64>,
}

/// The resolved runtime configuration of a decoder-only teacher.
#[derive(Debug, Clone, PartialEq)]
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
    /// RoPE of the full-attention layers (of every layer, unless `features` says otherwise).
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
    pub features: Features,
}

impl CausalLmConfig {
    /// The attention pattern of layer `i`.
    pub fn layer_kind(&self, i: usize) -> LayerKind {
        self.features.layers.get(i).copied().unwrap_or_default()
    }

    /// Score scale when it is not `1 / sqrt(head_dim)`.
    pub fn attention_scale(&self) -> Option<f64> {
        let f = &self.features;
        f.attention_multiplier
            .or(f.query_pre_attn_scalar.map(|s| s.powf(-0.5)))
    }

    /// Parameter count from the shapes (tied embeddings counted once).
    pub fn num_parameters(&self) -> i64 {
        let d = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let b = |on: bool, n: i64| if on { n } else { 0 };
        let qk_norm = match self.features.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead { .. } => 2 * self.head_dim,
            QkNorm::Whole { .. } => q + kv,
        };
        let attn = 2 * d * q + 2 * d * kv + b(self.qkv_bias, q + 2 * kv) + b(self.o_bias, d);
        let ff = self.intermediate_size;
        let mlp = 3 * d * ff + b(self.mlp_bias, 2 * ff + d);
        let norms = match self.features.norm_placement {
            NormPlacement::Pre | NormPlacement::Post => 2 * d,
            NormPlacement::Sandwich => 4 * d,
        };
        let embed = self.vocab_size * d * if self.tie_word_embeddings { 1 } else { 2 };
        embed + self.num_layers * (attn + qk_norm + mlp + norms) + d
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
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let arch = raw.architectures.first().cloned().unwrap_or_default();
        let family = Family::SUPPORTED
            .iter()
            .find(|(name, _, _)| *name == arch)
            .map(|(_, f, _)| *f)
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
        let defaults = defaults(family);
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
        if raw.num_hidden_layers <= 0 || raw.hidden_size <= 0 {
            return Err(bad(
                "num_hidden_layers",
                "num_hidden_layers and hidden_size must be positive".into(),
            ));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let act_name = match family {
            f if f.is_gemma() => raw
                .hidden_activation
                .clone()
                .unwrap_or_else(|| "gelu_pytorch_tanh".into()),
            _ => raw.hidden_act.clone(),
        };
        let act = Activation::parse(&act_name)
            .ok_or_else(|| bad("hidden_act", format!("unsupported activation {act_name:?}")))?;
        if raw.use_bidirectional_attention == Some(true) {
            return Err(bad(
                "use_bidirectional_attention",
                "bidirectional attention is not supported (edkd teachers are causal)".into(),
            ));
        }
        let mut raw = raw.clone();
        raw.max_position_embeddings = Some(
            raw.max_position_embeddings
                .unwrap_or(defaults.max_position_embeddings),
        );
        let (rope, local_rope) = family_ropes(family, &raw, head_dim, path)?;
        let mut layers = layer_kinds(family, &raw, &defaults, path)?;
        if layers.iter().all(|k| *k == LayerKind::default()) {
            layers.clear(); // the plain layout, as `Features::default()` spells it
        }
        let features = family_features(family, &raw, layers, local_rope);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Mistral => (false, false),
            _ => (raw.attention_bias, raw.attention_bias),
        };
        let mlp_bias =
            raw.mlp_bias && matches!(family, Family::Llama | Family::Granite | Family::SmolLm3);
        Ok(Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            max_positions: raw.max_position_embeddings.unwrap_or_default(),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(defaults.rms_norm_eps),
            rope,
            tie_word_embeddings: raw
                .tie_word_embeddings
                .unwrap_or(defaults.tie_word_embeddings),
            qkv_bias,
            o_bias,
            mlp_bias,
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
            features,
        })
    }
}
