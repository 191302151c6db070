//! The training job's configuration: one TOML file (`edkd train --config job.toml`), every
//! field overridable from the command line with `--set section.field=value`.
//!
//! Unknown fields are errors (a typo must not silently fall back to a default), and
//! [`TrainConfig::validate`] names the offending field and its allowed range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::loss::{Divergence, KdLoss};
use crate::optim::{AdamWConfig, Schedule};

mod numbers;
mod recipe;
mod vision;
pub use numbers::{MAX_EPS, MAX_LR, MAX_PREFETCH, MAX_THREADS_PER_CORE, MAX_TIMEOUT_S};
pub use recipe::RECIPES;
pub use vision::{TowerShape, VisionSection, check_feature_layer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("--set {0}: expected `section.field=value`")]
    Override(String),
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

pub(crate) fn field(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A named recipe laid under this config (`mu`: the paper's KD recipe; see
    /// `trainer/README.md`); fields set here or with `--set` keep their values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Seeds initialisation, data order, dropout and sampling.
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: usize,
    pub model: ModelSection,
    pub data: DataSection,
    pub teacher: TeacherSection,
    pub loss: LossSection,
    pub optim: OptimSection,
    pub batch: BatchSection,
    pub checkpoint: CheckpointSection,
    pub eval: EvalSection,
    pub log: LogSection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            recipe: None,
            seed: 0,
            device: "cpu".into(),
            threads: 0,
            model: ModelSection::default(),
            data: DataSection::default(),
            teacher: TeacherSection::default(),
            loss: LossSection::default(),
            optim: OptimSection::default(),
            batch: BatchSection::default(),
            checkpoint: CheckpointSection::default(),
            eval: EvalSection::default(),
            log: LogSection::default(),
        }
    }
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// The encoder-decoder student (the point of edkd).
    EncoderDecoder,
    /// A Llama-shaped decoder-only model (the twin of a student preset): baselines, and the
    /// demo's teacher.
    DecoderOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub architecture: Architecture,
    /// Student preset (`tiny`, `small`, `mid`, `mu-330m`); its vocabulary and special ids
    /// are taken from the data manifest.
    pub preset: String,
    /// Start from this model folder instead of a fresh preset.
    pub init: Option<PathBuf>,
    /// Preset fields to change, e.g. `{ d_model = 128, dropout = 0.1 }`.
    pub overrides: toml::Table,
    /// `fp32`, or `bf16` (bf16 weights and compute, fp32 master weights in the optimizer).
    pub precision: String,
    /// Train a vision-language model: a CLIP tower and a projector in front of the text
    /// model (the student's encoder, or the decoder-only model's prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionSection>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            architecture: Architecture::EncoderDecoder,
            preset: "tiny".into(),
            init: None,
            overrides: toml::Table::new(),
            precision: "fp32".into(),
            vision: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Folder with `manifest.json` (from `edkd data prepare`).
    pub manifest: PathBuf,
    /// The tokenizer the data was made with (checked against the manifest's sha256);
    /// defaults to the teacher folder's `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    pub train_split: String,
    pub eval_split: String,
    /// What is checked when the shards are opened (token ids are range-checked as batches
    /// are built either way).
    pub verify: DataVerify,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            manifest: PathBuf::new(),
            tokenizer: None,
            train_split: "train".into(),
            eval_split: "validation".into(),
            verify: DataVerify::Sha256,
        }
    }
}

/// `data.verify`: how much of the dataset is checked against its manifest at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataVerify {
    /// Hash every shard (all splits used) and compare with the manifest's sha256.
    Sha256,
    /// Only shard presence and row counts: for datasets too large to hash at every start.
    Rows,
}

impl DataVerify {
    /// The dataset reader's verification mode.
    pub fn mode(self) -> edkd_data::Verify {
        match self {
            Self::Sha256 => edkd_data::Verify::Full,
            Self::Rows => edkd_data::Verify::RowCounts,
        }
    }
}

/// Where the teacher's predictions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherKind {
    /// No teacher: cross-entropy only.
    None,
    /// An `edkd teacher serve` process (top-k + tail over gRPC), prefetched.
    Remote,
    /// Teacher-logit cache shards (`edkd teacher annotate`).
    Cache,
    /// A teacher folder loaded into this process (full-vocabulary logits).
    Model,
}

/// How the teacher reads an example's input (the student always reads it plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherPrompt {
    /// The input itself.
    #[default]
    Raw,
    /// One user turn of the teacher's chat template, then its generation prompt.
    Chat,
    /// `teacher.prompt_template`, a text with one `{input}`.
    Plain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherSection {
    pub kind: TeacherKind,
    /// `HOST:PORT` or `http(s)://HOST:PORT` of the teacher service (kind = remote).
    pub addr: String,
    /// Cache folder (kind = cache).
    pub cache: Option<PathBuf>,
    /// Teacher model folder (kind = model).
    pub model: Option<PathBuf>,
    /// Top-k requested from the service.
    pub top_k: usize,
    /// Batches whose teacher answers are fetched ahead of the student. 0 asks the teacher
    /// only when the step needs the batch, so teacher and student never compute at the
    /// same time: the fastest choice when a CPU teacher shares the trainer's cores (each
    /// then runs on every core in turn; see `edkd bench train`).
    pub prefetch: usize,
    /// How the service packs its answers (kind = remote): a wire packing (`delta-e6`,
    /// `delta-q8`, ...; see `experiments/reports/compression.md`), which the service must
    /// list; unset, unpacked f32 answers.
    pub packing: Option<String>,
    /// Bearer token file for the service.
    pub auth_token_file: Option<PathBuf>,
    /// Per-call deadline, seconds.
    pub timeout_s: f64,
    /// How long a remote teacher that stopped answering (connection refused, reset, a
    /// restart by the launcher) is retried with backoff before the run fails, seconds.
    pub retry_for_s: f64,
    /// The teacher's view of each input: `raw`, `chat` or `plain`.
    pub prompt: TeacherPrompt,
    /// `plain`: the template, with exactly one `{input}`; `chat`: when not empty, the user
    /// turn's text around the input (an instruction), also with one `{input}`.
    pub prompt_template: String,
    /// `chat`: a system turn before the user turn (default: the template's own).
    pub system_prompt: Option<String>,
    /// `chat`: where the chat template is (`tokenizer_config.json`, a folder holding one,
    /// or a `.gguf`); default: the teacher folder, else the tokenizer's folder.
    pub chat_template: Option<PathBuf>,
}

impl TeacherSection {
    /// `packing` resolved: a packing the wire carries, or an error naming the field.
    pub fn wire_packing(&self) -> Result<Option<edkd_data::packing::Packing>, ConfigError> {
        let Some(name) = &self.packing else {
            return Ok(None);
        };
        let p = edkd_data::packing::Packing::from_name(name)
            .map_err(|e| field("teacher.packing", &e.message))?;
        if p.needs_order() {
            return Err(field(
                "teacher.packing",
                format!(
                    "{name} is for caches only (its rows need the cache's id order); on the \
                     wire use a delta packing such as delta-e6"
                ),
            ));
        }
        Ok(Some(p))
    }
}

impl Default for TeacherSection {
    fn default() -> Self {
        Self {
            kind: TeacherKind::None,
            addr: String::new(),
            cache: None,
            model: None,
            top_k: 64,
            prefetch: 2,
            packing: None,
            auth_token_file: None,
            timeout_s: 120.0,
            retry_for_s: 300.0,
            prompt: TeacherPrompt::Raw,
            prompt_template: String::new(),
            system_prompt: None,
            chat_template: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossSection {
    pub divergence: Divergence,
    pub temperature: f64,
    /// Weight of the KD term: `(1 - alpha) * CE + alpha * KD`.
    pub alpha: f64,
    pub label_smoothing: f64,
    /// Fraction of steps whose KD term is computed on the student's own samples
    /// (on-policy) instead of the gold targets.
    pub on_policy_fraction: f64,
    pub sample_temperature: f64,
    /// 0: no top-k filter.
    pub sample_top_k: usize,
    /// Longest sample; 0: the batch's longest gold target + 1.
    pub sample_max_tokens: usize,
}

impl Default for LossSection {
    fn default() -> Self {
        Self {
            divergence: Divergence::ForwardKl,
            temperature: 1.0,
            alpha: 0.5,
            label_smoothing: 0.0,
            on_policy_fraction: 0.0,
            sample_temperature: 1.0,
            sample_top_k: 0,
            sample_max_tokens: 0,
        }
    }
}

impl LossSection {
    pub fn kd(&self) -> KdLoss {
        KdLoss {
            divergence: self.divergence,
            temperature: self.temperature,
            alpha: self.alpha,
            label_smoothing: self.label_smoothing,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    Cosine,
    Wsd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Optimizer steps in the whole run.
    pub steps: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// WSD: fraction of the run spent decaying.
    pub decay_fraction: f64,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Steps whose loss or gradient norm is NaN/infinite are skipped (no update) with a
    /// warning; one more than this many in a run stops it with an error.
    pub max_nonfinite_steps: u64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 1e-3,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
            accumulation: 1,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 50,
            decay_fraction: 0.2,
            min_lr_ratio: 0.1,
            max_nonfinite_steps: 10,
        }
    }
}

impl OptimSection {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    pub fn schedule(&self) -> Schedule {
        let (warmup, total) = (self.warmup_steps as i64, self.steps as i64);
        match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Cosine => Schedule::WarmupCosine {
                warmup,
                total,
                min_ratio: self.min_lr_ratio,
            },
            ScheduleKind::Wsd => Schedule::WarmupStableDecay {
                warmup,
                total,
                decay_fraction: self.decay_fraction,
                min_ratio: self.min_lr_ratio,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Token budget of one micro-batch per rank (input + target tokens, padded).
    pub max_tokens: usize,
    pub max_rows: usize,
    /// Examples sorted by length inside windows of this many (0: no bucketing).
    pub bucket_window: usize,
    pub shuffle: bool,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            max_rows: 64,
            bucket_window: 256,
            shuffle: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Every this many optimizer steps (and always at the end); 0: only at the end.
    pub every: u64,
    /// Newest checkpoints kept (the best one is kept in addition).
    pub keep_last: usize,
    /// Evaluation metric that picks the best checkpoint: `val_loss` (lower is better) or
    /// `em`, `f1`, `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (higher is better).
    pub best_metric: String,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 200,
            keep_last: 2,
            best_metric: "val_loss".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Every this many optimizer steps (and at the end); 0: only at the end.
    pub every: u64,
    /// Validation examples used (0: all).
    pub max_examples: usize,
    /// Generate and score with EM / F1 / ROUGE (otherwise losses only).
    pub generate: bool,
    pub max_new_tokens: usize,
    pub batch_rows: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every: 200,
            max_examples: 256,
            generate: true,
            max_new_tokens: 64,
            batch_rows: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Show a progress bar on stderr.
    pub progress: bool,
    pub tensorboard: bool,
    /// Write `loss.png` at the end.
    pub plot: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            progress: true,
            tensorboard: true,
            plot: true,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file and applies `section.field=value` overrides (values in TOML
    /// syntax; bare words are strings).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        apply_overrides(&mut table, overrides)?;
        recipe::apply(&mut table)?;
        let mut cfg: TrainConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// A config from overrides alone (defaults elsewhere).
    pub fn from_overrides(overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        apply_overrides(&mut table, overrides)?;
        recipe::apply(&mut table)?;
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| field("--set", e.to_string()))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data.manifest);
        for p in [
            &mut self.data.tokenizer,
            &mut self.model.init,
            &mut self.teacher.cache,
            &mut self.teacher.model,
            &mut self.teacher.auth_token_file,
            &mut self.teacher.chat_template,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(p) = self.model.vision.as_mut().and_then(|v| v.tower.as_mut()) {
            fix(p);
        }
    }

    /// The resolved config as TOML (saved next to the outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Checks ranges and combinations; names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_numbers()?;
        if self.data.manifest.as_os_str().is_empty() {
            return Err(field(
                "data.manifest",
                "required: the folder of a prepared dataset",
            ));
        }
        if !matches!(self.model.precision.as_str(), "fp32" | "bf16") {
            return Err(field(
                "model.precision",
                format!("`{}`: expected fp32 or bf16", self.model.precision),
            ));
        }
        if let Some(v) = &self.model.vision {
            v.validate(self.model.init.is_some())?;
        }
        if self.model.architecture == Architecture::DecoderOnly
            && self.teacher.kind != TeacherKind::None
            && self.loss.on_policy_fraction > 0.0
        {
            return Err(field(
                "loss.on_policy_fraction",
                "on-policy sampling is implemented for encoder-decoder students only",
            ));
        }
        self.loss.kd().validate().map_err(|m| field("loss", m))?;
        if !(0.0..=1.0).contains(&self.loss.on_policy_fraction) {
            return Err(field("loss.on_policy_fraction", "must be in [0, 1]"));
        }
        if self.loss.sample_temperature <= 0.0 {
            return Err(field("loss.sample_temperature", "must be > 0"));
        }
        if self.loss.on_policy_fraction > 0.0 && self.teacher.kind == TeacherKind::Cache {
            return Err(field(
                "loss.on_policy_fraction",
                "on-policy KD needs a live teacher (remote or model), not a cache",
            ));
        }
        match self.teacher.kind {
            TeacherKind::Remote if self.teacher.addr.is_empty() => {
                return Err(field("teacher.addr", "required when teacher.kind = remote"));
            }
            TeacherKind::Cache if self.teacher.cache.is_none() => {
                return Err(field("teacher.cache", "required when teacher.kind = cache"));
            }
            TeacherKind::Model if self.teacher.model.is_none() => {
                return Err(field("teacher.model", "required when teacher.kind = model"));
            }
            _ => {}
        }
        if self.teacher.kind != TeacherKind::None && self.teacher.top_k == 0 {
            return Err(field("teacher.top_k", "must be >= 1"));
        }
        self.teacher.wire_packing()?;
        if self.optim.steps == 0 {
            return Err(field("optim.steps", "must be >= 1"));
        }
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 {
            return Err(field("optim.lr", "must be > 0"));
        }
        if self.optim.accumulation == 0 {
            return Err(field("optim.accumulation", "must be >= 1"));
        }
        if !(0.0..=1.0).contains(&self.optim.min_lr_ratio) {
            return Err(field("optim.min_lr_ratio", "must be in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.optim.decay_fraction) {
            return Err(field("optim.decay_fraction", "must be in [0, 1]"));
        }
        if self.batch.max_tokens == 0 || self.batch.max_rows == 0 {
            return Err(field("batch", "max_tokens and max_rows must be >= 1"));
        }
        if self.checkpoint.keep_last == 0 {
            return Err(field("checkpoint.keep_last", "must be >= 1"));
        }
        if !matches!(
            self.checkpoint.best_metric.as_str(),
            "val_loss" | "em" | "f1" | "rouge1" | "rouge2" | "rougeL" | "rougeLsum"
        ) {
            return Err(field(
                "checkpoint.best_metric",
                format!(
                    "`{}`: expected val_loss, em, f1, rouge1, rouge2, rougeL or rougeLsum",
                    self.checkpoint.best_metric
                ),
            ));
        }
        if self.eval.generate && self.eval.max_new_tokens == 0 {
            return Err(field("eval.max_new_tokens", "must be >= 1 when generating"));
        }
        if self.eval.batch_rows == 0 {
            return Err(field("eval.batch_rows", "must be >= 1"));
        }
        Ok(())
    }
}

/// Applies `a.b.c=value` to a TOML table; `value` is parsed as a TOML value when it is one,
/// else taken as a string.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), ConfigError> {
    for o in overrides {
        let (key, raw) = o
            .split_once('=')
            .ok_or_else(|| ConfigError::Override(o.clone()))?;
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Override(o.clone()));
        }
        let value = parse_value(raw.trim());
        let mut t = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry
                .as_table_mut()
                .ok_or_else(|| field(key, format!("`{p}` is not a section")))?;
        }
        t.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_values_and_create_sections() {
        let cfg = TrainConfig::from_overrides(&[
            "data.manifest=/tmp/data".into(),
            "optim.lr=0.01".into(),
            "loss.divergence={ kind = \"jsd\", beta = 0.3 }".into(),
            "teacher.kind=remote".into(),
            "teacher.addr=127.0.0.1:5000".into(),
            "model.overrides.d_model=32".into(),
        ])
        .unwrap();
        assert_eq!(cfg.optim.lr, 0.01);
        assert_eq!(cfg.loss.divergence, Divergence::Jsd { beta: 0.3 });
        assert_eq!(cfg.teacher.kind, TeacherKind::Remote);
        assert_eq!(cfg.teacher.addr, "127.0.0.1:5000");
        assert_eq!(cfg.model.overrides["d_model"].as_integer(), Some(32));
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_and_invalid_fields_are_named() {
        let err = TrainConfig::from_overrides(&["optim.learning_rate=1".into()]).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
        let cfg = TrainConfig::from_overrides(&["data.manifest=x".into(), "loss.alpha=2".into()])
            .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("alpha"), "{err}");
        let cfg =
            TrainConfig::from_overrides(&["data.manifest=x".into(), "teacher.kind=cache".into()])
                .unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("teacher.cache")
        );
    }

    #[test]
    fn data_verify_switch() {
        let cfg = TrainConfig::from_overrides(&["data.manifest=x".into()]).unwrap();
        assert_eq!(cfg.data.verify.mode(), edkd_data::Verify::Full);
        let cfg =
            TrainConfig::from_overrides(&["data.manifest=x".into(), "data.verify=rows".into()])
                .unwrap();
        assert_eq!(cfg.data.verify.mode(), edkd_data::Verify::RowCounts);
        let err = TrainConfig::from_overrides(&["data.verify=md5".into()]).unwrap_err();
        assert!(err.to_string().contains("md5"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let cfg = TrainConfig::from_overrides(&["data.manifest=/d".into()]).unwrap();
        let back: TrainConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }
}
