//! The Hugging Face `config.json` of a resolved config: what transformers 5.x would write,
//! so that resolving it again gives the same config (tested on every fixture).

use serde_json::{Value, json};

use super::config::{CausalLmConfig, EmbedScale, Family, LayerRope};
use super::rope_params::rope_json;

impl CausalLmConfig {
    /// The Hugging Face `config.json` for this model.
    pub fn to_hf_json(&self) -> Value {
        let f = &self.features;
        let mut v = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "attention_dropout": self.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        });
        let act = serde_json::to_value(self.act).expect("activations serialize");
        v[if self.family.is_gemma() {
            "hidden_activation"
        } else {
            "hidden_act"
        }] = act;
        if let Some(local) = &f.local_rope {
            v["rope_parameters"] = json!({
                "full_attention": rope_json(&self.rope, self.head_dim),
                "sliding_attention": rope_json(local, self.head_dim),
            });
        } else {
            v["rope_parameters"] = rope_json(&self.rope, self.head_dim);
        }
        use crate::nn::RopeScaling::{Llama3, LongRope, Yarn};
        if let Llama3 { original_max, .. }
        | LongRope { original_max, .. }
        | Yarn { original_max, .. } = &self.rope.scaling
        {
            // transformers prefers a top-level pretraining length (Phi-3 always has one).
            v["original_max_position_embeddings"] = json!(original_max);
        }
        self.window_json(&mut v);
        if self.family.is_gemma() {
            v["query_pre_attn_scalar"] = json!(f.query_pre_attn_scalar);
            v["final_logit_softcapping"] = json!(f.final_softcap);
            v["attn_logit_softcapping"] = json!(f.attn_softcap);
        }
        if self.family == Family::Granite {
            let scale = match f.embed_scale {
                EmbedScale::Scalar(m) | EmbedScale::InDtype(m) => m,
                EmbedScale::None => 1.0,
            };
            v["embedding_multiplier"] = json!(scale);
            v["attention_multiplier"] = json!(f.attention_multiplier.unwrap_or(1.0));
            v["residual_multiplier"] = json!(f.residual_multiplier.unwrap_or(1.0));
            v["logits_scaling"] = json!(f.logits_scaling.unwrap_or(1.0));
        }
        v
    }

    /// `layer_types`, `sliding_window` and the family's switches for them.
    fn window_json(&self, v: &mut Value) {
        let n = self.num_layers as usize;
        let kinds: Vec<_> = (0..n).map(|i| self.layer_kind(i)).collect();
        let window = kinds.iter().find_map(|k| k.window);
        let types: Vec<&str> = kinds
            .iter()
            .map(|k| {
                if k.window.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        match self.family {
            Family::Llama | Family::Olmo2 | Family::Granite => {}
            Family::Mistral | Family::Phi3 => v["sliding_window"] = json!(window),
            Family::Qwen2 | Family::Qwen3 => {
                v["use_sliding_window"] = json!(window.is_some());
                v["sliding_window"] = json!(window);
                v["layer_types"] = json!(types);
            }
            Family::Gemma2 | Family::Gemma3 => {
                v["sliding_window"] = json!(window);
                v["layer_types"] = json!(types);
            }
            Family::SmolLm3 => {
                let uses_rope: Vec<i64> = kinds
                    .iter()
                    .map(|k| i64::from(k.rope != LayerRope::None))
                    .collect();
                v["no_rope_layers"] = json!(uses_rope);
                v["use_sliding_window"] = json!(window.is_some());
                v["sliding_window"] = json!(window);
                v["layer_types"] = json!(types);
            }
        }
    }
}
