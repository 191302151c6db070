//! `edkd bench ...`: benchmarks that print edkd and a reference implementation side by side.

pub mod allreduce;
pub mod edge;
pub mod efficiency;
pub mod generation;
pub mod teacher;
pub mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Student and twin on libtorch f32, ONNX Runtime f32 and int8, 1 and 2 threads (CSV).
    Edge(edge::Args),
    /// Teacher forward throughput (tokens/s) for edkd and transformers on the same weights.
    Teacher(teacher::Args),
    /// Encoder-decoder student vs its decoder-only twin: first-token latency, decode
    /// throughput and peak memory per input length (CSV and PNG).
    Efficiency(efficiency::Args),
    /// Student cached vs recomputed decoding; twin generation in edkd vs transformers.
    Generation(generation::Args),
    /// Data-parallel step split into compute and gradient all-reduce, bytes per step, and
    /// the bucketed all-reduce's bandwidth vs a raw MPI_Allreduce (run under mpirun).
    Allreduce(allreduce::Args),
    /// Distillation step time with the remote teacher vs the cache, edkd's training step
    /// vs PyTorch's (tokens/s), and model FLOP utilisation against the matmul peak.
    Train(train::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Edge(args) => edge::run(args),
        BenchCommand::Teacher(args) => teacher::run(args),
        BenchCommand::Efficiency(args) => efficiency::run(args),
        BenchCommand::Generation(args) => generation::run(args),
        BenchCommand::Allreduce(args) => allreduce::run(args),
        BenchCommand::Train(args) => train::run(args),
    }
}

/// The project venv's python (made by scripts/setup.sh), or `$EDKD_PYTHON`.
pub fn python() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("EDKD_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = repo.join(".venv/bin/python");
    if !p.exists() {
        bail!(
            "{} not found: run scripts/setup.sh (or set EDKD_PYTHON)",
            p.display()
        );
    }
    Ok(p)
}

/// A Python script shipped in cli/scripts.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a reference script and parses the JSON it prints on its last stdout line.
pub fn run_python(script_name: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(python()?)
        .arg(script(script_name))
        .args(args)
        .output()
        .with_context(|| format!("running {script_name}"))?;
    if !out.status.success() {
        bail!(
            "{script_name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    if last.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(last).with_context(|| format!("{script_name} printed {last:?}"))
}
