//! `edkd experiment kd`: does distillation give a better small model, on a real teacher and
//! a real task? Teacher: SmolLM2-135M-Instruct (GGUF) reading its chat template with an
//! instruction in the user turn. Task: code summarisation from the Python sources on this
//! machine ([`task`]). Arms, on the same data, steps and hyperparameters: a randomly
//! initialised student with cross-entropy only and with KD, and a student initialised from
//! the teacher's own layers (`edkd student init`) with CE only and with KD; the teacher as a
//! reference row. KD reads the teacher-logit cache, annotated once. Scores on held-out
//! functions (from files no training example came from) with bootstrap 95% intervals,
//! validation curves, sizes and first-token latency ([`report`]).
//!
//! Every phase leaves its result in the output folder and is skipped when it is there, so
//! an interrupted run resumes (trainer runs resume from their checkpoints).

pub(crate) mod arms;
pub mod report;
mod report_md;
mod score;
pub mod step_bench;
pub mod task;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use arms::{Arm, ArmSettings, Init};
pub use report::{ArmResult, KdRealReport};
pub use task::{Source, TaskConfig};

/// The instruction in the teacher's user turn (the input goes at `{input}`).
pub const INSTRUCTION: &str = "Write the first sentence of the docstring of this Python \
function: one short sentence that says what it does.\n\n```python\n{input}\n```";

/// Everything the experiment needs; [`KdRealConfig::preset`] gives the named sizes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KdRealConfig {
    pub preset: String,
    pub out: PathBuf,
    /// The teacher: a `.gguf` file or a Hugging Face folder (with a chat template).
    pub teacher: PathBuf,
    /// The interpreter that runs the extractor (Python's `ast`).
    pub python: PathBuf,
    pub sources: Vec<Source>,
    pub task: TaskConfig,
    /// The teacher's user turn, with one `{input}`.
    pub instruction: String,
    /// Source layers of the students' encoder and decoder.
    pub encoder_layers: Vec<usize>,
    pub decoder_layers: Vec<usize>,
    pub cross_attn_scale: f64,
    pub train: ArmSettings,
    /// Seeds of the decoder-initialised arms (CE and KD each), and of the random ones.
    pub decoder_seeds: Vec<u64>,
    pub random_seeds: Vec<u64>,
    /// Steps of cross-entropy fine-tuning of the teacher on `view(input) ++ target` before
    /// annotating (0: the instruct model as it is).
    pub teacher_finetune_steps: u64,
    pub teacher_finetune_lr: f64,
    /// Top-k log-probs kept per target position in the cache.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Rows per generation batch on the test set.
    pub generate_rows: usize,
    /// Test inputs whose first-token latency is timed (batch 1).
    pub latency_examples: usize,
    pub device: String,
    /// libtorch threads (0: libtorch's default).
    pub threads: usize,
}

/// Names of the presets, for help texts and errors.
pub const PRESETS: [&str; 3] = ["cpu", "full", "toy"];

impl KdRealConfig {
    /// `cpu`: about two hours on 2 CPU cores; `full`: one GPU; `toy`: seconds (tests).
    pub fn preset(name: &str, out: &Path, teacher: &Path, python: &Path) -> Result<Self> {
        let task = |train, validation, test, max_in| TaskConfig {
            train_examples: train,
            validation_examples: validation,
            test_examples: test,
            max_input_tokens: max_in,
            max_target_tokens: 32,
            min_target_words: 4,
            max_target_words: 30,
            max_same_target: 2,
            seed: 0,
        };
        let base = Self {
            preset: name.into(),
            out: out.into(),
            teacher: teacher.into(),
            python: python.into(),
            sources: Vec::new(),
            task: task(2400, 120, 500, 160),
            instruction: INSTRUCTION.into(),
            encoder_layers: vec![0, 1, 2, 3],
            decoder_layers: vec![0, 1, 28, 29],
            cross_attn_scale: 0.0,
            train: ArmSettings::cpu(),
            decoder_seeds: vec![0, 1],
            random_seeds: vec![0],
            teacher_finetune_steps: 0,
            teacher_finetune_lr: 2e-5,
            top_k: 32,
            max_new_tokens: 32,
            generate_rows: 32,
            latency_examples: 20,
            device: "cpu".into(),
            threads: 0,
        };
        Ok(match name {
            "cpu" => base,
            "full" => Self {
                task: task(16000, 500, 1000, 384),
                encoder_layers: (0..12).collect(),
                decoder_layers: vec![0, 1, 2, 3, 26, 27, 28, 29],
                train: ArmSettings::full(),
                decoder_seeds: vec![0, 1, 2],
                random_seeds: vec![0, 1],
                teacher_finetune_steps: 1000,
                top_k: 64,
                generate_rows: 64,
                latency_examples: 50,
                device: "cuda".into(),
                ..base
            },
            "toy" => Self {
                task: TaskConfig {
                    min_target_words: 3,
                    max_same_target: 1,
                    ..task(24, 6, 8, 400)
                },
                encoder_layers: vec![0, 1],
                decoder_layers: vec![0, 1],
                train: ArmSettings::toy(),
                decoder_seeds: vec![0, 1],
                random_seeds: vec![0],
                top_k: 8,
                max_new_tokens: 8,
                generate_rows: 8,
                latency_examples: 2,
                ..base
            },
            _ => {
                return Err(Error::Input {
                    field: "preset",
                    msg: format!("`{name}`: expected one of {}", PRESETS.join(", ")),
                });
            }
        })
    }

    /// The arms in training order.
    pub fn arms(&self) -> Vec<Arm> {
        let mut arms = Vec::new();
        for &seed in &self.decoder_seeds {
            arms.push(Arm::new(Init::Decoder, false, seed));
            arms.push(Arm::new(Init::Decoder, true, seed));
        }
        for &seed in &self.random_seeds {
            arms.push(Arm::new(Init::Random, false, seed));
            arms.push(Arm::new(Init::Random, true, seed));
        }
        arms
    }

    fn check(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::Input { field, msg });
        if self.sources.is_empty() {
            return bad("sources", "no source trees given".into());
        }
        if self.decoder_layers.is_empty() {
            return bad("decoder_layers", "at least one layer".into());
        }
        if self.decoder_seeds.is_empty() {
            return bad("decoder_seeds", "at least one seed".into());
        }
        if self.instruction.matches("{input}").count() != 1 {
            return bad("instruction", "needs exactly one {input}".into());
        }
        if self.task.test_examples == 0 || self.task.train_examples == 0 {
            return bad("task", "train and test need examples".into());
        }
        Ok(())
    }
}

/// The Python source trees of this machine that the task reads: the interpreter's standard
/// library and five packages of its site-packages, with their licences (as their
/// distributions declare them).
pub fn default_sources(python: &Path) -> Result<Vec<Source>> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sysconfig; p = sysconfig.get_paths(); print(p['stdlib']); print(p['purelib'])",
        ])
        .output()
        .map_err(Error::io(python))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(stdlib), Some(site)) = (lines.next(), lines.next()) else {
        return Err(Error::Script {
            script: python.display().to_string(),
            msg: format!(
                "could not read its paths: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    };
    let site = Path::new(site);
    let mut sources = vec![Source {
        name: "stdlib".into(),
        root: stdlib.into(),
        licence: "PSF-2.0 (Python Software Foundation License)".into(),
    }];
    for (name, licence) in [
        ("numpy", "BSD-3-Clause"),
        ("torch", "BSD-3-Clause"),
        ("transformers", "Apache-2.0"),
        ("sympy", "BSD-3-Clause"),
        ("networkx", "BSD-3-Clause"),
    ] {
        let root = site.join(name);
        if root.is_dir() {
            sources.push(Source {
                name: name.into(),
                root,
                licence: licence.into(),
            });
        }
    }
    Ok(sources)
}

/// Wall time of each phase, seconds, summed over the runs that worked on it (a resumed run
/// adds what it spent; `phases.json` in the output folder keeps the sums).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases(pub Vec<(String, f64)>);

impl Phases {
    const FILE: &'static str = "phases.json";

    fn load(out: &Path) -> Self {
        std::fs::read_to_string(out.join(Self::FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn time<T>(&mut self, out: &Path, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        eprintln!("[kd] {name} ...");
        let result = f();
        let s = t0.elapsed().as_secs_f64();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += s,
            None => self.0.push((name.to_owned(), s)),
        }
        arms::write_json(&out.join(Self::FILE), self)?;
        let out = result?;
        eprintln!("[kd] {name}: {s:.1} s");
        Ok(out)
    }

    /// Seconds over every phase.
    pub fn total(&self) -> f64 {
        self.0.iter().map(|(_, s)| s).sum()
    }
}

/// Runs every phase (resuming what an earlier run finished) and writes the report.
pub fn run(cfg: &KdRealConfig, command: &str) -> Result<KdRealReport> {
    cfg.check()?;
    let started = Instant::now();
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = edkd_models::device::parse_device(&cfg.device)?;
    let mut phases = Phases::load(out);
    let files = arms::Files::new(out);

    let tokenizer = phases.time(out, "teacher tokenizer", || {
        arms::teacher_tokenizer(cfg, &files)
    })?;
    let stats = phases.time(out, "task: extract, filter, split", || {
        arms::build_task(cfg, &files, &tokenizer)
    })?;
    phases.time(out, "prepare data", || {
        arms::prepare_data(cfg, &files, &tokenizer)
    })?;
    let teacher = if cfg.teacher_finetune_steps > 0 {
        phases.time(out, "teacher fine-tuning", || {
            arms::finetune_teacher(cfg, &files)
        })?
    } else {
        cfg.teacher.clone()
    };
    phases.time(out, "teacher annotation (cache)", || {
        arms::annotate(cfg, &files, &teacher, device)
    })?;
    phases.time(out, "student init from the teacher", || {
        arms::init_student(cfg, &files)
    })?;
    let mut results = Vec::new();
    for arm in cfg.arms() {
        let summary = phases.time(out, &format!("train {}", arm.name()), || {
            arms::train_arm(cfg, &files, &arm)
        })?;
        let scored = phases.time(out, &format!("test {}", arm.name()), || {
            score::student(cfg, &files, &arm, device)
        })?;
        results.push(ArmResult::new(arm, summary, scored));
    }
    let teacher_row = phases.time(out, "test teacher", || {
        score::teacher(cfg, &files, &teacher, device)
    })?;
    let latency = phases.time(out, "first-token latency", || {
        score::latency(cfg, &files, &teacher, device)
    })?;
    let report = KdRealReport::build(report::Inputs {
        cfg: cfg.clone(),
        command: command.to_owned(),
        stats,
        arms: results,
        teacher: teacher_row,
        latency,
        elapsed_s: phases.total().max(started.elapsed().as_secs_f64()),
        phases,
    });
    report.write(out)?;
    Ok(report)
}
