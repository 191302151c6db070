//! The student's training step measured three ways in one run (`edkd bench train`):
//!
//! 1. The distillation loop (`edkd_trainer::train`) with the teacher behind the gRPC
//!    service (an in-process server on loopback, prefetched) against the same teacher's
//!    answers read from a cache annotated beforehand: mean `step_s` / `wait_s` from
//!    `metrics.jsonl`, warm-up steps skipped ([`teacher_source`]).
//! 2. One training step (logits, CE + forward KL, backward, clipping, AdamW) in edkd and in
//!    PyTorch (`scripts/train_step_reference.py`) on the same weights, batch and
//!    hyperparameters; the two loss curves are compared to show both sides compute the
//!    same thing ([`step`]).
//! 3. Model FLOP utilisation of those steps against the machine's measured fp32 matmul
//!    peak ([`flops`]).

pub mod flops;
mod report;
pub mod step;
pub mod teacher_source;

use std::path::PathBuf;

use edkd_trainer::config::{ModelSection, TrainConfig};
use edkd_trainer::optim::AdamWConfig;
use serde::Serialize;

use crate::error::{Error, Result};

pub use flops::{Flops, matmul_peak};
pub use step::StepReport;
pub use teacher_source::{LoopRun, Placement, TeacherReport};

/// The demo's students: an encoder-decoder with most layers in the encoder (the long
/// input). `edkd bench train` measures the same shape.
pub const STUDENT: &[&str] = &[
    "model.preset=small",
    "model.overrides.d_model=96",
    "model.overrides.encoder_layers=3",
    "model.overrides.decoder_layers=2",
    "model.overrides.attn_dim=96",
    "model.overrides.num_heads=4",
    "model.overrides.num_kv_heads=2",
    "model.overrides.ffn_dim=384",
    "model.overrides.max_positions=512",
];

/// BPE vocabulary trained for the bench data (the demo's).
pub const VOCAB_SIZE: usize = 1024;
/// Data shapes and batch budget (the demo trims inputs to 160 tokens).
pub const MAX_INPUT_TOKENS: usize = 192;
pub const MAX_TARGET_TOKENS: usize = 24;
pub const BATCH_TOKENS: usize = 6144;
pub const BATCH_ROWS: usize = 32;
pub const TEMPERATURE: f64 = 2.0;
pub const ALPHA: f64 = 0.5;
pub const LR: f64 = 1e-3;
pub const CLIP: f64 = 1.0;
pub const ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};
/// What the bench writes under `out` (cleared first: a stale cache would be resumed).
const WORK_DIRS: [&str; 5] = ["data", "teacher", "cache", "runs", "step"];

/// Settings of one `edkd bench train` run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Timed optimizer steps per run (loop runs and step timings alike).
    pub steps: u64,
    /// Untimed steps at the start of every run.
    pub warmup: u64,
    /// Loop runs per teacher source, alternated (remote, cache, cache, remote, ...).
    pub rounds: usize,
    /// Skip section 1 (the distillation loop with the remote teacher and the cache).
    pub skip_loop: bool,
    /// libtorch intra-op threads: edkd, the teacher server and PyTorch alike.
    pub threads: i32,
    /// Rows, encoder and decoder tokens per row of the fixed batch of section 2.
    pub batch: i64,
    pub input_len: i64,
    pub target_len: i64,
    /// Synthetic training examples for the loop runs.
    pub examples: usize,
    /// Width and layers of the random Llama teacher served on loopback.
    pub teacher_d_model: i64,
    pub teacher_layers: i64,
    /// Teacher top-k per position (service and cache alike).
    pub top_k: usize,
    /// How the remote-teacher runs share the cores (teacher + trainer threads); one loop run
    /// per placement and round.
    pub placements: Vec<Placement>,
    /// Seeds data, weights and the fixed batch.
    pub seed: u64,
    /// Working folder; the bench's subfolders in it are rebuilt on every run.
    pub out: PathBuf,
}

impl Options {
    /// The remote placements measured by default for `threads`: both sides on every
    /// thread (what two processes that each take the machine do), and the teacher on its
    /// fair half with the trainer on every thread (what `edkd launch` and the demo do for
    /// a CPU teacher that shares the trainer's cores).
    pub fn default_placements(threads: usize) -> Vec<Placement> {
        let threads = threads.max(1);
        let mut v = vec![Placement {
            teacher_threads: threads,
            trainer_threads: threads,
            prefetch: None,
        }];
        let shared = Placement {
            teacher_threads: (threads / 2).max(1),
            trainer_threads: threads,
            prefetch: None,
        };
        if shared != v[0] {
            v.push(shared);
        }
        v
    }

    /// A smoke run in a few minutes: 6 steps after 2, one round, 300 examples.
    pub fn quick(self) -> Self {
        Self {
            steps: 6,
            warmup: 2,
            rounds: 1,
            examples: 300,
            ..self
        }
    }

    fn check(&self) -> Result<()> {
        if self.steps == 0 || self.rounds == 0 {
            return Err(Error::input("steps/rounds", "both must be at least 1"));
        }
        if self.input_len < 1 || self.target_len < 2 || self.batch < 1 {
            return Err(Error::input(
                "batch/input_len/target_len",
                format!(
                    "{} / {} / {}: batch and input_len must be >= 1, target_len >= 2",
                    self.batch, self.input_len, self.target_len
                ),
            ));
        }
        if !self.skip_loop && self.placements.is_empty() {
            return Err(Error::input("placements", "give at least one, e.g. 1+1"));
        }
        if self.teacher_layers < 1 {
            return Err(Error::input("teacher_layers", "must be at least 1"));
        }
        Ok(())
    }
}

/// Everything one run measured; [`std::fmt::Display`] prints the one-screen summary.
#[derive(Debug)]
pub struct Report {
    pub options: Options,
    /// `/proc/loadavg`'s three figures before and after the run.
    pub load: [String; 2],
    pub cpus: usize,
    /// Section 1 (absent with `skip_loop`).
    pub teacher: Option<TeacherReport>,
    pub step: StepReport,
    /// fp32 matmul GFLOP/s, the better of before and after.
    pub peak_gflops: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// The model section of [`STUDENT`].
pub fn student_section() -> Result<ModelSection> {
    let o: Vec<String> = STUDENT.iter().map(|s| s.to_string()).collect();
    Ok(TrainConfig::from_overrides(&o)?.model)
}

/// Runs the three sections; progress goes to stderr.
pub fn run(opts: &Options) -> Result<Report> {
    opts.check()?;
    let load_before = load_average();
    let work = &opts.out;
    for sub in WORK_DIRS {
        let dir = work.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
    }
    std::fs::create_dir_all(work).map_err(Error::io(work))?;
    tch::set_num_threads(opts.threads);
    let peak_before = matmul_peak();
    let teacher = if opts.skip_loop {
        None
    } else {
        Some(teacher_source::remote_vs_cache(opts, work)?)
    };
    let step = step::edkd_vs_pytorch(opts, work)?;
    tch::set_num_threads(opts.threads);
    let peak_gflops = peak_before.max(matmul_peak());
    Ok(Report {
        options: opts.clone(),
        load: [load_before, load_average()],
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        teacher,
        step,
        peak_gflops,
    })
}
