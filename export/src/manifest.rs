//! `export.json`: what an export folder holds (graphs with their inputs and outputs,
//! shapes, special ids, layer and head counts, dtype, quantisation), read back by the
//! runtime and by anyone wiring the graphs into another application.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::Io;
use crate::quant::Scheme;

pub const FILE: &str = "export.json";
pub const FORMAT: &str = "edkd-onnx";
pub const FORMAT_VERSION: u32 = 1;

/// Which graphs an export has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// `encoder.onnx` + `decoder.onnx` (the encoder-decoder student).
    Seq2seq,
    /// `model.onnx` (a decoder-only twin or teacher).
    Causal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub scheme: Scheme,
    /// Whether the embedding tables (and a tied output head) are int8 too.
    pub embeddings: bool,
    /// How the int8 values were made.
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphInfo {
    pub file: String,
    pub bytes: u64,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub kind: ModelKind,
    /// `architectures[0]` of a teacher, or the student's `model_type`.
    pub architecture: String,
    /// The folder that was exported, as given.
    pub source: String,
    pub opset: i64,
    /// Activation dtype (and weight dtype, unless quantised).
    pub dtype: String,
    pub quantization: Option<Quantization>,
    pub vocab_size: i64,
    pub d_model: i64,
    /// 0 for decoder-only models.
    pub encoder_layers: i64,
    /// Decoder layers (all layers of a decoder-only model): one KV cache pair each.
    pub decoder_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub max_positions: i64,
    pub pad_token_id: i64,
    /// The student's decoder start token; a decoder-only model's BOS, if it has one.
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    /// `tokenizer.json` next to the graphs, when the model folder had one.
    pub tokenizer: Option<String>,
    /// Parameters of the exported model (tied embeddings counted once).
    pub parameters: i64,
    /// `encoder` and `decoder`, or `model`.
    pub graphs: BTreeMap<String, GraphInfo>,
}

impl Manifest {
    /// Total bytes of the graph files.
    pub fn model_bytes(&self) -> u64 {
        self.graphs.values().map(|g| g.bytes).sum()
    }

    pub fn graph(&self, name: &str, path: &Path) -> Result<&GraphInfo> {
        self.graphs.get(name).ok_or_else(|| Error::Manifest {
            path: path.to_owned(),
            msg: format!(
                "no `{name}` graph for a {:?} export (has: {})",
                self.kind,
                self.graphs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if m.format != FORMAT || m.format_version != FORMAT_VERSION {
            return Err(Error::Manifest {
                path,
                msg: format!(
                    "format {:?} version {}; this edkd reads {FORMAT:?} version {FORMAT_VERSION}",
                    m.format, m.format_version
                ),
            });
        }
        let want: &[&str] = match m.kind {
            ModelKind::Seq2seq => &["encoder", "decoder"],
            ModelKind::Causal => &["model"],
        };
        for g in want {
            m.graph(g, &path)?;
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&path, text + "\n").map_err(Error::io(&path))
    }
}
