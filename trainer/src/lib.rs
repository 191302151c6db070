//! edkd-trainer: distils an encoder-decoder student from a decoder-only teacher.
//!
//! - [`config`]: the job's TOML config and its validation;
//! - [`loss`]: CE and the KD divergences (full vocabulary or top-k + tail);
//! - [`optim`]: AdamW, gradient clipping, learning-rate schedules;
//! - [`source`]: teacher sources (gRPC service, cache shards, in-process teacher);
//! - [`model`]: the trained network (student, or a decoder-only model) and batch tensors;
//! - [`train`]: the [`Trainer`](train::Trainer) and its phases (construction, step,
//!   evaluate, checkpoint, finish), with prefetching, accumulation, on-policy sampling, logging;
//! - [`checkpoint`]: atomic, checksummed checkpoints and exact resume;
//! - [`eval`] and [`metrics`]: validation losses, EM / F1 / ROUGE;
//! - [`dist`]: the collectives trait, single process; [`mpi`] and [`nccl`]: over MPI (CPU)
//!   and NCCL (CUDA);
//! - [`observe`]: TensorBoard event files and loss plots.

pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod error;
pub mod eval;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod mpi;
pub mod nccl;
pub mod observe;
pub mod optim;
pub mod source;
pub mod train;
pub mod view;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use loss::{Divergence, KdLoss, TeacherTargets};
pub use train::{RunOptions, RunSummary, Trainer, train};
