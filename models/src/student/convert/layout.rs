//! The two layouts of the reference code (microsoft/encoder-decoder-slm): their config
//! fields and defaults, and what each means as a [`StudentConfig`].
//!
//! - `mu_v1`: `src/mu/models/modeling_mu.py` + `mu_utils.py`, the released text model
//!   (`artifacts/models/model.pt`). A dataclass config with `qkv_embd` (attention width
//!   below `n_embd`) and `is_interleaved`: KV heads are repeated by concatenation
//!   (`torch.cat([x] * groups)`, query head `h` reads KV head `h % n_kv_head`) unless
//!   interleaved (`expand`, head `h` reads `h / groups`). `lm_head` has no bias.
//! - `mu_v2`: `src/mu/mu_vision/model/language_model/mu_v2/modeling_mu.py` + `mu_utils.py`,
//!   the language model of `artifacts/models/mu_vision`. A Hugging Face config
//!   (`model_type` `mu`, or `llava_mu` for the vision model), attention width `n_embd`,
//!   KV heads always interleaved, `lm_head = nn.Linear(n_embd, vocab)` with a bias and
//!   its weight tied to `wte`.

use std::path::Path;

use serde::Deserialize;

use super::super::config::StudentConfig;
use crate::error::{Error, Result};
use crate::nn::GqaMapping;

/// Which reference code wrote the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    MuV1,
    MuV2,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mu-v1" | "mu_v1" => Ok(Self::MuV1),
            "mu-v2" | "mu_v2" => Ok(Self::MuV2),
            _ => Err(Error::Value {
                field: "layout",
                value: s.into(),
                expected: "mu-v1 or mu-v2",
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MuV1 => "mu-v1",
            Self::MuV2 => "mu-v2",
        }
    }

    /// mu_v2 configs are Hugging Face configs with a `model_type`; mu_v2 weights have
    /// `lm_head.bias`. Anything else is the first layout.
    pub fn detect(config: Option<&serde_json::Value>, has_lm_head_bias: bool) -> Self {
        let v2_type = config
            .and_then(|c| c.get("model_type"))
            .and_then(|t| t.as_str())
            .is_some_and(|t| matches!(t, "mu" | "llava_mu"));
        if v2_type || has_lm_head_bias {
            Self::MuV2
        } else {
            Self::MuV1
        }
    }

    /// The student config for a reference config (`None`: the layout's defaults, which
    /// for mu_v1 are the released model's). `origin` names the config in errors.
    pub fn student_config(
        self,
        config: Option<&serde_json::Value>,
        origin: &Path,
    ) -> Result<StudentConfig> {
        let r = match self {
            Self::MuV1 => parse_or_default::<V1Config>(config, origin)?.resolve(),
            Self::MuV2 => parse_or_default::<V2Config>(config, origin)?.resolve(),
        };
        r.to_student(self, origin)
    }
}

fn parse_or_default<T: serde::de::DeserializeOwned + Default>(
    config: Option<&serde_json::Value>,
    origin: &Path,
) -> Result<T> {
    match config {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|source| Error::Json {
            path: origin.to_path_buf(),
            source,
        }),
    }
}

/// `MuConfig` of mu_v1 (a dataclass; `checkpoint.py` stores it as `model_config`).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct V1Config {
    n_encoder_layer: i64,
    n_decoder_layer: i64,
    n_embd: i64,
    qkv_embd: Option<i64>,
    is_interleaved: bool,
    hidden_dim: i64,
    n_head: i64,
    n_kv_head: i64,
    block_size: i64,
    dropout: f64,
    rope_theta: f64,
    rope_factor: f64,
    pad_token_id: i64,
    vocab_size: i64,
}

impl Default for V1Config {
    fn default() -> Self {
        Self {
            n_encoder_layer: 20,
            n_decoder_layer: 10,
            n_embd: 1024,
            qkv_embd: Some(384),
            is_interleaved: false,
            hidden_dim: 4096,
            n_head: 6,
            n_kv_head: 3,
            block_size: 1024,
            dropout: 0.1,
            rope_theta: 1e4,
            rope_factor: 1.0,
            pad_token_id: 0,
            vocab_size: 32128,
        }
    }
}

impl V1Config {
    fn resolve(self) -> Resolved {
        Resolved {
            encoder_layers: self.n_encoder_layer,
            decoder_layers: self.n_decoder_layer,
            d_model: self.n_embd,
            attn_dim: self.qkv_embd.unwrap_or(self.n_embd),
            ffn_dim: self.hidden_dim,
            heads: self.n_head,
            kv_heads: self.n_kv_head,
            gqa: if self.is_interleaved {
                GqaMapping::Grouped
            } else {
                GqaMapping::Cyclic
            },
            block_size: self.block_size,
            dropout: self.dropout,
            rope_theta: self.rope_theta,
            rope_factor: self.rope_factor,
            pad_token_id: self.pad_token_id,
            vocab_size: self.vocab_size,
        }
    }
}

/// `MuConfig(PretrainedConfig)` of mu_v2; other Hugging Face and vision fields are
/// ignored (they describe no part of the language model).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct V2Config {
    vocab_size: i64,
    block_size: i64,
    n_layer: Option<i64>,
    n_encoder_layer: Option<i64>,
    n_decoder_layer: Option<i64>,
    n_head: i64,
    n_embd: i64,
    n_kv_head: i64,
    hidden_dim: i64,
    dropout: f64,
    rope_theta: f64,
    rope_factor: f64,
    pad_token_id: i64,
}

impl Default for V2Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            block_size: 1024,
            n_layer: Some(20),
            n_encoder_layer: None,
            n_decoder_layer: None,
            n_head: 16,
            n_embd: 768,
            n_kv_head: 8,
            hidden_dim: 3072,
            dropout: 0.1,
            rope_theta: 1e4,
            rope_factor: 1.0,
            pad_token_id: 0,
        }
    }
}

impl V2Config {
    fn resolve(self) -> Resolved {
        // Its __init__: each stack falls back to n_layer (default 20), then n_layer = None.
        let n_layer = self.n_layer.unwrap_or(20);
        Resolved {
            encoder_layers: self.n_encoder_layer.unwrap_or(n_layer),
            decoder_layers: self.n_decoder_layer.unwrap_or(n_layer),
            d_model: self.n_embd,
            attn_dim: self.n_embd,
            ffn_dim: self.hidden_dim,
            heads: self.n_head,
            kv_heads: self.n_kv_head,
            gqa: GqaMapping::Grouped,
            block_size: self.block_size,
            dropout: self.dropout,
            rope_theta: self.rope_theta,
            rope_factor: self.rope_factor,
            pad_token_id: self.pad_token_id,
            vocab_size: self.vocab_size,
        }
    }
}

/// What both layouts say, in edkd's terms.
struct Resolved {
    encoder_layers: i64,
    decoder_layers: i64,
    d_model: i64,
    attn_dim: i64,
    ffn_dim: i64,
    heads: i64,
    kv_heads: i64,
    gqa: GqaMapping,
    block_size: i64,
    dropout: f64,
    rope_theta: f64,
    rope_factor: f64,
    pad_token_id: i64,
    vocab_size: i64,
}

impl Resolved {
    fn to_student(&self, layout: Layout, path: &Path) -> Result<StudentConfig> {
        if self.rope_factor > 1.0 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                field: "rope_factor",
                msg: format!(
                    "{} (NTK-scaled RoPE) is not supported by the student; only 1.0 (the \
                     reference itself infers with 1.0 after fine-tuning with 4.0)",
                    self.rope_factor
                ),
            });
        }
        let base = StudentConfig::preset("mu-330m")?;
        Ok(StudentConfig {
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            attn_dim: self.attn_dim,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            gqa_mapping: self.gqa,
            ffn_dim: self.ffn_dim,
            rope_theta: self.rope_theta,
            dropout: self.dropout,
            max_positions: self.block_size.max(base.max_positions),
            pad_token_id: self.pad_token_id,
            lm_head_bias: layout == Layout::MuV2,
            ..base
        })
    }
}
