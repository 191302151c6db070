//! edkd-experiments: the paper's experiments run on edkd's own models.
//!
//! - [`efficiency`]: the encoder-decoder student against its decoder-only twin of equal
//!   size: first-token latency, decode throughput and peak memory per input length
//!   (the paper's Figure 1a), written as CSV and plotted.
//! - [`edge`]: the student and its twin on libtorch f32, ONNX Runtime f32 and ONNX
//!   Runtime int8 at 1 and 2 threads: first-token latency, decode tokens/s, peak memory
//!   and model bytes.
//! - [`generation`]: cached vs recomputed student decoding, and the twin's generation in
//!   edkd vs transformers' `generate` on the same weights.

pub mod edge;
pub mod efficiency;
pub mod error;
pub mod generation;
pub mod memory;
pub mod python;

pub use error::{Error, Result};
