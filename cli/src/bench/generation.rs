//! `edkd bench generation`: the student's cached decoding against recomputing the decoder
//! every step, and the twin's generation in edkd against transformers' `generate`.

use std::path::PathBuf;

use edkd_experiments::generation::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Student preset (and its decoder-only twin).
    #[arg(long, default_value = "mid")]
    preset: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 256)]
    input_length: i64,
    /// Greedy tokens generated per run (no EOS stop).
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// libtorch intra-op threads, both sides.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed runs per side after a warm-up; the best is kept.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Where the twin is saved as a Hugging Face Llama folder for transformers.
    #[arg(long, default_value = "out/bench/generation")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = Options {
        preset: args.preset,
        input_length: args.input_length,
        new_tokens: args.new_tokens,
        repeats: args.repeats,
        threads: args.threads,
        seed: args.seed,
    };
    eprintln!("timing student generation, cached and recomputed ...");
    let student = generation::student_cached_vs_recompute(&opts)?;
    let dir = args.out.join(format!("twin-{}", opts.preset));
    eprintln!("timing twin generation, edkd / transformers / edkd ...");
    let twin = generation::twin_vs_transformers(&opts, &dir)?;

    let n = opts.new_tokens as f64;
    println!(
        "{} preset, prompt {} tokens, {} greedy new tokens, batch 1, fp32, {} threads, best of {}",
        opts.preset, opts.input_length, opts.new_tokens, opts.threads, opts.repeats
    );
    let line = |model: &str, side: &str, seconds: f64| {
        println!(
            "  {model:<16} {side:<24} {seconds:>9.3} {:>9.1}",
            n / seconds
        );
    };
    println!(
        "  {:<16} {:<24} {:>9} {:>9}",
        "model", "generation", "seconds", "tok/s"
    );
    let student_name = format!("student {:.1}M", student.params as f64 / 1e6);
    line(&student_name, "edkd cached", student.cached_s);
    line("", "recompute every step", student.recompute_s);
    let twin_name = format!("twin {:.1}M", twin.params as f64 / 1e6);
    line(&twin_name, "edkd generate", n / twin.edkd_tokens_per_s);
    line(
        "",
        "transformers generate",
        n / twin.transformers_tokens_per_s,
    );
    println!(
        "student cached / recompute speed-up: {:.2}x (goal >= 5x); same tokens: {}",
        student.speedup(),
        student.same_tokens
    );
    println!(
        "twin edkd / transformers tokens/s:   {:.3}x (goal >= 1.0); first {} of {} tokens identical",
        twin.ratio(),
        twin.matching_tokens,
        opts.new_tokens
    );
    Ok(())
}
