//! `edkd experiment vision`: image-to-text distillation on the synthetic image tasks
//! (`edkd_data::synth_image`: counts, colours, relative positions, written words).
//!
//! 1. render labelled examples for the teacher, a labelled subset for the students, and
//!    held-out examples; train a BPE tokenizer with `<image>` as one token;
//! 2. train the teacher: the decoder-only twin architecture with a CLIP-style tower and
//!    projector (tower trained from scratch), cross-entropy on every labelled example;
//! 3. the teacher answers the inputs whose labels the students do not get (pseudo-labels);
//! 4. per seed, the vision-language encoder-decoder student with cross-entropy on the
//!    labelled subset, and the same student with token-level KD from the teacher (in
//!    process, top-k) on the labelled subset plus the pseudo-labelled inputs; same steps;
//! 5. score teacher and students on the held-out examples (EM / F1), against the
//!    majority-answer baseline of each question type ([`report`]).
//!
//! Every phase resumes from what an earlier invocation left.

pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use edkd_data::synth::Split;
use edkd_data::synth_image::{
    ImageExample, ImageSynthConfig, generate_images, write_jsonl_with_images,
};
use edkd_trainer::config::EvalSection;
use edkd_trainer::eval::{Prediction, predict_folder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::synthetic::{self, RunSettings};
pub use report::VisionReport;

/// The task: every question type in turn.
pub const TASK: &str = "image-mix";
/// Answer tokens kept (every answer is one word or number).
const MAX_TARGET_TOKENS: usize = 8;

/// The experiment's sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionConfig {
    pub out: PathBuf,
    pub teacher_examples: usize,
    /// Of those, the labelled examples the students get.
    pub student_examples: usize,
    pub eval_examples: usize,
    /// Image side in pixels (a multiple of `patch_size`).
    pub image_size: u32,
    pub patch_size: i64,
    pub teacher_steps: u64,
    pub student_steps: u64,
    pub seeds: Vec<u64>,
    pub vocab_size: usize,
    pub threads: usize,
    pub top_k: usize,
    pub alpha: f64,
}

impl VisionConfig {
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_owned(),
            teacher_examples: 8_000,
            student_examples: 2_000,
            eval_examples: 500,
            // One patch per cell of the scenes' 3x3 grid: a tower trained from scratch
            // leaves the majority-answer plateau far sooner than with 8-pixel patches.
            image_size: 48,
            patch_size: 16,
            teacher_steps: 4_000,
            student_steps: 2_000,
            seeds: vec![0, 1, 2],
            vocab_size: 384,
            threads: 0,
            top_k: 16,
            alpha: 0.5,
        }
    }

    fn check(&self) -> Result<()> {
        if self.student_examples == 0 || self.student_examples >= self.teacher_examples {
            return Err(Error::input(
                "student_examples",
                format!(
                    "{} must be in 1..{} (teacher_examples)",
                    self.student_examples, self.teacher_examples
                ),
            ));
        }
        if self.patch_size <= 0 || i64::from(self.image_size) % self.patch_size != 0 {
            return Err(Error::input(
                "image_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            ));
        }
        if self.seeds.is_empty() || self.eval_examples == 0 {
            return Err(Error::input(
                "seeds/eval_examples",
                "need at least one of each",
            ));
        }
        Ok(())
    }

    fn tokenizer(&self) -> PathBuf {
        self.out.join("tokenizer.json")
    }

    fn data(&self, name: &str) -> PathBuf {
        self.out.join("data").join(name)
    }

    fn raw(&self, name: &str) -> PathBuf {
        self.out.join("raw").join(format!("{name}.jsonl"))
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }

    /// `model.vision.*` overrides: a small CLIP-style tower trained from scratch.
    fn vision_overrides(&self) -> Vec<String> {
        let v = "model.vision.tower_config";
        vec![
            format!("{v}.hidden_size=64"),
            format!("{v}.num_hidden_layers=2"),
            format!("{v}.num_attention_heads=4"),
            format!("{v}.intermediate_size=128"),
            format!("{v}.image_size={}", self.image_size),
            format!("{v}.patch_size={}", self.patch_size),
            "model.vision.train_tower=true".into(),
            // A from-scratch tower sits on the majority answer for a few hundred steps;
            // warmup-stable-decay keeps the learning rate up long enough to leave it.
            "optim.schedule=wsd".into(),
            "optim.lr=3e-3".into(),
            // Short rows (9 image + ~12 text tokens): 32 of them a step.
            "batch.max_rows=32".into(),
            "batch.max_tokens=4096".into(),
        ]
    }
}

/// One student run and its held-out predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudentRun {
    pub kd: bool,
    pub seed: u64,
    pub train_s: f64,
    pub predictions: Vec<Prediction>,
}

fn examples(cfg: &VisionConfig, split: Split, n: usize) -> Result<Vec<ImageExample>> {
    let mut c = ImageSynthConfig::new(TASK, split, 0, n);
    c.size = cfg.image_size;
    Ok(generate_images(&c)?)
}

fn prepare(cfg: &VisionConfig, name: &str) -> Result<()> {
    let fields = edkd_data::ingest::FieldMap {
        image_field: Some("image".into()),
        ..Default::default()
    };
    let pc = edkd_data::prepare::PrepareConfig {
        validation_inputs: vec![cfg.raw("validation").display().to_string()],
        fields,
        max_input_tokens: Some(64),
        max_target_tokens: Some(MAX_TARGET_TOKENS),
        shard_rows: 1024,
        keep_text: true,
        overwrite: true,
        command: vec!["edkd experiment vision".into()],
        ..edkd_data::prepare::PrepareConfig::new(
            &[&cfg.raw(name)],
            &cfg.tokenizer(),
            &cfg.data(name),
        )
    };
    edkd_data::prepare::prepare(&pc)?;
    Ok(())
}

/// Phase 1: images, JSONL, tokenizer, prepared splits.
fn make_data(cfg: &VisionConfig) -> Result<()> {
    let all = examples(cfg, Split::Train, cfg.teacher_examples)?;
    let val = examples(cfg, Split::Validation, cfg.eval_examples)?;
    let dir = cfg.out.join("raw");
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    if !cfg.raw("teacher").is_file() {
        write_jsonl_with_images(&cfg.raw("teacher"), &all)?;
        write_jsonl_with_images(&cfg.raw("labelled"), &all[..cfg.student_examples])?;
        write_jsonl_with_images(&cfg.raw("unlabelled"), &all[cfg.student_examples..])?;
        write_jsonl_with_images(&cfg.raw("validation"), &val)?;
    }
    if !cfg.tokenizer().is_file() {
        let texts = edkd_data::tokenizer::training_texts(&[cfg.raw("teacher")], "input", "target")?;
        edkd_data::tokenizer::train_bpe_with_specials_to_file(
            texts,
            cfg.vocab_size,
            2,
            &[edkd_data::images::IMAGE_PLACEHOLDER],
            &cfg.tokenizer(),
        )?;
    }
    for name in ["teacher", "labelled", "unlabelled"] {
        if !cfg.data(name).join("manifest.json").is_file() {
            prepare(cfg, name)?;
        }
    }
    Ok(())
}

fn settings<'a>(
    cfg: &VisionConfig,
    data: &'a Path,
    tok: &'a Path,
    seed: u64,
    steps: u64,
) -> RunSettings<'a> {
    RunSettings {
        data,
        tokenizer: tok,
        seed,
        threads: cfg.threads,
        steps,
    }
}

fn eval_section(n: usize) -> EvalSection {
    EvalSection {
        every: 0,
        max_examples: n,
        generate: true,
        max_new_tokens: MAX_TARGET_TOKENS,
        batch_rows: 64,
    }
}

/// Phases 2 and 3: the teacher, and the KD data (labelled + the teacher's answers for
/// the unlabelled inputs, with their images).
fn make_teacher(cfg: &VisionConfig) -> Result<PathBuf> {
    let (data, tok) = (cfg.data("teacher"), cfg.tokenizer());
    let run = cfg.run_dir("teacher");
    if !run.join("final/config.json").is_file() {
        let mut o = synthetic::base_overrides(&settings(cfg, &data, &tok, 0, cfg.teacher_steps));
        o.extend(synthetic::TEACHER.iter().map(|s| s.to_string()));
        o.extend(cfg.vision_overrides());
        o.push(format!("eval.max_new_tokens={MAX_TARGET_TOKENS}"));
        synthetic::train_run("teacher", &o, &run, false)?;
    }
    let teacher = run.join("final");
    if !cfg.data("kd").join("manifest.json").is_file() {
        let n = cfg.teacher_examples - cfg.student_examples;
        let answers = predict_folder(
            &teacher,
            &cfg.data("unlabelled"),
            "train",
            &eval_section(n),
            tch::Device::Cpu,
        )?;
        let all = examples(cfg, Split::Train, cfg.teacher_examples)?;
        let mut kd: Vec<ImageExample> = all[..cfg.student_examples].to_vec();
        let by_id: std::collections::HashMap<&str, &Prediction> =
            answers.iter().map(|p| (p.id.as_str(), p)).collect();
        for e in &all[cfg.student_examples..] {
            // An empty answer teaches nothing (and is not a valid target).
            if let Some(p) = by_id
                .get(e.id.as_str())
                .filter(|p| !p.prediction.trim().is_empty())
            {
                let mut e = e.clone();
                e.id = format!("pseudo-{}", e.id);
                e.target = p.prediction.trim().to_owned();
                kd.push(e);
            }
        }
        write_jsonl_with_images(&cfg.raw("kd"), &kd)?;
        prepare(cfg, "kd")?;
    }
    Ok(teacher)
}

/// Phase 4 and 5 for one student (kept in `runs/<name>/student_run.json`).
fn run_student(cfg: &VisionConfig, teacher: &Path, kd: bool, seed: u64) -> Result<StudentRun> {
    let name = format!("student-{}-s{seed}", if kd { "kd" } else { "ce" });
    let dir = cfg.run_dir(&name);
    let saved = dir.join("student_run.json");
    if let Ok(text) = std::fs::read_to_string(&saved)
        && let Ok(done) = serde_json::from_str::<StudentRun>(&text)
    {
        return Ok(done);
    }
    let tok = cfg.tokenizer();
    let data = cfg.data(if kd { "kd" } else { "labelled" });
    let mut o = synthetic::base_overrides(&settings(cfg, &data, &tok, seed, cfg.student_steps));
    o.extend(crate::training::STUDENT.iter().map(|s| s.to_string()));
    o.extend(cfg.vision_overrides());
    o.push(format!("eval.max_new_tokens={MAX_TARGET_TOKENS}"));
    if kd {
        o.extend([
            "teacher.kind=model".to_string(),
            format!("teacher.model=\"{}\"", teacher.display()),
            format!("teacher.top_k={}", cfg.top_k),
            format!("loss.alpha={}", cfg.alpha),
            "loss.temperature=1.0".into(),
        ]);
    }
    let started = Instant::now();
    synthetic::train_run(&name, &o, &dir, false)?;
    let done = StudentRun {
        kd,
        seed,
        train_s: started.elapsed().as_secs_f64(),
        predictions: predict_folder(
            &dir.join("final"),
            &cfg.data("teacher"),
            "validation",
            &eval_section(cfg.eval_examples),
            tch::Device::Cpu,
        )?,
    };
    let text = serde_json::to_string(&done).expect("run serialises");
    std::fs::write(&saved, text).map_err(Error::io(&saved))?;
    Ok(done)
}

/// Runs (or resumes) the experiment and returns its report.
pub fn run(cfg: &VisionConfig, command: &str) -> Result<VisionReport> {
    cfg.check()?;
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    eprintln!("[vision] images, tokenizer, shards");
    make_data(cfg)?;
    eprintln!("[vision] teacher and pseudo-labels");
    let teacher = make_teacher(cfg)?;
    let teacher_predictions = predict_folder(
        &teacher,
        &cfg.data("teacher"),
        "validation",
        &eval_section(cfg.eval_examples),
        tch::Device::Cpu,
    )?;
    let mut students = Vec::new();
    for &seed in &cfg.seeds {
        for kd in [false, true] {
            eprintln!(
                "[vision] student, {} seed {seed}",
                if kd { "KD" } else { "CE" }
            );
            students.push(run_student(cfg, &teacher, kd, seed)?);
        }
    }
    let train = examples(cfg, Split::Train, cfg.student_examples)?;
    Ok(VisionReport::build(
        cfg,
        command,
        &train,
        teacher_predictions,
        students,
        started.elapsed().as_secs_f64(),
    ))
}
