//! `edkd experiment vision`: a thin wrapper over `edkd_experiments::vision`.

use std::path::PathBuf;

use edkd_experiments::vision::{self, VisionConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Work folder (images, data, teacher, students and their predictions); a rerun resumes it.
    #[arg(long, default_value = "out/experiment/vision")]
    out: PathBuf,
    /// Where vision.md / vision.json go (and where the vision-efficiency-*.json reports it
    /// summarises are looked for).
    #[arg(long, default_value = "experiments/reports")]
    report_dir: PathBuf,
    /// Training seeds of the students, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Labelled examples the teacher is trained on.
    #[arg(long, default_value_t = 8000)]
    teacher_examples: usize,
    /// Of those, the labelled examples the students get (the rest are unlabelled inputs).
    #[arg(long, default_value_t = 2000)]
    student_examples: usize,
    /// Held-out examples scored.
    #[arg(long, default_value_t = 500)]
    eval_examples: usize,
    #[arg(long, default_value_t = 4000)]
    teacher_steps: u64,
    #[arg(long, default_value_t = 2000)]
    student_steps: u64,
    /// Image side in pixels (a multiple of the tower's patch size, 16).
    #[arg(long, default_value_t = 48)]
    image_size: u32,
    /// libtorch threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut cfg = VisionConfig::new(&a.out);
    cfg.seeds = a.seeds;
    cfg.teacher_examples = a.teacher_examples;
    cfg.student_examples = a.student_examples;
    cfg.eval_examples = a.eval_examples;
    cfg.teacher_steps = a.teacher_steps;
    cfg.student_steps = a.student_steps;
    cfg.image_size = a.image_size;
    cfg.threads = a.threads;
    let report = vision::run(&cfg, &command)?;
    let files = report.write(&a.report_dir)?;
    for m in &report.models {
        println!(
            "{:<50} EM {:.3} [{:.3}, {:.3}]  F1 {:.3}",
            m.name, m.em.mean, m.em.lo, m.em.hi, m.f1.mean
        );
    }
    println!("majority-answer baseline EM {:.3}", report.majority_em);
    println!("report: {} ({:.0} s)", files[0].display(), report.wall_s);
    Ok(())
}
