//! Teacher forward throughput: edkd vs transformers on the same ~110M Llama checkpoint,
//! same batch, same thread count, in one run.

use std::path::PathBuf;
use std::time::Instant;

use edkd_models::{LoadOptions, Teacher};
use tch::{Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// Where the random benchmark checkpoint lives (created on first use).
    #[arg(long, default_value = "out/bench/llama-110m")]
    model: PathBuf,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    #[arg(long, default_value_t = 512)]
    seq: i64,
    /// Threads for both sides (libtorch intra-op).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    #[arg(long, default_value_t = 3)]
    iters: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let common = |extra: &[&str]| {
        let mut v = vec![
            "--model".to_string(),
            args.model.display().to_string(),
            "--batch".into(),
            args.batch.to_string(),
            "--seq".into(),
            args.seq.to_string(),
            "--threads".into(),
            args.threads.to_string(),
            "--iters".into(),
            args.iters.to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    eprintln!("preparing {} ...", args.model.display());
    super::run_python("bench_teacher.py", &common(&["--create-only"]))?;

    tch::set_num_threads(args.threads);
    let teacher = Teacher::load(&args.model, LoadOptions::default())?;
    let params = Teacher::num_parameters(&teacher);
    let ids = Tensor::randint(
        teacher.model.config.vocab_size,
        [args.batch, args.seq],
        (Kind::Int64, tch::Device::Cpu),
    );
    let valid = Tensor::ones([args.batch, args.seq], (Kind::Bool, tch::Device::Cpu));
    let time_ours = || {
        tch::no_grad(|| {
            let _ = teacher.model.forward_padded(&ids, &valid); // warm-up
            (0..args.iters)
                .map(|_| {
                    let t0 = Instant::now();
                    let _ = teacher.model.forward_padded(&ids, &valid);
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        })
    };
    // edkd is timed before and after the reference so that a change in machine load
    // during the run does not favour either side; the best time of each is reported.
    eprintln!("timing edkd ...");
    let before = time_ours();
    eprintln!("timing transformers ...");
    let reference = super::run_python("bench_teacher.py", &common(&[]))?;
    eprintln!("timing edkd again ...");
    let best = before.min(time_ours());
    let tokens = (args.batch * args.seq) as f64;
    let ours = tokens / best;
    let theirs = reference["tokens_per_s"].as_f64().unwrap_or(f64::NAN);

    println!(
        "teacher forward, Llama {:.1}M params, batch {} x {} tokens, fp32, {} threads (best of {})",
        params as f64 / 1e6,
        args.batch,
        args.seq,
        args.threads,
        args.iters
    );
    println!("  {:<14} {:>12}", "", "tokens/s");
    println!("  {:<14} {:>12.0}", "edkd", ours);
    println!("  {:<14} {:>12.0}", "transformers", theirs);
    println!("  {:<14} {:>12.3}", "edkd/transf.", ours / theirs);
    Ok(())
}
