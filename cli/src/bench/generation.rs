//! `edkd bench generation`: the student's cached decoding against recomputing the decoder
//! every step, and the twin's generation in edkd against transformers' `generate`.

use std::path::PathBuf;

use edkd_experiments::generation::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Student preset (and its decoder-only twin).
    #[arg(long, default_value = "mid")]
    preset: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 256)]
    input_length: i64,
    /// Greedy tokens generated per run (no EOS stop).
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// libtorch intra-op threads, both sides.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed runs per side after a warm-up; the best is kept.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Where the twin is saved as a Hugging Face Llama folder for transformers.
    #[arg(long, default_value = "out/bench/generation")]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a.out.join(format!("twin-{}", a.preset));
    let opts = Options {
        preset: a.preset,
        input_length: a.input_length,
        new_tokens: a.new_tokens,
        repeats: a.repeats,
        threads: a.threads,
        seed: a.seed,
    };
    print!("{}", generation::run(&opts, &dir)?);
    Ok(())
}
