//! Throughput of the reader (one thread) and of `prepare`, each next to a Python reference
//! run on the same files in the same process run, with the ratio.
//!
//! `cargo bench -p edkd-data --bench reader` (release). Set `EDKD_BENCH_EXAMPLES` to change
//! the dataset size (default 20000 synthetic `mix` examples, ~6M tokens).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edkd_data::manifest::{TRAIN, Verify};
use edkd_data::prepare::{PrepareConfig, prepare};
use edkd_data::synth::{self, Split};
use edkd_data::{Dataset, OpenOptions, Reader, ReaderConfig};

const DEFAULT_EXAMPLES: usize = 20_000;
const VOCAB: usize = 4096;
const EPOCHS: usize = 3;
const MAX_TOKENS: usize = 16_384;
const WINDOW: usize = 16_384;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("EDKD_BENCH_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EXAMPLES);
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let tmp = tempfile::tempdir()?;
    let jsonl = tmp.path().join("mix.jsonl");
    synth::write_jsonl(&jsonl, &synth::generate("mix", Split::Train, 1, n)?)?;
    let texts: Vec<String> = synth::generate("mix", Split::Train, 2, 2000)?
        .into_iter()
        .flat_map(|e| [e.input, e.target])
        .collect();
    let tokenizer = tmp.path().join("tokenizer.json");
    edkd_data::tokenizer::train_bpe_to_file(texts, VOCAB, 2, &tokenizer)?;
    let threads = rayon::current_num_threads();
    println!(
        "dataset: {n} synthetic mix examples, byte-level BPE vocab {VOCAB}, {threads} threads for prepare"
    );

    // prepare (end to end: JSON parsing, tokenization, Arrow writing, sha256) vs Python
    // tokenizers' batch encoder on the same texts (encoding only).
    let out = tmp.path().join("ds");
    let summary = prepare(&prepare_config(&jsonl, &tokenizer, &out))?;
    let ours = summary.tokens as f64 / summary.elapsed.as_secs_f64();
    let py = run_json(
        &python,
        "tokenize_baseline.py",
        &[tokenizer.to_str().unwrap(), jsonl.to_str().unwrap()],
    )?;
    anyhow::ensure!(
        py.0 == summary.tokens,
        "token counts differ: python {} vs edkd {}",
        py.0,
        summary.tokens
    );
    let theirs = py.0 as f64 / py.1;
    println!(
        "prepare:  edkd {:>6.2} M tokens/s (end to end) | python tokenizers encode_batch_fast {:>6.2} M tokens/s | ratio {:.2}",
        ours / 1e6,
        theirs / 1e6,
        ours / theirs
    );

    // reader + collate on one thread vs pyarrow + numpy doing the same work.
    let start = Instant::now();
    let mut options = OpenOptions::new(TRAIN);
    options.verify = Verify::RowCounts;
    let cfg = ReaderConfig {
        max_tokens: MAX_TOKENS,
        bucket_window: WINDOW,
        teacher: true,
        ..ReaderConfig::default()
    };
    let mut reader = Reader::new(Dataset::open(&out, &options)?, cfg, None)?;
    let (mut tokens, mut batches) = (0usize, 0usize);
    for _ in 0..EPOCHS {
        while let Some(batch) = reader.next_batch() {
            tokens += batch.real_tokens();
            batches += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ours = tokens as f64 / secs;
    let py = run_json(
        &python,
        "reader_baseline.py",
        &[
            out.to_str().unwrap(),
            &EPOCHS.to_string(),
            &MAX_TOKENS.to_string(),
            &WINDOW.to_string(),
        ],
    )?;
    anyhow::ensure!(py.0 as usize == tokens, "reader token counts differ");
    let theirs = py.0 as f64 / py.1;
    println!(
        "reader:   edkd {:>6.2} M tokens/s ({batches} batches, 1 thread) | pyarrow+numpy {:>6.2} M tokens/s | ratio {:.2}",
        ours / 1e6,
        theirs / 1e6,
        ours / theirs
    );
    Ok(())
}

fn prepare_config(jsonl: &Path, tokenizer: &Path, out: &Path) -> PrepareConfig {
    PrepareConfig {
        shard_rows: 8192,
        command: vec!["bench".into()],
        ..PrepareConfig::new(&[jsonl], tokenizer, out)
    }
}

/// Runs a baseline script; returns (tokens, seconds) from its JSON line.
fn run_json(python: &PathBuf, script: &str, args: &[&str]) -> anyhow::Result<(u64, f64)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/python")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["tokens"].as_u64().unwrap_or(0),
        v["seconds"].as_f64().unwrap_or(f64::NAN),
    ))
}
