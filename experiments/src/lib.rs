//! edkd-experiments: the paper's experiments and edkd's measurements, as library code with
//! an options struct and a report type each (`edkd bench ...` parses arguments and calls
//! one of these).
//!
//! - [`efficiency`]: the encoder-decoder student against its decoder-only twin of equal
//!   size: first-token latency, decode throughput and peak memory per input length
//!   (the paper's Figure 1a), written as CSV and drawn as a figure.
//!   `efficiency::experiment` runs it at the paper's size over presets, thread counts,
//!   dtypes and devices, with each component timed ([`efficiency::session`]) and FLOPs and
//!   bytes by construction ([`efficiency::flops`]).
//! - [`ablations`]: layer split at equal parameters, RoPE vs none in the encoder, and
//!   encoder-decoder vs decoder-only before and after KD, over seeds, on the synthetic
//!   tasks of [`synthetic`] (the pipeline `edkd demo` runs).
//! - [`edge`]: the student and its twin on libtorch f32, ONNX Runtime f32 and ONNX
//!   Runtime int8 at 1 and 2 threads: first-token latency, decode tokens/s, peak memory
//!   and model bytes.
//! - [`generation`]: cached vs recomputed student decoding, and the twin's generation in
//!   edkd vs transformers' `generate` on the same weights.
//! - [`training`]: the distillation loop with a remote teacher vs a cache, edkd's training
//!   step vs PyTorch's, and model FLOP utilisation.
//! - [`allreduce`]: data-parallel step time split into compute and all-reduce, and the
//!   bucketed all-reduce's bandwidth against a raw `MPI_Allreduce`.
//! - [`teacher_forward`]: teacher forward throughput in edkd vs transformers.
//! - [`kd_real`]: distillation on a real teacher and task (SmolLM2-135M-Instruct, code
//!   summarisation): random- vs decoder-initialised students, CE vs KD, with bootstrap
//!   intervals; and the student step's time split at a 49k vocabulary.
//! - [`compression`]: what packing the teacher's top-k (narrow ids, quantised log-probs,
//!   zstd) costs in KD loss and gradient, per packing and k, on real SmolLM2 targets.
//!
//! The Python reference implementations these compare against are in `scripts/`, run with
//! the project venv's interpreter ([`python`]).

pub mod ablations;
pub mod allreduce;
pub mod compression;
pub mod edge;
pub mod efficiency;
pub mod error;
pub mod generation;
pub mod host;
pub mod kd_real;
pub mod loopback;
pub mod memory;
pub mod python;
pub mod report_files;
pub mod synthetic;
pub mod teacher_forward;
pub mod training;
pub mod vision;

pub use error::{Error, Result};
