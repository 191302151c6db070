//! A student born from a pretrained decoder-only checkpoint (DistilBERT's layer selection,
//! T5Gemma's adaptation): token embeddings (tied as in the source), the final norm (both
//! stacks), encoder layers copied from one list of source layers (their attention made
//! bidirectional), decoder layers from another, each decoder layer's cross-attention copied
//! from the self-attention of the same source layer with its output projection scaled by a
//! factor (0 makes the decoder start as the source model itself), and the source's RoPE,
//! head layout (grouped GQA), gated SiLU MLP, RMSNorm eps and biases.
//!
//! With every source layer in the decoder and the factor 0, the student's decoder logits
//! are the source's logits for the same tokens (`tests/student_init.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor, nn::VarStore};

use super::config::{FfnKind, MODEL_TYPE, StudentConfig};
use super::model::Student;
use super::{StudentModel, save_folder};
use crate::error::{Error, Result};
use crate::nn::{Activation, GqaMapping};
use crate::teacher::{CausalLmConfig, Family, Features, LoadOptions, Teacher};

/// File of a decoder-initialised student folder that records where it came from.
pub const INIT_RECORD: &str = "student_init.json";

/// Families whose plain layout (no sliding windows, QK norms, multipliers) maps onto the
/// student's layers.
const FAMILIES: [Family; 3] = [Family::Llama, Family::Qwen2, Family::Mistral];

/// Special token ids of the student (decoder start, end, padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialIds {
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
}

/// How to build the student.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSpec {
    /// Source layers copied into the encoder, in order (repeats allowed, may be empty).
    pub encoder_layers: Vec<usize>,
    /// Source layers copied into the decoder, in order (at least one).
    pub decoder_layers: Vec<usize>,
    /// Multiplies each cross-attention output projection (0 allowed).
    pub cross_attn_out_scale: f64,
    /// `None`: the source config's bos / first eos / pad (pad falls back to eos).
    pub special_ids: Option<SpecialIds>,
    /// Centred encoder positions (the Mu layout); the source was trained on `0..len`.
    pub centered_encoder_positions: bool,
    pub dropout: f64,
    /// `None`: the source's `max_position_embeddings`.
    pub max_positions: Option<i64>,
}

impl Default for InitSpec {
    fn default() -> Self {
        Self {
            encoder_layers: Vec::new(),
            decoder_layers: Vec::new(),
            cross_attn_out_scale: 0.0,
            special_ids: None,
            centered_encoder_positions: false,
            dropout: 0.0,
            max_positions: None,
        }
    }
}

/// Parses a layer list such as `0-3,8,10-11` (ranges inclusive) or `all`, naming the list
/// (`what`, e.g. `--encoder-layers`) and the bound in errors. `num_layers` is the source's.
pub fn parse_layer_list(text: &str, what: &str, num_layers: usize) -> Result<Vec<usize>> {
    let bad = |msg: String| Error::Input(format!("{what} {text:?}: {msg}"));
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(Vec::new());
    }
    if text == "all" {
        return Ok((0..num_layers).collect());
    }
    let index = |s: &str| -> Result<usize> {
        let i: usize = s
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{s}` is not a layer index")))?;
        if i >= num_layers {
            return Err(bad(format!(
                "layer {i} is out of range: the source has {num_layers} layers (0..={})",
                num_layers.saturating_sub(1)
            )));
        }
        Ok(i)
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return Err(bad(format!("range {a}-{b} runs backwards")));
                }
                out.extend(a..=b);
            }
            None => out.push(index(part)?),
        }
    }
    Ok(out)
}

/// Checks that the source's layout is one the student can hold; names the feature at fault.
fn check_source(c: &CausalLmConfig, origin: &Path) -> Result<()> {
    let bad = |field: &'static str, msg: String| Error::Config {
        path: origin.to_path_buf(),
        field,
        msg: format!("{msg}; a student can be initialised from Llama, Qwen2 and Mistral layouts"),
    };
    if !FAMILIES.contains(&c.family) {
        return Err(bad(
            "architectures",
            format!("{} is not supported", c.family.architecture()),
        ));
    }
    if c.features != Features::default() {
        return Err(bad(
            "layer_types",
            "sliding windows, QK norms or other non-Llama features are not supported".into(),
        ));
    }
    if c.act != Activation::Silu {
        return Err(bad(
            "hidden_act",
            format!("{:?}: the student's gated MLP is SiLU", c.act),
        ));
    }
    if c.rope.rotary_dim != c.head_dim {
        return Err(bad(
            "partial_rotary_factor",
            format!(
                "RoPE over {} of {} head dimensions (partial rotary) is not supported",
                c.rope.rotary_dim, c.head_dim
            ),
        ));
    }
    Ok(())
}

fn check_spec(spec: &InitSpec, n: usize) -> Result<()> {
    for (what, list) in [
        ("encoder_layers", &spec.encoder_layers),
        ("decoder_layers", &spec.decoder_layers),
    ] {
        if let Some(&i) = list.iter().find(|&&i| i >= n) {
            return Err(Error::Input(format!(
                "{what}: layer {i} is out of range: the source has {n} layers (0..={})",
                n.saturating_sub(1)
            )));
        }
    }
    if spec.decoder_layers.is_empty() {
        return Err(Error::Input(
            "decoder_layers: at least one source layer is needed for the decoder".into(),
        ));
    }
    if !spec.cross_attn_out_scale.is_finite() {
        return Err(Error::Input(format!(
            "cross_attn_out_scale: {} is not a finite number",
            spec.cross_attn_out_scale
        )));
    }
    Ok(())
}

/// The student config for `source` and `spec`.
pub fn student_config(source: &CausalLmConfig, spec: &InitSpec) -> StudentConfig {
    let ids = spec.special_ids.unwrap_or_else(|| {
        let eos = source.eos_token_ids.first().copied().unwrap_or(0);
        SpecialIds {
            bos: source.bos_token_id.unwrap_or(eos),
            eos,
            pad: source.pad_token_id.unwrap_or(eos),
        }
    });
    StudentConfig {
        model_type: MODEL_TYPE.into(),
        vocab_size: source.vocab_size,
        d_model: source.hidden_size,
        encoder_layers: spec.encoder_layers.len() as i64,
        decoder_layers: spec.decoder_layers.len() as i64,
        attn_dim: source.num_heads * source.head_dim,
        num_heads: source.num_heads,
        num_kv_heads: source.num_kv_heads,
        gqa_mapping: GqaMapping::Grouped,
        ffn_kind: FfnKind::Swiglu,
        ffn_dim: source.intermediate_size,
        ffn_bias: source.mlp_bias,
        attn_bias: source.qkv_bias,
        attn_out_bias: (source.o_bias != source.qkv_bias).then_some(source.o_bias),
        rms_norm_eps: source.rms_norm_eps,
        rope_theta: source.rope.theta,
        rope_scaling: source.rope.scaling.clone(),
        rope_encoder: true,
        rope_decoder: true,
        centered_encoder_positions: spec.centered_encoder_positions,
        tie_word_embeddings: source.tie_word_embeddings,
        lm_head_bias: false,
        mask_pad_tokens: false,
        dropout: spec.dropout,
        max_positions: spec.max_positions.unwrap_or(source.max_positions),
        pad_token_id: ids.pad,
        bos_token_id: ids.bos,
        eos_token_id: ids.eos,
        vision: None,
    }
}

/// The source key each student variable is copied from, and whether it is a
/// cross-attention output projection (scaled).
fn source_key(student_key: &str, spec: &InitSpec) -> Option<(String, bool)> {
    let fixed = match student_key {
        "embed_tokens.weight" => Some("model.embed_tokens.weight"),
        "lm_head.weight" => Some("lm_head.weight"),
        "encoder.norm.weight" | "decoder.norm.weight" => Some("model.norm.weight"),
        _ => None,
    };
    if let Some(k) = fixed {
        return Some((k.to_owned(), false));
    }
    let (stack, rest) = student_key.split_once(".layers.")?;
    let (index, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let list = match stack {
        "encoder" => &spec.encoder_layers,
        "decoder" => &spec.decoder_layers,
        _ => return None,
    };
    let src = *list.get(index)?;
    let (module, param) = rest.split_once('.')?;
    let (name, scaled) = match module {
        "self_attn_norm" | "cross_attn_norm" => ("input_layernorm".to_owned(), false),
        "mlp_norm" => ("post_attention_layernorm".to_owned(), false),
        "self_attn" => (format!("self_attn.{param}"), false),
        "cross_attn" => (format!("self_attn.{param}"), param.starts_with("o_proj.")),
        "mlp" => (format!("mlp.{param}"), false),
        _ => return None,
    };
    let name = match module {
        "self_attn" | "cross_attn" | "mlp" => name,
        _ => format!("{name}.{param}"),
    };
    Some((format!("model.layers.{src}.{name}"), scaled))
}

/// Builds the student from a loaded source model (weights copied, f32, on the CPU).
pub fn init_from_teacher(source: &Teacher, spec: &InitSpec) -> Result<StudentModel> {
    let c = &source.model.config;
    check_source(c, &source.dir)?;
    check_spec(spec, c.num_layers as usize)?;
    let config = student_config(c, spec);
    config.validate()?;
    let vs = VarStore::new(Device::Cpu);
    let model = crate::rng::exclusive(|| Student::new(&vs.root(), &config));
    let from: HashMap<String, Tensor> = source.vs.variables();
    let mut unmapped = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (key, mut var) in vs.variables() {
            let Some((src_key, scaled)) = source_key(&key, spec) else {
                unmapped.push(key);
                continue;
            };
            let src = from.get(&src_key).ok_or_else(|| Error::MissingTensors {
                path: source.dir.clone(),
                keys: vec![format!("{src_key} (for the student's {key})")],
            })?;
            if src.size() != var.size() {
                return Err(Error::Shape {
                    path: source.dir.clone(),
                    key: src_key,
                    found: src.size(),
                    expected: var.size(),
                });
            }
            let value = src.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
            let value = if scaled {
                value * spec.cross_attn_out_scale
            } else {
                value
            };
            var.f_copy_(&value)?;
        }
        Ok(())
    })?;
    if !unmapped.is_empty() {
        unmapped.sort();
        return Err(Error::Input(format!(
            "student variables with no source tensor: {}",
            unmapped.join(", ")
        )));
    }
    Ok(StudentModel {
        vs,
        model,
        tokenizer: None,
    })
}

/// What [`init_folder`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitRecord {
    pub source: PathBuf,
    pub source_architecture: String,
    pub source_layers: i64,
    pub source_parameters: i64,
    pub encoder_layers: Vec<usize>,
    pub decoder_layers: Vec<usize>,
    pub cross_attn_out_scale: f64,
    pub student_parameters: i64,
    /// Whether a tokenizer was written next to the weights.
    pub tokenizer: bool,
}

/// Loads `source` (a Hugging Face folder or a `.gguf` file), builds the student and writes
/// an ordinary student folder at `out`: `config.json`, `model.safetensors`, the source's
/// `tokenizer.json` and `tokenizer_config.json` (rebuilt from a GGUF's metadata), and
/// [`INIT_RECORD`].
pub fn init_folder(source: &Path, spec: &InitSpec, out: &Path) -> Result<InitRecord> {
    let teacher = Teacher::load(source, LoadOptions::default())?;
    let student = init_from_teacher(&teacher, spec)?;
    let config = serde_json::to_value(&student.model.config).expect("config serialises");
    save_folder(out, &config, &student.vs, None)?;
    let tokenizer = copy_tokenizer(source, out)?;
    let record = InitRecord {
        source: source.to_path_buf(),
        source_architecture: teacher.model.config.family.architecture().into(),
        source_layers: teacher.model.config.num_layers,
        source_parameters: teacher.num_parameters(),
        encoder_layers: spec.encoder_layers.clone(),
        decoder_layers: spec.decoder_layers.clone(),
        cross_attn_out_scale: spec.cross_attn_out_scale,
        student_parameters: student.num_parameters(),
        tokenizer,
    };
    let path = out.join(INIT_RECORD);
    let text = serde_json::to_string_pretty(&record).expect("record serialises") + "\n";
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(record)
}

/// Copies (or, for a `.gguf`, writes from its metadata) the tokenizer files into `out`;
/// false when the source has no tokenizer.
fn copy_tokenizer(source: &Path, out: &Path) -> Result<bool> {
    if crate::gguf::is_gguf(source) {
        return Ok(crate::gguf::extract_tokenizer(source, out)?.is_some());
    }
    let mut any = false;
    for name in ["tokenizer.json", crate::chat::TOKENIZER_CONFIG] {
        let from = source.join(name);
        if from.is_file() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(Error::io(&from))?;
            any |= name == "tokenizer.json";
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_parse_and_name_the_list_and_bound() {
        assert_eq!(
            parse_layer_list("0-2, 5,7-7", "--encoder-layers", 8).unwrap(),
            vec![0, 1, 2, 5, 7]
        );
        assert_eq!(parse_layer_list("all", "x", 3).unwrap(), vec![0, 1, 2]);
        assert!(parse_layer_list("", "x", 3).unwrap().is_empty());
        let e = parse_layer_list("0,30", "--decoder-layers", 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--decoder-layers") && e.contains("30 layers") && e.contains("0..=29"),
            "{e}"
        );
        let e = parse_layer_list("3-1", "--encoder-layers", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backwards"), "{e}");
        let e = parse_layer_list("a", "--encoder-layers", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a` is not a layer index"), "{e}");
    }

    #[test]
    fn student_keys_map_to_source_layers() {
        let spec = InitSpec {
            encoder_layers: vec![4, 2],
            decoder_layers: vec![7],
            ..Default::default()
        };
        let k = |s: &str| source_key(s, &spec);
        assert_eq!(
            k("encoder.layers.1.self_attn.q_proj.weight"),
            Some(("model.layers.2.self_attn.q_proj.weight".into(), false))
        );
        assert_eq!(
            k("decoder.layers.0.cross_attn.o_proj.weight"),
            Some(("model.layers.7.self_attn.o_proj.weight".into(), true))
        );
        assert_eq!(
            k("decoder.layers.0.cross_attn.k_proj.bias"),
            Some(("model.layers.7.self_attn.k_proj.bias".into(), false))
        );
        assert_eq!(
            k("decoder.layers.0.cross_attn_norm.weight"),
            Some(("model.layers.7.input_layernorm.weight".into(), false))
        );
        assert_eq!(
            k("encoder.layers.0.mlp_norm.weight"),
            Some((
                "model.layers.4.post_attention_layernorm.weight".into(),
                false
            ))
        );
        assert_eq!(
            k("encoder.layers.0.mlp.gate_proj.weight"),
            Some(("model.layers.4.mlp.gate_proj.weight".into(), false))
        );
        assert_eq!(k("decoder.layers.1.mlp.up_proj.weight"), None);
    }
}
