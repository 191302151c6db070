//! edkd-experiments: the paper's experiments run on edkd's own models.
//!
//! - [`efficiency`]: the encoder-decoder student against its decoder-only twin of equal
//!   size: first-token latency, decode throughput and peak memory per input length
//!   (the paper's Figure 1a), written as CSV and plotted.
//! - [`generation`]: cached vs recomputed student decoding, and the twin's generation in
//!   edkd vs transformers' `generate` on the same weights.
//! - [`kd_real`]: distillation on a real teacher and task (SmolLM2-135M-Instruct, code
//!   summarisation): random- vs decoder-initialised students, CE vs KD, with bootstrap
//!   intervals; and the student step's time split at a 49k vocabulary.

pub mod efficiency;
pub mod error;
pub mod generation;
pub mod kd_real;
pub mod memory;
pub mod python;

pub use error::{Error, Result};
