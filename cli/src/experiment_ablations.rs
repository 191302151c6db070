//! `edkd experiment ablations`: a thin wrapper over `edkd_experiments::ablations`.

use std::path::PathBuf;

use edkd_experiments::ablations::{self, AblationConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Work folder (data, teacher, every arm's run and predictions); a rerun resumes it.
    #[arg(long, default_value = "out/experiment/ablations")]
    out: PathBuf,
    /// Where ablations.md / .json / .png go.
    #[arg(long, default_value = "experiments/reports")]
    report_dir: PathBuf,
    /// Training seeds of every arm, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Optimizer steps of every arm.
    #[arg(long, default_value_t = 800)]
    student_steps: u64,
    /// Optimizer steps of the teacher.
    #[arg(long, default_value_t = 1200)]
    teacher_steps: u64,
    /// Labelled examples the teacher is trained on.
    #[arg(long, default_value_t = 12000)]
    teacher_examples: usize,
    /// Of those, the labelled examples the students get (the rest are unlabelled inputs).
    #[arg(long, default_value_t = 3000)]
    student_examples: usize,
    /// Held-out examples scored.
    #[arg(long, default_value_t = 300)]
    eval_examples: usize,
    /// libtorch threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut cfg = AblationConfig::new(&a.out);
    cfg.seeds = a.seeds;
    cfg.student_steps = a.student_steps;
    cfg.teacher_steps = a.teacher_steps;
    cfg.teacher_examples = a.teacher_examples;
    cfg.student_examples = a.student_examples;
    cfg.eval_examples = a.eval_examples;
    cfg.threads = a.threads;
    let report = ablations::run(&cfg, &command)?;
    let files = report.write(&a.report_dir)?;
    for d in &report.differences {
        let f1 = &d.metrics[1];
        println!(
            "{:<40} F1 {:+.3} [{:+.3}, {:+.3}]",
            d.question, f1.mean, f1.lo, f1.hi
        );
    }
    println!("report: {} ({:.0} s)", files[0].display(), report.wall_s);
    Ok(())
}
