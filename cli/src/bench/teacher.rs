//! `edkd bench teacher`: teacher forward throughput, edkd vs transformers on the same
//! ~110M Llama checkpoint, same batch, same thread count, in one run.

use std::path::PathBuf;

use edkd_experiments::teacher_forward::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Where the random benchmark checkpoint lives (created on first use).
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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let report = teacher_forward::run(&Options {
        model: a.model,
        batch: a.batch,
        seq: a.seq,
        threads: a.threads,
        iters: a.iters,
    })?;
    print!("{report}");
    Ok(())
}
