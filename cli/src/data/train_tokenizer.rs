//! `edkd data train-tokenizer`.

use std::path::PathBuf;

use clap::Parser;
use edkd_data::tokenizer::{train_bpe_with_specials_to_file, training_texts};

#[derive(Parser)]
pub struct Args {
    /// Training files: .jsonl/.parquet/.csv (input and target fields) or plain text lines.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Vocabulary size including the 256 byte symbols, 4 specials and any --special.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Minimum pair frequency for a merge.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Field with the input text in structured files.
    #[arg(long, default_value = "input")]
    input_field: String,
    /// Field with the target text in structured files.
    #[arg(long, default_value = "target")]
    target_field: String,
    /// Extra special tokens, one token wherever they appear (ids 4, 5, ... in the order
    /// given), e.g. `--special "<image>"` for image tasks.
    #[arg(long = "special")]
    specials: Vec<String>,
    /// Output tokenizer.json.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let files = edkd_data::ingest::expand_inputs(&a.input)?;
    let texts = training_texts(&files, &a.input_field, &a.target_field)?;
    let n = texts.len();
    let specials: Vec<&str> = a.specials.iter().map(String::as_str).collect();
    let sha =
        train_bpe_with_specials_to_file(texts, a.vocab_size, a.min_frequency, &specials, &a.out)?;
    println!(
        "trained byte-level BPE (vocab {}) on {n} texts from {} files -> {} (sha256 {sha})",
        a.vocab_size,
        files.len(),
        a.out.display()
    );
    Ok(())
}
