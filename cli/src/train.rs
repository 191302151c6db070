//! `edkd train` and `edkd eval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use edkd_models::device::parse_device;
use edkd_trainer::config::{EvalSection, TrainConfig};
use edkd_trainer::dist::{Collective, Single};
use edkd_trainer::eval::{EvalReport, evaluate, evaluate_folder, open_eval_split};
use edkd_trainer::mpi::{Mpi, local_rank};
use edkd_trainer::nccl::{Nccl, NcclUnavailable};
use edkd_trainer::{RunOptions, train};

use crate::export::{DEFAULT_THREADS, OnnxEval, Runtime};

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
    /// With --resume, when no checkpoint verifies: move them all to OUT/checkpoints/corrupt/
    /// and start over (without this flag that is an error, and nothing is touched).
    #[arg(long, requires = "resume")]
    discard_corrupt_checkpoints: bool,
    /// Override any config field: `--set optim.lr=3e-4 --set loss.alpha=0.7`.
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    set: Vec<String>,
    /// Shorthand for `--set teacher.kind=remote --set teacher.addr=ADDR`. A comma-separated
    /// list names one address per teacher replica: rank `r` uses replica `r % count`.
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

/// Sets the returned flag on the first Ctrl-C or SIGTERM (the run stops after its step,
/// with a checkpoint); a second one exits at once with status 130, even mid-step.
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
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            // The streams live for the whole run, so a signal between the first and the
            // second wait is not lost.
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!(
                "stopping after this step (a checkpoint is written); press again to abort"
            );
            f.store(true, Ordering::Relaxed);
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            eprintln!("aborted");
            std::process::exit(130);
        });
    });
    flag
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let mut cfg = match &args.config {
        Some(path) => TrainConfig::load(path, &overrides)?,
        None => TrainConfig::from_overrides(&overrides)?,
    };
    cfg.validate()?;
    let opts = RunOptions {
        out: args.out.clone(),
        resume: args.resume,
        discard_corrupt: args.discard_corrupt_checkpoints,
        stop: Some(stop_flag()),
        halt_after: args.halt_after,
    };
    let mut coll = connect(&mut cfg)?;
    pick_replica(&mut cfg, coll.rank());
    let summary = train(&cfg, &opts, coll.as_mut())?;
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

/// Picks how this process talks to the other ranks: alone; MPI when an MPI launcher
/// started it (CPU tensors); NCCL over MPI when it trains on CUDA with more than one rank.
/// With several ranks and `device = "cuda"`, rank `i` of a node takes GPU `i % count`.
fn connect(cfg: &mut TrainConfig) -> anyhow::Result<Box<dyn Collective>> {
    let mpi = Mpi::init();
    let (rank, world) = mpi.as_ref().map_or((0, 1), |m| (m.rank(), m.world()));
    if let tch::Device::Cuda(n) = parse_device(&cfg.device)? {
        let count = tch::Cuda::device_count();
        if count == 0 {
            bail!("device = {:?}: this machine has no CUDA device", cfg.device);
        }
        if cfg.device == "cuda" && world > 1 {
            let local = local_rank().unwrap_or(rank);
            cfg.device = format!("cuda:{}", local % count as usize);
        } else if n as i64 >= count {
            bail!(
                "device = {:?}: this machine has {count} CUDA device(s)",
                cfg.device
            );
        }
    }
    let Some(mpi) = mpi else {
        tracing::info!(device = %cfg.device, "collective: single process");
        return Ok(Box::new(Single));
    };
    let coll: Box<dyn Collective> = match parse_device(&cfg.device)? {
        device @ tch::Device::Cuda(_) if world > 1 => match Nccl::init(mpi, device) {
            Ok(nccl) => Box::new(nccl),
            Err(e) => {
                let NcclUnavailable { mpi, reason } = *e;
                tracing::warn!(
                    "NCCL unavailable ({reason}): CUDA gradients are all-reduced over MPI \
                     through host memory, which is slow"
                );
                Box::new(mpi)
            }
        },
        _ => Box::new(mpi),
    };
    tracing::info!(rank, world, device = %cfg.device, "collective: {}", coll.describe());
    Ok(coll)
}

/// Keeps the teacher replica of this rank when `teacher.addr` lists several (as `edkd
/// launch` passes them): rank `r` talks to replica `r % count`, so replicas share the load
/// (and with a replica per rank, no rank's requests are batched with another's).
fn pick_replica(cfg: &mut TrainConfig, rank: usize) {
    let addrs: Vec<&str> = cfg
        .teacher
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.len() > 1 {
        let replica = rank % addrs.len();
        tracing::info!(
            rank,
            replica,
            replicas = addrs.len(),
            teacher = addrs[replica],
            "teacher replica"
        );
        cfg.teacher.addr = addrs[replica].to_owned();
    }
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A student folder, or a decoder-only (Hugging Face) model folder; with `--runtime
    /// onnx`, an `edkd export` folder.
    #[arg(long)]
    model: PathBuf,
    /// torch (libtorch, model folders) or onnx (ONNX Runtime, export folders).
    #[arg(long, value_enum, default_value_t = Runtime::Torch)]
    runtime: Runtime,
    /// ONNX Runtime intra-op threads (with --runtime onnx).
    #[arg(long, default_value_t = DEFAULT_THREADS)]
    threads: usize,
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

/// [`evaluate`] on an ONNX export under ONNX Runtime (CPU), scored exactly as a model
/// folder is.
pub fn evaluate_onnx(
    export: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    cfg: &EvalSection,
    threads: usize,
) -> edkd_trainer::Result<EvalReport> {
    let model = edkd_export::OnnxModel::load(export, threads)
        .map_err(|e| edkd_trainer::Error::Config(e.to_string()))?;
    let (ds, tokenizer) = open_eval_split(export, data, split)?;
    let loss = TrainConfig::default().loss.kd();
    let net = OnnxEval(std::cell::RefCell::new(model));
    evaluate(
        &net,
        &ds,
        None,
        &loss,
        cfg,
        Some(&tokenizer),
        tch::Device::Cpu,
        0,
    )
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let cfg = EvalSection {
        every: 0,
        max_examples: args.max_examples,
        generate: true,
        max_new_tokens: args.max_new_tokens,
        batch_rows: args.batch_rows,
    };
    let report = match args.runtime {
        Runtime::Torch => evaluate_folder(&args.model, &args.data, &args.split, &cfg, device),
        Runtime::Onnx => evaluate_onnx(&args.model, &args.data, &args.split, &cfg, args.threads),
    }
    .with_context(|| {
        format!(
            "evaluating {} on split `{}` of {}",
            args.model.display(),
            args.split,
            args.data.display()
        )
    })?;
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
