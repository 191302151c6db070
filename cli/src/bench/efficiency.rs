//! `edkd bench efficiency`: the encoder-decoder student against its decoder-only twin of
//! equal size (the paper's Figure 1a): first-token latency, decode throughput and peak
//! memory per input length, as a table, a CSV and a PNG.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use edkd_experiments::efficiency::{self, Arch, MeasureSpec, Row};

#[derive(clap::Args)]
pub struct Args {
    /// Student preset; its decoder-only twin is built to the same parameter count.
    #[arg(long, default_value = "mid")]
    preset: String,
    /// Input lengths in tokens, comma-separated [default: 256,512,1024,2048,4096;
    /// 256,1024,4096 for mu-330m].
    #[arg(long, value_delimiter = ',')]
    input_lengths: Option<Vec<i64>>,
    /// Generated tokens per run [default: 64; 32 for mu-330m].
    #[arg(long)]
    new_tokens: Option<usize>,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed runs per measurement after one warm-up; the best is kept [default: 3; 1 for mu-330m].
    #[arg(long)]
    repeats: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Output folder for efficiency-<preset>.csv/.png/.json.
    #[arg(long, default_value = "out/bench/efficiency")]
    out: PathBuf,
    /// Skip the PNG (no Python needed).
    #[arg(long)]
    no_plot: bool,
    /// Internal: measure one spec (JSON) in this process and print the result as JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.worker {
        let spec: MeasureSpec = serde_json::from_str(spec).context("--worker spec")?;
        println!("{}", serde_json::to_string(&efficiency::measure(&spec)?)?);
        return Ok(());
    }
    let mut opts = efficiency::default_options(&args.preset);
    opts.threads = args.threads;
    opts.seed = args.seed;
    opts.input_lengths = args.input_lengths.unwrap_or(opts.input_lengths);
    opts.new_tokens = args.new_tokens.unwrap_or(opts.new_tokens);
    opts.repeats = args.repeats.unwrap_or(opts.repeats);

    let exe = std::env::current_exe().context("locating the edkd binary")?;
    // One child process per (model, length): its peak RSS is that measurement's alone.
    let in_child = |spec: &MeasureSpec| {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "efficiency", "--worker"]);
        efficiency::measure_in_child(cmd, spec)
    };
    let progress = |spec: &MeasureSpec| {
        let name = match spec.arch {
            Arch::Student => "student",
            Arch::Twin => "twin",
        };
        eprintln!(
            "measuring {name:<7} at {:>5} input tokens ...",
            spec.input_length
        );
    };
    let rows = efficiency::run(&opts, in_child, progress)?;

    let stem = args.out.join(format!("efficiency-{}", opts.preset));
    let csv = stem.with_extension("csv");
    efficiency::write_csv(&csv, &rows)?;
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&opts)? + "\n",
    )?;
    let png = stem.with_extension("png");
    if !args.no_plot {
        let title = format!(
            "{} student vs decoder-only twin, batch 1, {} threads",
            opts.preset, opts.threads
        );
        efficiency::plot(&csv, &png, &title)?;
    }
    print_summary(&opts, &rows);
    eprintln!("wrote {}", csv.display());
    if !args.no_plot {
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}

fn print_summary(opts: &efficiency::Options, rows: &[Row]) {
    let Some(first) = rows.first() else { return };
    println!(
        "{} student ({:.1}M params) vs decoder-only twin ({:.1}M), batch 1, fp32, {} threads, \
         {} new tokens, best of {}",
        opts.preset,
        first.student.params as f64 / 1e6,
        first.twin.params as f64 / 1e6,
        opts.threads,
        opts.new_tokens,
        opts.repeats
    );
    print!("{}", efficiency::table(rows));
    println!(
        "run peak: peak RSS of the measuring process above its RSS once the model is built \
         (activations + caches); peak RSS: whole process (libtorch + weights + run)"
    );
    let fewer = |r: &Row| (1.0 - r.first_token_ratio()) * 100.0;
    let (lo, hi) = rows
        .iter()
        .map(fewer)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let best_decode = rows.iter().map(Row::decode_ratio).fold(f64::NAN, f64::max);
    println!("ours:  first token {lo:.0}%..{hi:.0}% sooner, decode up to {best_decode:.2}x faster");
    println!("paper: first token 47% sooner, decode up to 4.7x faster (Mu vs decoder-only)");
}
