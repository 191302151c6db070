//! Image datasets and vision-language job configs for the VL training tests.

use std::path::{Path, PathBuf};

use edkd_data::prepare::PrepareConfig;
use edkd_data::synth::Split;
use edkd_data::synth_image::{
    ImageExample, ImageSynthConfig, generate_images, write_jsonl_with_images,
};
use edkd_trainer::config::TrainConfig;
use edkd_trainer::dist::Single;
use edkd_trainer::{RunOptions, RunSummary, train};

/// Image side of the synthetic scenes, pixels: a 3x3 grid of 16-pixel cells.
pub const IMAGE_SIZE: u32 = 48;
/// Tokenizer vocabulary: the byte alphabet, the specials, `<image>` and the task's words.
pub const VOCAB: usize = 400;
/// A fresh tower small enough to train from scratch in seconds: one 16-pixel patch per
/// grid cell, 9 patches of width 32.
pub const TOWER: &str = "{ hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 4, \
                     intermediate_size = 64, image_size = 48, patch_size = 16 }";

/// The CLIP fixture: a 3-block `CLIPVisionModel` at 32 pixels with its processor.
pub fn clip_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/clip/vision_quick_gelu")
}

/// A prepared image dataset and the tokenizer it was made with.
pub struct ImageData {
    pub data: PathBuf,
    pub tokenizer: PathBuf,
    pub train_answers: Vec<String>,
    pub val_answers: Vec<String>,
}

/// `train` + `validation` examples of `task` with their PNGs, tokenized with a tokenizer
/// trained on them (with `<image>` as one token only when `image_token`).
pub fn prepare_images(
    dir: &Path,
    task: &str,
    (train, validation): (usize, usize),
    image_token: bool,
) -> ImageData {
    std::fs::create_dir_all(dir).unwrap();
    let make = |split, n| {
        let mut cfg = ImageSynthConfig::new(task, split, 5, n);
        cfg.size = IMAGE_SIZE;
        generate_images(&cfg).unwrap()
    };
    let (tr, va): (Vec<ImageExample>, Vec<ImageExample>) = (
        make(Split::Train, train),
        make(Split::Validation, validation),
    );
    let (tr_path, va_path) = (dir.join("train.jsonl"), dir.join("validation.jsonl"));
    write_jsonl_with_images(&tr_path, &tr).unwrap();
    write_jsonl_with_images(&va_path, &va).unwrap();
    let texts: Vec<String> = tr
        .iter()
        .flat_map(|e| [e.input.clone(), e.target.clone()])
        .collect();
    let tokenizer = dir.join("tokenizer.json");
    let specials: &[&str] = if image_token {
        &[edkd_data::images::IMAGE_PLACEHOLDER]
    } else {
        &[]
    };
    edkd_data::tokenizer::train_bpe_with_specials_to_file(texts, VOCAB, 2, specials, &tokenizer)
        .unwrap();
    let data = dir.join("data");
    let mut config = PrepareConfig {
        validation_inputs: vec![va_path.display().to_string()],
        shard_rows: 256,
        command: vec!["(test)".into()],
        ..PrepareConfig::new(&[&tr_path], &tokenizer, &data)
    };
    config.fields.image_field = Some("image".into());
    edkd_data::prepare::prepare(&config).unwrap();
    ImageData {
        data,
        tokenizer,
        train_answers: tr.into_iter().map(|e| e.answer).collect(),
        val_answers: va.into_iter().map(|e| e.answer).collect(),
    }
}

/// A VL job over `d` with a fresh [`TOWER`]; `extra` overrides.
pub fn vl_config(d: &ImageData, extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec![
        format!("data.manifest=\"{}\"", d.data.display()),
        format!("data.tokenizer=\"{}\"", d.tokenizer.display()),
        "threads=1".into(),
        "model.preset=tiny".into(),
        format!("model.vision.tower_config={TOWER}"),
        "optim.lr=3e-3".into(),
        "optim.warmup_steps=10".into(),
        "optim.weight_decay=0.01".into(),
        "batch.max_tokens=4096".into(),
        "batch.max_rows=32".into(),
        "batch.bucket_window=256".into(),
        "eval.every=0".into(),
        "eval.max_examples=0".into(),
        "eval.max_new_tokens=4".into(),
        "eval.batch_rows=64".into(),
        "checkpoint.every=0".into(),
        "log.progress=false".into(),
        "log.plot=false".into(),
        "log.tensorboard=false".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_overrides(&o).unwrap()
}

pub fn run(cfg: &TrainConfig, out: &Path) -> RunSummary {
    let opts = RunOptions {
        out: out.to_owned(),
        ..Default::default()
    };
    train(cfg, &opts, &mut Single).unwrap()
}
