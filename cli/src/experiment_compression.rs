//! `edkd experiment compression`: a thin wrapper over `edkd_experiments::compression`.

use std::path::PathBuf;

use edkd_experiments::compression::{self, CompressionConfig};
use edkd_experiments::kd_real::default_sources;

#[derive(clap::Args)]
pub struct Args {
    /// Work folder (task, data, k=128 cache, student); a second run reuses it.
    #[arg(long, default_value = "compression")]
    out: PathBuf,
    /// Where compression.md / .json / .png go.
    #[arg(long, default_value = "experiments/reports")]
    report_dir: PathBuf,
    /// The teacher (default: SmolLM2-135M-Instruct as scripts/setup.sh fetches it).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Python whose stdlib and site-packages give the task's functions.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Training examples measured.
    #[arg(long, default_value_t = 200)]
    examples: usize,
    /// Training examples annotated before them whose rows give the freq packings' id
    /// order (not measured).
    #[arg(long, default_value_t = 50)]
    calibration_examples: usize,
    /// k values measured (each at most 128, the annotated k), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    ks: Vec<usize>,
    /// zstd level of the "after zstd" column.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let teacher = match a.teacher {
        Some(t) => t,
        None => edkd_models::gguf::smollm2_path()?,
    };
    let python = match a.python {
        Some(p) => p,
        None => edkd_experiments::python::python()?,
    };
    let sources = default_sources(&python)?;
    let mut cfg = CompressionConfig::new(a.out, teacher, python, sources);
    cfg.examples = a.examples;
    cfg.calibration_examples = a.calibration_examples;
    cfg.ks = a.ks;
    cfg.zstd_level = a.zstd_level;
    cfg.threads = a.threads;
    let report = compression::run(&cfg, &command)?;
    report.write(&a.report_dir)?;
    println!("{}", report.table());
    println!(
        "report: {} (and compression.json, compression.png); {:.0} s in all",
        a.report_dir.join("compression.md").display(),
        report.elapsed_s
    );
    Ok(())
}
