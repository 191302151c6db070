//! `edkd bench teacher`: teacher forward throughput, edkd vs transformers on the same
//! ~110M Llama checkpoint, same batch, same thread count, in one run.

use std::path::PathBuf;

use edkd_experiments::teacher_forward::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// A teacher folder; a random ~110M Llama is created there on first use if it holds
    /// no checkpoint (e.g. the folder `edkd convert --from-gguf` writes for SmolLM2).
    #[arg(long, default_value = "out/bench/llama-110m")]
    model: PathBuf,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    #[arg(long, default_value_t = 512)]
    seq: i64,
    /// Threads for both sides (libtorch intra-op).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// f32 or bf16, both sides.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Scoring section: prompt tokens per sequence (`--batch` sequences per pass).
    #[arg(long, default_value_t = 256)]
    score_prompt: usize,
    /// Scoring section: target tokens per sequence.
    #[arg(long, default_value_t = 64)]
    score_target: usize,
    /// Scoring section: top-k returned per target position.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let report = teacher_forward::run(&Options {
        model: a.model,
        batch: a.batch,
        seq: a.seq,
        threads: a.threads,
        iters: a.iters,
        dtype: a.dtype,
        score_prompt: a.score_prompt,
        score_target: a.score_target,
        top_k: a.top_k,
    })?;
    print!("{report}");
    Ok(())
}
