//! `edkd train` and `edkd eval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use edkd_trainer::config::{Architecture, EvalSection, TrainConfig};
use edkd_trainer::dist::Single;
use edkd_trainer::eval::{EvalReport, evaluate};
use edkd_trainer::train::parse_device;
use edkd_trainer::{RunOptions, train};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The job's TOML config (see trainer/README.md); without it, `--set` gives every field.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: checkpoints, metrics.jsonl, eval.jsonl, tensorboard/, loss.png, final/.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest valid checkpoint in OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Override any config field: `--set optim.lr=3e-4 --set loss.alpha=0.7`.
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    set: Vec<String>,
    /// Shorthand for `--set teacher.kind=remote --set teacher.addr=ADDR`.
    #[arg(long)]
    teacher_addr: Option<String>,
    /// Shorthand for `--set data.manifest=DIR`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Shorthand for `--set optim.steps=N`.
    #[arg(long)]
    steps: Option<u64>,
    /// Shorthand for `--set seed=N`.
    #[arg(long)]
    seed: Option<u64>,
    /// Shorthand for `--set device=DEVICE`.
    #[arg(long)]
    device: Option<String>,
    /// Stop after this many steps of this process without a final checkpoint (tests of
    /// resumption).
    #[arg(long, hide = true)]
    halt_after: Option<u64>,
}

impl TrainArgs {
    fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some(a) = &self.teacher_addr {
            o.push("teacher.kind=remote".to_string());
            o.push(format!("teacher.addr=\"{a}\""));
        }
        if let Some(d) = &self.data {
            o.push(format!("data.manifest=\"{}\"", d.display()));
        }
        if let Some(s) = self.steps {
            o.push(format!("optim.steps={s}"));
        }
        if let Some(s) = self.seed {
            o.push(format!("seed={s}"));
        }
        if let Some(d) = &self.device {
            o.push(format!("device=\"{d}\""));
        }
        o.extend(self.set.iter().cloned());
        o
    }
}

/// Sets the returned flag on Ctrl-C or SIGTERM.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(edkd_teacher::shutdown_signal());
        tracing::warn!("stopping after this step (a checkpoint is written); press again to abort");
        f.store(true, Ordering::Relaxed);
        rt.block_on(edkd_teacher::shutdown_signal());
        std::process::exit(130);
    });
    flag
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let cfg = match &args.config {
        Some(path) => TrainConfig::load(path, &overrides)?,
        None => TrainConfig::from_overrides(&overrides)?,
    };
    cfg.validate()?;
    let opts = RunOptions {
        out: args.out.clone(),
        resume: args.resume,
        stop: Some(stop_flag()),
        halt_after: args.halt_after,
    };
    let mut coll = Single;
    let summary = train(&cfg, &opts, &mut coll)?;
    if summary.interrupted {
        eprintln!(
            "stopped at step {}; continue with --resume (same --out)",
            summary.steps
        );
        if args.halt_after.is_none() {
            std::process::exit(130);
        }
        return Ok(());
    }
    println!(
        "trained {} steps in {:.1} s ({:.0} target tokens/s); model: {}",
        summary.steps,
        summary.elapsed_s,
        summary.tokens_per_s,
        summary.final_model.display()
    );
    if let Some(r) = &summary.final_eval {
        print_report(r);
    }
    println!(
        "metrics: {0}/metrics.jsonl, {0}/eval.jsonl, {0}/tensorboard, {0}/loss.png",
        args.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A student folder, or a decoder-only (Hugging Face) model folder.
    #[arg(long)]
    model: PathBuf,
    /// Prepared dataset folder (with manifest.json).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "validation")]
    split: String,
    /// Examples evaluated (0: all).
    #[arg(long, default_value_t = 0)]
    max_examples: usize,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 32)]
    batch_rows: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let kind = edkd_models::student::folder_kind(&args.model)?;
    let tok_path = args.model.join("tokenizer.json");
    if !tok_path.is_file() {
        bail!(
            "{}: no tokenizer.json; evaluation decodes predictions with the model's tokenizer",
            args.model.display()
        );
    }
    let tokenizer = edkd_models::Tokenizer::from_file(&tok_path)?;
    let mut open = edkd_data::OpenOptions::new(&args.split);
    open.verify = edkd_data::Verify::RowCounts;
    open.expect_tokenizer_sha256 = Some(tokenizer.sha256().to_owned());
    let ds = edkd_data::Dataset::open(&args.data, &open)
        .with_context(|| format!("opening split `{}` of {}", args.split, args.data.display()))?;
    let specials = ds.manifest.tokenizer.special_ids;
    let section = edkd_trainer::config::ModelSection {
        architecture: match kind {
            edkd_models::student::FolderKind::Student => Architecture::EncoderDecoder,
            edkd_models::student::FolderKind::Teacher => Architecture::DecoderOnly,
        },
        init: Some(args.model.clone()),
        ..Default::default()
    };
    let vocab = edkd_trainer::model::Vocab {
        size: ds.manifest.tokenizer.vocab_size as i64,
        pad: specials.pad as i64,
        bos: specials.bos as i64,
        eos: specials.eos as i64,
    };
    let net = edkd_trainer::model::Net::build(&section, vocab, device, 0)?;
    let cfg = EvalSection {
        every: 0,
        max_examples: args.max_examples,
        generate: true,
        max_new_tokens: args.max_new_tokens,
        batch_rows: args.batch_rows,
    };
    let loss = TrainConfig::default().loss.kd();
    let report = evaluate(&net, &ds, None, &loss, &cfg, Some(&tokenizer), device, 0)?;
    print_report(&report);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Prints an evaluation as a table (task x EM, F1, ROUGE-L).
pub fn print_report(r: &EvalReport) {
    println!(
        "validation: CE {:.4}, perplexity {:.2}{} over {} examples",
        r.val_loss,
        r.perplexity,
        r.val_kd.map(|k| format!(", KD {k:.4}")).unwrap_or_default(),
        r.examples
    );
    if r.overall.is_none() {
        return;
    }
    println!(
        "{:<10} {:>6} {:>7} {:>7} {:>7}",
        "task", "n", "EM", "F1", "ROUGE-L"
    );
    let row = |name: &str, s: &edkd_trainer::eval::Scores| {
        println!(
            "{:<10} {:>6} {:>7.3} {:>7.3} {:>7.3}",
            name, s.count, s.em, s.f1, s.rouge_l
        );
    };
    for (task, s) in &r.by_task {
        row(task, s);
    }
    if let Some(o) = &r.overall {
        row("all", o);
    }
}
