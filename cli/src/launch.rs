//! `edkd launch` (run a job spec locally, on Slurm or on Kubernetes) and `edkd status`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use edkd_cluster::local::{self, LocalOptions, RunEnd};
use edkd_cluster::{JobSpec, k8s, slurm, status};

/// Where a job runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// This machine: teacher servers, then `mpirun ... edkd train`, restarted on failure.
    Local,
    /// An sbatch script, submitted with `sbatch` (`--dry-run` prints it).
    Slurm,
    /// Kubernetes manifests (teacher Deployment + Service, trainer MPIJob or Indexed Job).
    K8s,
}

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// The job spec (TOML): teachers, trainer ranks, train config, data, output.
    spec: PathBuf,
    /// Where the job runs.
    #[arg(long, value_enum, default_value_t = Backend::Local, env = "EDKD_BACKEND")]
    backend: Backend,
    /// Print what would run (commands, sbatch script or manifests) and start nothing.
    #[arg(long)]
    dry_run: bool,
    /// k8s: write the manifests into this folder instead of printing them.
    #[arg(long, env = "EDKD_K8S_OUT_DIR")]
    out_dir: Option<PathBuf>,
    /// local: continue an earlier run of this job (`--resume` from the first start).
    #[arg(long)]
    resume: bool,
    /// local: the `mpirun` program.
    #[arg(long, default_value = "mpirun", env = "EDKD_MPIRUN")]
    mpirun: PathBuf,
    /// local: seconds every teacher may take to answer its health check.
    #[arg(long, default_value_t = local::DEFAULT_HEALTH_TIMEOUT.as_secs_f64(), env = "EDKD_HEALTH_TIMEOUT_S")]
    health_timeout_s: f64,
    /// local: seconds between a failure and the restart.
    #[arg(long, default_value_t = local::DEFAULT_RESTART_DELAY.as_secs_f64(), env = "EDKD_RESTART_DELAY_S")]
    restart_delay_s: f64,
    /// local: seconds between SIGTERM and SIGKILL when stopping children.
    #[arg(long, default_value_t = local::DEFAULT_STOP_GRACE.as_secs_f64(), env = "EDKD_STOP_GRACE_S")]
    stop_grace_s: f64,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A run's output folder (the job spec's `output`, or `edkd train --out`).
    dir: PathBuf,
}

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    match args.backend {
        Backend::Local => run_local(&spec, &args),
        Backend::Slurm => {
            let sub = slurm::submit(&spec, args.dry_run)?;
            match (&sub.job_id, &sub.script_path) {
                (Some(id), Some(path)) => {
                    println!("submitted Slurm job {id} ({})", path.display());
                    println!("progress: edkd status {}", spec.slurm_run_dir().display());
                }
                _ => print!("{}", sub.script),
            }
            Ok(())
        }
        Backend::K8s => {
            let config = &spec.trainer.config;
            let text = std::fs::read_to_string(config)
                .with_context(|| format!("reading the train config {}", config.display()))?;
            let files = k8s::render(&spec, &text)?;
            match &args.out_dir {
                Some(dir) if !args.dry_run => {
                    k8s::write_dir(dir, &files)?;
                    for (name, _) in &files {
                        println!("{}", dir.join(name).display());
                    }
                    println!("apply with: kubectl apply -f {}", dir.display());
                }
                _ => print!("{}", k8s::to_stream(&files)),
            }
            Ok(())
        }
    }
}

fn run_local(spec: &JobSpec, args: &LaunchArgs) -> anyhow::Result<()> {
    let edkd = std::env::current_exe().context("locating the edkd binary")?;
    let opts = LocalOptions {
        mpirun: args.mpirun.clone(),
        resume: args.resume,
        health_timeout: seconds("--health-timeout-s", args.health_timeout_s)?,
        restart_delay: seconds("--restart-delay-s", args.restart_delay_s)?,
        stop_grace: seconds("--stop-grace-s", args.stop_grace_s)?,
        ..LocalOptions::default()
    };
    if args.dry_run {
        let plan = local::plan(spec, &edkd, &opts);
        for t in &plan.teachers {
            println!("# {} (health check on {})", t.process.label, t.addr);
            println!("{}", command_line(&t.process.program, &t.process.args));
        }
        println!(
            "# {} (restarted with {} up to {} times)",
            plan.trainer.label, plan.resume_flag, plan.max_restarts
        );
        let mut trainer_args = plan.trainer.args.clone();
        if plan.resume_first {
            trainer_args.push(plan.resume_flag.clone());
        }
        println!("{}", command_line(&plan.trainer.program, &trainer_args));
        return Ok(());
    }
    let outcome = local::run(spec, &edkd, &opts)?;
    match outcome.end {
        RunEnd::Finished => {
            println!(
                "job {} finished ({} restart(s)); output in {}",
                spec.name,
                outcome.restarts,
                spec.output.display()
            );
            Ok(())
        }
        RunEnd::Stopped => {
            eprintln!(
                "stopped; continue with `edkd launch {} --resume`",
                args.spec.display()
            );
            std::process::exit(130);
        }
        RunEnd::GaveUp { component, reason } => bail!(
            "{component} failed ({reason}) after {} restart(s); logs in {}",
            outcome.restarts,
            spec.output.join("logs").display()
        ),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let st = status::read(&args.dir)?;
    println!("{st}");
    Ok(())
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{flag} {s}: expected seconds >= 0"))
}

/// A command as one shell line (words with shell syntax single-quoted).
fn command_line(program: &std::path::Path, args: &[String]) -> String {
    let words: Vec<String> = std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .collect();
    edkd_cluster::shell::join(&words)
}
