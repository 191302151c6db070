//! Shared set-up of the training tests: a tiny prepared dataset tokenized with the fixture
//! teacher's tokenizer, and a small config over it.
#![allow(dead_code)]

pub mod images;

use std::path::{Path, PathBuf};

use edkd_data::prepare::{PrepareConfig, Truncation};
use edkd_data::synth::{self, Split};
use edkd_data::{Dataset, OpenOptions};
use edkd_trainer::config::TrainConfig;
use edkd_trainer::model::Vocab;

/// libtorch's RNG (dropout) is process-global: tests that train run one at a time, as
/// training runs do in a real process.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn teacher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/teachers/llama_linear")
}

/// A synthetic mixed-task dataset tokenized with the fixture teacher's tokenizer; inputs
/// keep their last 40 tokens (the fixture teacher has 64 positions).
pub fn prepare(dir: &Path, train: usize, validation: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tr = dir.join("train.jsonl");
    let va = dir.join("validation.jsonl");
    synth::write_jsonl(
        &tr,
        &synth::generate("mix", Split::Train, 3, train).unwrap(),
    )
    .unwrap();
    synth::write_jsonl(
        &va,
        &synth::generate("mix", Split::Validation, 3, validation).unwrap(),
    )
    .unwrap();
    let out = dir.join("data");
    let config = PrepareConfig {
        validation_inputs: vec![va.display().to_string()],
        max_input_tokens: Some(40),
        max_target_tokens: Some(16),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 64,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(&[&tr], &teacher_dir().join("tokenizer.json"), &out)
    };
    edkd_data::prepare::prepare(&config).unwrap();
    out
}

pub fn config(data: &Path, extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec![
        format!("data.manifest=\"{}\"", data.display()),
        format!(
            "data.tokenizer=\"{}\"",
            teacher_dir().join("tokenizer.json").display()
        ),
        "threads=1".into(),
        "model.preset=tiny".into(),
        "optim.lr=3e-3".into(),
        "optim.warmup_steps=5".into(),
        "batch.max_tokens=1200".into(),
        "batch.max_rows=16".into(),
        "batch.bucket_window=64".into(),
        "eval.max_examples=24".into(),
        "eval.max_new_tokens=8".into(),
        "log.progress=false".into(),
        "log.plot=false".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_overrides(&o).unwrap()
}

pub fn vocab_of(data: &Path) -> Vocab {
    let ds = Dataset::open(data, &OpenOptions::new("train")).unwrap();
    let s = ds.manifest.tokenizer.special_ids;
    Vocab {
        size: ds.manifest.tokenizer.vocab_size as i64,
        pad: s.pad as i64,
        bos: s.bos as i64,
        eos: s.eos as i64,
        image_token_id: ds
            .manifest
            .images
            .as_ref()
            .and_then(|i| i.image_token_id)
            .map(i64::from),
    }
}
