//! `edkd experiment kd` and `edkd experiment kd-step`: thin wrappers over
//! `edkd_experiments::kd_real`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use edkd_experiments::kd_real::{
    self, KdRealConfig, PRESETS, Source, default_sources,
    step_bench::{self, StepBenchConfig},
};

#[derive(clap::Args)]
pub struct KdArgs {
    /// Sizes: cpu (about two hours on 2 cores), full (one GPU), toy (seconds, for tests).
    #[arg(long, default_value = "cpu", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    preset: String,
    /// Output folder (data, cache, students, runs, report); a second run resumes it.
    #[arg(long, default_value = "kd-real")]
    out: PathBuf,
    /// The teacher: a .gguf file or a Hugging Face folder with a chat template (default:
    /// SmolLM2-135M-Instruct as scripts/setup.sh fetches it).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Python whose `ast` parses the sources, and whose stdlib and site-packages they are.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Source trees as NAME=ROOT=LICENCE, instead of the stdlib, numpy, torch, transformers,
    /// sympy and networkx of --python (repeat the flag).
    #[arg(long = "source", value_name = "NAME=ROOT=LICENCE")]
    sources: Vec<String>,
    /// Optimizer steps of every arm (default: the preset's).
    #[arg(long)]
    steps: Option<u64>,
    /// Training examples (default: the preset's).
    #[arg(long)]
    train_examples: Option<usize>,
    /// Seeds of the decoder-initialised CE and KD arms, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    decoder_seeds: Vec<u64>,
    /// Seeds of the randomly initialised CE and KD arms, comma-separated; `none` for no
    /// random arms (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    random_seeds: Vec<String>,
    /// Held-out test examples (default: the preset's).
    #[arg(long)]
    test_examples: Option<usize>,
    /// Cross-entropy fine-tuning steps of the teacher before annotation (0: none).
    #[arg(long)]
    teacher_finetune_steps: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N` (default: the preset's).
    #[arg(long)]
    device: Option<String>,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Also write kd-real.md / .json / -curves.png here (e.g. experiments/reports).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Delete the output folder first.
    #[arg(long)]
    fresh: bool,
}

fn parse_source(s: &str) -> anyhow::Result<Source> {
    let mut parts = s.splitn(3, '=');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(root), Some(licence)) if !name.is_empty() && !root.is_empty() => {
            Ok(Source {
                name: name.into(),
                root: root.into(),
                licence: licence.into(),
            })
        }
        _ => bail!("--source {s:?}: expected NAME=ROOT=LICENCE"),
    }
}

pub fn kd(args: KdArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let teacher = match &args.teacher {
        Some(t) => t.clone(),
        None => edkd_models::gguf::smollm2_path()?,
    };
    let python = match &args.python {
        Some(p) => p.clone(),
        None => edkd_experiments::python::python()?,
    };
    if args.fresh && args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("clearing {}", args.out.display()))?;
    }
    let mut cfg = KdRealConfig::preset(&args.preset, &args.out, &teacher, &python)?;
    cfg.sources = if args.sources.is_empty() {
        default_sources(&python)?
    } else {
        args.sources
            .iter()
            .map(|s| parse_source(s))
            .collect::<anyhow::Result<_>>()?
    };
    if let Some(n) = args.steps {
        cfg.train.steps = n;
        cfg.train.eval_every = cfg.train.eval_every.min((n / 4).max(1));
        cfg.train.warmup_steps = cfg.train.warmup_steps.min(n / 10);
    }
    if let Some(n) = args.train_examples {
        cfg.task.train_examples = n;
    }
    if !args.decoder_seeds.is_empty() {
        cfg.decoder_seeds = args.decoder_seeds.clone();
    }
    if args.random_seeds == ["none"] {
        cfg.random_seeds.clear();
    } else if !args.random_seeds.is_empty() {
        cfg.random_seeds = args
            .random_seeds
            .iter()
            .map(|s| {
                s.parse()
                    .with_context(|| format!("--random-seeds: {s:?} is not a seed or `none`"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(n) = args.test_examples {
        cfg.task.test_examples = n;
    }
    if let Some(n) = args.teacher_finetune_steps {
        cfg.teacher_finetune_steps = n;
    }
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    cfg.threads = args.threads;
    let report = kd_real::run(&cfg, &command)?;
    if let Some(dir) = &args.report_dir {
        report.write(dir)?;
    }
    println!("{}", kd_real::report::score_table(&report));
    println!("{}", kd_real::report::difference_table(&report));
    println!(
        "report: {} (and kd-real.json, kd-real-curves.png); {:.0} s in all",
        args.out.join("kd-real.md").display(),
        report.elapsed_s
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct StepArgs {
    /// A student folder (e.g. OUT/students/decoder-init of `edkd experiment kd`).
    #[arg(long)]
    student: PathBuf,
    #[arg(long, default_value_t = 16)]
    rows: i64,
    #[arg(long, default_value_t = 160)]
    enc_len: i64,
    #[arg(long, default_value_t = 33)]
    dec_len: i64,
    #[arg(long, default_value_t = 32)]
    top_k: i64,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Refuse to measure when the 1-minute load average is above this.
    #[arg(long, default_value_t = 2.5)]
    max_load: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn step(args: StepArgs) -> anyhow::Result<()> {
    let cfg = StepBenchConfig {
        student: args.student,
        rows: args.rows,
        enc_len: args.enc_len,
        dec_len: args.dec_len,
        top_k: args.top_k,
        repeats: args.repeats.max(1),
        threads: args.threads,
        max_load: args.max_load,
    };
    let r = step_bench::run(&cfg)?;
    println!("{}", step_bench::table(&r));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
