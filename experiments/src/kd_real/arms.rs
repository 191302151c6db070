//! The experiment's preparation and training phases: the teacher's tokenizer, the task's
//! files, prepared data, the optional teacher fine-tuning, the teacher-logit cache, the
//! students' initial folders, and one trainer run per arm (all with the same settings).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edkd_data::prepare::{PrepareConfig, Truncation, prepare};
use edkd_models::chat::{TeacherView, ViewKind, ViewSpec};
use edkd_models::student::init::{InitSpec, SpecialIds, init_folder};
use edkd_models::student::{StudentConfig, StudentModel};
use edkd_trainer::config::TrainConfig;
use edkd_trainer::dist::Single;
use edkd_trainer::{RunOptions, train};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::KdRealConfig;
use super::task::{self, TaskStats};
use crate::error::{Error, Result};

/// Where each phase keeps its results under the output folder.
pub struct Files {
    pub root: PathBuf,
}

impl Files {
    pub fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn tokenizer_dir(&self) -> PathBuf {
        self.at("teacher-tokenizer")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.tokenizer_dir().join("tokenizer.json")
    }
    pub fn task_dir(&self) -> PathBuf {
        self.at("task")
    }
    pub fn main_data(&self) -> PathBuf {
        self.at("data/main")
    }
    pub fn test_data(&self) -> PathBuf {
        self.at("data/test")
    }
    pub fn cache(&self) -> PathBuf {
        self.at("cache")
    }
    pub fn decoder_init(&self) -> PathBuf {
        self.at("students/decoder-init")
    }
    pub fn random_init(&self, seed: u64) -> PathBuf {
        self.at(&format!("students/random-init-s{seed}"))
    }
    pub fn run(&self, arm: &Arm) -> PathBuf {
        self.at(&format!("runs/{}", arm.dir()))
    }
    pub fn teacher_run(&self) -> PathBuf {
        self.at("runs/teacher-finetune")
    }
}

/// How a student starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    Random,
    Decoder,
}

/// One trained student: its initialisation, loss and seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arm {
    pub init: Init,
    pub kd: bool,
    pub seed: u64,
}

impl Arm {
    pub fn new(init: Init, kd: bool, seed: u64) -> Self {
        Self { init, kd, seed }
    }
    pub fn dir(&self) -> String {
        let init = match self.init {
            Init::Random => "random",
            Init::Decoder => "decoder",
        };
        format!(
            "{init}-{}-s{}",
            if self.kd { "kd" } else { "ce" },
            self.seed
        )
    }
    pub fn name(&self) -> String {
        let init = match self.init {
            Init::Random => "random-init",
            Init::Decoder => "decoder-init",
        };
        format!(
            "{init} {} (seed {})",
            if self.kd { "KD" } else { "CE" },
            self.seed
        )
    }
}

/// The training settings every arm shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmSettings {
    pub steps: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_rows: usize,
    pub max_tokens: usize,
    /// KD weight in `(1 - alpha) CE + alpha KD` (KD arms).
    pub alpha: f64,
    pub temperature: f64,
    pub eval_every: u64,
    pub eval_examples: usize,
    /// `fp32` or `bf16`.
    pub precision: String,
}

impl ArmSettings {
    pub fn cpu() -> Self {
        Self {
            steps: 300,
            lr: 3e-4,
            warmup_steps: 20,
            weight_decay: 0.01,
            max_rows: 16,
            max_tokens: 4096,
            alpha: 0.5,
            temperature: 1.0,
            eval_every: 50,
            eval_examples: 120,
            precision: "fp32".into(),
        }
    }
    pub fn full() -> Self {
        Self {
            steps: 4000,
            lr: 2e-4,
            warmup_steps: 200,
            max_rows: 64,
            max_tokens: 32768,
            eval_every: 250,
            eval_examples: 500,
            precision: "bf16".into(),
            ..Self::cpu()
        }
    }
    pub fn toy() -> Self {
        Self {
            steps: 6,
            lr: 1e-3,
            warmup_steps: 1,
            max_rows: 8,
            max_tokens: 4096,
            eval_every: 3,
            eval_examples: 6,
            ..Self::cpu()
        }
    }
}

/// The teacher's `tokenizer.json` (and `tokenizer_config.json` with its chat template) in
/// `teacher-tokenizer/`: rebuilt from a GGUF's metadata, or copied from its folder.
pub fn teacher_tokenizer(cfg: &KdRealConfig, files: &Files) -> Result<PathBuf> {
    let dir = files.tokenizer_dir();
    if files.tokenizer().is_file() {
        return Ok(files.tokenizer());
    }
    if edkd_models::gguf::is_gguf(&cfg.teacher) {
        edkd_models::gguf::extract_tokenizer(&cfg.teacher, &dir)?.ok_or_else(|| Error::Input {
            field: "teacher",
            msg: format!("{} has no tokenizer", cfg.teacher.display()),
        })?;
    } else {
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        for name in ["tokenizer.json", edkd_models::chat::TOKENIZER_CONFIG] {
            let from = cfg.teacher.join(name);
            std::fs::copy(&from, dir.join(name)).map_err(Error::io(&from))?;
        }
    }
    Ok(files.tokenizer())
}

/// Extracts, filters and splits the functions into `task/{train,validation,test}.jsonl`.
pub fn build_task(cfg: &KdRealConfig, files: &Files, tokenizer: &Path) -> Result<TaskStats> {
    let dir = files.task_dir();
    let stats_path = dir.join("task.json");
    if stats_path.is_file() {
        return read_json(&stats_path);
    }
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let functions = dir.join("functions.jsonl");
    if !functions.is_file() {
        task::extract(&cfg.python, &cfg.sources, &functions)?;
    }
    let tok = edkd_data::tokenizer::Tokenizer::load(tokenizer)?;
    let count = |s: &str| -> Result<usize> { Ok(tok.encode(s)?.len()) };
    let splits = task::build(task::read_functions(&functions)?, &cfg.task, &count)?;
    task::write_jsonl(&dir.join("train.jsonl"), &splits.train)?;
    task::write_jsonl(&dir.join("validation.jsonl"), &splits.validation)?;
    task::write_jsonl(&dir.join("test.jsonl"), &splits.test)?;
    write_json(&stats_path, &splits.stats)?;
    Ok(splits.stats)
}

fn prepare_one(
    cfg: &KdRealConfig,
    tokenizer: &Path,
    train: &Path,
    val: Option<&Path>,
    out: &Path,
) -> Result<()> {
    if out.join("manifest.json").is_file() {
        return Ok(());
    }
    let p = PrepareConfig {
        validation_inputs: val.iter().map(|v| v.display().to_string()).collect(),
        max_input_tokens: Some(cfg.task.max_input_tokens),
        max_target_tokens: Some(cfg.task.max_target_tokens),
        input_truncation: Truncation::KeepStart,
        keep_text: true,
        overwrite: true,
        command: vec!["edkd experiment kd".into()],
        ..PrepareConfig::new(&[train], tokenizer, out)
    };
    prepare(&p)?;
    Ok(())
}

/// `data/main` (train + validation) and `data/test` (the test split as its train split).
pub fn prepare_data(cfg: &KdRealConfig, files: &Files, tokenizer: &Path) -> Result<()> {
    let t = files.task_dir();
    prepare_one(
        cfg,
        tokenizer,
        &t.join("train.jsonl"),
        Some(&t.join("validation.jsonl")),
        &files.main_data(),
    )?;
    prepare_one(
        cfg,
        tokenizer,
        &t.join("test.jsonl"),
        None,
        &files.test_data(),
    )
}

/// The teacher's view: its chat template with [`KdRealConfig::instruction`] as the user turn.
pub fn teacher_view(cfg: &KdRealConfig, files: &Files) -> Result<TeacherView> {
    Ok(TeacherView::from_spec(&ViewSpec {
        kind: ViewKind::Chat,
        tokenizer: Some(files.tokenizer()),
        template_places: vec![files.tokenizer_dir()],
        system: None,
        plain: cfg.instruction.clone(),
    })?)
}

/// Fine-tunes the teacher with cross-entropy on `view(input) ++ target` of the training
/// split; returns the fine-tuned folder.
pub fn finetune_teacher(cfg: &KdRealConfig, files: &Files) -> Result<PathBuf> {
    let run = files.teacher_run();
    let done = run.join("final");
    if done.join("config.json").is_file() {
        return Ok(done);
    }
    let view = teacher_view(cfg, files)?;
    let data = files.root.join("data/teacher-finetune");
    if !data.join("manifest.json").is_file() {
        let rows: Vec<task::Example> = read_examples(&files.task_dir().join("train.jsonl"))?
            .into_iter()
            .map(|e| {
                Ok(task::Example {
                    input: view.render(&e.input)?,
                    ..e
                })
            })
            .collect::<Result<_>>()?;
        let jsonl = files.task_dir().join("teacher-finetune.jsonl");
        task::write_jsonl(&jsonl, &rows)?;
        let p = PrepareConfig {
            keep_text: false,
            overwrite: true,
            command: vec!["edkd experiment kd (teacher fine-tuning)".into()],
            ..PrepareConfig::new(&[&jsonl], &files.tokenizer(), &data)
        };
        prepare(&p)?;
    }
    let s = &cfg.train;
    let overrides = vec![
        format!("data.manifest={:?}", data.display().to_string()),
        format!(
            "data.tokenizer={:?}",
            files.tokenizer().display().to_string()
        ),
        format!("device={:?}", cfg.device),
        format!("threads={}", cfg.threads),
        "model.architecture=decoder-only".into(),
        format!("model.init={:?}", cfg.teacher.display().to_string()),
        format!("optim.steps={}", cfg.teacher_finetune_steps),
        format!("optim.lr={}", cfg.teacher_finetune_lr),
        format!(
            "optim.warmup_steps={}",
            (cfg.teacher_finetune_steps / 20).max(1)
        ),
        format!("batch.max_rows={}", s.max_rows),
        format!("batch.max_tokens={}", s.max_tokens * 2),
        "eval.every=0".into(),
        "checkpoint.every=0".into(),
        "checkpoint.keep_last=1".into(),
        "log.tensorboard=false".into(),
    ];
    run_trainer(&overrides, &run)?;
    // The chat template travels with the fine-tuned folder.
    let from = files
        .tokenizer_dir()
        .join(edkd_models::chat::TOKENIZER_CONFIG);
    std::fs::copy(&from, done.join(edkd_models::chat::TOKENIZER_CONFIG))
        .map_err(Error::io(&from))?;
    Ok(done)
}

/// Serves `teacher` on loopback and writes the teacher-logit cache of the training split.
pub fn annotate(cfg: &KdRealConfig, files: &Files, teacher: &Path, device: Device) -> Result<()> {
    let marker = files.cache().join("annotated.json");
    if marker.is_file() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(Error::io(teacher))?;
    let model = edkd_models::Teacher::load(
        teacher,
        edkd_models::LoadOptions {
            device,
            kind: tch::Kind::Float,
        },
    )?;
    let server = rt.block_on(edkd_teacher::start(
        model,
        edkd_teacher::ServerConfig {
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            model_id: Some("kd-real-teacher".into()),
            ..Default::default()
        },
    ))?;
    let _runtime = rt.enter(); // the client's connection lives on this runtime
    let client = edkd_teacher::Client::connect(edkd_teacher::ClientConfig {
        timeout: Duration::from_secs(3600),
        ..edkd_teacher::ClientConfig::new(server.addr.to_string())
    })?;
    let config = edkd_teacher::AnnotateConfig {
        data: files.main_data(),
        split: "train".into(),
        out: files.cache(),
        top_k: cfg.top_k,
        temperature: cfg.train.temperature as f32,
        sequences_per_request: 8,
        in_flight: 2,
        shard_rows: 4096,
        limit: None,
        progress: true,
        view: Arc::new(teacher_view(cfg, files)?),
        packing: None,
        zstd_level: None,
        calibration_examples: edkd_teacher::annotate::CALIBRATION_EXAMPLES,
    };
    let summary = rt.block_on(edkd_teacher::annotate(&client, &config));
    rt.block_on(server.shutdown())?;
    let s = summary?;
    write_json(
        &marker,
        &serde_json::json!({
            "examples": s.examples,
            "target_positions": s.target_positions,
            "seconds": s.elapsed.as_secs_f64(),
        }),
    )
}

/// The decoder-initialised student (`edkd student init`) and one random-init twin per seed.
pub fn init_student(cfg: &KdRealConfig, files: &Files) -> Result<()> {
    let dir = files.decoder_init();
    if !dir.join("model.safetensors").is_file() {
        let t = edkd_data::tokenizer::Tokenizer::load(&files.tokenizer())?;
        let spec = InitSpec {
            encoder_layers: cfg.encoder_layers.clone(),
            decoder_layers: cfg.decoder_layers.clone(),
            cross_attn_out_scale: cfg.cross_attn_scale,
            special_ids: Some(SpecialIds {
                bos: i64::from(t.specials.bos),
                eos: i64::from(t.specials.eos),
                pad: i64::from(t.specials.pad),
            }),
            ..Default::default()
        };
        init_folder(&cfg.teacher, &spec, &dir)?;
    }
    let config: StudentConfig = read_json(&dir.join("config.json"))?;
    for &seed in &cfg.random_seeds {
        let out = files.random_init(seed);
        if out.join("model.safetensors").is_file() {
            continue;
        }
        let s = StudentModel::init(&config, Device::Cpu, seed as i64)?;
        s.save(&out, Some(&files.tokenizer()))?;
    }
    Ok(())
}

/// What one arm's run reported (kept as `summary.json` in its folder).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainSummary {
    pub steps: u64,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub parameters: i64,
}

fn run_trainer(overrides: &[String], out: &Path) -> Result<edkd_trainer::RunSummary> {
    let cfg = TrainConfig::from_overrides(overrides)?;
    cfg.validate()?;
    let opts = RunOptions {
        out: out.to_owned(),
        resume: true,
        ..Default::default()
    };
    Ok(train(&cfg, &opts, &mut Single)?)
}

/// The arm's trainer overrides: the shared settings, its init folder, and the cache for KD.
pub fn arm_overrides(cfg: &KdRealConfig, files: &Files, arm: &Arm) -> Vec<String> {
    let s = &cfg.train;
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let init = match arm.init {
        Init::Decoder => files.decoder_init(),
        Init::Random => files.random_init(arm.seed),
    };
    let mut o = vec![
        format!("data.manifest={}", q(files.main_data())),
        format!("data.tokenizer={}", q(files.tokenizer())),
        format!("seed={}", arm.seed),
        format!("device={:?}", cfg.device),
        format!("threads={}", cfg.threads),
        format!("model.init={}", q(init)),
        format!("model.precision={:?}", s.precision),
        format!("optim.steps={}", s.steps),
        format!("optim.lr={}", s.lr),
        format!("optim.warmup_steps={}", s.warmup_steps),
        format!("optim.weight_decay={}", s.weight_decay),
        "optim.schedule=cosine".into(),
        format!("batch.max_rows={}", s.max_rows),
        format!("batch.max_tokens={}", s.max_tokens),
        "batch.bucket_window=256".into(),
        format!("eval.every={}", s.eval_every),
        format!("eval.max_examples={}", s.eval_examples),
        "eval.generate=false".into(),
        format!("checkpoint.every={}", s.eval_every.max(1) * 2),
        "checkpoint.keep_last=1".into(),
        "log.tensorboard=false".into(),
        "log.plot=false".into(),
    ];
    if arm.kd {
        o.extend([
            "teacher.kind=cache".to_string(),
            format!("teacher.cache={}", q(files.cache())),
            format!("teacher.top_k={}", cfg.top_k),
            "teacher.prompt=chat".into(),
            format!("teacher.prompt_template={:?}", cfg.instruction),
            format!("teacher.chat_template={}", q(files.tokenizer_dir())),
            format!("loss.alpha={}", s.alpha),
            format!("loss.temperature={}", s.temperature),
        ]);
    }
    o
}

/// Trains one arm (resuming an interrupted run; a finished one is read back).
pub fn train_arm(cfg: &KdRealConfig, files: &Files, arm: &Arm) -> Result<TrainSummary> {
    let out = files.run(arm);
    let path = out.join("summary.json");
    if path.is_file() {
        return read_json(&path);
    }
    let r = run_trainer(&arm_overrides(cfg, files, arm), &out)?;
    let parameters = StudentModel::load(&r.final_model, Default::default())?.num_parameters();
    let s = TrainSummary {
        steps: r.steps,
        elapsed_s: r.elapsed_s,
        tokens_per_s: r.tokens_per_s,
        parameters,
    };
    write_json(&path, &s)?;
    Ok(s)
}

pub fn read_examples(path: &Path) -> Result<Vec<task::Example>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| Error::Input {
                field: "task file",
                msg: format!("{}: {e}", path.display()),
            })
        })
        .collect()
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Input {
        field: "result file",
        msg: format!("{}: {e}", path.display()),
    })
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialises") + "\n";
    std::fs::write(path, text).map_err(Error::io(path))
}
