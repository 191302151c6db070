//! llama.cpp tensor names to Hugging Face names, dequantization, and the undoing of
//! llama.cpp's q/k row permutation.

use tch::Tensor;

use super::config::Arch;
use super::quant::{GgmlType, dequantize};
use super::reader::{GgufFile, TensorInfo};
use crate::error::{Error, Result};

/// Per-layer tensors: llama.cpp's name after `blk.N.` and the HF name after `model.layers.N.`.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Whole-model tensors.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The Hugging Face name of a llama.cpp tensor name, if it is one edkd knows.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        let layer: u32 = layer.parse().ok()?;
        let hf = LAYER_NAMES.iter().find(|(g, _)| *g == part)?.1;
        return Some(format!("model.layers.{layer}.{hf}.{suffix}"));
    }
    let hf = GLOBAL_NAMES.iter().find(|(g, _)| *g == stem)?.1;
    Some(format!("{hf}.{suffix}"))
}

/// The row permutation llama.cpp applied to this tensor: `Some(heads)` for q (all heads)
/// and k (KV heads) of Llama-style architectures, whose GGUF rope pairs adjacent rows.
fn permuted_heads(arch: Arch, gguf_name: &str, n_heads: i64, n_kv_heads: i64) -> Option<i64> {
    if !arch.permutes_qk() {
        return None;
    }
    let part = gguf_name.strip_prefix("blk.")?.split_once('.')?.1;
    match part.rsplit_once('.')?.0 {
        "attn_q" => Some(n_heads),
        "attn_k" => Some(n_kv_heads),
        _ => None,
    }
}

/// Inverse of convert_hf_to_gguf's `permute`: rows `[h, 2, d/2]` were stored as `[h, d/2, 2]`.
pub fn unpermute_rows(t: &Tensor, heads: i64) -> Result<Tensor> {
    let shape = t.size();
    let rows = shape[0];
    let half = rows / heads / 2;
    let mut split = vec![heads, half, 2];
    split.extend_from_slice(&shape[1..]);
    Ok(t.f_reshape(&split)?
        .f_transpose(1, 2)?
        .f_contiguous()?
        .f_reshape(&shape)?)
}

/// Dequantizes one tensor to an f32 CPU tensor in PyTorch shape order.
pub fn dequantize_tensor(file: &GgufFile, info: &TensorInfo) -> Result<Tensor> {
    if !info.ggml_type.is_supported() {
        return Err(Error::GgufTensorType {
            path: file.path.clone(),
            tensor: info.name.clone(),
            ggml_type: info.ggml_type.name(),
            supported: GgmlType::supported_names(),
        });
    }
    let bytes = file.tensor_bytes(info)?;
    let mut out = vec![0f32; info.n_elements() as usize];
    dequantize(info.ggml_type, bytes, &mut out).ok_or_else(|| Error::Gguf {
        path: file.path.clone(),
        msg: format!(
            "tensor `{}`: {} bytes do not hold {} {} elements",
            info.name,
            bytes.len(),
            out.len(),
            info.ggml_type
        ),
    })?;
    Ok(Tensor::f_from_slice(&out)?.f_reshape(info.shape())?)
}

/// Visits every tensor of the file as `(hf_name, f32 tensor)`, one at a time, with q/k
/// rows restored to HF order. A tensor with no HF counterpart is an error naming it
/// (strict, like safetensors loading).
pub fn for_each_hf_tensor(
    file: &GgufFile,
    arch: Arch,
    heads: (i64, i64),
    mut visit: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    let unknown: Vec<String> = file
        .tensors
        .iter()
        .filter(|t| hf_name(&t.name).is_none())
        .map(|t| t.name.clone())
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Gguf {
            path: file.path.clone(),
            msg: format!(
                "tensors with no Hugging Face counterpart (not part of the model edkd builds): {}",
                unknown.join(", ")
            ),
        });
    }
    for info in &file.tensors {
        let name = hf_name(&info.name).expect("checked above");
        let mut t = dequantize_tensor(file, info)?;
        if let Some(n) = permuted_heads(arch, &info.name, heads.0, heads.1) {
            let rows = t.size()[0];
            if n <= 0 || rows % (2 * n) != 0 {
                return Err(Error::Gguf {
                    path: file.path.clone(),
                    msg: format!(
                        "tensor `{}`: {rows} rows cannot be split into {n} heads of rotary pairs",
                        info.name
                    ),
                });
            }
            t = unpermute_rows(&t, n)?;
        }
        visit(name, t)?;
    }
    Ok(())
}

/// Fills every variable of `vs` from the file, strictly: missing and unused tensors and
/// wrong shapes are errors that name them.
pub fn load_into(
    vs: &mut tch::nn::VarStore,
    file: &GgufFile,
    arch: Arch,
    heads: (i64, i64),
) -> Result<()> {
    let path = &file.path;
    let mut wanted: std::collections::HashMap<String, Tensor> =
        vs.variables().into_iter().collect();
    let mut unused = Vec::new();
    for_each_hf_tensor(file, arch, heads, |name, src| {
        let Some(mut var) = wanted.remove(&name) else {
            unused.push(name);
            return Ok(());
        };
        if src.size() != var.size() {
            return Err(Error::Shape {
                path: path.clone(),
                key: name,
                found: src.size(),
                expected: var.size(),
            });
        }
        tch::no_grad(|| var.f_copy_(&src.f_to_kind(var.kind())?))?;
        Ok(())
    })?;
    if !wanted.is_empty() {
        let mut keys: Vec<String> = wanted.into_keys().collect();
        keys.sort();
        return Err(Error::MissingTensors {
            path: path.clone(),
            keys,
        });
    }
    if !unused.is_empty() {
        unused.sort();
        return Err(Error::UnusedTensors {
            path: path.clone(),
            keys: unused,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn names_map_to_hugging_face_keys() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // convert_hf_to_gguf: reshape(h, 2, d/2, ...).swapaxes(1, 2).reshape(shape).
        let (heads, rows, cols) = (3, 12, 5);
        let hf = Tensor::arange(rows * cols, (Kind::Float, tch::Device::Cpu)).reshape([rows, cols]);
        let gguf = hf
            .reshape([heads, 2, rows / heads / 2, cols])
            .transpose(1, 2)
            .reshape([rows, cols]);
        let back = unpermute_rows(&gguf, heads).unwrap();
        assert!(back.equal(&hf));
        assert!(!gguf.equal(&hf));
    }
}
