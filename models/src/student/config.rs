//! The encoder-decoder student's configuration (saved as its `config.json`) and presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::multimodal::VisionConfig;
use crate::nn::{Activation, GqaMapping, RopeConfig, RopeScaling};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
use crate::teacher::{CausalLmConfig, Family};

/// `model_type` written into a student's config.json; tells student folders from teachers.
pub const MODEL_TYPE: &str = "edkd_encoder_decoder";

/// Student vocabularies are the teacher's padded up to a multiple of this.
pub const VOCAB_MULTIPLE: i64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// `down(silu(gate(x)) * up(x))`.
    Swiglu,
    /// `fc2(gelu_tanh(fc1(x)))` (the paper's student).
    GeluTanh,
}

fn model_type() -> String {
    MODEL_TYPE.to_string()
}

/// Every architectural choice of the student is a field here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    #[serde(default = "model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub d_model: i64,
    pub encoder_layers: i64,
    pub decoder_layers: i64,
    /// Width of q (and of the attention output before `o_proj`); may be below `d_model`.
    pub attn_dim: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub gqa_mapping: GqaMapping,
    pub ffn_kind: FfnKind,
    pub ffn_dim: i64,
    pub ffn_bias: bool,
    /// Bias on q/k/v/o projections.
    pub attn_bias: bool,
    /// Bias on the attention output projection `o_proj` when it differs from `attn_bias`
    /// (Qwen2: q/k/v with bias, o without); absent: `attn_bias`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_out_bias: Option<bool>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// RoPE frequency scaling (a decoder-initialised student keeps its source's); absent:
    /// none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rope_scaling: RopeScaling,
    pub rope_encoder: bool,
    pub rope_decoder: bool,
    /// Encoder positions `i - (len-1) div 2` of each row's real length, instead of `i`.
    pub centered_encoder_positions: bool,
    pub tie_word_embeddings: bool,
    /// A bias on the output projection (the reference's mu_v2 `lm_head` is an
    /// `nn.Linear` with bias, its weight tied to the embedding).
    #[serde(default, skip_serializing_if = "is_default")]
    pub lm_head_bias: bool,
    /// Every token whose id is `pad_token_id` is padding wherever it stands: masked as a
    /// key in every attention, as the reference's `encode`/`decode` do
    /// (`~(ids == pad_token_id)`); off: only the positions outside each row's length are.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mask_pad_tokens: bool,
    pub dropout: f64,
    pub max_positions: i64,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    /// A CLIP tower, projector and `<image>` placeholder feeding the encoder
    /// ([`crate::multimodal`]); absent: a text student, whose config.json has no such key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionConfig>,
}

/// Names of the built-in presets, for help texts and errors.
pub const PRESETS: [&str; 4] = ["mu-330m", "mid", "small", "tiny"];

impl StudentConfig {
    /// A named preset. `dec-<name>` presets are the decoder-only twins ([`twin_config`]).
    pub fn preset(name: &str) -> Result<Self> {
        let mu = Self {
            model_type: model_type(),
            vocab_size: 32128,
            d_model: 1024,
            encoder_layers: 20,
            decoder_layers: 10,
            attn_dim: 384,
            num_heads: 6,
            num_kv_heads: 3,
            gqa_mapping: GqaMapping::Cyclic,
            ffn_kind: FfnKind::GeluTanh,
            ffn_dim: 4096,
            ffn_bias: true,
            attn_bias: true,
            attn_out_bias: None,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            rope_scaling: RopeScaling::None,
            rope_encoder: true,
            rope_decoder: true,
            centered_encoder_positions: true,
            tie_word_embeddings: true,
            lm_head_bias: false,
            mask_pad_tokens: false,
            dropout: 0.1,
            max_positions: 4096,
            pad_token_id: 0,
            bos_token_id: 1,
            eos_token_id: 2,
            vision: None,
        };
        let scaled = |d_model, enc, dec, attn_dim, heads, kv, ffn, vocab| Self {
            d_model,
            encoder_layers: enc,
            decoder_layers: dec,
            attn_dim,
            num_heads: heads,
            num_kv_heads: kv,
            ffn_dim: ffn,
            vocab_size: vocab,
            dropout: 0.0,
            ..mu.clone()
        };
        Ok(match name {
            "mu-330m" => mu,
            // ~30M with the full 32k vocabulary: CPU experiments.
            "mid" => scaled(384, 8, 4, 256, 4, 2, 1536, 32128),
            // A few M with an 8k vocabulary: demos.
            "small" => scaled(256, 6, 3, 192, 3, 1, 1024, 8192),
            // Under 1M with a 512 vocabulary: tests.
            "tiny" => scaled(64, 3, 2, 48, 4, 2, 160, 512),
            _ => {
                return Err(Error::UnknownPreset {
                    name: name.into(),
                    available: PRESETS.join(", ") + " (and dec-<name> for the decoder-only twins)",
                });
            }
        })
    }

    /// Teacher vocabulary padded up to a multiple of 64.
    pub fn padded_vocab(teacher_vocab: i64) -> i64 {
        (teacher_vocab + VOCAB_MULTIPLE - 1) / VOCAB_MULTIPLE * VOCAB_MULTIPLE
    }

    pub fn head_dim(&self) -> i64 {
        self.attn_dim / self.num_heads
    }

    /// Whether `o_proj` has a bias.
    pub fn o_bias(&self) -> bool {
        self.attn_out_bias.unwrap_or(self.attn_bias)
    }

    /// Checks the fields that must agree with each other; names the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, msg: String| Error::Config {
            path: "student config".into(),
            field,
            msg,
        };
        if self.model_type != MODEL_TYPE {
            return Err(bad(
                "model_type",
                format!("{:?} is not {MODEL_TYPE:?}", self.model_type),
            ));
        }
        if self.num_heads <= 0 || self.attn_dim % self.num_heads != 0 {
            return Err(bad(
                "attn_dim",
                format!(
                    "{} is not a multiple of num_heads {}",
                    self.attn_dim, self.num_heads
                ),
            ));
        }
        if self.num_kv_heads <= 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(bad(
                "num_kv_heads",
                format!(
                    "{} does not divide num_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if self.head_dim() % 2 != 0 && (self.rope_encoder || self.rope_decoder) {
            return Err(bad(
                "attn_dim",
                format!("RoPE needs an even head_dim, got {}", self.head_dim()),
            ));
        }
        for (field, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id < 0 || id >= self.vocab_size {
                return Err(bad(
                    field,
                    format!("{id} is outside the vocabulary [0, {})", self.vocab_size),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        if let Some(v) = &self.vision {
            v.validate(
                self.vocab_size,
                self.pad_token_id,
                std::path::Path::new("student config"),
            )?;
        }
        Ok(())
    }

    pub fn rope(&self) -> RopeConfig {
        RopeConfig {
            rotary_dim: self.head_dim(),
            theta: self.rope_theta,
            scaling: self.rope_scaling.clone(),
        }
    }

    pub fn activation(&self) -> Activation {
        match self.ffn_kind {
            FfnKind::Swiglu => Activation::Silu,
            FfnKind::GeluTanh => Activation::GeluPytorchTanh,
        }
    }

    /// Parameter count of the text model, computed from the shapes (tied embeddings counted
    /// once); a vision section's tower and projector are [`VisionConfig::num_parameters`],
    /// the same for the student and its twin.
    pub fn num_parameters(&self) -> i64 {
        let d = self.d_model;
        let kv = self.num_kv_heads * self.head_dim();
        let b = |on: bool, n: i64| if on { n } else { 0 };
        let attn = 2 * d * self.attn_dim
            + 2 * d * kv
            + b(self.attn_bias, self.attn_dim + 2 * kv)
            + b(self.o_bias(), d);
        let ffn = match self.ffn_kind {
            FfnKind::Swiglu => 3 * d * self.ffn_dim + b(self.ffn_bias, 2 * self.ffn_dim + d),
            FfnKind::GeluTanh => 2 * d * self.ffn_dim + b(self.ffn_bias, self.ffn_dim + d),
        };
        let enc = self.encoder_layers * (attn + ffn + 2 * d);
        let dec = self.decoder_layers * (2 * attn + ffn + 3 * d);
        let embed = self.vocab_size * d * if self.tie_word_embeddings { 1 } else { 2 };
        embed + b(self.lm_head_bias, self.vocab_size) + enc + dec + 2 * d
    }
}

/// The decoder-only twin of a student: Llama-shaped (SwiGLU, no biases, grouped GQA,
/// RoPE), same vocabulary, d_model and attention shape, as many layers as the student
/// has in total, and an FFN width solved so the parameter count matches (within 2%).
pub fn twin_config(s: &StudentConfig) -> CausalLmConfig {
    let d = s.d_model;
    let layers = s.encoder_layers + s.decoder_layers;
    let kv = s.num_kv_heads * s.head_dim();
    let attn = 2 * d * s.attn_dim + 2 * d * kv;
    let embed = s.vocab_size * d * if s.tie_word_embeddings { 1 } else { 2 };
    let budget = s.num_parameters() - embed - d; // minus the final norm
    let per_layer = budget as f64 / layers as f64 - attn as f64 - 2.0 * d as f64;
    let ffn = ((per_layer / (3.0 * d as f64)) / 8.0).round() as i64 * 8;
    CausalLmConfig {
        family: Family::Llama,
        vocab_size: s.vocab_size,
        hidden_size: d,
        intermediate_size: ffn.max(8),
        num_layers: layers,
        num_heads: s.num_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim(),
        max_positions: s.max_positions,
        rms_norm_eps: s.rms_norm_eps,
        rope: s.rope(),
        tie_word_embeddings: s.tie_word_embeddings,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        act: Activation::Silu,
        attention_dropout: s.dropout,
        bos_token_id: Some(s.bos_token_id),
        eos_token_ids: vec![s.eos_token_id],
        pad_token_id: Some(s.pad_token_id),
        features: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_330m_has_the_papers_parameter_count() {
        let mu = StudentConfig::preset("mu-330m").unwrap();
        let n = mu.num_parameters() as f64;
        assert!((n / 332.0e6 - 1.0).abs() <= 0.005, "{n}");
    }

    #[test]
    fn twins_are_within_two_percent() {
        for name in PRESETS {
            let s = StudentConfig::preset(name).unwrap();
            s.validate().unwrap();
            let t = twin_config(&s);
            let ratio = t.num_parameters() as f64 / s.num_parameters() as f64;
            assert!(
                (ratio - 1.0).abs() <= 0.02,
                "{name}: twin/student = {ratio}"
            );
        }
    }

    #[test]
    fn vocab_is_padded_to_64() {
        assert_eq!(StudentConfig::padded_vocab(32011), 32064);
        assert_eq!(StudentConfig::padded_vocab(32064), 32064);
        assert_eq!(StudentConfig::padded_vocab(1), 64);
    }
}
