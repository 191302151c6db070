//! `edkd bench train`: the student's training step measured three ways in one run (the
//! distillation loop with a remote teacher vs a cache, edkd's step vs PyTorch's, model
//! FLOP utilisation); see `edkd_experiments::training`.

use std::path::PathBuf;

use edkd_experiments::training::{self, MAX_INPUT_TOKENS, MAX_TARGET_TOKENS, Options, Placement};

#[derive(clap::Args)]
pub struct Args {
    /// Timed optimizer steps per run (loop runs and step timings alike).
    #[arg(long, default_value_t = 30)]
    steps: u64,
    /// Untimed steps at the start of every run.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Loop runs per teacher source, alternated (remote, cache, cache, remote, ...) so that
    /// a change in machine load does not favour either. (edkd's and PyTorch's training
    /// steps alternate step by step.)
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip section 1 (the distillation loop with the remote teacher and the cache).
    #[arg(long)]
    skip_loop: bool,
    /// libtorch intra-op threads: edkd, the teacher server and PyTorch alike.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Rows of the fixed batch of the edkd-vs-PyTorch step.
    #[arg(long, default_value_t = 32)]
    batch: i64,
    /// Encoder tokens per row of that batch.
    #[arg(long, default_value_t = MAX_INPUT_TOKENS as i64)]
    input_len: i64,
    /// Decoder tokens per row of that batch.
    #[arg(long, default_value_t = MAX_TARGET_TOKENS as i64)]
    target_len: i64,
    /// Synthetic training examples for the loop runs.
    #[arg(long, default_value_t = 1200)]
    examples: usize,
    /// Width of the random Llama teacher served on loopback.
    #[arg(long, default_value_t = 64)]
    teacher_d_model: i64,
    /// Its layers (more make its compute compete harder with the student's on shared cores).
    #[arg(long, default_value_t = 2)]
    teacher_layers: i64,
    /// Teacher top-k per position (service and cache alike).
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// How the remote-teacher loop runs share the cores, as TEACHER+TRAINER threads,
    /// comma-separated (e.g. 2+2,1+1,1+2); default: both on --threads, and the cores
    /// split between them as edkd does when a teacher and a trainer share a machine.
    #[arg(long, value_delimiter = ',')]
    remote_threads: Vec<String>,
    /// Seeds data, weights and the fixed batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Working folder; the bench's subfolders in it are rebuilt on every run.
    #[arg(long, default_value = "out/bench/train")]
    out: PathBuf,
    /// A smoke run in a few minutes: 6 steps after 2, one round, 300 examples.
    #[arg(long)]
    quick: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let placements = if a.remote_threads.is_empty() {
        Options::default_placements(a.threads.max(1) as usize)
    } else {
        a.remote_threads
            .iter()
            .map(|s| Placement::parse(s))
            .collect::<Result<_, _>>()?
    };
    let opts = Options {
        steps: a.steps,
        warmup: a.warmup,
        rounds: a.rounds,
        skip_loop: a.skip_loop,
        threads: a.threads,
        batch: a.batch,
        input_len: a.input_len,
        target_len: a.target_len,
        examples: a.examples,
        teacher_d_model: a.teacher_d_model,
        teacher_layers: a.teacher_layers,
        top_k: a.top_k,
        placements,
        seed: a.seed,
        out: a.out,
    };
    let opts = if a.quick { opts.quick() } else { opts };
    print!("{}", training::run(&opts)?);
    Ok(())
}
