//! `edkd experiment ablations`: the paper's architecture ablations on tasks that learn in
//! minutes on a CPU (the synthetic long-input tasks of `edkd demo`).
//!
//! 1. synthesize labelled examples for the teacher, a labelled subset for the students,
//!    held-out examples; train a BPE tokenizer;
//! 2. train a decoder-only teacher with cross-entropy on every labelled example;
//! 3. the teacher answers the inputs whose labels the students do not get (pseudo-labels);
//! 4. train every arm ([`arms`]) for every seed: CE arms on the labelled subset, KD arms
//!    on the labelled subset plus the pseudo-labelled inputs with token-level KD from the
//!    teacher (in process, top-k); same steps, batch budget and schedule everywhere, so
//!    every arm sees the same number of training tokens per step;
//! 5. score every trained model on the held-out examples, one prediction at a time;
//! 6. report means over seeds with bootstrap intervals and paired differences
//!    ([`report`]).
//!
//! Every phase resumes: trained runs are kept and their predictions cached, so a rerun
//! (or a run cut short) redoes only what is missing.

pub mod arms;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use edkd_data::synth::{self, Split};
use edkd_trainer::config::EvalSection;
use edkd_trainer::eval::{Prediction, predict_folder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::synthetic::{self, RunSettings};
pub use arms::{Arm, Variant};
pub use report::AblationReport;

/// The experiment's sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationConfig {
    pub out: PathBuf,
    pub teacher_examples: usize,
    /// Of those, the labelled examples the students get.
    pub student_examples: usize,
    pub eval_examples: usize,
    pub teacher_steps: u64,
    pub student_steps: u64,
    pub seeds: Vec<u64>,
    pub max_input_tokens: usize,
    pub vocab_size: usize,
    /// libtorch threads (0: all cores).
    pub threads: usize,
    /// Teacher top-k of the KD arms.
    pub top_k: usize,
    /// Weight of the KD term (1 - alpha on CE).
    pub alpha: f64,
}

impl AblationConfig {
    /// The CPU-sized default: the demo's data and teacher, three seeds.
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_owned(),
            teacher_examples: 12_000,
            student_examples: 3_000,
            eval_examples: 300,
            teacher_steps: 1_200,
            student_steps: 800,
            seeds: vec![0, 1, 2],
            max_input_tokens: 160,
            vocab_size: 1024,
            threads: 0,
            top_k: 32,
            alpha: 0.5,
        }
    }

    fn check(&self) -> Result<()> {
        if self.student_examples == 0 || self.student_examples >= self.teacher_examples {
            return Err(Error::input(
                "student_examples",
                format!(
                    "{} must be in 1..{} (teacher_examples; the rest are unlabelled)",
                    self.student_examples, self.teacher_examples
                ),
            ));
        }
        if self.seeds.is_empty() {
            return Err(Error::input("seeds", "needs at least one seed"));
        }
        if self.eval_examples == 0 || self.student_steps == 0 || self.teacher_steps == 0 {
            return Err(Error::input(
                "eval_examples/student_steps/teacher_steps",
                "must all be >= 1",
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

    fn run_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }
}

/// One trained arm at one seed and its held-out predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmRun {
    pub arm: Arm,
    pub seed: u64,
    pub parameters: i64,
    pub train_s: f64,
    pub steps: u64,
    /// Target tokens seen in training.
    pub target_tokens: u64,
    pub predictions: Vec<Prediction>,
}

fn raw(cfg: &AblationConfig, name: &str) -> PathBuf {
    cfg.out.join("raw").join(format!("{name}.jsonl"))
}

/// Phase 1: data and tokenizer (kept when the files exist).
fn make_data(cfg: &AblationConfig) -> Result<()> {
    let shape = &synth::Shape::COMPACT;
    let all = synth::generate_shaped("mix", Split::Train, 0, cfg.teacher_examples, shape)?;
    let val = synth::generate_shaped("mix", Split::Validation, 0, cfg.eval_examples, shape)?;
    let labelled = &all[..cfg.student_examples];
    let dir = cfg.out.join("raw");
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    synth::write_jsonl(&raw(cfg, "teacher"), &all)?;
    synth::write_jsonl(&raw(cfg, "labelled"), labelled)?;
    synth::write_jsonl(&raw(cfg, "validation"), &val)?;
    if !cfg.tokenizer().is_file() {
        let texts =
            edkd_data::tokenizer::training_texts(&[raw(cfg, "teacher")], "input", "target")?;
        edkd_data::tokenizer::train_bpe_to_file(texts, cfg.vocab_size, 2, &cfg.tokenizer())?;
    }
    for name in ["teacher", "labelled"] {
        if !cfg.data(name).join("manifest.json").is_file() {
            prepare(cfg, name)?;
        }
    }
    Ok(())
}

fn prepare(cfg: &AblationConfig, name: &str) -> Result<()> {
    synthetic::prepare_split(
        &raw(cfg, name),
        &raw(cfg, "validation"),
        &cfg.tokenizer(),
        &cfg.data(name),
        cfg.max_input_tokens,
        "edkd experiment ablations",
    )
}

fn settings<'a>(
    cfg: &AblationConfig,
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

/// Phases 2 and 3: the teacher, and the KD data (labelled + pseudo-labelled inputs).
fn make_teacher(cfg: &AblationConfig) -> Result<PathBuf> {
    let (data, tok) = (cfg.data("teacher"), cfg.tokenizer());
    let run = cfg.run_dir("teacher");
    if !run.join("final/config.json").is_file() {
        let mut o = synthetic::base_overrides(&settings(cfg, &data, &tok, 0, cfg.teacher_steps));
        o.extend(synthetic::TEACHER.iter().map(|s| s.to_string()));
        synthetic::train_run("teacher", &o, &run, false)?;
    }
    let teacher = run.join("final");
    if !cfg.data("kd").join("manifest.json").is_file() {
        let all = synth::generate_shaped(
            "mix",
            Split::Train,
            0,
            cfg.teacher_examples,
            &synth::Shape::COMPACT,
        )?;
        let (labelled, unlabelled) = all.split_at(cfg.student_examples);
        let mut kd = labelled.to_vec();
        kd.extend(synthetic::pseudo_label(
            &teacher,
            unlabelled,
            cfg.max_input_tokens,
        )?);
        synth::write_jsonl(&raw(cfg, "kd"), &kd)?;
        prepare(cfg, "kd")?;
    }
    Ok(teacher)
}

fn eval_section(cfg: &AblationConfig) -> EvalSection {
    EvalSection {
        every: 0,
        max_examples: cfg.eval_examples,
        generate: true,
        max_new_tokens: synthetic::MAX_TARGET_TOKENS,
        batch_rows: 32,
    }
}

/// Phase 4 and 5 for one arm and seed (kept in `runs/<arm>-s<seed>/arm_run.json`).
fn run_arm(cfg: &AblationConfig, teacher: &Path, arm: &Arm, seed: u64) -> Result<ArmRun> {
    let dir = cfg.run_dir(&format!("{}-s{seed}", arm.name()));
    let saved = dir.join("arm_run.json");
    if let Ok(text) = std::fs::read_to_string(&saved)
        && let Ok(done) = serde_json::from_str::<ArmRun>(&text)
    {
        return Ok(done);
    }
    let tok = cfg.tokenizer();
    let data = cfg.data(if arm.kd { "kd" } else { "labelled" });
    let mut o = synthetic::base_overrides(&settings(cfg, &data, &tok, seed, cfg.student_steps));
    let vocab = cfg.vocab_size as i64;
    o.extend(arms::model_overrides(arm, vocab)?);
    if arm.kd {
        o.extend([
            "teacher.kind=model".to_string(),
            format!("teacher.model=\"{}\"", teacher.display()),
            format!("teacher.top_k={}", cfg.top_k),
            format!("loss.alpha={}", cfg.alpha),
            "loss.temperature=1.0".into(),
        ]);
    }
    let started = Instant::now();
    let (summary, _) = synthetic::train_run(&arm.label(), &o, &dir, false)?;
    let train_s = started.elapsed().as_secs_f64();
    let predictions = predict_folder(
        &dir.join("final"),
        &cfg.data("teacher"),
        "validation",
        &eval_section(cfg),
        tch::Device::Cpu,
    )?;
    let done = ArmRun {
        arm: *arm,
        seed,
        parameters: arms::parameters(arm, vocab)?,
        train_s,
        steps: summary.steps,
        target_tokens: target_tokens(&dir),
        predictions,
    };
    let text = serde_json::to_string(&done).expect("arm run serialises");
    std::fs::write(&saved, text).map_err(Error::io(&saved))?;
    Ok(done)
}

/// Target tokens the run trained on, summed over its `metrics.jsonl` (a resumed run's
/// file holds every step once).
fn target_tokens(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["target_tokens"].as_f64())
        .sum::<f64>() as u64
}

/// Runs (or resumes) the whole experiment and returns its report.
pub fn run(cfg: &AblationConfig, command: &str) -> Result<AblationReport> {
    cfg.check()?;
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    eprintln!("[ablations] data and tokenizer");
    make_data(cfg)?;
    eprintln!("[ablations] teacher and pseudo-labels");
    let teacher = make_teacher(cfg)?;
    let teacher_predictions = predict_folder(
        &teacher,
        &cfg.data("teacher"),
        "validation",
        &eval_section(cfg),
        tch::Device::Cpu,
    )?;
    let mut runs = Vec::new();
    let arms = arms::all();
    let total = arms.len() * cfg.seeds.len();
    for &seed in &cfg.seeds {
        for arm in &arms {
            eprintln!(
                "[ablations] ({}/{total}) {} seed {seed}",
                runs.len() + 1,
                arm.label()
            );
            runs.push(run_arm(cfg, &teacher, arm, seed)?);
        }
    }
    Ok(AblationReport::build(
        cfg,
        command,
        runs,
        teacher_predictions,
        started.elapsed().as_secs_f64(),
    ))
}
