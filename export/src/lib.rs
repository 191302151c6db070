//! edkd-export: ONNX export of edkd models and an ONNX Runtime wrapper to run them.
//!
//! - [`export_folder`]: a student folder becomes `encoder.onnx` + `decoder.onnx`
//!   (optimum's seq2seq layout: cross-attention K/V computed once by the encoder, a
//!   decoder step with its self-attention cache in and out); a decoder-only folder (the
//!   student's twin, a teacher) becomes `model.onnx` with past KV. Graphs are built in
//!   Rust ([`graph`], [`layers`]) over edkd's subset of the ONNX protobuf schema; opset 17,
//!   dynamic batch and length axes, f32 or int8 ([`quant`]); `export.json` ([`manifest`])
//!   and the tokenizer go next to them.
//! - [`runtime`]: ONNX Runtime through the `ort` crate, loaded at run time from the
//!   `onnxruntime` wheel's `libonnxruntime.so` (the build never needs it), with cached
//!   greedy or sampled generation over the exported graphs.

pub mod causal;
pub mod error;
pub mod export;
pub mod graph;
pub mod layers;
pub mod manifest;
pub mod model;
pub mod proto;
pub mod quant;
pub mod runtime;
pub mod student;

pub use error::{Error, Result};
pub use export::{ExportOptions, export_folder};
pub use manifest::{Manifest, ModelKind};
pub use model::{Logits, OnnxModel};
pub use quant::Scheme;
