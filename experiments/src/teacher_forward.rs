//! Teacher forward throughput (`edkd bench teacher`): edkd against transformers on the
//! same random ~110M-parameter Llama checkpoint (made by the reference script on first
//! use), same batch, same thread count, in one run.

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
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub options: Options,
    pub params: i64,
    pub edkd_tokens_per_s: f64,
    pub transformers_tokens_per_s: f64,
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
    Ok(Report {
        options: opts.clone(),
        params,
        edkd_tokens_per_s: (opts.batch * opts.seq) as f64 / best,
        transformers_tokens_per_s: theirs,
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
        writeln!(f, "  {:<14} {:>12.3}", "edkd/transf.", self.ratio())
    }
}
