//! Teacher forward throughput (`edkd bench teacher`): edkd against transformers on the
//! same random ~110M-parameter Llama checkpoint (made by the reference script on first
//! use), same batch, same thread count, in one run; then the service's scoring of
//! `prompt ++ target` sequences on the same model (what `Teacher.Score` runs per forward
//! pass), split into the model body and the part at target rows (LM head, log-softmax,
//! top-k, tail, gold).

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use edkd_models::{LoadOptions, Teacher};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::python;

/// The transformers side's script in experiments/scripts.
pub const REFERENCE_SCRIPT: &str = "teacher_forward_reference.py";

#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Where the random benchmark checkpoint lives (created on first use).
    pub model: PathBuf,
    pub batch: i64,
    pub seq: i64,
    /// Threads for both sides (libtorch intra-op).
    pub threads: i32,
    /// Timed forward passes per side after a warm-up; the best is kept.
    pub iters: usize,
    /// `f32` or `bf16`, both sides.
    pub dtype: String,
    /// Scoring section: prompt and target tokens per sequence (`batch` sequences per
    /// pass) and the top-k returned.
    pub score_prompt: usize,
    pub score_target: usize,
    pub top_k: usize,
}

/// The scoring section's figures (best of `iters` passes each).
#[derive(Debug, Clone, Serialize)]
pub struct ScoringReport {
    /// Seconds of one `Scorer::score` pass.
    pub score_s: f64,
    /// Seconds of the model body (`hidden`) alone on the same padded batch.
    pub body_s: f64,
    pub target_tokens: usize,
}

impl ScoringReport {
    pub fn scored_tokens_per_s(&self) -> f64 {
        self.target_tokens as f64 / self.score_s
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub options: Options,
    pub params: i64,
    pub edkd_tokens_per_s: f64,
    pub transformers_tokens_per_s: f64,
    pub scoring: ScoringReport,
}

impl Report {
    pub fn ratio(&self) -> f64 {
        self.edkd_tokens_per_s / self.transformers_tokens_per_s
    }
}

fn script_args(o: &Options, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--model".to_string(),
        o.model.display().to_string(),
        "--batch".into(),
        o.batch.to_string(),
        "--seq".into(),
        o.seq.to_string(),
        "--threads".into(),
        o.threads.to_string(),
        "--iters".into(),
        o.iters.to_string(),
        "--dtype".into(),
        o.dtype.clone(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Times edkd before and after the reference so that a change in machine load during the
/// run favours neither side; the best time of each is reported.
pub fn run(opts: &Options) -> Result<Report> {
    if opts.batch < 1 || opts.seq < 1 || opts.iters < 1 {
        return Err(Error::input(
            "batch/seq/iters",
            format!(
                "{} / {} / {}: all must be >= 1",
                opts.batch, opts.seq, opts.iters
            ),
        ));
    }
    eprintln!("preparing {} ...", opts.model.display());
    python::run_script(REFERENCE_SCRIPT, &script_args(opts, &["--create-only"]))?;

    tch::set_num_threads(opts.threads);
    let kind = edkd_models::device::parse_dtype(&opts.dtype)?;
    let teacher = Teacher::load(
        &opts.model,
        LoadOptions {
            kind,
            ..LoadOptions::default()
        },
    )?;
    let params = Teacher::num_parameters(&teacher);
    let ids = Tensor::randint(
        teacher.model.config.vocab_size,
        [opts.batch, opts.seq],
        (Kind::Int64, Device::Cpu),
    );
    let valid = Tensor::ones([opts.batch, opts.seq], (Kind::Bool, Device::Cpu));
    let time_ours = || {
        tch::no_grad(|| {
            let _ = teacher.model.forward_padded(&ids, &valid); // warm-up
            (0..opts.iters)
                .map(|_| {
                    let t0 = Instant::now();
                    let _ = teacher.model.forward_padded(&ids, &valid);
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        })
    };
    eprintln!("timing edkd ...");
    let before = time_ours();
    eprintln!("timing transformers ...");
    let reference = python::run_script(REFERENCE_SCRIPT, &script_args(opts, &[]))?;
    eprintln!("timing edkd again ...");
    let best = before.min(time_ours());
    let theirs = reference["tokens_per_s"]
        .as_f64()
        .ok_or_else(|| Error::Script {
            script: REFERENCE_SCRIPT.into(),
            msg: format!("no tokens_per_s in {reference}"),
        })?;
    eprintln!("timing the service's scoring ...");
    let scoring = time_scoring(opts, teacher)?;
    Ok(Report {
        options: opts.clone(),
        params,
        edkd_tokens_per_s: (opts.batch * opts.seq) as f64 / best,
        transformers_tokens_per_s: theirs,
        scoring,
    })
}

/// Best seconds of `f` over `iters` calls after one warm-up.
fn best_of(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// `Scorer::score` on `batch` random sequences of `score_prompt + score_target` tokens,
/// and the model body alone on the same batch (equal lengths: no padding, causal mask).
fn time_scoring(opts: &Options, teacher: Teacher) -> Result<ScoringReport> {
    let (p, t) = (opts.score_prompt, opts.score_target);
    if p < 1 || t < 1 || opts.top_k < 1 {
        return Err(Error::input(
            "score_prompt/score_target/top_k",
            format!("{p} / {t} / {}: all must be >= 1", opts.top_k),
        ));
    }
    let vocab = teacher.model.config.vocab_size;
    let ids = Tensor::randint(
        vocab,
        [opts.batch, (p + t) as i64],
        (Kind::Int64, Device::Cpu),
    );
    let seqs: Vec<edkd_teacher::scoring::SeqInput> = (0..opts.batch)
        .map(|r| {
            let row: Vec<i64> = Vec::try_from(&ids.get(r)).unwrap_or_default();
            let row: Vec<u32> = row.into_iter().map(|x| x as u32).collect();
            edkd_teacher::scoring::SeqInput {
                prompt: row[..p].to_vec(),
                target: row[p..].to_vec(),
                k: opts.top_k,
                temperature: 1.0,
                ..Default::default()
            }
        })
        .collect();
    let refs: Vec<&edkd_teacher::scoring::SeqInput> = seqs.iter().collect();
    let fed = ids.narrow(1, 0, (p + t - 1) as i64);
    let positions = Tensor::arange((p + t - 1) as i64, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([opts.batch, -1], false);
    let body_s = tch::no_grad(|| {
        best_of(opts.iters, || {
            let _ = teacher.model.hidden(
                &fed,
                &positions,
                &edkd_models::nn::AttnMask::Causal,
                None,
                false,
            );
        })
    });
    let scorer = edkd_teacher::scoring::Scorer::new(teacher);
    let mut failure = None;
    let score_s = best_of(opts.iters, || {
        if let Err(e) = scorer.score(&refs) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(Error::Measurement {
            what: "scoring",
            msg: e.to_string(),
        });
    }
    Ok(ScoringReport {
        score_s,
        body_s,
        target_tokens: opts.batch as usize * t,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "teacher forward, {} ({:.1}M params), batch {} x {} tokens, {}, {} threads \
             (best of {})",
            o.model.display(),
            self.params as f64 / 1e6,
            o.batch,
            o.seq,
            o.dtype,
            o.threads,
            o.iters
        )?;
        writeln!(f, "  {:<14} {:>12}", "", "tokens/s")?;
        writeln!(f, "  {:<14} {:>12.0}", "edkd", self.edkd_tokens_per_s)?;
        writeln!(
            f,
            "  {:<14} {:>12.0}",
            "transformers", self.transformers_tokens_per_s
        )?;
        writeln!(f, "  {:<14} {:>12.3}", "edkd/transf.", self.ratio())?;
        let sc = &self.scoring;
        writeln!(
            f,
            "service scoring (Scorer::score), {} sequences x ({} prompt + {} target) tokens, \
             top-{}: {:.3} s per pass, {:.0} scored target tokens/s",
            o.batch,
            o.score_prompt,
            o.score_target,
            o.top_k,
            sc.score_s,
            sc.scored_tokens_per_s()
        )?;
        writeln!(
            f,
            "  model body {:.3} s ({:.0}%), target rows (LM head, log-softmax, top-k, tail) \
             {:.3} s ({:.0}%)",
            sc.body_s,
            100.0 * sc.body_s / sc.score_s,
            (sc.score_s - sc.body_s).max(0.0),
            100.0 * (1.0 - sc.body_s / sc.score_s).max(0.0)
        )
    }
}
