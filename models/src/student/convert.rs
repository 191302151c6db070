//! Import of checkpoints in the paper's reference layout (`transformer.wte`,
//! `transformer.e.{i}.*`, `transformer.ln_e`, `transformer.h.{i}.*`, `transformer.ln_f`,
//! `lm_head`, as safetensors) into an edkd student folder.

use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use super::StudentModel;
use super::config::StudentConfig;
use crate::error::{Error, Result, read_json};
use crate::nn::GqaMapping;
use crate::teacher::LoadOptions;

/// The reference implementation's config fields (its defaults are the released model's).
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ReferenceConfig {
    pub n_encoder_layer: i64,
    pub n_decoder_layer: i64,
    pub n_embd: i64,
    pub qkv_embd: Option<i64>,
    pub is_interleaved: bool,
    pub hidden_dim: i64,
    pub n_head: i64,
    pub n_kv_head: i64,
    pub block_size: i64,
    pub dropout: f64,
    pub rope_theta: f64,
    pub rope_factor: f64,
    pub pad_token_id: i64,
    pub vocab_size: i64,
}

impl Default for ReferenceConfig {
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

impl ReferenceConfig {
    fn to_student(&self, path: &Path) -> Result<StudentConfig> {
        if self.rope_factor > 1.0 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                field: "rope_factor",
                msg: format!(
                    "{} (NTK-scaled RoPE) is not supported by the student; only 1.0",
                    self.rope_factor
                ),
            });
        }
        let base = StudentConfig::preset("mu-330m")?;
        Ok(StudentConfig {
            vocab_size: self.vocab_size,
            d_model: self.n_embd,
            encoder_layers: self.n_encoder_layer,
            decoder_layers: self.n_decoder_layer,
            attn_dim: self.qkv_embd.unwrap_or(self.n_embd),
            num_heads: self.n_head,
            num_kv_heads: self.n_kv_head,
            // The reference repeats KV heads by concatenation unless interleaved.
            gqa_mapping: if self.is_interleaved {
                GqaMapping::Grouped
            } else {
                GqaMapping::Cyclic
            },
            ffn_dim: self.hidden_dim,
            rope_theta: self.rope_theta,
            dropout: self.dropout,
            max_positions: self.block_size.max(base.max_positions),
            pad_token_id: self.pad_token_id,
            ..base
        })
    }
}

/// Our variable name for a reference key, or `None` if the key is not part of the layout.
pub fn map_key(key: &str) -> Option<String> {
    let fixed = match key {
        "transformer.wte.weight" => Some("embed_tokens.weight"),
        "transformer.ln_e.weight" => Some("encoder.norm.weight"),
        "transformer.ln_f.weight" => Some("decoder.norm.weight"),
        "lm_head.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(k) = fixed {
        return Some(k.to_string());
    }
    let rest = key.strip_prefix("transformer.")?;
    let (stack, rest) = rest.split_once('.')?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let attn = |prefix: &str, lin: &str| {
        let proj = match lin {
            "q_linear" => "q_proj",
            "k_linear" => "k_proj",
            "v_linear" => "v_proj",
            "out_linear" => "o_proj",
            _ => return None,
        };
        Some(format!("{prefix}.{proj}"))
    };
    let ours = match (stack, module.split_once('.')) {
        ("e", None) => match module {
            "ln1" => "self_attn_norm".to_string(),
            "ln2" => "mlp_norm".to_string(),
            _ => return None,
        },
        ("h", None) => match module {
            "ln1" => "self_attn_norm".to_string(),
            "ln2" => "cross_attn_norm".to_string(),
            "ln3" => "mlp_norm".to_string(),
            _ => return None,
        },
        ("e", Some(("attn", lin))) => attn("self_attn", lin)?,
        ("h", Some(("causal_attn", lin))) => attn("self_attn", lin)?,
        ("h", Some(("cross_attn", lin))) => attn("cross_attn", lin)?,
        (_, Some(("mlp", fc @ ("fc1" | "fc2")))) => format!("mlp.{fc}"),
        _ => return None,
    };
    let stack = if stack == "e" { "encoder" } else { "decoder" };
    Some(format!("{stack}.layers.{layer}.{ours}.{param}"))
}

/// Converts `weights` (reference-layout safetensors) with `config` (reference config.json;
/// `None` = the released model's) into a student folder at `out`, then loads it back
/// strictly to prove it complete.
pub fn convert_reference(
    weights: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
    out: &Path,
) -> Result<StudentModel> {
    let ref_cfg: ReferenceConfig = match config {
        Some(p) => read_json(p)?,
        None => ReferenceConfig::default(),
    };
    let mut student_cfg = ref_cfg.to_student(config.unwrap_or(weights))?;
    let named = Tensor::read_safetensors(weights).map_err(|e| Error::Safetensors {
        path: weights.to_path_buf(),
        msg: e.to_string(),
    })?;
    let wte = named
        .iter()
        .find(|(k, _)| k == "transformer.wte.weight")
        .map(|(_, t)| t.shallow_clone());
    let mut renamed = Vec::with_capacity(named.len());
    let mut unknown = Vec::new();
    for (key, t) in named {
        if key == "lm_head.weight" {
            // Tied in the reference: keep it only if it really differs from the embedding.
            if wte
                .as_ref()
                .is_some_and(|w| w.size() == t.size() && w.equal(&t))
            {
                continue;
            }
            student_cfg.tie_word_embeddings = false;
        }
        match map_key(&key) {
            Some(ours) => renamed.push((ours, t)),
            None => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::UnusedTensors {
            path: weights.to_path_buf(),
            keys: unknown,
        });
    }
    student_cfg.validate()?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    renamed.sort_by(|a, b| a.0.cmp(&b.0));
    crate::weights::save_tensors(&renamed, None, &out.join(crate::weights::SINGLE_FILE))?;
    let cfg_text = serde_json::to_string_pretty(&student_cfg).expect("config serialises");
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, cfg_text + "\n").map_err(Error::io(&cfg_path))?;
    if let Some(tok) = tokenizer {
        std::fs::copy(tok, out.join("tokenizer.json")).map_err(Error::io(tok))?;
    }
    StudentModel::load(out, LoadOptions::default())
}

#[cfg(test)]
mod tests {
    use super::map_key;

    #[test]
    fn reference_keys_map_to_ours() {
        let cases = [
            ("transformer.wte.weight", "embed_tokens.weight"),
            (
                "transformer.e.3.attn.q_linear.bias",
                "encoder.layers.3.self_attn.q_proj.bias",
            ),
            (
                "transformer.e.0.ln2.weight",
                "encoder.layers.0.mlp_norm.weight",
            ),
            (
                "transformer.h.1.causal_attn.out_linear.weight",
                "decoder.layers.1.self_attn.o_proj.weight",
            ),
            (
                "transformer.h.1.cross_attn.k_linear.weight",
                "decoder.layers.1.cross_attn.k_proj.weight",
            ),
            (
                "transformer.h.9.ln3.weight",
                "decoder.layers.9.mlp_norm.weight",
            ),
            (
                "transformer.h.2.mlp.fc2.bias",
                "decoder.layers.2.mlp.fc2.bias",
            ),
            ("transformer.ln_f.weight", "decoder.norm.weight"),
        ];
        for (theirs, ours) in cases {
            assert_eq!(map_key(theirs).as_deref(), Some(ours), "{theirs}");
        }
        assert_eq!(map_key("transformer.e.0.attn.rotary.inv_freq"), None);
        assert_eq!(map_key("transformer.x.0.ln1.weight"), None);
    }
}
