//! `edkd data synth`.

use std::path::PathBuf;

use clap::Parser;
use edkd_data::synth::{Split, generate, write_jsonl};

#[derive(Parser)]
pub struct Args {
    /// kv (key-value retrieval), qa (extractive QA), agg (count/majority/list) or mix.
    #[arg(long)]
    task: String,
    /// Number of examples.
    #[arg(long)]
    n: usize,
    /// Seed of the stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// train, validation or test: independent streams for the same seed.
    #[arg(long, default_value = "train")]
    split: Split,
    /// Output JSONL file (fields id, task, input, target, answer).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let examples = generate(&a.task, a.split, a.seed, a.n)?;
    write_jsonl(&a.out, &examples)?;
    let chars: usize = examples.iter().map(|e| e.input.len()).sum();
    println!(
        "wrote {} {} examples ({} split, seed {}) to {}; mean input {:.0} chars",
        examples.len(),
        a.task,
        a.split.name(),
        a.seed,
        a.out.display(),
        chars as f64 / examples.len().max(1) as f64
    );
    Ok(())
}
