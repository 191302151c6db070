//! Import of checkpoints written by the paper's reference code (microsoft/encoder-decoder-slm)
//! into an edkd student folder: keys `transformer.wte`, `transformer.e.{i}.*`,
//! `transformer.ln_e`, `transformer.h.{i}.*`, `transformer.ln_f`, `lm_head`, read from
//! safetensors or straight from a `torch.save` file (`.pt`, `.bin`: the released
//! `artifacts/models/model.pt` holds `model_state_dict` and `model_config`), in either
//! layout ([`layout`]).

pub mod layout;

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::StudentModel;
use crate::error::{Error, Result, read_json};
use crate::teacher::LoadOptions;
pub use layout::Layout;

/// The released model's start id: `src/mu/tokenizer.py` sets `bos_token_id = 1`.
pub const REFERENCE_BOS: i64 = 1;
/// The released model's end id: Phi-3.5's `<|endoftext|>`, the tokenizer's `eos_token`,
/// which `generate_text2text.py` passes to `generate` (id 2, `</s>`, is not special there).
pub const REFERENCE_EOS: i64 = 32000;

const WTE: &str = "transformer.wte.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Special ids chosen by the caller (the tokenizer's, or flags); `None` takes the
/// released model's: bos [`REFERENCE_BOS`], eos [`REFERENCE_EOS`], pad the config's
/// `pad_token_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<i64>,
    pub eos: Option<i64>,
    pub pad: Option<i64>,
}

/// What to convert and how.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// `.safetensors`, or a `torch.save` archive (`.pt`, `.pth`, `.bin`, `.ckpt`).
    pub weights: PathBuf,
    /// The reference config (JSON); default: the one stored in a `.pt` file, else the
    /// layout's defaults (mu_v1's are the released model's).
    pub config: Option<PathBuf>,
    /// `tokenizer.json` copied into the folder.
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
    pub specials: SpecialIds,
    /// `None`: detected ([`Layout::detect`]).
    pub layout: Option<Layout>,
    /// Treat every pad-id token as padding, as the reference does
    /// ([`super::StudentConfig::mask_pad_tokens`]).
    pub mask_pad_tokens: bool,
}

/// Named tensors and the config stored with them, if any.
type Weights = (Vec<(String, Tensor)>, Option<serde_json::Value>);

/// The weights of a reference checkpoint and the config stored with them, if any.
fn read_weights(path: &Path) -> Result<Weights> {
    if crate::pt::is_pt(path) {
        let c = crate::pt::read(path)?;
        return Ok((c.tensors, c.config));
    }
    let named = Tensor::read_safetensors(path).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok((named, None))
}

/// Converts a reference checkpoint into a student folder at `opts.out`, then loads it
/// back strictly to prove it complete.
pub fn convert_reference(opts: &ConvertOptions) -> Result<StudentModel> {
    let (named, stored_config) = read_weights(&opts.weights)?;
    let (config, origin) = match &opts.config {
        Some(p) => (Some(read_json::<serde_json::Value>(p)?), p.clone()),
        None => (stored_config, opts.weights.clone()),
    };
    let has_bias = named.iter().any(|(k, _)| k == "lm_head.bias");
    let layout = opts
        .layout
        .unwrap_or_else(|| Layout::detect(config.as_ref(), has_bias));
    let mut cfg = layout.student_config(config.as_ref(), &origin)?;
    let model_pad = cfg.pad_token_id;
    let bad = |field: &'static str, msg: String| Error::Config {
        path: origin.clone(),
        field,
        msg,
    };
    cfg.bos_token_id = opts.specials.bos.unwrap_or(REFERENCE_BOS);
    cfg.eos_token_id = match opts.specials.eos {
        Some(e) => e,
        None if REFERENCE_EOS < cfg.vocab_size => REFERENCE_EOS,
        None => {
            return Err(bad(
                "eos_token_id",
                format!(
                    "the released model's eos {REFERENCE_EOS} is outside the vocabulary \
                     ({}): name the tokenizer or the eos id",
                    cfg.vocab_size
                ),
            ));
        }
    };
    cfg.pad_token_id = opts.specials.pad.unwrap_or(model_pad);
    cfg.mask_pad_tokens = opts.mask_pad_tokens;
    if cfg.mask_pad_tokens && cfg.pad_token_id != model_pad {
        return Err(bad(
            "pad_token_id",
            format!(
                "masking pad tokens as the reference does needs its pad id {model_pad}, \
                 but pad {} was chosen",
                cfg.pad_token_id
            ),
        ));
    }
    let (renamed, tied) = rename(named, &opts.weights)?;
    cfg.tie_word_embeddings = tied;
    cfg.validate()?;
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    crate::weights::save_tensors(&renamed, None, &out.join(crate::weights::SINGLE_FILE))?;
    let cfg_text = serde_json::to_string_pretty(&cfg).expect("config serialises");
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, cfg_text + "\n").map_err(Error::io(&cfg_path))?;
    if let Some(tok) = &opts.tokenizer {
        std::fs::copy(tok, out.join("tokenizer.json")).map_err(Error::io(tok))?;
    }
    StudentModel::load(out, LoadOptions::default())
}

/// Our names for the reference tensors (sorted) and whether the head is tied. The
/// reference ties `lm_head.weight` to `transformer.wte.weight`, and writers store that
/// either twice (`state_dict()`), or once under either name (`safetensors.save_model`
/// keeps one of a shared pair): a missing one is the other; two unequal ones are untied.
fn rename(named: Vec<(String, Tensor)>, path: &Path) -> Result<(Vec<(String, Tensor)>, bool)> {
    let find = |key: &str| {
        named
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.shallow_clone())
    };
    let (wte, head) = (find(WTE), find(LM_HEAD));
    let tied = match (&wte, &head) {
        (Some(w), Some(h)) => w.size() == h.size() && w.equal(h),
        (Some(_), None) | (None, Some(_)) => true,
        (None, None) => {
            return Err(Error::MissingTensors {
                path: path.to_path_buf(),
                keys: vec![format!("{WTE} (or {LM_HEAD}, when tied)")],
            });
        }
    };
    let mut renamed = Vec::with_capacity(named.len());
    let mut unknown = Vec::new();
    for (key, t) in named {
        if key == LM_HEAD && tied {
            if wte.is_none() {
                renamed.push(("embed_tokens.weight".to_string(), t));
            }
            continue;
        }
        match map_key(&key) {
            Some(ours) => renamed.push((ours, t)),
            None => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::UnusedTensors {
            path: path.to_path_buf(),
            keys: unknown,
        });
    }
    renamed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((renamed, tied))
}

/// Our variable name for a reference key, or `None` if the key is not part of the layout.
pub fn map_key(key: &str) -> Option<String> {
    let fixed = match key {
        "transformer.wte.weight" => Some("embed_tokens.weight"),
        "transformer.ln_e.weight" => Some("encoder.norm.weight"),
        "transformer.ln_f.weight" => Some("decoder.norm.weight"),
        "lm_head.weight" => Some("lm_head.weight"),
        "lm_head.bias" => Some("lm_head.bias"),
        _ => None,
    };
    if let Some(k) = fixed {
        return Some(k.to_string());
    }
    let rest = key.strip_prefix("transformer.")?;
    let (stack, rest) = rest.split_once('.')?;
    if !matches!(stack, "e" | "h") {
        return None;
    }
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
        assert_eq!(map_key("transformer.x.0.mlp.fc1.weight"), None);
        assert_eq!(map_key("lm_head.bias").as_deref(), Some("lm_head.bias"));
    }
}
