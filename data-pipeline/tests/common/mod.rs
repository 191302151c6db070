//! Shared fixtures: a small tokenizer trained on synthetic data, JSONL inputs and a
//! default prepare configuration.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use edkd_data::prepare::PrepareConfig;
use edkd_data::synth::{self, Split};

/// Vocabulary of the test tokenizer: small, so training takes well under a second.
pub const TEST_VOCAB: usize = 400;

/// Trains the test tokenizer on synthetic texts and writes `dir/tokenizer.json`.
pub fn tokenizer(dir: &Path) -> PathBuf {
    let texts: Vec<String> = synth::generate("mix", Split::Train, 99, 60)
        .unwrap()
        .into_iter()
        .flat_map(|e| [e.input, e.target])
        .collect();
    let path = dir.join("tokenizer.json");
    edkd_data::tokenizer::train_bpe_to_file(texts, TEST_VOCAB, 2, &path).unwrap();
    path
}

/// Trains a tokenizer with `<image>` as an extra special token (id 4) on synthetic text and
/// image-task texts, and writes `dir/image-tokenizer.json`.
pub fn image_tokenizer(dir: &Path) -> PathBuf {
    let cfg = edkd_data::synth_image::ImageSynthConfig::new("image-mix", Split::Train, 98, 50);
    let texts: Vec<String> = synth::generate("mix", Split::Train, 99, 30)
        .unwrap()
        .into_iter()
        .map(|e| (e.input, e.target))
        .chain(
            edkd_data::synth_image::generate_images(&cfg)
                .unwrap()
                .into_iter()
                .map(|e| (e.input, e.target)),
        )
        .flat_map(|(a, b)| [a, b])
        .collect();
    let path = dir.join("image-tokenizer.json");
    edkd_data::tokenizer::train_bpe_with_specials_to_file(
        texts,
        TEST_VOCAB,
        2,
        &[edkd_data::images::IMAGE_PLACEHOLDER],
        &path,
    )
    .unwrap();
    path
}

/// Writes `n` synthetic `mix` examples as JSONL.
pub fn synth_jsonl(path: &Path, n: usize, seed: u64) -> PathBuf {
    let examples = synth::generate("mix", Split::Train, seed, n).unwrap();
    synth::write_jsonl(path, &examples).unwrap();
    path.to_owned()
}

pub fn config(inputs: &[&Path], tokenizer: &Path, out: &Path) -> PrepareConfig {
    PrepareConfig {
        shard_rows: 64,
        command: vec![
            "edkd".into(),
            "data".into(),
            "prepare".into(),
            "(test)".into(),
        ],
        ..PrepareConfig::new(inputs, tokenizer, out)
    }
}

/// The project's Python (`.venv` made by scripts/setup.sh), or a panic that says so.
pub fn python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh to create the project venv (pyarrow, tokenizers)",
        path.display()
    );
    path
}

/// Runs a committed script from tests/python with the project Python; panics with its output.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Names in `dir` (sorted), to prove nothing partial was left behind.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Deterministic fake teacher targets for example `i`: (id, top-k ids, log-probs, tail, gold).
pub fn fake_teacher(
    i: usize,
    positions: usize,
    k: usize,
) -> (String, Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let id = format!("ex-{i}");
    let ids = (0..positions * k)
        .map(|j| (i * 7 + j) as u32 % 400)
        .collect();
    let lps = (0..positions * k)
        .map(|j| -(j as f32) * 0.25 - i as f32 * 0.01)
        .collect();
    let tail = (0..positions).map(|p| -3.0 - p as f32).collect();
    let gold = (0..positions).map(|p| -0.5 * p as f32).collect();
    (id, ids, lps, tail, gold)
}
