//! `edkd bench edge`: the student and its decoder-only twin on libtorch f32, ONNX Runtime
//! f32 and ONNX Runtime int8, at 1 and 2 threads: first-token latency, decode tokens/s,
//! peak memory and model bytes per input length, as a table, a CSV and a PNG per thread count.

use std::path::PathBuf;

use anyhow::{Context, bail};
use edkd_experiments::edge::{self, EdgeRuntime, EdgeSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Student preset; its decoder-only twin is built to the same parameter count.
    #[arg(long, default_value = "mid")]
    preset: String,
    /// Input lengths, comma-separated [default: 256,512,1024,2048; 256,1024,2048 for mu-330m].
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<i64>>,
    /// Thread counts, comma-separated (libtorch intra-op, ONNX Runtime intra-op).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Runtimes, comma-separated: libtorch-f32, ort-f32, ort-int8.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "libtorch-f32,ort-f32,ort-int8"
    )]
    runtimes: Vec<String>,
    /// Generated tokens per run [default: 64; 32 for mu-330m].
    #[arg(long)]
    new_tokens: Option<usize>,
    /// Timed runs after one warm-up; the best is kept [default: 3; 1 for mu-330m].
    #[arg(long)]
    repeats: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Output folder: edge-<preset>.csv, edge-<preset>.json and the ONNX exports.
    #[arg(long, default_value = "out/bench/edge")]
    out: PathBuf,
    /// Internal: measure one spec (JSON) in this process and print the result as JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.worker {
        let spec: EdgeSpec = serde_json::from_str(spec).context("--worker spec")?;
        println!("{}", serde_json::to_string(&edge::measure(&spec)?)?);
        return Ok(());
    }
    let mut opts = edge::default_options(&args.preset);
    opts.input_lengths = args.lengths.unwrap_or(opts.input_lengths);
    opts.threads = args.threads;
    opts.new_tokens = args.new_tokens.unwrap_or(opts.new_tokens);
    opts.repeats = args.repeats.unwrap_or(opts.repeats);
    opts.seed = args.seed;
    opts.runtimes = args
        .runtimes
        .iter()
        .map(|r| EdgeRuntime::parse(r).with_context(|| format!("--runtimes: unknown {r:?}")))
        .collect::<anyhow::Result<_>>()?;
    if opts.threads.is_empty() || opts.threads.contains(&0) {
        bail!("--threads: give positive counts, e.g. 1,2");
    }
    let exe = std::env::current_exe().context("locating the edkd binary")?;
    let (rows, files) = edge::bench(&opts, &args.out, &exe)?;
    println!(
        "{} student vs decoder-only twin, batch 1, {} new tokens, best of {} (CPU; the closest \
         this machine gets to the paper's edge measurements)",
        opts.preset, opts.new_tokens, opts.repeats
    );
    print!("{}", edge::table(&rows));
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
