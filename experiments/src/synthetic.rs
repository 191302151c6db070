//! The synthetic-task pipeline shared by `edkd demo` and the ablations: prepared splits
//! of the compact long-input tasks, the common training settings, a small decoder-only
//! teacher, training runs that resume, and the teacher's pseudo-labels for unlabelled
//! inputs (sequence-level KD).

use std::path::Path;

use edkd_data::prepare::{PrepareConfig, Truncation, prepare};
use edkd_data::synth::SynthExample;
use edkd_trainer::config::TrainConfig;
use edkd_trainer::dist::Single;
use edkd_trainer::eval::EvalReport;
use edkd_trainer::{RunOptions, RunSummary, train};

use crate::error::{Error, Result};

/// Answer tokens kept (every synthetic answer fits).
pub const MAX_TARGET_TOKENS: usize = 24;

/// The teacher: a decoder-only (Llama-shaped) model about twice the students' size.
pub const TEACHER: &[&str] = &[
    "model.architecture=decoder-only",
    "model.preset=small",
    "model.overrides.d_model=128",
    "model.overrides.encoder_layers=3",
    "model.overrides.decoder_layers=2",
    "model.overrides.attn_dim=128",
    "model.overrides.num_heads=4",
    "model.overrides.num_kv_heads=2",
    "model.overrides.ffn_dim=768",
    "model.overrides.max_positions=512",
];

/// Tokenizes `train` (+ `validation` as the validation split) into shards under `out`,
/// keeping the last `max_input` input tokens (the question is at the end).
pub fn prepare_split(
    train: &Path,
    validation: &Path,
    tokenizer: &Path,
    out: &Path,
    max_input: usize,
    command: &str,
) -> Result<()> {
    let cfg = PrepareConfig {
        validation_inputs: vec![validation.display().to_string()],
        max_input_tokens: Some(max_input),
        max_target_tokens: Some(MAX_TARGET_TOKENS),
        input_truncation: Truncation::KeepEnd,
        shard_rows: 1024,
        keep_text: true,
        overwrite: true,
        command: vec![command.into()],
        ..PrepareConfig::new(&[train], tokenizer, out)
    };
    prepare(&cfg)?;
    Ok(())
}

/// The settings every synthetic-task run shares (teacher and students alike).
#[derive(Debug, Clone)]
pub struct RunSettings<'a> {
    pub data: &'a Path,
    pub tokenizer: &'a Path,
    pub seed: u64,
    /// libtorch threads (0: all cores).
    pub threads: usize,
    pub steps: u64,
}

/// `key=value` overrides of [`RunSettings`]: AdamW at 2e-3 with 5% warm-up and a cosine
/// decay, batches of up to 16 rows / 2,048 tokens, 4 evaluations, 2 checkpoints.
pub fn base_overrides(s: &RunSettings<'_>) -> Vec<String> {
    vec![
        format!("data.manifest=\"{}\"", s.data.display()),
        format!("data.tokenizer=\"{}\"", s.tokenizer.display()),
        format!("seed={}", s.seed),
        format!("threads={}", s.threads),
        format!("optim.steps={}", s.steps),
        "optim.lr=2e-3".into(),
        format!("optim.warmup_steps={}", s.steps / 20),
        "optim.schedule=cosine".into(),
        "optim.weight_decay=0.05".into(),
        "batch.max_tokens=2048".into(),
        "batch.max_rows=16".into(),
        "batch.bucket_window=512".into(),
        format!("eval.every={}", (s.steps / 4).max(1)),
        "eval.max_examples=64".into(),
        "eval.max_new_tokens=16".into(),
        format!("checkpoint.every={}", (s.steps / 2).max(1)),
        "checkpoint.keep_last=1".into(),
    ]
}

/// Trains (or resumes) the run in `out` from `overrides`; `fresh` clears `out` first.
pub fn train_run(
    name: &str,
    overrides: &[String],
    out: &Path,
    fresh: bool,
) -> Result<(RunSummary, EvalReport)> {
    let cfg = TrainConfig::from_overrides(overrides)?;
    cfg.validate()?;
    if fresh && out.exists() {
        std::fs::remove_dir_all(out).map_err(Error::io(out))?;
    }
    let summary = train(
        &cfg,
        &RunOptions {
            out: out.to_owned(),
            resume: true,
            ..Default::default()
        },
        &mut Single,
    )?;
    eprintln!(
        "  {name}: {} steps in {:.0} s, {:.0} target tokens/s",
        summary.steps, summary.elapsed_s, summary.tokens_per_s
    );
    let eval = summary
        .final_eval
        .clone()
        .ok_or_else(|| Error::Measurement {
            what: "training",
            msg: format!("{name}: the run ended without an evaluation"),
        })?;
    Ok((summary, eval))
}

/// The teacher's greedy answers for `inputs`, as examples with those answers as targets;
/// inputs it answers with nothing are left out (an empty target teaches nothing).
pub fn pseudo_label(
    teacher_dir: &Path,
    inputs: &[SynthExample],
    max_input: usize,
) -> Result<Vec<SynthExample>> {
    let teacher = edkd_models::Teacher::load(teacher_dir, Default::default())?;
    let tok = teacher.tokenizer.as_ref().ok_or_else(|| Error::Input {
        field: "teacher",
        msg: format!("{}: no tokenizer.json", teacher_dir.display()),
    })?;
    let eos = teacher.model.config.eos_token_ids.clone();
    let cfg = edkd_models::GenerationConfig {
        eos_token_ids: eos.clone(),
        pad_token_id: teacher.model.config.pad_token_id.unwrap_or(0),
        ..edkd_models::GenerationConfig::greedy(MAX_TARGET_TOKENS)
    };
    let mut out = Vec::with_capacity(inputs.len());
    let mut skipped = 0usize;
    for chunk in inputs.chunks(64) {
        let prompts: Vec<Vec<i64>> = chunk
            .iter()
            .map(|e| {
                let ids = tok.encode(&e.input, false)?;
                let start = ids.len().saturating_sub(max_input);
                Ok(ids[start..].to_vec())
            })
            .collect::<Result<_>>()?;
        let answers = edkd_models::generate::generate(&teacher.model, &prompts, &cfg)?;
        for (e, a) in chunk.iter().zip(answers) {
            let ids: Vec<i64> = a.into_iter().take_while(|t| !eos.contains(t)).collect();
            let text = tok.decode(&ids, true)?;
            if text.trim().is_empty() {
                skipped += 1;
                continue;
            }
            out.push(SynthExample {
                id: format!("pseudo-{}", e.id),
                task: e.task.clone(),
                input: e.input.clone(),
                target: text.trim().to_owned(),
                answer: e.answer.clone(),
            });
        }
    }
    if skipped > 0 {
        eprintln!(
            "  the teacher answered nothing for {skipped} of {} inputs; those are left out",
            inputs.len()
        );
    }
    Ok(out)
}
