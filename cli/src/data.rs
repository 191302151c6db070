//! `edkd data ...`: prepare, inspect and synthesize datasets (one file per subcommand).

mod inspect;
mod prepare;
mod synth;
mod train_tokenizer;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    /// Tokenize JSONL/Parquet/CSV files into Arrow shards plus manifest.json.
    Prepare(Box<prepare::Args>),
    /// Print a dataset folder's manifest, length histograms and a few decoded examples.
    Inspect(inspect::Args),
    /// Generate a synthetic long-input/short-output task (or an image task) as JSONL.
    Synth(synth::Args),
    /// Train a byte-level BPE tokenizer.json (specials <pad>=0 <s>=1 </s>=2 <unk>=3).
    TrainTokenizer(train_tokenizer::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Prepare(args) => prepare::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Synth(args) => synth::run(args),
        Command::TrainTokenizer(args) => train_tokenizer::run(args),
    }
}

/// The command line as typed, with the program name normalised to `edkd`.
fn command_line() -> Vec<String> {
    std::iter::once("edkd".to_owned())
        .chain(std::env::args().skip(1))
        .collect()
}
