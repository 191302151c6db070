//! Exports a model folder (student, twin or teacher) to an ONNX folder: the graphs,
//! `export.json` and the tokenizer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edkd_models::student::{FolderKind, MODEL_TYPE, StudentModel, folder_kind};
use edkd_models::{LoadOptions, Teacher};

use crate::error::{Error, Result};
use crate::graph::{Graph, OPSET, encode_model};
use crate::layers::Weights;
use crate::manifest::{FORMAT, FORMAT_VERSION, GraphInfo, Manifest, ModelKind, Quantization};
use crate::quant::Scheme;
use crate::{causal, student};

/// What to export and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    pub scheme: Scheme,
    /// With an int8 scheme: quantise the embedding tables (and a tied head) too.
    pub quantize_embeddings: bool,
}

const TOKENIZER: &str = "tokenizer.json";

fn write_graph(graph: Graph, out: &Path, name: &str, doc: &str) -> Result<GraphInfo> {
    let inputs = graph.input_specs.clone();
    let outputs = graph.output_specs.clone();
    let model = graph.into_model(doc, &[("edkd.graph", name.to_owned())]);
    let file = format!("{name}.onnx");
    let bytes = encode_model(&model, &file)?;
    drop(model);
    let path = out.join(&file);
    std::fs::write(&path, &bytes).map_err(Error::io(&path))?;
    Ok(GraphInfo {
        file,
        bytes: bytes.len() as u64,
        inputs,
        outputs,
    })
}

fn quantization(opts: &ExportOptions) -> Option<Quantization> {
    opts.scheme.is_quantized().then(|| Quantization {
        scheme: opts.scheme,
        embeddings: opts.quantize_embeddings,
        method: match opts.scheme {
            Scheme::Int8 => {
                "symmetric int8, linear weights in [-63, 63] (7 bits: integer \
                             matmuls cannot saturate on x86 without VNNI) and embeddings in \
                             [-127, 127], one f32 scale per output channel (per row of an \
                             embedding table), zero point 0"
            }
            _ => {
                "symmetric int8 in [-127, 127], one f32 scale per output channel (per row \
                  of an embedding table), zero point 0"
            }
        }
        .into(),
    })
}

/// Exports `model_dir` into `out` and returns the manifest written there.
pub fn export_folder(model_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<Manifest> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let name = model_dir.display().to_string();
    let load = LoadOptions::default(); // f32 on CPU: the graphs are f32
    let mut graphs = BTreeMap::new();
    let (q, qe) = (opts.scheme, opts.quantize_embeddings);
    let mut gguf_tokenizer = None;
    let mut manifest = match folder_kind(model_dir)? {
        FolderKind::Student => {
            let s = StudentModel::load(model_dir, load)?;
            let c = s.model.config.clone();
            // Neither is in the graphs yet; refuse rather than export other logits.
            for (on, feature) in [
                (
                    c.mask_pad_tokens,
                    "mask_pad_tokens (pad ids masked inside the input)",
                ),
                (c.lm_head_bias, "lm_head_bias (the mu_v2 output bias)"),
            ] {
                if on {
                    return Err(Error::Unsupported {
                        model: name,
                        feature: feature.into(),
                        supported: "students whose padding is each row's tail and whose head has no bias",
                    });
                }
            }
            let mut w = Weights::new(&s.vs, &name);
            let enc = student::encoder(&c, &mut w, q, qe)?;
            let doc = "edkd encoder-decoder student: encoder (cross-attention K/V computed once)";
            graphs.insert("encoder".into(), write_graph(enc, out, "encoder", doc)?);
            let dec = student::decoder(&c, &mut w, q, qe)?;
            let doc = "edkd encoder-decoder student: one decoder step with self-attention KV cache";
            graphs.insert("decoder".into(), write_graph(dec, out, "decoder", doc)?);
            w.check_all_used()?;
            Manifest {
                format: FORMAT.into(),
                format_version: FORMAT_VERSION,
                kind: ModelKind::Seq2seq,
                architecture: MODEL_TYPE.into(),
                source: name,
                opset: OPSET,
                dtype: "float32".into(),
                quantization: quantization(opts),
                vocab_size: c.vocab_size,
                d_model: c.d_model,
                encoder_layers: c.encoder_layers,
                decoder_layers: c.decoder_layers,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim(),
                max_positions: c.max_positions,
                pad_token_id: c.pad_token_id,
                bos_token_id: Some(c.bos_token_id),
                eos_token_ids: vec![c.eos_token_id],
                tokenizer: None,
                parameters: s.num_parameters(),
                graphs: BTreeMap::new(),
            }
        }
        FolderKind::Teacher => {
            let mut t = Teacher::load(model_dir, load)?; // a folder, or a .gguf file
            let c = t.model.config.clone();
            causal::check(&c, &name)?;
            let mut w = Weights::new(&t.vs, &name);
            let g = causal::model(&c, &mut w, q, qe, &name)?;
            let doc =
                "edkd decoder-only model with past KV (transformers' decoder-with-past layout)";
            graphs.insert("model".into(), write_graph(g, out, "model", doc)?);
            w.check_all_used()?;
            gguf_tokenizer = t.tokenizer.take();
            Manifest {
                format: FORMAT.into(),
                format_version: FORMAT_VERSION,
                kind: ModelKind::Causal,
                architecture: c.family.architecture().into(),
                source: name,
                opset: OPSET,
                dtype: "float32".into(),
                quantization: quantization(opts),
                vocab_size: c.vocab_size,
                d_model: c.hidden_size,
                encoder_layers: 0,
                decoder_layers: c.num_layers,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                max_positions: c.max_positions,
                pad_token_id: c.pad_token_id.unwrap_or(0),
                bos_token_id: c.bos_token_id,
                eos_token_ids: c.eos_token_ids.clone(),
                tokenizer: None,
                parameters: t.num_parameters(),
                graphs: BTreeMap::new(),
            }
        }
    };
    manifest.graphs = graphs;
    let tok = model_dir.join(TOKENIZER);
    let dst: PathBuf = out.join(TOKENIZER);
    if tok.is_file() {
        std::fs::copy(&tok, &dst).map_err(Error::io(&tok))?;
        manifest.tokenizer = Some(TOKENIZER.into());
    } else if let Some(t) = gguf_tokenizer {
        // A .gguf teacher carries its tokenizer in the metadata.
        t.inner()
            .save(&dst, false)
            .map_err(|e| Error::Weights(format!("{}: {e}", dst.display())))?;
        manifest.tokenizer = Some(TOKENIZER.into());
    }
    manifest.write(out)?;
    Ok(manifest)
}
