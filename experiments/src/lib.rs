//! edkd-experiments: the paper's experiments run on edkd's own models.
//!
//! - [`efficiency`]: the encoder-decoder student against its decoder-only twin of equal
//!   size: first-token latency, decode throughput and peak memory per input length
//!   (the paper's Figure 1a), written as CSV and plotted.
//! - [`generation`]: cached vs recomputed student decoding, and the twin's generation in
//!   edkd vs transformers' `generate` on the same weights.

pub mod efficiency;
pub mod error;
pub mod generation;
pub mod memory;
pub mod python;

pub use error::{Error, Result};
