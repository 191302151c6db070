//! Generation speed on edkd's own code paths:
//! - the student's cached decoding against recomputing the whole decoder prefix every
//!   step (what the paper's reference code does);
//! - the decoder-only twin's `generate` in edkd against transformers' `generate` on the
//!   same weights, prompt, token count and thread count.

use std::path::Path;
use std::time::Instant;

use edkd_models::student::{StudentConfig, StudentModel, init_twin, save_folder};
use edkd_models::{CausalLm, Decoding, GenerationConfig, generate, generate_seq2seq};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::python;

/// New tokens of the untimed warm-up generation.
const WARMUP_TOKENS: usize = 8;
pub const REFERENCE_SCRIPT: &str = "twin_generate_reference.py";

#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub preset: String,
    pub input_length: i64,
    /// Exactly this many tokens are generated (no EOS stop), greedy.
    pub new_tokens: usize,
    /// Timed runs per side after a warm-up; the best is kept.
    pub repeats: usize,
    pub threads: i32,
    pub seed: i64,
}

/// Student generation time with and without decoder caches.
#[derive(Debug, Clone, Serialize)]
pub struct CachedVsRecompute {
    pub params: i64,
    pub cached_s: f64,
    pub recompute_s: f64,
    /// Both paths picked the same greedy tokens (they compute the same function).
    pub same_tokens: bool,
}

impl CachedVsRecompute {
    pub fn speedup(&self) -> f64 {
        self.recompute_s / self.cached_s
    }
}

/// The twin's greedy generation in edkd and in transformers.
#[derive(Debug, Clone, Serialize)]
pub struct TwinVsTransformers {
    pub params: i64,
    pub edkd_tokens_per_s: f64,
    pub transformers_tokens_per_s: f64,
    /// Leading new tokens on which both implementations agree (of `new_tokens`).
    pub matching_tokens: usize,
}

impl TwinVsTransformers {
    pub fn ratio(&self) -> f64 {
        self.edkd_tokens_per_s / self.transformers_tokens_per_s
    }
}

fn prompt(vocab: i64, len: i64, seed: i64) -> Vec<i64> {
    tch::manual_seed(seed);
    Vec::<i64>::try_from(Tensor::randint(vocab, [len], (Kind::Int64, Device::Cpu)))
        .expect("int64 prompt")
}

fn check(opts: &Options) -> Result<()> {
    if opts.new_tokens < 1 || opts.input_length < 1 || opts.repeats < 1 {
        return Err(Error::Input {
            field: "new_tokens/input_length/repeats",
            msg: format!(
                "{} / {} / {} (all must be >= 1)",
                opts.new_tokens, opts.input_length, opts.repeats
            ),
        });
    }
    Ok(())
}

/// Best wall time of `repeats` calls of `f` after one untimed warm-up call, with the
/// output of the last call.
fn best_of<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut out = f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t0 = Instant::now();
        out = f()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok((best, out))
}

/// Times the student's greedy generation of `opts.new_tokens` with [`Decoding::Cached`]
/// and with [`Decoding::Recompute`].
pub fn student_cached_vs_recompute(opts: &Options) -> Result<CachedVsRecompute> {
    check(opts)?;
    tch::set_num_threads(opts.threads);
    let cfg = StudentConfig::preset(&opts.preset)?;
    let student = StudentModel::init(&cfg, Device::Cpu, opts.seed)?;
    let inputs = vec![prompt(cfg.vocab_size, opts.input_length, opts.seed + 1)];
    let greedy = GenerationConfig::greedy(opts.new_tokens);
    let run = |decoding| {
        best_of(opts.repeats, || {
            Ok(generate_seq2seq(
                &student.model,
                &inputs,
                &greedy,
                decoding,
            )?)
        })
    };
    let (cached_s, cached) = run(Decoding::Cached)?;
    let (recompute_s, recomputed) = run(Decoding::Recompute)?;
    Ok(CachedVsRecompute {
        params: student.num_parameters(),
        cached_s,
        recompute_s,
        same_tokens: cached == recomputed,
    })
}

/// Saves the twin as a Hugging Face Llama folder in `dir` and times greedy generation in
/// edkd (before and after the reference, best kept, so a change of machine load during
/// the run favours neither side) and in transformers.
pub fn twin_vs_transformers(opts: &Options, dir: &Path) -> Result<TwinVsTransformers> {
    check(opts)?;
    tch::set_num_threads(opts.threads);
    let cfg = StudentConfig::preset(&opts.preset)?;
    let (vs, twin) = init_twin(&cfg, Device::Cpu, opts.seed);
    save_folder(dir, &twin.config.to_hf_json(), &vs, None)?;
    let ids = prompt(cfg.vocab_size, opts.input_length, opts.seed + 1);
    let prompt_path = dir.join("prompt.json");
    std::fs::write(
        &prompt_path,
        serde_json::to_string(&ids).expect("ids serialise"),
    )
    .map_err(Error::io(&prompt_path))?;

    let prompts = vec![ids];
    let warmup = GenerationConfig::greedy(WARMUP_TOKENS);
    let greedy = GenerationConfig::greedy(opts.new_tokens);
    let time_edkd = |twin: &CausalLm| -> Result<(f64, Vec<Vec<i64>>)> {
        generate(twin, &prompts, &warmup)?;
        best_of(opts.repeats, || Ok(generate(twin, &prompts, &greedy)?))
    };
    let (before, ours) = time_edkd(&twin)?;
    let reference = python::run_script(
        REFERENCE_SCRIPT,
        &[
            "--model".into(),
            dir.display().to_string(),
            "--prompt".into(),
            prompt_path.display().to_string(),
            "--max-new-tokens".into(),
            opts.new_tokens.to_string(),
            "--threads".into(),
            opts.threads.to_string(),
            "--repeats".into(),
            opts.repeats.to_string(),
        ],
    )?;
    let (after, _) = time_edkd(&twin)?;
    let theirs: Vec<i64> =
        serde_json::from_value(reference["tokens"].clone()).map_err(|e| Error::Script {
            script: REFERENCE_SCRIPT.into(),
            msg: format!("no token list in its output: {e}"),
        })?;
    let matching_tokens = ours[0]
        .iter()
        .zip(&theirs)
        .take_while(|(a, b)| a == b)
        .count();
    Ok(TwinVsTransformers {
        params: CausalLm::num_parameters(&vs),
        edkd_tokens_per_s: opts.new_tokens as f64 / before.min(after),
        transformers_tokens_per_s: reference["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        matching_tokens,
    })
}

/// Both comparisons of `edkd bench generation`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub options: Options,
    pub student: CachedVsRecompute,
    pub twin: TwinVsTransformers,
}

/// Runs both comparisons; the twin is saved under `dir` for transformers. Progress goes
/// to stderr.
pub fn run(opts: &Options, dir: &Path) -> Result<Report> {
    eprintln!("timing student generation, cached and recomputed ...");
    let student = student_cached_vs_recompute(opts)?;
    eprintln!("timing twin generation, edkd / transformers / edkd ...");
    let twin = twin_vs_transformers(opts, dir)?;
    Ok(Report {
        options: opts.clone(),
        student,
        twin,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (o, s, t) = (&self.options, &self.student, &self.twin);
        let n = o.new_tokens as f64;
        writeln!(
            f,
            "{} preset, prompt {} tokens, {} greedy new tokens, batch 1, fp32, {} threads, \
             best of {}",
            o.preset, o.input_length, o.new_tokens, o.threads, o.repeats
        )?;
        writeln!(
            f,
            "  {:<16} {:<24} {:>9} {:>9}",
            "model", "generation", "seconds", "tok/s"
        )?;
        let student_name = format!("student {:.1}M", s.params as f64 / 1e6);
        let twin_name = format!("twin {:.1}M", t.params as f64 / 1e6);
        for (model, side, seconds) in [
            (student_name.as_str(), "edkd cached", s.cached_s),
            ("", "recompute every step", s.recompute_s),
            (twin_name.as_str(), "edkd generate", n / t.edkd_tokens_per_s),
            ("", "transformers generate", n / t.transformers_tokens_per_s),
        ] {
            writeln!(
                f,
                "  {model:<16} {side:<24} {seconds:>9.3} {:>9.1}",
                n / seconds
            )?;
        }
        writeln!(
            f,
            "student cached / recompute speed-up: {:.2}x (goal >= 5x); same tokens: {}",
            s.speedup(),
            s.same_tokens
        )?;
        writeln!(
            f,
            "twin edkd / transformers tokens/s:   {:.3}x (goal >= 1.0); first {} of {} tokens \
             identical",
            t.ratio(),
            t.matching_tokens,
            o.new_tokens
        )
    }
}
