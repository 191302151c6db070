//! A Hugging Face `config.json` rebuilt from a GGUF file's `{arch}.*` metadata.

use serde_json::{Value as Json, json};

use super::reader::GgufFile;
use crate::error::{Error, Result};

/// The GGUF architectures edkd loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub const SUPPORTED: [(&'static str, Arch); 2] =
        [("llama", Arch::Llama), ("qwen2", Arch::Qwen2)];

    /// Reads `general.architecture`; an architecture edkd cannot build is an error naming it.
    pub fn of(file: &GgufFile) -> Result<Self> {
        let found = file.get_str("general.architecture")?.unwrap_or("<none>");
        Self::SUPPORTED
            .iter()
            .find(|(name, _)| *name == found)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                path: file.path.clone(),
                found: format!("{found} (general.architecture)"),
                supported: Self::SUPPORTED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn name(self) -> &'static str {
        Self::SUPPORTED
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .expect("every arch is listed")
    }

    /// Llama-style files store q/k rows permuted for llama.cpp's adjacent-pair RoPE; Qwen2
    /// uses the NeoX (rotate-half) layout and is stored as is.
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    fn hf_architecture(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// `config.json` for the model in `file`, in the shape `HfConfig` and transformers read.
pub fn hf_config(file: &GgufFile) -> Result<Json> {
    let arch = Arch::of(file)?;
    let key = |k: &str| format!("{}.{k}", arch.name());
    let bad = |msg: String| Error::Gguf {
        path: file.path.clone(),
        msg,
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(bad(
            "tensor `rope_freqs.weight` (llama.cpp's precomputed Llama-3 RoPE scaling factors) \
             is not supported; convert the Hugging Face checkpoint instead"
                .into(),
        ));
    }
    let hidden = file.require_i64(&key("embedding_length"))?;
    let heads = file.require_i64(&key("attention.head_count"))?;
    if heads <= 0 {
        return Err(bad(format!("`{}` is {heads}", key("attention.head_count"))));
    }
    let kv_heads = file
        .get_i64(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    let head_dim = file
        .get_i64(&key("attention.key_length"))?
        .unwrap_or(hidden / heads);
    if let Some(v) = file.get_i64(&key("attention.value_length"))?
        && v != head_dim
    {
        return Err(bad(format!(
            "`{}` {v} differs from the key length {head_dim}; edkd needs them equal",
            key("attention.value_length")
        )));
    }
    let vocab = match file.get_i64(&key("vocab_size"))? {
        Some(v) => v,
        None => match file.get_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len() as i64,
            None => file
                .tensor("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| bad("cannot tell the vocabulary size".into()))?,
        },
    };
    let has = |name: &str| file.tensor(name).is_some();
    let mut config = json!({
        "architectures": [arch.hf_architecture()],
        "model_type": arch.name(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": file.require_i64(&key("feed_forward_length"))?,
        "num_hidden_layers": file.require_i64(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": file.get_i64(&key("context_length"))?.unwrap_or(2048),
        "rms_norm_eps": file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
        "rope_theta": file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        "hidden_act": "silu",
        // llama.cpp writes the output projection only when it is not the embedding matrix.
        "tie_word_embeddings": !has("output.weight"),
        "attention_bias": has("blk.0.attn_q.bias"),
        "mlp_bias": has("blk.0.ffn_gate.bias"),
        "bos_token_id": file.get_i64("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": file.get_i64("tokenizer.ggml.eos_token_id")?,
        "pad_token_id": file.get_i64("tokenizer.ggml.padding_token_id")?,
        "torch_dtype": "float32",
    });
    let obj = config.as_object_mut().expect("built as an object");
    if let Some(rope_dim) = file.get_i64(&key("rope.dimension_count"))?
        && rope_dim != head_dim
    {
        obj.insert(
            "partial_rotary_factor".into(),
            json!(rope_dim as f64 / head_dim as f64),
        );
    }
    if let Some(scaling) = rope_scaling(file, &key)? {
        obj.insert("rope_scaling".into(), scaling);
    }
    if arch == Arch::Qwen2 {
        obj.insert("use_sliding_window".into(), json!(false));
    }
    Ok(config)
}

/// `rope_scaling` from `{arch}.rope.scaling.*` (or the older `rope.scale_linear`).
fn rope_scaling(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Option<Json>> {
    let factor = file.get_f64(&key("rope.scaling.factor"))?;
    let kind = match file.get_str(&key("rope.scaling.type"))? {
        Some(kind) => kind.to_string(),
        None => match file.get_f64(&key("rope.scale_linear"))? {
            Some(f) if f != 1.0 => return Ok(Some(json!({"rope_type": "linear", "factor": f}))),
            _ => return Ok(None),
        },
    };
    Ok(match kind.as_str() {
        "none" => None,
        // Anything else goes through as named; the config resolver rejects what it lacks.
        _ => {
            let mut s = json!({"rope_type": kind, "factor": factor});
            if let Some(orig) = file.get_i64(&key("rope.scaling.original_context_length"))? {
                s["original_max_position_embeddings"] = json!(orig);
            }
            Some(s)
        }
    })
}
