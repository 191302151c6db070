//! `edkd bench allreduce`: data-parallel step time split into compute and gradient
//! all-reduce, and the bucketed all-reduce against a raw `MPI_Allreduce`. Run it under
//! `mpirun -np N`; alone it measures compute only.

use std::path::PathBuf;

use edkd_experiments::allreduce::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Student presets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    presets: Vec<String>,
    /// Vocabulary size [default: the preset's].
    #[arg(long)]
    vocab: Option<i64>,
    /// Rows per rank and step.
    #[arg(long, default_value_t = 8)]
    rows: usize,
    /// Input tokens per row.
    #[arg(long, default_value_t = 64)]
    input_tokens: usize,
    /// Target tokens per row.
    #[arg(long, default_value_t = 16)]
    target_tokens: usize,
    /// Timed training steps per preset (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Timed repeats of each all-reduce variant (the median is reported).
    #[arg(long, default_value_t = 30)]
    repeats: usize,
    /// libtorch intra-op threads per rank.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Also write the results as JSON here (rank 0).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let report = allreduce::run(&Options {
        presets: a.presets,
        vocab: a.vocab,
        rows: a.rows,
        input_tokens: a.input_tokens,
        target_tokens: a.target_tokens,
        steps: a.steps,
        repeats: a.repeats,
        threads: a.threads,
    })?;
    if report.is_lead {
        print!("{report}");
        if let Some(p) = &a.json {
            report.write_json(p)?;
        }
    }
    Ok(())
}
